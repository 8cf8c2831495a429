"""`dqe-cir pretrain | train | eval`: the torch-side commands. Heavy imports happen inside the handlers,
so registering these commands costs nothing in a serving install."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train_overrides(args) -> dict:
    over = {k: getattr(args, k) for k in ("data", "root", "out", "model", "init", "loss", "negatives", "epochs",
                                           "batch_size", "lr", "max_minutes", "max_steps", "seed", "eval_every")}
    if args.train_minutes is not None:
        over["max_minutes"] = args.train_minutes
    if getattr(args, "set", None):
        for item in args.set:
            key, _, value = item.partition("=")
            try:
                over[key] = json.loads(value)
            except json.JSONDecodeError:
                over[key] = value
    return over


def cmd_train(args, task: str = "cir") -> int:
    from training.train import load_train_config, train

    over = _train_overrides(args)
    over["task"] = task
    over["progress"] = not args.quiet
    cfg = load_train_config(args.config, **over)
    result = train(cfg, resume=not args.restart)
    print(json.dumps(result))
    return 0


def cmd_eval(args) -> int:
    if args.served:
        return cmd_eval_served(args)
    from training.data import load_cir_data
    from training.evaluate import compose_queries, encode_gallery, protocol_metrics, score_matrix
    from training.metrics import write_cirr_submission
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(args.checkpoint)
    data = load_cir_data(args.data, args.root, args.split, model.cfg.image_size, not args.json, args.max_queries)
    weights = _parse_weights(args.weights)
    tokens = encode_gallery(model, data)
    q, _ = compose_queries(model, tok, data, weights_override=weights)
    scores = score_matrix(q, tokens)
    if args.submission:
        names = data.names
        paths = write_cirr_submission(args.submission, data.pairids, scores, names, [names[r] for r in data.ref],
                                      [[names[m] for m in mem] for mem in data.members])
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    if (data.tgt < 0).any():
        if not args.submission:
            print("error: this split has no targets; pass --submission DIR to write the server files",
                  file=sys.stderr)
            return 2
        return 0
    metrics = protocol_metrics(data, scores)
    from training.evaluate import error_breakdown

    errors = error_breakdown(data, scores)
    if errors:
        metrics["errors"] = errors
    if args.json:
        print(json.dumps(metrics))
    else:
        print_metrics(metrics, f"{args.checkpoint} on {args.data}:{args.split} "
                               f"({len(data.ref)} queries, {len(data.names)} images)")
    return 0


def cmd_eval_served(args) -> int:
    """Torch metrics and the same metrics through bundle + Qdrant + CIRSearch, side by side."""
    import tempfile

    from training.data import load_cir_data
    from training.evaluate import evaluate
    from training.export import export_bundle
    from training.served import served_eval
    from training.train import load_checkpoint

    if args.data != "synth" and args.data != "cirr":
        from training.errors import TrainingError

        raise TrainingError("--served scores the CIRR protocol: use --data synth or cirr")
    model, tok, _ = load_checkpoint(args.checkpoint)
    torch_metrics = evaluate(model, tok, load_cir_data(args.data, args.root, args.split, model.cfg.image_size,
                                                       not args.json, args.max_queries))
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or export_bundle(model, tok, Path(tmp) / "bundle", log=lambda *_: None) and \
            Path(tmp) / "bundle"
        served, _, _, _ = served_eval(bundle, args.root, args.split, Path(tmp) / "qdrant", progress=not args.json,
                                      max_queries=args.max_queries)
    out = {"torch": {k: v for k, v in torch_metrics.items() if k in served}, "served": served,
           "max_abs_diff": max(abs(served[k] - torch_metrics[k]) for k in served)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{'metric':<8} {'torch':>8} {'served':>8}")
        for k in served:
            print(f"{k:<8} {torch_metrics[k]:8.2f} {served[k]:8.2f}")
        print(f"max abs difference: {out['max_abs_diff']:.2f} points")
    return 0


def print_metrics(metrics: dict, title: str) -> None:
    print(title)
    for k, v in metrics.items():
        if isinstance(v, dict):
            print("  errors of the top-1: " + ", ".join(f"{a} {b:.1f}%" for a, b in v.items()))
        elif isinstance(v, float):
            print(f"  {k:<12} {v:6.2f}")
        else:
            print(f"  {k:<12} {v}")


def cmd_export(args) -> int:
    from training.export import export_bundle
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(args.checkpoint)
    export_bundle(model, tok, args.out, opset=args.opset, fp16=args.fp16,
                  source={"checkpoint": str(args.checkpoint), "preset": model.cfg.preset})
    return 0


def _parse_weights(items) -> dict | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in ("color", "shape") or not value:
            from training.errors import TrainingError

            raise TrainingError(f"--weights takes color=X or shape=X, got {item!r}")
        out[key] = float(value)
    return out


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    p.add_argument("--data", choices=["synth", "cirr", "fashioniq"])
    p.add_argument("--root", help="data root (CIRR layout for synth/cirr, FashionIQ layout)")
    p.add_argument("--out", help="run folder: last.pt, metrics.jsonl")
    p.add_argument("--model", choices=["tiny", "demo", "blip2"])
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--loss", choices=["contrastive", "pairwise"])
    p.add_argument("--negatives", choices=["random", "trns"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--train-minutes", type=float, help="alias of --max-minutes")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="any other TrainConfig field")
    p.add_argument("--restart", action="store_true", help="ignore <out>/last.pt instead of resuming")
    p.add_argument("--quiet", action="store_true")


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="image-caption contrastive pretraining (synthetic scene captions)")
    _add_train_args(p)
    p.set_defaults(func=lambda a: cmd_train(a, "caption"))
    p = sub.add_parser("train", help="fine-tune DQE-CIR for composed retrieval")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint with the benchmark's protocol")
    p.add_argument("checkpoint")
    p.add_argument("--data", choices=["synth", "cirr", "fashioniq"], default="synth")
    p.add_argument("--root", default="runs/demo/synth-demo-0")
    p.add_argument("--split", default="val")
    p.add_argument("--max-queries", type=int)
    p.add_argument("--weights", action="append", metavar="ATTR=W", help="override attribute weights, e.g. color=2")
    p.add_argument("--submission", help="write the CIRR test-server files into this folder")
    p.add_argument("--served", action="store_true",
                   help="also score through the real path: bundle + local-mode Qdrant + CIRSearch")
    p.add_argument("--bundle", help="with --served: use this bundle instead of exporting the checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="checkpoint -> ONNX model bundle, with a parity check against torch")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--fp16", action="store_true", help="fp16 weights for GPUs (parity tolerance 2e-2)")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export)

