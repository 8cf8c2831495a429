"""Sub-queries that specialise: candidate designs compared on short runs from the shipped model.

    python benchmarks/heads.py --start models/demo/dqe-cir-demo.safetensors [--steps 120] [--seeds 0 1 2]
                               [--candidates S0 S1 S2] [--out docs/benchmarks/controllability.md]
    python benchmarks/heads.py --rewrite      # the page's section again from its .json, no training

Every candidate starts from the same checkpoint with training/recipes/demo-specialise.json (fresh
attribute heads at 10x the lr, trained alone for the first 30 steps; 3 probes per attribute and query as
the heads' negatives and as the fused query's extra contrastive negatives; today's last stage otherwise)
and changes only what its row says, at equal steps and seeds. Scored on the demo val split with
benchmarks/controllability.py's measures; paired tests (bootstrap over the queries, per-query hit rate
over the seeds) of R@1 and Rs@1 against S0.

Writes only the `heads` section of --out (every run's numbers and per-query hits to heads.json beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, now, recorded_command, write_section  # noqa: E402
from cirdata.metrics import paired_bootstrap  # noqa: E402
from cirdata.tables import load_cir_data  # noqa: E402
from training.checkpoint import read_meta  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.controllability import key_numbers, measure  # noqa: E402
from training.train import Trainer, build_model  # noqa: E402

RECIPE = "demo-specialise"
# Every candidate spelled out on top of the recipe (which holds A2's settings, the best lead: none met the bars).
ROUND1 = dict(attribute_probes=3, lambda_attr=1.0, lr=5e-5, lambda_attr_retrieval=0.0)
CANDIDATES = {
    # fresh heads at the checkpoint's weights (no fold): the first round
    "S0": ("probes: sensitivity only", dict(ROUND1, fold_attribute_heads=False, lambda_invariance=0.0,
                                             lambda_decorrelation=0.0, lambda_weight_labels=0.0)),
    "S1": ("S0 + invariance 0.5 + decorrelation 0.1", dict(ROUND1, fold_attribute_heads=False, lambda_invariance=0.5,
                                                            lambda_decorrelation=0.1, lambda_weight_labels=0.0)),
    "S2": ("S1 + weight labels 0.2", dict(ROUND1, fold_attribute_heads=False, lambda_invariance=0.5,
                                          lambda_decorrelation=0.1, lambda_weight_labels=0.2)),
    # the checkpoint's heads folded into q_base, fresh heads with their weights nearly shut: the second round
    "F1": ("S2, heads folded into q_base", dict(ROUND1, fold_attribute_heads=True, lambda_invariance=0.5,
                                                lambda_decorrelation=0.1, lambda_weight_labels=0.2)),
    "A1": ("F1 + attribute retrieval 1.0 (each head retrieves the batch's images agreeing on its attribute)",
           dict(ROUND1, fold_attribute_heads=True, lambda_invariance=0.5, lambda_decorrelation=0.1,
                lambda_weight_labels=0.2, lambda_attr_retrieval=1.0)),
    "A2": ("A1 with invariance 2 (F2's)",
           dict(ROUND1, fold_attribute_heads=True, lambda_invariance=2.0, lambda_decorrelation=0.1,
                lambda_weight_labels=0.2, lambda_attr_retrieval=1.0)),
    "F2": ("F1, stronger: 5 probes, lambda_attr 3, invariance 2, lr 1e-4",
           dict(fold_attribute_heads=True, lambda_invariance=2.0, lambda_decorrelation=0.1, lambda_weight_labels=0.2,
                attribute_probes=5, lambda_attr=3.0, lr=1e-4, lambda_attr_retrieval=0.0)),
}


def run_one(key: str, seed: int, args, train, val) -> dict:
    name, overrides = CANDIDATES[key]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_train_config(RECIPE, {**overrides, "init": args.start, "root": args.root, "out": tmp, "seed": seed,
                                         "max_steps": args.steps, "progress": False, "threads": args.threads})
        model, tok = build_model(cfg)
        trainer = Trainer(cfg, train, None, model, tok)
        trainer.run()
        row = {"candidate": key, "name": name, "seed": seed, "steps": trainer.step,
               "train_s": round(trainer.elapsed_s, 1), **measure(model, tok, val, Path(args.root))}
        row.pop("torch_top10")
    print(json.dumps({k: v for k, v in row.items() if k not in ("hits", "settings")}), flush=True)
    return row


def _hit_rates(rows: list[dict], metric: str) -> np.ndarray:
    return np.mean([[c == "1" for c in r["hits"][metric]] for r in rows], axis=0)


def table(rows: list[dict], meta: dict) -> list[str]:
    lines = [f"`{meta['command']}`", "",
             f"Machine: {meta['cpu']}, {meta['threads']} threads, load "
             + (f"{meta['load_before']} before, " if "load_before" in meta else "")
             + f"{meta['load']} at the end; {meta['when']}; "
             f"{meta['steps']} steps from `{meta['start']}`, seeds {meta['seeds']}; mean ± sd over the seeds; "
             "paired: the difference to S0 with its bootstrap 95% interval and p.", ""]
    keys = list(key_numbers(rows[0]))
    lines += ["| candidate | " + " | ".join(keys) + " | R@1 vs S0 | Rs@1 vs S0 |", "|---|" + "---|" * (len(keys) + 2)]
    by = {}
    for r in rows:
        by.setdefault(r["candidate"], []).append(r)
    base = by.get("S0")
    for key, rs in by.items():
        nums = [key_numbers(r) for r in rs]
        cells = []
        for k in keys:
            vals = [n[k] for n in nums]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}" if k != "cos" else f"{statistics.mean(vals):.2f}")
        paired = []
        for metric in ("R@1", "Rs@1"):
            if base is None or key == "S0":
                paired.append("-")
                continue
            b = paired_bootstrap(_hit_rates(base, metric), _hit_rates(rs, metric), seed=0)
            paired.append(f"{b['diff']:+.1f} [{b['ci95'][0]:+.1f}, {b['ci95'][1]:+.1f}] p={b['p']:.3f}")
        lines.append(f"| {key} {rs[0]['name']} | " + " | ".join(cells + paired) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default=str(ROOT / "models" / "demo" / "dqe-cir-demo.safetensors"))
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--candidates", nargs="+", default=["S0", "S1", "S2"], choices=list(CANDIDATES))
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rewrite", action="store_true")
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in heads.json (a candidate and seed run again replaces its row)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "controllability.md"))
    args = ap.parse_args()
    out = Path(args.out)
    store = out.with_name("heads.json")
    if args.rewrite:
        saved = json.loads(store.read_text())
        write_section(out, "heads", table(saved["rows"], saved["meta"]), title="Controllability")
        return
    load_before = load_averages()
    torch.set_num_threads(args.threads)
    size = read_meta(args.start)["model_config"]["image_size"]  # the start's image size, without its weights
    train = load_cir_data("synth", args.root, "train", size, False)
    val = load_cir_data("synth", args.root, "val", size, False, args.max_queries)
    rows = [run_one(k, s, args, train, val) for k in args.candidates for s in args.seeds]
    command = recorded_command("heads.py")
    if args.append and store.is_file():
        saved = json.loads(store.read_text())
        new = {(r["candidate"], r["seed"]) for r in rows}
        rows = [r for r in saved["rows"] if (r["candidate"], r["seed"]) not in new] + rows
        command = f"{saved['meta']['command']}, then {command}"
    meta = {"command": command, "cpu": cpu_name(), "threads": args.threads,
            "load": load_averages(), "load_before": load_before, "when": now(), "steps": args.steps,
            "start": args.start, "seeds": args.seeds}
    store.write_text(json.dumps({"meta": meta, "rows": rows}) + "\n")
    write_section(out, "heads", table(rows, meta), title="Controllability")


if __name__ == "__main__":
    main()
