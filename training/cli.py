"""`dqe-cir`: the command line of the whole project.

This is the application layer: it imports each package's commands lazily, so a serving install
(no torch) can still run the serving commands. Library code keeps the dependency rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _print_json_or_table(obj: dict, as_json: bool, title: str = "") -> None:
    if as_json:
        print(json.dumps(obj, sort_keys=False))
        return
    if title:
        print(title)
    width = max((len(k) for k in obj), default=0)
    for k, v in obj.items():
        if isinstance(v, float):
            v = f"{v:.2f}"
        print(f"  {k:<{width}}  {v}")


# --- data -------------------------------------------------------------------------------
def cmd_data_synth(args) -> int:
    from training.synth import generate

    summary = generate(args.out, size=args.size, seed=args.seed, image_size=args.image_size,
                       workers=args.workers, progress=not args.quiet)
    for split, c in summary.items():
        print(f"{split:6s} {c['pairs']:6d} pairs {c['images']:6d} images")
    print(f"wrote {args.out}")
    return 0


def data_stats(kind: str, root: str) -> dict:
    from training import datasets as ds

    root_path = Path(root)
    out: dict = {"kind": kind, "root": str(root_path)}
    if kind == "cirr":
        name = ds.cirr_dataset_name(root_path)
        out["name"] = name
        for split in ds.CIRR_SPLITS:
            if not (root_path / "image_splits" / f"split.{name}.{split}.json").is_file():
                continue
            images = ds.read_json(root_path / "image_splits" / f"split.{name}.{split}.json")
            entry = {"images": len(images)}
            if (root_path / "captions" / f"cap.{name}.{split}.json").is_file():
                data = ds.load_cirr(root_path, split, name)
                entry["pairs"] = len(data.queries)
            out[split] = entry
    elif kind == "fashioniq":
        for split in ds.FIQ_SPLITS:
            data = ds.load_fashioniq(root_path, split)
            entry = {"pairs": len(data.triplets),
                     "images": sum(len(v) for v in data.gallery.values()), "categories": {}}
            for cat in data.categories:
                entry["categories"][cat] = {"pairs": sum(t.category == cat for t in data.triplets),
                                            "images": len(data.gallery[cat])}
            out[split] = entry
    elif kind == "circo":
        for split in ds.CIRCO_SPLITS:
            data = ds.load_circo(root_path, split)
            referenced = {q.reference for q in data.queries} | {t for q in data.queries for t in q.targets}
            out[split] = {"pairs": len(data.queries), "images": len(referenced)}
    else:
        raise ValueError(kind)
    return out


def cmd_data_stats(args) -> int:
    stats = data_stats(args.kind, args.root)
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{args.kind} at {stats['root']}")
    for split, entry in stats.items():
        if not isinstance(entry, dict):
            continue
        pairs = entry.get("pairs", "-")
        print(f"  {split:6s} pairs {pairs!s:>7}  images {entry['images']:>7}")
        for cat, c in entry.get("categories", {}).items():
            print(f"    {cat:8s} pairs {c['pairs']:>7}  images {c['images']:>7}")
    return 0


def cmd_data_oracle(args) -> int:
    from training.oracle import oracle_metrics

    _print_json_or_table(oracle_metrics(args.root, args.split), args.json, f"oracle on {args.root} ({args.split})")
    return 0


# --- the end-to-end demo ----------------------------------------------------------------
def ensure_synth(out: Path, size: str, seed: int) -> Path:
    """Generate the synthetic set unless the same size and seed already sit in `out`."""
    meta = out / "synth.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("size") == size and m.get("seed") == seed:
            print(f"[data] reusing {out} ({size}, seed {seed})")
            return out
    from training.synth import generate

    print(f"[data] generating the {size} synthetic benchmark in {out}")
    generate(out, size=size, seed=seed)
    return out


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "demo" / "dqe-cir-demo.pt"


def cmd_demo(args) -> int:
    """The main job, as far as the pipeline goes today: data -> oracle -> the shipped model's metrics
    -> a short fine-tune -> ONNX export with its parity check."""
    from training.oracle import oracle_metrics

    work = Path(args.workdir)
    size = "small" if args.quick else args.size
    data = ensure_synth(work / f"synth-{size}-{args.seed}", size, args.seed)
    _print_json_or_table(oracle_metrics(data, "val"), False, "[oracle] ground-truth oracle on val (must be 100)")

    from training.commands import print_metrics
    from training.data import load_cir_data
    from training.evaluate import evaluate
    from training.export import export_bundle
    from training.train import load_checkpoint, load_train_config, train

    model_path = Path(args.model)
    if not model_path.is_file():
        print(f"error: the shipped demo model {model_path} is missing; train one with "
              "`python scripts/train_demo_model.py`", file=sys.stderr)
        return 2
    model, tok, _ = load_checkpoint(model_path)
    val = load_cir_data("synth", data, "val", model.cfg.image_size, progress=True)
    print_metrics(evaluate(model, tok, val), f"[eval] shipped demo model {model_path} on synthetic val")

    minutes = 1.0 if args.quick and args.train_minutes is None else (args.train_minutes or 3.0)
    run = work / "finetune"
    print(f"[train] fine-tuning the shipped model for {minutes:g} min -> {run}")
    cfg = load_train_config(None, root=str(data), out=str(run), init=str(model_path), loss="contrastive",
                            img_set_negatives=1, epochs=1, lr=1e-4, warmup_steps=10, max_minutes=minutes,
                            eval_every=0, seed=args.seed)
    result = train(cfg, resume=False)
    print_metrics({k: v for k, v in result.items()}, "[train] after fine-tuning, on synthetic val")

    bundle = work / "bundle"
    tuned, tok, _ = load_checkpoint(run / "last.pt")
    export_bundle(tuned, tok, bundle, source={"checkpoint": str(run / "last.pt"), "preset": tuned.cfg.preset})

    from training.served import query_sheet, served_eval

    n_served = None if args.quick else args.served_queries
    print(f"[index] embedding the val catalog into local-mode Qdrant at {work / 'qdrant'} (in-process), then "
          f"{n_served or 'all'} composed queries through CIRSearch")
    served, tops, val_split, report = served_eval(bundle, data, "val", work / "qdrant", alias="synthetic-val",
                                                  max_queries=n_served)
    print(f"[index] {report.indexed} indexed, {len(report.failed)} failed, collection {report.collection}")
    reference = evaluate(tuned, tok, load_cir_data("synth", data, "val", tuned.cfg.image_size, False, n_served))
    table = {k: f"{v:6.2f}   {served[k]:6.2f}   {served[k] - v:+.2f}" for k, v in reference.items()
             if k in served}
    _print_json_or_table(table, False, "[search] metric   torch   served (bundle + Qdrant + CIRSearch)   diff")
    png, page = query_sheet(val_split, tops, work)
    print(f"[done] pictures of a few queries: {png} and {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dqe-cir", description="DQE-CIR composed image retrieval for Qdrant")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="benchmarks: generate, inspect, score the oracle")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="generate the synthetic CIR benchmark (CIRR layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--size", choices=["small", "demo", "large"], default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--workers", type=int, default=None, help="render processes (output is the same for any)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    s = dsub.add_parser("stats", help="pairs and images per split")
    s.add_argument("--kind", choices=["cirr", "fashioniq", "circo"], required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)
    s = dsub.add_parser("oracle", help="score the ground-truth oracle on the synthetic set")
    s.add_argument("--root", required=True)
    s.add_argument("--split", default="val", choices=["train", "val", "test1"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_oracle)

    s = sub.add_parser("demo", help="run the whole pipeline on the built-in synthetic catalog")
    s.add_argument("--workdir", default="runs/demo")
    s.add_argument("--size", choices=["small", "demo", "large"], default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="small data, short runs: a few minutes")
    s.add_argument("--model", default=str(SHIPPED_MODEL), help="starting checkpoint (the shipped demo model)")
    s.add_argument("--train-minutes", type=float, default=None, help="fine-tuning time (default 3, --quick 1)")
    s.add_argument("--served-queries", type=int, default=200,
                   help="val queries scored through Qdrant (local mode searches exactly: ~0.3 s a query)")
    s.set_defaults(func=cmd_demo)

    for register in _command_modules():
        register(sub)
    return p


def _command_modules():
    """Each later stage (train, export, index, search) adds its subcommands here."""
    from indexer import commands as serving
    from indexer import doctor
    from training import commands

    return [commands.register, serving.register, serving.register_search, doctor.register]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from encoder.errors import EncoderError
    from indexer.errors import IndexerError
    from plugin.search import SearchError
    from plugin.store import StoreError
    from training.errors import TrainingError

    try:
        return args.func(args)
    except (TrainingError, EncoderError, IndexerError, SearchError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
