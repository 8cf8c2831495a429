"""Ablation of DQE-CIR's parts on the synthetic demo set.

    python benchmarks/ablation.py --start CKPT [--steps 30] [--seeds 0 1 2] [--out docs/benchmarks/ablation.md]

Every variant is fine-tuned from the same starting checkpoint with the same budget, reported at equal
steps and at equal wall time (the baseline's time for those steps), over several seeds:
(i) in-batch contrastive baseline, (ii) pairwise loss with random negatives, (iii) + TRNS (the starting
checkpoint is the contrastive warm-up), (iv) + attribute weights and the attribute loss = full DQE-CIR.
Plus non-learned references: random ranking, the reference image alone, the text alone.
TRNS mid-zones are mined once per variant from the starting checkpoint (that is what a rebuild right
after the warm-up computes); the mining time is reported and counted in that variant's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402
from training.cir_data import load_cir_data  # noqa: E402
from training.evaluate import encode_gallery, error_breakdown, evaluate, protocol_metrics  # noqa: E402
from training.model import maxsim  # noqa: E402
from training.train import TrainConfig, Trainer, build_model, load_checkpoint  # noqa: E402
from training.trns import NegativeSampler  # noqa: E402

VARIANTS = {
    "(i) in-batch contrastive": dict(loss="contrastive", model_overrides={"attribute_weights": "off"}),
    "(ii) pairwise, random negatives": dict(loss="pairwise", negatives="random", lambda_margin=0.5,
                                            model_overrides={"attribute_weights": "off"}),
    "(iii) pairwise + TRNS": dict(loss="pairwise", negatives="trns", lambda_margin=0.5,
                                  model_overrides={"attribute_weights": "off"}),
    "(iv) + attribute weights (DQE-CIR)": dict(loss="pairwise", negatives="trns", lambda_margin=0.5, lambda_attr=0.2,
                                               model_overrides={"attribute_weights": "sigmoid"}),
}
KEYS = ("R@1", "R@5", "R@10", "Rs@1")


def run(name, variant, seed, args, train, val, zones_cache, budget_steps=None, budget_minutes=None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(root=args.root, out=tmp, init=args.start, epochs=1, batch_size=args.batch_size,
                          lr=args.lr, warmup_steps=5, eval_every=0, seed=seed, progress=False,
                          trns={"bounds": "quantile", "low": 0.02, "high": 0.10}, max_steps=budget_steps,
                          max_minutes=budget_minutes, **variant)
        model, tok = build_model(cfg)
        trainer = Trainer(cfg, train, None, model, tok)
        mining = 0.0
        if cfg.negatives == "trns" and cfg.loss == "pairwise":
            key = cfg.model_overrides["attribute_weights"]
            if key not in zones_cache:
                t = time.time()
                trainer.rebuild_mid_zones()
                zones_cache[key] = (trainer.sampler.zones, time.time() - t)
            zones, mining = zones_cache[key]
            trainer.sampler = NegativeSampler(zones, seed)
        t = time.time()
        trainer.run()
        wall = time.time() - t
        metrics = evaluate(model, tok, val).metrics
    return {"variant": name, "seed": seed, "steps": trainer.step, "train_s": wall, "mining_s": mining, **metrics}


def references(args, val) -> list[dict]:
    model, tok, _ = load_checkpoint(args.start)
    tokens = encode_gallery(model, val)
    out = []
    rng = np.random.default_rng(0)
    out.append({"variant": "random ranking", **_metrics(val, rng.random((len(val.ref), len(val.names))))})
    ref_q = torch.nn.functional.normalize(tokens[torch.from_numpy(val.ref)].mean(1), dim=-1)
    out.append({"variant": "reference image alone", **_metrics(val, maxsim(ref_q, tokens).numpy())})
    with torch.no_grad():
        qs = []
        for s in range(0, len(val.texts), 256):
            ids, mask = tok(val.texts[s: s + 256])
            qs.append(model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)))
        out.append({"variant": "text alone", **_metrics(val, maxsim(torch.cat(qs), tokens).numpy())})
    return out


def _metrics(val, scores) -> dict:
    return {**protocol_metrics(val, scores), "errors": error_breakdown(val, scores)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", required=True, help="the common starting checkpoint")
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--val-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ablation.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _, _ = load_checkpoint(args.start)
    size = model.cfg.image_size
    train = load_cir_data("synth", args.root, "train", size, progress=False)
    val = load_cir_data("synth", args.root, "val", size, progress=False, max_queries=args.val_queries)
    rows, zones = [], {}
    for seed in args.seeds:
        for name, v in VARIANTS.items():
            r = run(name, v, seed, args, train, val, zones, budget_steps=args.steps)
            r["budget"] = "equal steps"
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "errors"}), flush=True)
        wall = next(r for r in rows if r["seed"] == seed and r["variant"].startswith("(i)") and
                    r["budget"] == "equal steps")["train_s"]
        for name, v in VARIANTS.items():
            if name.startswith("(i)"):
                continue
            r = run(name, v, seed, args, train, val, zones, budget_minutes=wall / 60)
            r["budget"] = "equal wall time"
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "errors"}), flush=True)
    refs = references(args, val)
    write(Path(args.out), rows, refs, args, len(train.ref))


def _mean_sd(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def write(path: Path, rows, refs, args, n_train: int) -> None:
    cpu = cpu_name()
    steps_per_epoch = n_train // args.batch_size
    lines = ["# Ablation on the synthetic demo set", "",
             f"Command: `python benchmarks/ablation.py --start {args.start} --steps {args.steps} --seeds "
             f"{' '.join(map(str, args.seeds))} --threads {args.threads}`  ",
             f"Machine: {cpu}, {args.threads} torch threads, torch {torch.__version__}. "
             f"Batch {args.batch_size}, lr {args.lr}, "
             f"val = synthetic demo val ({'all' if not args.val_queries else args.val_queries} queries, CIRR "
             "protocol). Mean ± standard deviation over the seeds.", "",
             "Equal wall time: every variant gets the baseline's training time for the same number of steps; "
             "TRNS variants also pay their mining time (shown) on top, since mining happens once per rebuild.", ""]
    for budget in ("equal steps", "equal wall time"):
        lines += [f"## {budget}", "", "| variant | steps | R@1 | R@5 | R@10 | Rs@1 | wrong color % | wrong shape % | "
                  "s per epoch (train) | mining s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name in VARIANTS:
            rs = [r for r in rows if r["variant"] == name and r["budget"] == budget]
            if budget == "equal wall time" and name.startswith("(i)"):
                rs = [r for r in rows if r["variant"] == name and r["budget"] == "equal steps"]
            if not rs:
                continue
            per_epoch = [r["train_s"] / max(r["steps"], 1) * steps_per_epoch for r in rs]
            lines.append(
                f"| {name} | {_mean_sd([r['steps'] for r in rs])} | "
                + " | ".join(_mean_sd([r[k] for r in rs]) for k in KEYS)
                + f" | {_mean_sd([r['errors']['wrong_color'] for r in rs])} | "
                f"{_mean_sd([r['errors']['wrong_shape'] for r in rs])} | {_mean_sd(per_epoch)} | "
                f"{rs[0]['mining_s']:.0f} |")
        lines.append("")
    lines += ["## Non-learned references (starting checkpoint's embeddings where one is needed)", "",
              "| reference | R@1 | R@5 | R@10 | Rs@1 | wrong color % | wrong shape % |",
              "|---|---|---|---|---|---|---|"]
    for r in refs:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[k]:.1f}" for k in KEYS)
                     + f" | {r['errors']['wrong_color']:.1f} | {r['errors']['wrong_shape']:.1f} |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    (path.with_suffix(".json")).write_text(json.dumps({"rows": rows, "references": refs}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
