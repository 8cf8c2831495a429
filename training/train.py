"""The training loop: CIR fine-tuning (in-batch contrastive baseline or DQE-CIR's pairwise objective
with TRNS negatives) and image-caption pretraining, with exact resume, on one process or many (DDP).

Determinism: the batch order of epoch e comes from rng(seed, e); texts and negatives come from RNGs
and a sampler whose states are saved; so a run resumed from a checkpoint continues the same loss curve.
Several processes (torchrun): cfg.batch_size is the global batch; every rank draws the texts and
negatives of the whole batch (the RNGs stay in step) and computes its own slice; in-batch columns are
gathered from every rank with their gradients; DDP averages the gradients, so a step equals the
single-process step on the same global batch. Only rank 0 writes metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cirdata.controllability import agrees
from cirdata.probes import ProbeRenderer
from cirdata.scenes import noisy_phrasing
from cirdata.tables import CIRData, load_cir_data
from cirdata.vocab import build_tokenizer, filler_words
from encoder.preprocess import normalize
from encoder.text import TextTokenizer
from training.attributes import (
    SCENE_FIELDS,
    caption_attributes,
    edit_labels,
    probe_batch,
    twin_negatives,
    unknown_scene_attributes,
)
from training.checkpoint import LAST, load_checkpoint, load_trainer_state, save_checkpoint
from training.config import TrainConfig, load_train_config
from training.ddp import Dist, gather_with_grad
from training.errors import TrainingError
from training.evaluate import evaluate
from training.losses import (
    attribute_loss,
    attribute_retrieval,
    in_batch_contrastive,
    margin_ranking,
    pairwise_kl,
    probe_losses,
    probe_scores,
    rowwise_maxsim,
    subquery_decorrelation,
    weight_label_loss,
)
from training.mining import mine_negatives
from training.model import DQECIR, ModelConfig, StepForward, maxsim, model_config, pretrained_tokenizer
from training.trns import MidZoneConfig, NegativeSampler, negative_pools, random_negatives, rebuild_epochs

__all__ = ["LAST", "TrainConfig", "Trainer", "budget_total_steps", "build_model", "load_checkpoint",
           "load_train_config", "lr_at", "save_checkpoint", "train"]
RESUME_MAY_CHANGE = ("max_minutes", "progress", "images", "trns_chunk", "threads")  # no effect on the curve


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to lr * min_lr_ratio at `total`. The warm-up never takes more
    than a fifth of the schedule, so a short (time-budgeted) run still decays."""
    warmup = max(1, min(cfg.warmup_steps, total // 5))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def budget_total_steps(step: int, elapsed_s: float, budget_s: float, seconds_per_step: float,
                       cap: int | None = None) -> int:
    """The schedule length that ends when the time budget does: the steps done so far plus the steps
    that fit in the time left at the measured pace of training steps. Mining and evaluation are not
    in that pace: they are spent from the time left when they happen (a TRNS mining of minutes before
    the first step would otherwise make every step look minutes long and end the run at once)."""
    left = max(0.0, budget_s - elapsed_s)
    total = step + max(1, int(left / max(seconds_per_step, 1e-6)))
    return min(total, cap) if cap else total


class Trainer:
    def __init__(self, cfg: TrainConfig, train: CIRData, val: CIRData | None, model: DQECIR, tok: TextTokenizer,
                 dist: Dist | None = None):
        self.cfg, self.train, self.val, self.model, self.tok = cfg, train, val, model, tok
        self.dist = dist = dist or Dist()
        if cfg.batch_size % dist.world:
            raise TrainingError(f"batch_size {cfg.batch_size} is the global batch and must split evenly over "
                                f"the {dist.world} processes")
        self.device = dist.device or torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                                  else ("cpu" if cfg.device == "auto" else cfg.device))
        model.to(self.device)
        if cfg.grad_checkpointing:
            model.set_qformer_checkpointing(True)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.net: nn.Module = StepForward(model)
        if dist.enabled:  # unused parameters: the ITM head, the other attribute-weight variant
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.opt = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr)
        self.n_items = len(train.names) if cfg.task == "caption" else len(train.ref)
        self.steps_per_epoch = max(1, self.n_items // (cfg.batch_size * cfg.grad_accum))
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        # --max-minutes without --max-steps: the schedule is laid over the time budget instead of
        # the epochs, re-measured as the run goes (see budget_total_steps).
        self.time_budgeted = bool(cfg.max_minutes) and not cfg.max_steps
        self.elapsed_s = 0.0  # training wall time so far, across resumes
        self.overhead_s = 0.0  # this session's time in mining and evaluation (not in the step pace)
        self.step, self.epoch = 0, 0
        self.pools = negative_pools(train, cfg.trns_pool) if cfg.task == "cir" else None
        self.sampler: NegativeSampler | None = None
        self.neg_rng = np.random.default_rng([cfg.seed, 991])
        self.text_rng = random.Random(cfg.seed)
        self.fillers = filler_words()
        # the attribute term's negatives: img_set twins (synthetic set) or caption weak labels; with
        # attribute_probes the term takes the probes instead (probe_terms)
        self.attr_twins, self.attr_named = (None, None)
        if cfg.task == "cir" and cfg.lambda_attr and not cfg.attribute_probes:
            self.attr_twins, self.attr_named = self.attribute_labels()
        self.probes = ProbeRenderer(cfg.root, "train", model.cfg.image_size) if cfg.attribute_probes else None
        self.edit_labels = None
        if cfg.lambda_weight_labels:
            if model.cfg.attribute_weights != "sigmoid":
                raise TrainingError("lambda_weight_labels trains sigmoid attribute weights; the model's are "
                                    f"{model.cfg.attribute_weights!r}")
            self.edit_labels = edit_labels(train.edit_kinds, train.texts, model.cfg.attributes)
        self.history: list[dict] = []
        self.out = Path(cfg.out)
        self.metrics_path = self.out / "metrics.jsonl"

    def attribute_labels(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(twins [Q, A] on the synthetic set, else None; named [Q, A] caption weak labels otherwise)."""
        names, d = self.model.cfg.attributes, self.train
        if d.scene_keys is not None and d.members is not None:
            unknown = unknown_scene_attributes(names)
            if unknown:
                raise TrainingError(f"the synthetic scenes label {', '.join(SCENE_FIELDS)} only; the model's "
                                    f"attributes {unknown} cannot get attribute negatives (lambda_attr 0 trains "
                                    "without the attribute term)")
            return twin_negatives(d.scene_keys, d.tgt, d.members, names), None
        return None, np.stack([caption_attributes(t, names) for t in d.texts]) if len(d.texts) else None

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "step": self.step, "epoch": self.epoch,
                "sampler": self.sampler.state_dict() if self.sampler else None,
                "neg_rng": self.neg_rng.bit_generator.state, "text_rng": self.text_rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "train_config": asdict(self.cfg), "history": self.history, "total_steps": self.total_steps,
                "elapsed_s": self.elapsed_s}

    def restore(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.sampler = NegativeSampler.from_state_dict(state["sampler"]) if state["sampler"] else None
        self.neg_rng.bit_generator.state = state["neg_rng"]
        version, internal, gauss = state["text_rng"]
        self.text_rng.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = state.get("history", [])
        self.total_steps = state.get("total_steps", self.total_steps)
        self.elapsed_s = state.get("elapsed_s", 0.0)

    def save(self, name: str = LAST) -> Path:
        path = self.out / name
        if self.dist.is_main:
            save_checkpoint(path, self.model, self.tok, self.state())
        return path

    # -- batches ------------------------------------------------------------------------------
    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        cfg = self.model.cfg
        return torch.from_numpy(self.train.batch_pixels(idx, cfg.mean, cfg.std)).to(self.device)

    def forward(self, ref: np.ndarray, texts: list[str], cols: np.ndarray | None, extra: np.ndarray | None = None):
        """The step's forward on this rank: composed queries (or texts), the tokens of `cols` (each
        distinct image encoded once) followed by those of the `extra` uint8 images (probes), and the
        temperature."""
        ids, mask = (torch.from_numpy(a).to(self.device) for a in self.tok(texts))
        if cols is None:
            return self.net(self.pixels(ref), ids, mask)
        uniq, inv = np.unique(cols, return_inverse=True)
        pixels = self.pixels(uniq)
        if extra is not None and len(extra):
            cfg = self.model.cfg
            pixels = torch.cat([pixels, torch.from_numpy(normalize(extra, cfg.mean, cfg.std)).to(self.device)])
        parts, tokens, tau = self.net(self.pixels(ref), ids, mask, pixels)
        at = torch.from_numpy(np.concatenate([inv.reshape(-1), np.arange(len(uniq), len(pixels))])).to(self.device)
        return parts, tokens[at], tau

    def loss_cir(self, qi: np.ndarray) -> tuple[torch.Tensor, dict]:
        """qi: the global batch; this rank computes the loss of its slice of it.

        Columns this rank encodes: its queries' targets, then (contrastive) their img_set distractors,
        then (pairwise) their TRNS or random negatives, then their attribute negatives. The contrastive
        term ranks each query against every rank's contrastive columns (loss "both": the pairwise
        negative joins them); the pairwise and attribute terms use this rank's columns only."""
        cfg, d, dist, fuse = self.cfg, self.train, self.dist, self.model.fuse
        texts = [d.train_text(int(i), self.text_rng) for i in qi]  # the whole batch: the RNG stays in step
        if cfg.phrasing_noise:
            texts = [noisy_phrasing(t, self.text_rng, cfg.phrasing_noise, self.fillers) for t in texts]
        parts = dist.slices(len(qi))
        mine = parts[dist.rank]
        n = mine.stop - mine.start
        tgt = d.tgt[qi]
        extra = self.img_set_distractors(qi) if cfg.contrastive else None
        weak_labels = cfg.lambda_attr and not cfg.attribute_probes and self.attr_twins is None
        neg = self.negatives(qi) if cfg.pairwise or weak_labels else None
        in_contrastive = cfg.loss == "both"  # the pairwise negative is a contrastive column too

        def contrastive_cols(s: slice) -> np.ndarray:
            cols = [tgt[s], *(extra[s] if extra is not None else [])]
            if in_contrastive:
                cols.append(neg[s])
            return np.concatenate(cols).astype(np.int64)

        cols = [contrastive_cols(s) for s in parts] if cfg.contrastive else [tgt[s].astype(np.int64) for s in parts]
        local = [cols[dist.rank]]
        neg_at = None
        if neg is not None:
            neg_at = len(cols[dist.rank]) - n if in_contrastive else sum(len(c) for c in local)
            if not in_contrastive:
                local.append(neg[mine].astype(np.int64))
        attr_cols, attr_at = self.attribute_columns(qi[mine], None if neg is None else neg[mine])
        if self.probes is not None:
            probe_px, probe_at = probe_batch(self.probes, d.scene_keys, d.names, d.ref[qi[mine]], d.tgt[qi[mine]],
                                             self.model.cfg.attributes, cfg.attribute_probes,
                                             np.random.default_rng([cfg.seed, 7, self.step]))
        else:
            probe_px, probe_at = None, None
        # every rank knows the whole batch's attribute negatives: the term's denominators are global
        per_attribute = (self.attribute_columns(qi, neg)[1] >= 0).sum(axis=0) / dist.world
        if len(attr_cols):
            attr_at = np.where(attr_at >= 0, attr_at + sum(len(c) for c in local), -1)  # -1: no such negative
            local.append(attr_cols)
        cols_local = np.concatenate(local)
        (q_base, q_attrs, w), tokens, tau = self.forward(d.ref[qi[mine]], texts[mine], cols_local, probe_px)
        probe_tokens = tokens[len(cols_local):]
        q = fuse(q_base, q_attrs, w)
        loss, logs = q.new_zeros(()), {}
        if cfg.contrastive:
            all_tokens = gather_with_grad(tokens[: len(cols[dist.rank])], dist)
            labels = sum(len(c) for c in cols[: dist.rank]) + np.arange(n)
            same = torch.from_numpy(self._same_scene(tgt[mine], np.concatenate(cols))).to(self.device)
            labels_t = torch.from_numpy(labels).to(self.device)
            scores = maxsim(q, all_tokens)
            if probe_at is not None:  # each query's own probes: one more negative column each
                own = probe_scores(q, probe_tokens, probe_at)  # -inf where a probe is missing: the learned
                own = own.masked_fill(~torch.isfinite(own), -1e4)  # tau's gradient would be -inf * 0 there
                scores = torch.cat([scores, own], dim=1)
                same = torch.cat([same, same.new_zeros(n, probe_at[0].size)], dim=1)
            loss = loss + in_batch_contrastive(scores, tau, same, labels_t)
        t_pos = tokens[:n]
        if cfg.pairwise:
            s_pos, s_neg = rowwise_maxsim(q, t_pos), rowwise_maxsim(q, tokens[neg_at: neg_at + n])
            kl = pairwise_kl(s_pos, s_neg, cfg.pair_tau)
            loss = loss + cfg.lambda_pair * kl
            logs.update(delta=float((s_pos - s_neg).detach().float().mean()), kl=float(kl.detach()))
            if cfg.lambda_margin:
                margin = margin_ranking(s_pos, s_neg, cfg.margin)
                loss = loss + cfg.lambda_margin * margin
                logs["margin"] = float(margin.detach())
        if len(attr_cols):
            attr = attribute_loss(q_attrs, t_pos, tokens, attr_at, cfg.pair_tau, per_attribute)
            loss = loss + cfg.lambda_attr * attr
            logs["attr"] = float(attr.detach())
        if probe_at is not None:
            loss = loss + self.probe_terms(q_attrs, t_pos, probe_tokens, probe_at, logs)
        if cfg.lambda_attr_retrieval:
            local_cols = cols[dist.rank]
            agree = torch.from_numpy(self._agreement(tgt[mine], local_cols)).to(self.device)
            ar = attribute_retrieval(q_attrs, tokens[: len(local_cols)], agree, probe_tokens, probe_at)
            loss = loss + cfg.lambda_attr_retrieval * ar
            logs["attr_retrieval"] = float(ar.detach())
        if cfg.lambda_decorrelation:
            decorr = subquery_decorrelation(q_attrs)
            loss = loss + cfg.lambda_decorrelation * decorr
            logs["decorr"] = float(decorr.detach())
        if self.edit_labels is not None:
            wl = weight_label_loss(w, torch.from_numpy(self.edit_labels[qi[mine]]).to(self.device))
            loss = loss + cfg.lambda_weight_labels * wl
            logs["weight_labels"] = float(wl.detach())
        return loss, logs

    def probe_terms(self, q_attrs, t_pos, probe_tokens, probe_at: np.ndarray, logs: dict) -> torch.Tensor:
        """Each head against the probes: sensitivity to its own attribute's (lambda_attr), indifference
        to the other attributes' (lambda_invariance)."""
        sens, inv = probe_losses(q_attrs, t_pos, probe_tokens, probe_at, self.cfg.pair_tau)
        logs["attr"] = float(sens.detach())
        if not self.cfg.lambda_invariance:
            return self.cfg.lambda_attr * sens
        logs["invariance"] = float(inv.detach())
        return self.cfg.lambda_attr * sens + self.cfg.lambda_invariance * inv

    def attribute_columns(self, queries: np.ndarray, neg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The attribute-specific negatives of these queries: (image indices to encode, [n, A] their
        position among them or -1). Synthetic set: each attribute's img_set twin (training.attributes);
        other data: the pairwise negative, for the attributes the caption names (weak labels)."""
        a = len(self.model.cfg.attributes)
        if not self.cfg.lambda_attr or self.cfg.attribute_probes:  # probes: the term is probe_terms'
            return np.zeros(0, np.int64), np.full((len(queries), a), -1)
        if self.attr_twins is not None:
            which = self.attr_twins[queries]
        else:
            which = np.where(self.attr_named[queries], neg[:, None], -1)
        at = np.full(which.shape, -1, dtype=np.int64)
        valid = which >= 0
        at[valid] = np.arange(int(valid.sum()))
        return which[valid].astype(np.int64), at

    def _agreement(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[A, len(rows), len(cols)] bool: image cols[j] agrees with image rows[i] on attribute a (position by
        position, cirdata.controllability.agrees)."""
        keys = self.train.scene_keys
        return np.stack([[[agrees(keys[c], keys[r], name) for c in cols] for r in rows]
                         for name in self.model.cfg.attributes])

    def _same_scene(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        cols = rows if cols is None else cols
        keys = self.train.scene_keys
        if keys is None:
            return rows[:, None] == cols[None, :]
        kr, kc = np.array([keys[t] for t in rows]), np.array([keys[t] for t in cols])
        return kr[:, None] == kc[None, :]

    def img_set_distractors(self, qi: np.ndarray) -> list[np.ndarray]:
        """Hard negatives the data set ships, per query: img_set members that are neither reference nor target."""
        k, d = self.cfg.img_set_negatives, self.train
        if not k or d.members is None:
            return [np.empty(0, dtype=np.int64) for _ in qi]
        out = []
        for i in qi:
            pool = [m for m in d.members[i] if m not in (d.ref[i], d.tgt[i])]
            out.append(np.asarray(self.neg_rng.choice(pool, size=min(k, len(pool)), replace=False), dtype=np.int64))
        return out

    def loss_caption(self, ii: np.ndarray) -> tuple[torch.Tensor, dict]:
        """Image-caption contrastive pretraining: the Q-Former's text-only [CLS] state (text_projection)
        against the image tokens, both directions (BLIP-2 stage one's ITC), over the global batch."""
        d, dist = self.train, self.dist
        if d.scene_captions is None:
            raise TrainingError("caption pretraining needs scene captions (the synthetic set has them)")
        mine = dist.mine(len(ii))
        text, tokens, tau = self.forward(ii[mine], [d.scene_captions[i] for i in ii[mine]], None)
        all_text, all_tokens = gather_with_grad(text, dist), gather_with_grad(tokens, dist)
        same = torch.from_numpy(self._same_scene(ii[mine], ii)).to(self.device)
        labels = torch.arange(mine.start, mine.stop, device=self.device)
        by_text = in_batch_contrastive(maxsim(text, all_tokens), tau, same, labels)
        by_image = in_batch_contrastive(maxsim(all_text, tokens).t(), tau, same, labels)
        return (by_text + by_image) / 2, {}

    def negatives(self, qi: np.ndarray) -> np.ndarray:
        if self.cfg.negatives == "trns" and self.sampler is not None:
            return self.sampler.draw(qi)
        d, pools = self.train, self.pools
        return random_negatives(self.neg_rng, [pools.pools[pools.of_query[i]] for i in qi],
                                [d.never_negatives(int(i)) for i in qi])

    @torch.no_grad()
    def rebuild_mid_zones(self) -> None:
        """Score every training query against its negative pool with the current model (eval mode, no
        temperature) and rebuild each query's mid-zone; the work is split over the ranks."""
        t0 = time.time()
        zones = mine_negatives(self.model, self.tok, self.train, self.pools, MidZoneConfig(**self.cfg.trns),
                               self.cfg.trns_chunk, self.dist)
        self.sampler = NegativeSampler(zones, seed=self.cfg.seed * 1000 + self.epoch)
        self.model.train()
        self.overhead_s += time.time() - t0
        self.log({"event": "trns_rebuild", "epoch": self.epoch, "seconds": round(time.time() - t0, 1),
                  "mean_zone": float(np.mean([len(z) for z in zones]))})

    # -- run ----------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict:
        """Rank 0 evaluates; the others wait for it."""
        t0 = time.time()
        metrics: dict = {}
        if self.val is not None and self.cfg.task == "cir" and self.dist.is_main:
            metrics = evaluate(self.model, self.tok, self.val).metrics
            self.log({"event": "eval", "epoch": self.epoch, "step": self.step, **metrics})
        self.dist.barrier()
        self.model.train()
        self.overhead_s += time.time() - t0
        return metrics

    def planned_epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def fit_schedule_to_budget(self, session_start: float, session_first_step: int) -> None:
        """Lay the schedule over what is left of --max-minutes at the step pace measured in this
        session, mining and evaluation left out of it (rank 0's clock decides for every rank)."""
        done = self.step - session_first_step
        if not self.time_budgeted or done < 3:
            return
        pace = (time.time() - session_start - self.overhead_s) / done
        total = budget_total_steps(self.step, self.elapsed_s, self.cfg.max_minutes * 60, pace)
        self.total_steps = self.dist.from_main(total)

    def train_step(self, order: np.ndarray, s: int) -> tuple[float, dict]:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        total, logs = 0.0, {}
        for a in range(cfg.grad_accum):
            lo = (s * cfg.grad_accum + a) * cfg.batch_size
            idx = order[lo: lo + cfg.batch_size]
            sync = a == cfg.grad_accum - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.net.no_sync():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss, logs = self.loss_caption(idx) if cfg.task == "caption" else self.loss_cir(idx)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return self.dist.mean(total), {k: self.dist.mean(v) for k, v in logs.items()}

    def run(self, stop_after: int | None = None) -> dict:
        """Train to the end (or stop after `stop_after` steps, as an interruption would)."""
        cfg, m = self.cfg, self.model
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        m.train()
        start, first_step, elapsed_before = time.time(), self.step, self.elapsed_s
        self.overhead_s = 0.0
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train ({cfg.task})", unit="step",
                   disable=not (cfg.progress and self.dist.is_main))
        metrics: dict = {}
        stopped = False
        mining = cfg.mines
        while self.step < self.total_steps and not stopped:
            order = np.random.default_rng([cfg.seed, self.epoch]).permutation(self.n_items)
            first = self.step - self.epoch * self.steps_per_epoch
            rebuilds = rebuild_epochs(self.planned_epochs(), cfg.trns_warmup_epochs, cfg.trns_rebuild_every)
            if first == 0 and mining and self.epoch in rebuilds:
                self.rebuild_mid_zones()
            for s in range(first, self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                lr = lr_at(self.step, self.total_steps, cfg)
                heads_only = self.step < cfg.attribute_warmup_steps
                for g in self.opt.param_groups:
                    g["lr"] = lr * g.get("lr_mult", 1.0) * (0.0 if heads_only and not g.get("attribute") else 1.0)
                total, logs = self.train_step(order, s)
                self.step += 1
                self.elapsed_s = elapsed_before + time.time() - start
                if self.step - first_step in (3, 10) or self.step % 50 == 0:
                    self.fit_schedule_to_budget(start, first_step)
                    bar.total = self.total_steps
                bar.update()
                bar.set_postfix(loss=f"{total:.3f}")
                self.log({"event": "step", "step": self.step, "epoch": self.epoch, "loss": total, "lr": lr,
                          "tau": float(m.tau.detach()), **logs})
                out_of_time = bool(cfg.max_minutes) and self.dist.from_main(self.elapsed_s / 60 >= cfg.max_minutes)
                if out_of_time or self.step == stop_after:
                    stopped = True
                    break
            else:
                self.epoch += 1
                if cfg.eval_every and self.epoch % cfg.eval_every == 0 and self.step < self.total_steps:
                    metrics = self.evaluate()
                self.elapsed_s = elapsed_before + time.time() - start
                self.fit_schedule_to_budget(start, first_step)  # after an eval: less time left
                bar.total = self.total_steps
                self.save()
        bar.close()
        metrics = self.evaluate()
        self.save()
        return {"steps": self.step, "epochs": self.epoch, "minutes": (time.time() - start) / 60,
                "planned_steps": self.total_steps, **metrics}


def parameter_groups(model: DQECIR, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the attribute heads and weight gate at
    attribute_lr_mult x the learning rate (marked, so that attribute_warmup_steps can train them alone)."""
    attribute_ids = {id(p) for mod in (model.attribute_heads, model.weight_gate) for p in mod.parameters()}
    attribute_ids.add(id(model.global_weights))
    if cfg.attribute_lr_mult == 1.0 and not cfg.attribute_warmup_steps:
        attribute_ids = set()  # one pair of groups, as before these options (an older run's optimizer resumes)
    groups = []
    for is_attr in (False, True):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in attribute_ids) == is_attr]
        mult = cfg.attribute_lr_mult if is_attr else 1.0
        for decay in (True, False):
            ps = [p for p in params if (p.ndim >= 2) == decay]
            if ps:
                groups.append({"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_mult": mult,
                               "attribute": is_attr})
    return groups


def build_model(cfg: TrainConfig, tok: TextTokenizer | None = None) -> tuple[DQECIR, TextTokenizer]:
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model, tok, _ = load_checkpoint(cfg.init)
        for k, v in cfg.model_overrides.items():  # e.g. attribute_weights for an ablation
            setattr(model.cfg, k, v)
        if cfg.fold_attribute_heads:
            model.fold_attribute_heads()
        elif cfg.reinit_attribute_heads:
            model.reset_attribute_heads()
        return model, tok
    overrides = dict(cfg.model_overrides)
    if cfg.pretrained:
        overrides["pretrained"] = cfg.pretrained
    if cfg.model == "blip2":
        if not overrides.get("pretrained"):
            raise TrainingError("the blip2 model needs --pretrained DIR: a local save_pretrained folder of "
                                "Blip2ForImageTextRetrieval (e.g. Salesforce/blip2-itm-vit-g) with its tokenizer")
        raw = pretrained_tokenizer(Path(overrides["pretrained"]))
    else:
        raw = build_tokenizer()
    mc: ModelConfig = model_config(cfg.model, **overrides)
    tok = TextTokenizer(raw, mc.max_text_len)
    mc.vocab_size = mc.vocab_size or tok.vocab_size
    return DQECIR(mc), tok


def train(cfg: TrainConfig, resume: bool = True, stop_after: int | None = None, dist: Dist | None = None) -> dict:
    """Train as configured; with resume, continue from <out>/last.safetensors when it exists."""
    dist = dist or Dist()
    out = Path(cfg.out)
    last = out / LAST
    if resume and not last.is_file() and (out / "last.pt").is_file():
        raise TrainingError(f"{out / 'last.pt'} is an old pickle checkpoint, which cannot resume; start again "
                            "with --restart, or convert it (scripts/convert_checkpoint.py) and pass it as --init")
    state = None
    if resume and last.is_file():
        model, tok, meta = load_checkpoint(last)
        # keys added to TrainConfig since the run started: their defaults
        saved, now = {**asdict(TrainConfig()), **meta.get("train_config", {})}, asdict(cfg)
        if {k: v for k, v in saved.items() if k not in RESUME_MAY_CHANGE} != \
                {k: v for k, v in now.items() if k not in RESUME_MAY_CHANGE}:
            raise TrainingError(f"{last} was written with another config; use a new --out or delete it")
        state = load_trainer_state(last)
    else:
        model, tok = build_model(cfg)
        if dist.is_main and (out / "metrics.jsonl").is_file():
            (out / "metrics.jsonl").unlink()  # a new run starts a new log
    size, lazy = model.cfg.image_size, cfg.images == "disk"
    train_data = load_cir_data(cfg.data, cfg.root, "train", size, cfg.progress and dist.is_main, lazy=lazy)
    val_data = None
    if cfg.task == "cir" and dist.is_main:
        val_data = load_cir_data(cfg.data, cfg.root, "val", size, cfg.progress, cfg.eval_max_queries, lazy=lazy)
    trainer = Trainer(cfg, train_data, val_data, model, tok, dist)
    if state is not None:
        trainer.restore(state)
    return trainer.run(stop_after)
