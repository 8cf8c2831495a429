"""The learning study: does a training recipe fit the synthetic demo set, and does it generalise?

    python benchmarks/learning.py run NAME --minutes 12 [--init CKPT] [--set KEY=JSON ...]
    python benchmarks/learning.py report [--out docs/benchmarks/learning.md]

`run` trains one variant with a time-budgeted schedule (warm-up and cosine end with the budget),
then scores the result on the val split (1,000 queries, 4,489 images) AND on the first 1,000 train
queries against the whole train gallery, so underfitting (train as bad as val) and overfitting
(train far above val) are both visible. Each run appends one JSON line to runs/learning/results.jsonl
with its config, steps, wall time and the machine's load; `report` turns those lines into the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

RESULTS = ROOT / "runs" / "learning" / "results.jsonl"
DATA = ROOT / "runs" / "demo" / "synth-demo-0"
METRICS = ("R@1", "R@10", "Rs@1", "color-edit top-1", "shape-edit top-1", "other-edit top-1")


def score(model, tok, data) -> dict:
    from training.evaluate import edit_accuracy, evaluate

    result = evaluate(model, tok, data)
    out = {k: result.metrics[k] for k in ("R@1", "R@10", "Rs@1")}
    out.update(edit_accuracy(data, result.scores))
    return out


def cmd_run(args) -> int:
    import torch

    from training.cir_data import load_cir_data
    from training.synth import ensure_synth
    from training.train import LAST, load_checkpoint, load_train_config, train

    ensure_synth(DATA, "demo", 0)
    over = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        over[key] = json.loads(value)
    out = ROOT / "runs" / "learning" / args.name
    cfg = load_train_config(args.config, root=str(DATA), out=str(out), init=args.init, max_minutes=args.minutes,
                            eval_every=0, progress=not args.quiet, threads=args.threads, **over)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    result = train(cfg, resume=False)
    minutes = (time.time() - t0) / 60
    model, tok, _ = load_checkpoint(out / LAST)
    size = model.cfg.image_size
    val = score(model, tok, load_cir_data("synth", DATA, "val", size, progress=False))
    trn = score(model, tok, load_cir_data("synth", DATA, "train", size, progress=False, max_queries=1000))
    row = {"name": args.name, "note": args.note, "init": args.init, "overrides": over, "config": args.config,
           "minutes_budget": args.minutes, "minutes": round(minutes, 1), "steps": result["steps"],
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "val": val, "train": trn, "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
           "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


def cmd_report(args) -> int:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    head = "| run | what changed | steps | min | " + " | ".join(f"{m} train / val" for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (4 + len(METRICS))]
    for r in rows:
        changed = r["note"] or ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "baseline"
        cells = " | ".join(f"{r['train'].get(m, float('nan')):.1f} / {r['val'].get(m, float('nan')):.1f}"
                           for m in METRICS)
        lines.append(f"| {r['name']} | {changed} | {r['steps']} | {r['minutes']} | {cells} |")
    table = "\n".join(lines)
    machines = sorted({r["machine"] for r in rows})
    loads = ", ".join(f"{r['name']} {r['load_before']}->{r['load_after']}" for r in rows)
    text = args.intro.read_text() if args.intro else ""
    doc = (f"# Learning study on the synthetic demo set\n\n{text}\n"
           f"Each row: `python benchmarks/learning.py run NAME --minutes M [--init CKPT] --set ...` "
           "(the exact overrides are in runs/learning/results.jsonl), then "
           "`python benchmarks/learning.py report`.\n"
           f"Machine: {'; '.join(machines)}. Load average before -> after each run: {loads}.\n\n"
           "train = the first 1,000 train queries against the whole train gallery (20,213 images); "
           "val = all 1,000 val queries against the val gallery (4,489 images). CIRR protocol; "
           "edit top-1 = the target's scene ranked first, by kind of edit.\n\n" + table + "\n")
    Path(args.out).write_text(doc)
    print(doc)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--minutes", type=float, default=12.0)
    r.add_argument("--config", help="a TrainConfig JSON (e.g. training/recipes/demo.json)")
    r.add_argument("--init", help="start from this checkpoint")
    r.add_argument("--set", action="append", metavar="KEY=JSON")
    r.add_argument("--note", default="")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "learning.md"))
    p.add_argument("--intro", type=Path, help="a markdown file with the findings, placed above the table")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
