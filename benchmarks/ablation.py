"""Ablation of DQE-CIR's parts on the synthetic demo set, long enough to decide.

    python benchmarks/ablation.py --start CKPT [--steps 300] [--seeds 0 1 2] [--mode-seeds 0]
                                  [--keep DIR] [--out docs/benchmarks/ablation.md]

Every variant is fine-tuned from the same starting checkpoint (a stage-1 model trained with the
in-batch contrastive objective) at the same constant learning rate (after a 10-step warm-up), so that
the model after N steps of a longer run is the model of an N-step run:
(i) in-batch contrastive (with stage 1's img_set hard negatives, --img-set-negatives: "continue stage 1"),
(ii) pairwise + margin with random negatives, (iii) pairwise + margin with
TRNS negatives, (iv) + learnable attribute weights (sigmoid) and the attribute loss = DQE-CIR; and
extra rows for the weight modes off / global / softmax with (iv)'s objective.

Budgets. Equal steps: every variant after --steps steps. Equal wall time: the TRNS variants mine
their mid-zones once, from the starting checkpoint, over a fixed subset of the training gallery (the
5,000 training targets, trns_pool=targets), and that mining time counts: T = (iv)'s mining + its
training time for --steps steps, per seed; (i) and (ii), which mine nothing, keep training until their
training time reaches T and are scored again there. (The zones are computed once per weight mode and
reused across seeds; each run is charged the measured mining time all the same.)

Every row: val metrics (CIRR protocol), top-1 by kind of edit, why the top-1 is wrong, and the
attribute weights' average over val queries whose text edits only a color vs only a shape.
The raw rows go to the .json beside the page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, write_page  # noqa: E402
from training.cir_data import load_cir_data  # noqa: E402
from training.evaluate import (  # noqa: E402
    compose_queries,
    edit_accuracy,
    encode_gallery,
    error_breakdown,
    gallery_scores,
    protocol_metrics,
)
from training.model import maxsim  # noqa: E402
from training.train import TrainConfig, Trainer, build_model, load_checkpoint, save_checkpoint  # noqa: E402
from training.trns import NegativeSampler  # noqa: E402

PAIRWISE = dict(loss="pairwise", lambda_margin=0.5, margin=0.15)
DQE = dict(PAIRWISE, negatives="trns", lambda_attr=0.2)
VARIANTS = {
    # (i) also gets stage 1's img_set hard negatives (--img-set-negatives): "continue the contrastive stage".
    "(i) in-batch contrastive": dict(loss="contrastive", model_overrides={"attribute_weights": "off"}),
    "(ii) pairwise, random negatives": dict(PAIRWISE, negatives="random", model_overrides={"attribute_weights": "off"}),
    "(iii) pairwise + TRNS": dict(PAIRWISE, negatives="trns", model_overrides={"attribute_weights": "off"}),
    "(iv) + attribute weights (DQE-CIR)": dict(DQE, model_overrides={"attribute_weights": "sigmoid"}),
}
MODE_ROWS = {f"(iv) with weights {m}": dict(DQE, model_overrides={"attribute_weights": m})
             for m in ("off", "global", "softmax")}
KEYS = ("R@1", "R@10", "Rs@1", "color-edit top-1", "shape-edit top-1", "other-edit top-1")
MIDZONE = {"bounds": "quantile", "low": 0.001, "high": 0.01}


def score(model, tok, val) -> dict:
    """Val metrics, edit top-1, top-1 errors, and the mean weights on color-only / shape-only edits."""
    q, parts = compose_queries(model, tok, val)
    scores = gallery_scores(model, val, q)
    out = {**protocol_metrics(val, scores), **edit_accuracy(val, scores), "errors": error_breakdown(val, scores)}
    kinds = np.array([k or "" for k in val.edit_kinds])
    for kind in ("color", "shape"):
        w = parts["weights"][kinds == kind]
        out[f"weights on {kind} edits"] = [round(float(x), 3) for x in w.mean(axis=0)] if len(w) else None
    return out


class ZoneCache:
    """Mid-zones per weight mode, mined once from the starting checkpoint, with their mining time."""

    def __init__(self):
        self.zones: dict[str, tuple[list, float]] = {}

    def get(self, trainer: Trainer) -> tuple[list, float]:
        mode = trainer.model.cfg.attribute_weights
        if mode not in self.zones:
            t = time.time()
            trainer.rebuild_mid_zones()
            self.zones[mode] = (trainer.sampler.zones, time.time() - t)
        return self.zones[mode]


def run(name: str, variant: dict, seed: int, args, train, val, cache: ZoneCache,
        until_s: float | None = None, keep: Path | None = None) -> list[dict]:
    """Fine-tune one variant; rows at --steps steps and (until_s) when its training time reaches until_s."""
    with tempfile.TemporaryDirectory() as tmp:
        if variant["loss"] == "contrastive":
            variant = {**variant, "img_set_negatives": args.img_set_negatives}
        cfg = TrainConfig(root=args.root, out=tmp, init=args.start, epochs=1, batch_size=args.batch_size,
                          lr=args.lr, warmup_steps=10, min_lr_ratio=1.0, max_steps=args.steps * 20,
                          eval_every=0, seed=seed, progress=False, trns=MIDZONE, trns_pool="targets",
                          trns_warmup_epochs=10**6, threads=args.threads, **variant)
        model, tok = build_model(cfg)
        trainer = Trainer(cfg, train, None, model, tok)
        mining = 0.0
        if cfg.negatives == "trns" and cfg.loss == "pairwise":
            zones, mining = cache.get(trainer)
            trainer.sampler = NegativeSampler(zones, seed)
        base = {"variant": name, "seed": seed, "mining_s": round(mining, 1)}
        trainer.run(stop_after=args.steps)
        rows = [{**base, "budget": "equal steps", "steps": trainer.step, "train_s": round(trainer.elapsed_s, 1),
                 **score(model, tok, val)}]
        if until_s is not None:
            cfg.max_minutes = until_s / 60  # run() stops when its training time reaches it
            trainer.run()
            rows.append({**base, "budget": "equal wall time", "steps": trainer.step,
                         "train_s": round(trainer.elapsed_s, 1), **score(model, tok, val)})
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            save_checkpoint(keep / f"{_slug(name)}-seed{seed}.safetensors", model, tok,
                            {"train_config": asdict(cfg), "step": trainer.step, "epoch": trainer.epoch,
                             "elapsed_s": trainer.elapsed_s + mining})
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "errors"}), flush=True)
    return rows


def _slug(name: str) -> str:
    """'(iv) with weights softmax' -> 'iv-softmax'; '(ii) pairwise, ...' -> 'ii'."""
    head = name.split(")")[0].strip("(")
    return f"{head}-{name.rsplit(' ', 1)[-1]}" if name.startswith("(iv) with") else head


def references(args, val) -> list[dict]:
    """Non-learned rankings, from the starting checkpoint's embeddings where one is needed."""
    model, tok, _ = load_checkpoint(args.start)
    tokens = encode_gallery(model, val)
    rng = np.random.default_rng(0)
    out = [{"variant": "random ranking", **_metrics(val, rng.random((len(val.ref), len(val.names))))}]
    ref_q = torch.nn.functional.normalize(tokens[torch.from_numpy(val.ref)].mean(1), dim=-1)
    out.append({"variant": "reference image alone", **_metrics(val, maxsim(ref_q, tokens).numpy())})
    with torch.no_grad():
        qs = []
        for s in range(0, len(val.texts), 256):
            ids, mask = tok(val.texts[s: s + 256])
            qs.append(model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)))
    out.append({"variant": "text alone", **_metrics(val, maxsim(torch.cat(qs), tokens).numpy())})
    out.append({"variant": "starting checkpoint (no fine-tuning)", **score(model, tok, val)})
    model.cfg.attribute_weights = "off"  # where (i)-(iii) start: the same weights, the attribute terms dropped
    out.append({"variant": "starting checkpoint, attribute weights off", **score(model, tok, val)})
    return out


def _metrics(val, scores) -> dict:
    return {**protocol_metrics(val, scores), **edit_accuracy(val, scores), "errors": error_breakdown(val, scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", required=True, help="the common starting checkpoint (stage 1)")
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mode-seeds", type=int, nargs="*", default=None,
                    help="seeds for the weight-mode rows (default: --seeds; none: skip them)")
    ap.add_argument("--img-set-negatives", type=int, default=1,
                    help="(i)'s img_set hard negatives per query: as many as stage 1 used")
    ap.add_argument("--keep", type=Path, help="save every run's final checkpoint here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ablation.md"))
    ap.add_argument("--intro", type=Path, help="a markdown file with the findings, placed above the tables")
    ap.add_argument("--rewrite", action="store_true", help="rewrite the page from its .json (no training)")
    args = ap.parse_args()
    if args.rewrite:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        write(Path(args.out), saved["rows"], saved["references"], args, saved["meta"])
        return
    torch.set_num_threads(args.threads)
    mode_seeds = args.seeds if args.mode_seeds is None else args.mode_seeds
    model, _, _ = load_checkpoint(args.start)
    size = model.cfg.image_size
    train = load_cir_data("synth", args.root, "train", size, progress=False)
    val = load_cir_data("synth", args.root, "val", size, progress=False)
    load0, t0 = load_averages(), time.time()
    rows, cache = [], ZoneCache()
    for seed in args.seeds:
        full = run("(iv) + attribute weights (DQE-CIR)", VARIANTS["(iv) + attribute weights (DQE-CIR)"], seed, args,
                   train, val, cache, keep=args.keep)
        rows += full
        budget_s = full[0]["mining_s"] + full[0]["train_s"]
        rows += run("(iii) pairwise + TRNS", VARIANTS["(iii) pairwise + TRNS"], seed, args, train, val, cache,
                    keep=args.keep)
        for name in ("(i) in-batch contrastive", "(ii) pairwise, random negatives"):
            rows += run(name, VARIANTS[name], seed, args, train, val, cache, until_s=budget_s, keep=args.keep)
        if seed in mode_seeds:
            for name, v in MODE_ROWS.items():
                rows += run(name, v, seed, args, train, val, cache, keep=args.keep)
    refs = references(args, val)
    meta = {"command": " ".join(["python benchmarks/ablation.py", *sys.argv[1:]]), "minutes": (time.time() - t0) / 60,
            "load_before": load0, "load_after": load_averages(),
            "machine": f"{cpu_name()}, {args.threads} torch threads, torch {torch.__version__}",
            "pool": f"the {len(np.unique(train.tgt)):,} training targets (a fixed subset of the "
                    f"{len(train.names):,}-image training gallery)",
            "val": f"all {len(val.ref):,} val queries against the {len(val.names):,}-image val gallery"}
    write(Path(args.out), rows, refs, args, meta)


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _weights(rs, kind: str) -> str:
    ws = [r[f"weights on {kind} edits"] for r in rs if r.get(f"weights on {kind} edits")]
    if not ws:
        return "-"
    return " / ".join(f"{statistics.mean(w[i] for w in ws):.2f}" for i in range(2))


def table(rows: list[dict], budget: str) -> list[str]:
    """One line per variant: mean ± sd over its seeds at that budget (the TRNS rows define the equal
    wall time, so at that budget they are their equal-steps runs)."""
    lines = ["| variant | seeds | steps | train s + mining s | " + " | ".join(KEYS)
             + " | top-1 wrong color / shape / other % | weights (color, shape) on color-only edits "
             "| on shape-only edits |", "|---" * (7 + len(KEYS)) + "|"]
    for name in [*VARIANTS, *MODE_ROWS]:
        rs = [r for r in rows if r["variant"] == name and r["budget"] == budget]
        if not rs and budget == "equal wall time":
            rs = [r for r in rows if r["variant"] == name and r["budget"] == "equal steps" and r["mining_s"]]
        if not rs:
            continue
        errs = " / ".join(_mean_sd([r["errors"][k] for r in rs]) for k in ("wrong_color", "wrong_shape", "wrong_other"))
        lines.append(f"| {name} | {len(rs)} | {_mean_sd([r['steps'] for r in rs])} | "
                     f"{_mean_sd([r['train_s'] for r in rs])} + {_mean_sd([r['mining_s'] for r in rs])} | "
                     + " | ".join(_mean_sd([r.get(k) for r in rs]) for k in KEYS)
                     + f" | {errs} | {_weights(rs, 'color')} | {_weights(rs, 'shape')} |")
    return lines


def write(path: Path, rows: list[dict], refs: list[dict], args, meta: dict) -> None:
    lines = ["# Ablation on the synthetic demo set", "",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; load average before {meta['load_before']}, after "
             f"{meta['load_after']}; {meta['minutes']:.0f} min in all.  ",
             f"Start: `{args.start}`. Batch {args.batch_size}, constant lr {args.lr} after a 10-step warm-up; "
             f"(i): {args.img_set_negatives} img_set hard negative(s) per query among the in-batch ones; "
             f"pairwise rows: margin 0.15 (weight 0.5); (iv): attribute loss weight 0.2. TRNS: quantile "
             f"mid-zone {MIDZONE['low']:g}-{MIDZONE['high']:g} of each query's Delta over {meta['pool']}, "
             "mined once from the start.  ",
             f"Val = {meta['val']}, CIRR protocol. "
             "Mean ± standard deviation over the seeds.", "",
             *([args.intro.read_text(), ""] if args.intro else []),
             "## Equal steps", "", *table(rows, "equal steps"), "",
             "## Equal wall time (mining included)", "",
             "(i) and (ii) mine nothing: they train on until their training time reaches (iv)'s mining + "
             "training time of the same seed. The TRNS rows are their equal-steps runs.", "",
             *table(rows, "equal wall time"), "",
             "## Non-learned references and the starting point", "",
             "| reference | " + " | ".join(KEYS) + " | top-1 wrong color / shape / other % |",
             "|---" * (2 + len(KEYS)) + "|"]
    for r in refs:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r.get(k, float('nan')):.1f}" for k in KEYS) + " | "
                     + " / ".join(f"{r['errors'][k]:.1f}" for k in ("wrong_color", "wrong_shape", "wrong_other"))
                     + " |")
    lines.append("")
    write_page(path, lines)
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "references": refs}, indent=1))


if __name__ == "__main__":
    main()
