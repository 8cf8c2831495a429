"""The training loop: CIR fine-tuning (in-batch contrastive baseline or DQE-CIR's pairwise objective
with TRNS negatives) and image-caption pretraining, with exact resume.

Determinism: the batch order of epoch e comes from rng(seed, e); negatives come from a sampler whose
state is saved; so a run resumed from a checkpoint continues the same loss curve.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from encoder.text import TextTokenizer
from training.cir_data import CIRData, load_cir_data
from training.datasets import read_json
from training.errors import TrainingError
from training.evaluate import evaluate
from training.losses import in_batch_contrastive, margin_ranking, pairwise_kl
from training.model import DQECIR, ModelConfig, maxsim, maxsim_scores, model_config
from training.trns import (
    MidZoneConfig,
    NegativeSampler,
    delta_scores,
    exclusion_mask,
    mid_zone_negatives,
    random_negatives,
    rebuild_epochs,
)
from training.vocab import build_tokenizer


@dataclass
class TrainConfig:
    data: str = "synth"  # synth | cirr | fashioniq
    root: str = "runs/demo/synth-demo-0"
    out: str = "runs/train"
    model: str = "demo"
    model_overrides: dict = field(default_factory=dict)
    init: str | None = None  # checkpoint to start from (weights only)
    task: str = "cir"  # cir | caption (image-caption pretraining)
    loss: str = "contrastive"  # contrastive | pairwise
    negatives: str = "trns"  # random | trns (pairwise only)
    trns: dict = field(default_factory=dict)  # MidZoneConfig fields
    trns_warmup_epochs: int = 1
    lambda_margin: float = 0.0
    margin: float = 0.15
    lambda_attr: float = 0.0
    img_set_negatives: int = 0  # contrastive: this many img_set distractors per query join the negatives
    epochs: int = 10
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    max_minutes: float | None = None
    max_steps: int | None = None
    eval_every: int = 1  # epochs; 0: only at the end
    eval_max_queries: int | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.task in ("cir", "caption"), f"task must be 'cir' or 'caption', not {self.task!r}"),
            (self.loss in ("contrastive", "pairwise"), f"loss must be 'contrastive' or 'pairwise', not {self.loss!r}"),
            (self.negatives in ("random", "trns"), f"negatives must be 'random' or 'trns', not {self.negatives!r}"),
            (self.epochs >= 1 and self.batch_size >= 2, "epochs must be >= 1 and batch_size >= 2"),
            (self.grad_accum >= 1 and self.lr > 0, "grad_accum must be >= 1 and lr > 0"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)


def load_train_config(path: str | Path | None, **overrides) -> TrainConfig:
    raw = dict(read_json(Path(path))) if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = set(TrainConfig.__dataclass_fields__)
    bad = sorted(set(raw) - known)
    if bad:
        raise TrainingError(f"unknown training config keys {bad}; known: {sorted(known)}")
    cfg = TrainConfig(**raw)
    cfg.validate()
    return cfg


# --- checkpoints -------------------------------------------------------------------------
def save_checkpoint(path: Path, model: DQECIR, tok: TextTokenizer, extra: dict | None = None,
                    half: bool = False) -> None:
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {"format": "dqe-cir-checkpoint/1", "model": state, "model_config": asdict(model.cfg),
               "tokenizer": tok.to_str()}
    payload.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never a half-written checkpoint


def load_checkpoint(path: str | Path) -> tuple[DQECIR, TextTokenizer, dict]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a corrupt file
        raise TrainingError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != "dqe-cir-checkpoint/1":
        raise TrainingError(f"{path}: not a DQE-CIR checkpoint (format {payload.get('format')!r})")
    mc = dict(payload["model_config"])
    mc["pretrained"] = None  # the weights are all in the checkpoint
    cfg = ModelConfig(**mc)
    tok = TextTokenizer.from_str(payload["tokenizer"], cfg.max_text_len)
    model = DQECIR(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()})
    return model, tok, payload


# --- the loop ----------------------------------------------------------------------------
def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine to lr * min_lr_ratio at `total`. The warm-up never takes more
    than a tenth of the schedule, so a short (time-budgeted) run still decays."""
    warmup = max(1, min(cfg.warmup_steps, total // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def budget_total_steps(step: int, elapsed_s: float, budget_s: float, seconds_per_step: float,
                       cap: int | None = None) -> int:
    """The schedule length that ends when the time budget does: the steps done so far plus the steps
    that fit in the time left at the measured pace (eval and mining time included in that pace)."""
    left = max(0.0, budget_s - elapsed_s)
    total = step + max(1, int(left / max(seconds_per_step, 1e-6)))
    return min(total, cap) if cap else total


class Trainer:
    def __init__(self, cfg: TrainConfig, train: CIRData, val: CIRData | None, model: DQECIR, tok: TextTokenizer):
        self.cfg, self.train, self.val, self.model, self.tok = cfg, train, val, model, tok
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.device == "auto" else cfg.device))
        model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        self.n_items = len(train.names) if cfg.task == "caption" else len(train.ref)
        self.steps_per_epoch = max(1, self.n_items // (cfg.batch_size * cfg.grad_accum))
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        # --max-minutes without --max-steps: the schedule is laid over the time budget instead of
        # the epochs, re-measured as the run goes (see budget_total_steps).
        self.time_budgeted = bool(cfg.max_minutes) and not cfg.max_steps
        self.elapsed_s = 0.0  # training wall time so far, across resumes
        self.step, self.epoch = 0, 0
        self.sampler: NegativeSampler | None = None
        self.neg_rng = np.random.default_rng([cfg.seed, 991])
        self.text_rng = random.Random(cfg.seed)
        self.history: list[dict] = []
        self.out = Path(cfg.out)
        self.metrics_path = self.out / "metrics.jsonl"

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "step": self.step, "epoch": self.epoch,
                "sampler": self.sampler, "neg_rng": self.neg_rng.bit_generator.state,
                "text_rng": self.text_rng.getstate(), "torch_rng": torch.get_rng_state(),
                "train_config": asdict(self.cfg), "history": self.history, "total_steps": self.total_steps,
                "elapsed_s": self.elapsed_s}

    def restore(self, payload: dict) -> None:
        self.opt.load_state_dict(payload["optimizer"])
        self.step, self.epoch = payload["step"], payload["epoch"]
        self.sampler = payload["sampler"]
        self.neg_rng.bit_generator.state = payload["neg_rng"]
        self.text_rng.setstate(payload["text_rng"])
        torch.set_rng_state(payload["torch_rng"])
        self.history = payload.get("history", [])
        self.total_steps = payload.get("total_steps", self.total_steps)
        self.elapsed_s = payload.get("elapsed_s", 0.0)

    def save(self, name: str = "last.pt") -> Path:
        path = self.out / name
        save_checkpoint(path, self.model, self.tok, self.state())
        return path

    # -- batches ------------------------------------------------------------------------------
    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        cfg = self.model.cfg
        return self.to_device(self.train.batch_pixels(idx, cfg.mean, cfg.std))

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def encode_unique(self, idx: np.ndarray) -> torch.Tensor:
        """Tokens for image indices, each distinct image encoded once."""
        uniq, inv = np.unique(idx, return_inverse=True)
        return self.model.encode_image(self.pixels(uniq))[self.to_device(inv)]

    def loss_cir(self, qi: np.ndarray) -> tuple[torch.Tensor, dict]:
        cfg, d, m = self.cfg, self.train, self.model
        ids, mask = self.tok([d.train_text(int(i), self.text_rng) for i in qi])
        q_base, q_color, q_shape, w = m.compose(self.pixels(d.ref[qi]), self.to_device(ids), self.to_device(mask))
        q = m.fuse(q_base, q_color, q_shape, w)
        tgt = d.tgt[qi]
        logs = {}
        if cfg.loss == "contrastive":
            cols = np.concatenate([tgt, self.img_set_distractors(qi)])
            tokens = self.encode_unique(cols)
            same = self.to_device(self._same_scene(tgt, cols))
            loss = in_batch_contrastive(maxsim(q, tokens), m.tau, same)
            if cfg.lambda_attr:
                for qa in (q_color, q_shape):
                    qa = torch.nn.functional.normalize(qa, dim=-1)
                    loss = loss + cfg.lambda_attr / 2 * in_batch_contrastive(maxsim(qa, tokens), m.tau, same)
            return loss, logs
        neg = self.negatives(qi)
        tokens = self.encode_unique(np.concatenate([tgt, neg]))
        t_pos, t_neg = tokens[: len(qi)], tokens[len(qi):]
        s_pos, s_neg = (q[:, None] * t_pos).sum(-1).amax(-1), (q[:, None] * t_neg).sum(-1).amax(-1)
        loss = pairwise_kl(s_pos, s_neg, m.tau)
        if cfg.lambda_margin:
            loss = loss + cfg.lambda_margin * margin_ranking(s_pos, s_neg, cfg.margin)
        if cfg.lambda_attr:
            for qa in (q_color, q_shape):
                qa = torch.nn.functional.normalize(qa, dim=-1)
                ap, an = (qa[:, None] * t_pos).sum(-1).amax(-1), (qa[:, None] * t_neg).sum(-1).amax(-1)
                loss = loss + cfg.lambda_attr / 2 * pairwise_kl(ap, an, m.tau)
        logs["delta"] = float((s_pos - s_neg).mean())
        return loss, logs

    def _same_scene(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        cols = rows if cols is None else cols
        keys = self.train.scene_keys
        if keys is None:
            return rows[:, None] == cols[None, :]
        kr, kc = np.array([keys[t] for t in rows]), np.array([keys[t] for t in cols])
        return kr[:, None] == kc[None, :]

    def img_set_distractors(self, qi: np.ndarray) -> np.ndarray:
        """Hard negatives the data set ships: img_set members that are neither reference nor target."""
        k, d = self.cfg.img_set_negatives, self.train
        if not k or d.members is None:
            return np.empty(0, dtype=np.int64)
        out = []
        for i in qi:
            pool = [m for m in d.members[i] if m not in (d.ref[i], d.tgt[i])]
            out += list(self.neg_rng.choice(pool, size=min(k, len(pool)), replace=False))
        return np.array(out, dtype=np.int64)

    def loss_caption(self, ii: np.ndarray) -> tuple[torch.Tensor, dict]:
        """Image-caption contrastive pretraining: the Q-Former's text-only [CLS] state (text_projection)
        against the image tokens, both directions (BLIP-2 stage one's ITC)."""
        d, m = self.train, self.model
        if d.scene_captions is None:
            raise TrainingError("caption pretraining needs scene captions (the synthetic set has them)")
        tokens = m.encode_image(self.pixels(ii))
        ids, mask = self.tok([d.scene_captions[i] for i in ii])
        s = maxsim(m.encode_text(self.to_device(ids), self.to_device(mask)), tokens)
        same = self.to_device(self._same_scene(ii))
        return (in_batch_contrastive(s, m.tau, same) + in_batch_contrastive(s.t(), m.tau, same)) / 2, {}

    def negatives(self, qi: np.ndarray) -> np.ndarray:
        if self.cfg.negatives == "trns" and self.sampler is not None:
            return self.sampler.draw(qi)
        return random_negatives(self.neg_rng, self.train.tgt[qi], len(self.train.names))

    @torch.no_grad()
    def rebuild_mid_zones(self) -> None:
        """Score every training query against the whole training gallery with the current model
        (eval mode, no temperature) and rebuild each query's mid-zone."""
        t0 = time.time()
        d, m = self.train, self.model
        m.eval()
        from training.evaluate import compose_queries, encode_gallery

        pool = encode_gallery(m, d)
        q, _ = compose_queries(m, self.tok, d)
        scores = maxsim_scores(q, pool)
        delta = delta_scores(scores, d.tgt)
        same = d.same_scene_images()
        extra = None if same is None else [same[t] for t in d.tgt]
        excluded = exclusion_mask(len(d.tgt), len(d.names), d.tgt, extra)
        excluded[np.arange(len(d.ref)), d.ref] = True  # the reference is no useful negative either
        zones = mid_zone_negatives(delta, excluded, MidZoneConfig(**self.cfg.trns))
        self.sampler = NegativeSampler(zones, seed=self.cfg.seed * 1000 + self.epoch)
        m.train()
        self.log({"event": "trns_rebuild", "epoch": self.epoch, "seconds": round(time.time() - t0, 1),
                  "mean_zone": float(np.mean([len(z) for z in zones]))})

    # -- run ----------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        self.history.append(record)
        self.out.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict:
        if self.val is None or self.cfg.task != "cir":
            return {}
        metrics = evaluate(self.model, self.tok, self.val).metrics
        self.model.train()
        self.log({"event": "eval", "epoch": self.epoch, "step": self.step, **metrics})
        return metrics

    def planned_epochs(self) -> int:
        return max(1, math.ceil(self.total_steps / self.steps_per_epoch))

    def fit_schedule_to_budget(self, session_start: float, session_first_step: int) -> None:
        """Lay the schedule over what is left of --max-minutes at the pace measured in this session."""
        done = self.step - session_first_step
        if not self.time_budgeted or done < 3:
            return
        pace = (time.time() - session_start) / done
        self.total_steps = budget_total_steps(self.step, self.elapsed_s, self.cfg.max_minutes * 60, pace)

    def run(self, stop_after: int | None = None) -> dict:
        """Train to the end (or stop after `stop_after` steps, as an interruption would)."""
        cfg, m = self.cfg, self.model
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        m.train()
        start, first_step, elapsed_before = time.time(), self.step, self.elapsed_s
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train ({cfg.task})", unit="step",
                   disable=not cfg.progress)
        metrics: dict = {}
        stopped = False
        while self.step < self.total_steps and not stopped:
            order = np.random.default_rng([cfg.seed, self.epoch]).permutation(self.n_items)
            first = self.step - self.epoch * self.steps_per_epoch
            rebuild_at = rebuild_epochs(self.planned_epochs(), cfg.trns_warmup_epochs)
            if first == 0 and cfg.task == "cir" and cfg.loss == "pairwise" and cfg.negatives == "trns" \
                    and self.epoch in rebuild_at:
                self.rebuild_mid_zones()
            for s in range(first, self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                lr = lr_at(self.step, self.total_steps, cfg)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                self.opt.zero_grad(set_to_none=True)
                total = 0.0
                logs: dict = {}
                per = cfg.batch_size
                for a in range(cfg.grad_accum):
                    lo = (s * cfg.grad_accum + a) * per
                    idx = order[lo: lo + per]
                    # bf16 autocast on GPU; fp32 on CPU, where autocast buys nothing for these sizes
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                        loss, logs = self.loss_caption(idx) if cfg.task == "caption" else self.loss_cir(idx)
                    (loss / cfg.grad_accum).backward()
                    total += float(loss.detach()) / cfg.grad_accum
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                self.opt.step()
                self.step += 1
                self.elapsed_s = elapsed_before + time.time() - start
                if self.step - first_step in (3, 10) or self.step % 50 == 0:
                    self.fit_schedule_to_budget(start, first_step)
                    bar.total = self.total_steps
                bar.update()
                bar.set_postfix(loss=f"{total:.3f}")
                self.log({"event": "step", "step": self.step, "epoch": self.epoch, "loss": total, "lr": lr,
                          "tau": float(m.tau.detach()), **logs})
                if (cfg.max_minutes and self.elapsed_s / 60 >= cfg.max_minutes) or self.step == stop_after:
                    stopped = True
                    break
            else:
                self.epoch += 1
                if cfg.eval_every and self.epoch % cfg.eval_every == 0 and self.step < self.total_steps:
                    metrics = self.evaluate()
                self.fit_schedule_to_budget(start, first_step)  # eval and mining time count too
                bar.total = self.total_steps
                self.save()
        bar.close()
        metrics = self.evaluate()
        self.save()
        return {"steps": self.step, "epochs": self.epoch, "minutes": (time.time() - start) / 60,
                "planned_steps": self.total_steps, **metrics}


def build_model(cfg: TrainConfig, tok: TextTokenizer | None = None) -> tuple[DQECIR, TextTokenizer]:
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model, tok, _ = load_checkpoint(cfg.init)
        for k, v in cfg.model_overrides.items():  # e.g. attribute_weights for an ablation
            setattr(model.cfg, k, v)
        return model, tok
    overrides = dict(cfg.model_overrides)
    if cfg.model == "blip2":
        from tokenizers import Tokenizer

        path = Path(overrides.get("pretrained") or "")
        if not (path / "tokenizer.json").is_file():
            raise TrainingError(f"blip2 needs model_overrides.pretrained: a local dir with tokenizer.json ({path})")
        raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        raw = build_tokenizer()
    mc: ModelConfig = model_config(cfg.model, **overrides)
    tok = TextTokenizer(raw, mc.max_text_len)
    mc.vocab_size = mc.vocab_size or tok.vocab_size
    return DQECIR(mc), tok


def train(cfg: TrainConfig, resume: bool = True, stop_after: int | None = None) -> dict:
    """Train as configured; with resume, continue from <out>/last.pt when it exists."""
    out = Path(cfg.out)
    last = out / "last.pt"
    if resume and last.is_file():
        model, tok, payload = load_checkpoint(last)
        saved = payload.get("train_config", {})
        if {k: v for k, v in saved.items() if k not in ("max_minutes", "progress")} != \
                {k: v for k, v in asdict(cfg).items() if k not in ("max_minutes", "progress")}:
            raise TrainingError(f"{last} was written with another config; use a new --out or delete it")
    else:
        model, tok = build_model(cfg)
        payload = None
    image_size = model.cfg.image_size
    train_data = load_cir_data(cfg.data, cfg.root, "train", image_size, cfg.progress)
    val_data = None
    if cfg.task == "cir":
        val_data = load_cir_data(cfg.data, cfg.root, "val", image_size, cfg.progress, cfg.eval_max_queries)
    trainer = Trainer(cfg, train_data, val_data, model, tok)
    if payload is not None:
        trainer.restore(payload)
    return trainer.run(stop_after)
