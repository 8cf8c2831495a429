"""The torch-side commands: `dqe-cir data | pretrain | train | eval | export`.

Registering them costs nothing: every handler imports what it needs when it runs, so a serving
install (no torch; the serving image has no training/ or cirdata/ at all) still builds the parser and
runs its own commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (extra, the modules a command needs): our own packages too, since the serving image carries neither
TRAIN_EXTRA = ("train", ("training", "cirdata", "torch", "transformers"))
EXPORT_EXTRA = ("train", ("training", "cirdata", "torch", "transformers", "onnx", "onnxruntime"))
DATA_EXTRA = ("train", ("cirdata",))  # the loaders and the synthetic generator need numpy and Pillow only


def add_train_args(p: argparse.ArgumentParser) -> None:
    """training.cli's flags; none where this install has no training/ package (app.cli then names the
    extra to install instead of rejecting the flags it does not know)."""
    try:
        from training.cli import add_train_args as add
    except ModuleNotFoundError as e:
        if e.name != "training":
            raise
        return
    add(p)


def print_table(obj: dict, as_json: bool = False, title: str = "") -> None:
    """Metrics as JSON or as an aligned two-column table (a nested dict is one line)."""
    if as_json:
        print(json.dumps(obj))
        return
    if title:
        print(title)
    labels = {"errors": "errors of the top-1"}
    width = max((len(labels.get(k, k)) for k in obj), default=0)
    for k, v in obj.items():
        k = labels.get(k, k)
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b:.1f}%" if isinstance(b, float) else f"{a} {b}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.2f}"
        print(f"  {k:<{width}}  {v}")


# --- data -------------------------------------------------------------------------------
def cmd_data_synth(args) -> int:
    from cirdata.synth import generate

    summary = generate(args.out, size=args.size, seed=args.seed, image_size=args.image_size,
                       workers=args.workers, progress=not args.quiet)
    for split, c in summary.items():
        print(f"{split:6s} {c['pairs']:6d} pairs {c['images']:6d} images")
    print(f"wrote {args.out}")
    return 0


def cmd_data_stats(args) -> int:
    from cirdata.datasets import split_stats

    stats = split_stats(args.kind, args.root)
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
    from cirdata.oracle import oracle_metrics

    print_table(oracle_metrics(args.root, args.split), args.json, f"oracle on {args.root} ({args.split})")
    return 0


# --- training -----------------------------------------------------------------------------
def cmd_train(args, task: str = "cir") -> int:
    import os

    from training.cli import parse_settings, print_dry_run, train_overrides
    from training.config import load_train_config

    over = train_overrides(args)
    over["task"] = task
    cfg = load_train_config(args.recipe or args.config, parse_settings(args.set), **over)
    if args.dry_run:
        print_dry_run(cfg, args)
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: `dqe-cir train` is one process; for several GPUs run: torchrun --nproc-per-node N "
              "-m training train [the same flags]", file=sys.stderr)
        return 2
    from training.train import train

    result = train(cfg, resume=not args.restart)
    print(json.dumps(result))
    return 0


def write_submission(args, data, scores) -> None:
    """The test server's files of the split's rankings (CIRR, the synthetic set, CIRCO)."""
    from cirdata.errors import DataError
    from cirdata.protocol import protocol_of, rank_scores
    from cirdata.submissions import write_circo_submission, write_cirr_submission

    proto = protocol_of(args.data)
    if proto == "fashioniq":
        raise DataError("FashionIQ has no test server: --submission writes CIRR's and CIRCO's files")
    rankings = rank_scores(proto, data, scores)
    if proto == "circo":
        path = write_circo_submission(Path(args.submission) / f"circo_{args.split}_submission.json", data.pairids,
                                      rankings)
        print(f"wrote {path}", file=sys.stderr)
    else:
        paths = write_cirr_submission(args.submission, data.pairids, rankings)
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


def cmd_eval(args) -> int:
    from cirdata.tables import load_cir_data
    from encoder.fusion import parse_weights
    from training.checkpoint import load_checkpoint
    from training.evaluate import evaluate

    weights = parse_weights(args.weights)
    if args.served:
        from app.served_eval import compare_served

        out = compare_served(args.checkpoint, args.data, args.root, args.split, args.max_queries, args.bundle,
                             progress=not args.json)
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{'metric':<8} {'torch':>8} {'served':>8}")
            for k, v in out["served"].items():
                print(f"{k:<8} {out['torch'][k]:8.2f} {v:8.2f}")
            print(f"max abs difference: {out['max_abs_diff']:.2f} points")
        return 0
    model, tok, _ = load_checkpoint(args.checkpoint)
    data = load_cir_data(args.data, args.root, args.split, model.cfg.image_size, not args.json, args.max_queries,
                         images=args.images, circo_text=args.circo_text)
    result = evaluate(model, tok, data, weights_override=weights)
    if args.submission:
        write_submission(args, data, result.scores)
    if not result.metrics:
        if not args.submission:
            print("error: this split has no targets; pass --submission DIR to write the server files",
                  file=sys.stderr)
            return 2
        return 0
    print_table(result.metrics, args.json, f"{args.checkpoint} on {args.data}:{args.split} "
                                          f"({len(data.ref)} queries, {len(data.names)} images)")
    return 0


def cmd_export(args) -> int:
    from training.checkpoint import load_checkpoint
    from training.export import export_bundle

    model, tok, _ = load_checkpoint(args.checkpoint)
    export_bundle(model, tok, args.out, opset=args.opset, fp16=args.fp16, quantize=args.quantize,
                  source={"checkpoint": str(args.checkpoint), "preset": model.cfg.preset})
    return 0


def register(sub, needs: dict) -> None:
    """Add the torch-side commands; `needs[name]` records the extra each one requires."""
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
    needs["data"] = DATA_EXTRA

    p = sub.add_parser("pretrain", help="image-caption contrastive pretraining (synthetic scene captions)")
    add_train_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, "caption"))
    p = sub.add_parser("train", help="fine-tune DQE-CIR for composed retrieval (one process; several GPUs: "
                                     "torchrun --nproc-per-node N -m training train ...)")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint with the benchmark's protocol")
    p.add_argument("checkpoint")
    p.add_argument("--data", choices=["synth", "cirr", "fashioniq", "circo"], default="synth")
    p.add_argument("--root", default="runs/demo/synth-demo-0")
    p.add_argument("--split", default="val", help="val; CIRR's test split is test1, CIRCO's test")
    p.add_argument("--images", help="CIRCO: the COCO 2017 unlabeled images (default <root>/COCO2017_unlabeled/"
                                    "unlabeled2017)")
    p.add_argument("--circo-text", choices=["caption", "concept"], default="caption",
                   help="CIRCO query text: the relative caption, or '<shared concept> that <caption>'")
    p.add_argument("--max-queries", type=int)
    p.add_argument("--weights", action="append", metavar="ATTR=W", help="override attribute weights, e.g. color=2")
    p.add_argument("--submission", help="write the test-server files into this folder (CIRR: two files, "
                                        "CIRCO: circo_<split>_submission.json)")
    p.add_argument("--served", action="store_true",
                   help="also score through the real path: bundle + local-mode Qdrant + CIRSearch")
    p.add_argument("--bundle", help="with --served: use this bundle instead of exporting the checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="checkpoint -> ONNX model bundle, with a parity check against torch")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--fp16", action="store_true", help="fp16 weights for GPUs (parity tolerance 2e-2)")
    p.add_argument("--quantize", choices=["int8"], help="int8: dynamic quantisation for CPUs (MatMul weights int8; "
                                                        "a different model with its own fingerprint, parity "
                                                        "tolerance 5e-2, ranking agreement reported)")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export)
    needs.update(pretrain=TRAIN_EXTRA, train=TRAIN_EXTRA, eval=TRAIN_EXTRA, export=EXPORT_EXTRA)
