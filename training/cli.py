"""The training flags (shared by `dqe-cir train` and `python -m training train`) and the entry point
for several GPUs:

    torchrun --nproc-per-node 8 -m training train --recipe cirr-blip2 --pretrained checkpoints/blip2-itm-vit-g

This module imports nothing heavy at import time (the `dqe-cir` parser is built from it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.errors import TrainingError

OVERRIDES = ("data", "root", "out", "model", "pretrained", "init", "loss", "negatives", "epochs", "batch_size", "lr",
             "max_minutes", "max_steps", "seed", "eval_every", "precision", "images")


# training.config.LOSSES and the recipes' names, without importing training.config (numpy): `--help`
# stays light (a test holds the two lists together).
LOSS_CHOICES = ("contrastive", "pairwise", "both")
RECIPES = Path(__file__).resolve().parent / "recipes"


def add_train_args(p: argparse.ArgumentParser) -> None:
    names = ", ".join(sorted(r.stem for r in RECIPES.glob("*.json")))
    p.add_argument("--recipe", help=f"a recipe: a name under training/recipes ({names}) or "
                                    "a JSON file of TrainConfig fields; flags override it")
    p.add_argument("--config", help="alias of --recipe")
    p.add_argument("--data", choices=["synth", "cirr", "fashioniq"])
    p.add_argument("--root", help="data root (CIRR layout for synth/cirr, FashionIQ layout)")
    p.add_argument("--out", help="run folder: last.safetensors, metrics.jsonl")
    p.add_argument("--model", choices=["tiny", "demo", "blip2"])
    p.add_argument("--pretrained", help="blip2: a save_pretrained folder of Blip2ForImageTextRetrieval with its "
                                        "tokenizer (e.g. a local copy of Salesforce/blip2-itm-vit-g)")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--loss", choices=list(LOSS_CHOICES))
    p.add_argument("--negatives", choices=["random", "trns"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="the global batch (split over the processes of a torchrun job)")
    p.add_argument("--lr", type=float)
    p.add_argument("--max-minutes", type=float,
                   help="time budget: warm-up and cosine decay are laid over it (from the measured step time)")
    p.add_argument("--train-minutes", type=float, help="alias of --max-minutes")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute the Q-Former's activations in the backward pass (less GPU memory)")
    p.add_argument("--images", choices=["memory", "disk"], help="decode all images into RAM first, or per batch")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="any other TrainConfig field")
    p.add_argument("--dry-run", action="store_true", help="print parameters, steps, TRNS memory and GPU memory and "
                                                          "time estimates; load no images, train nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the report as JSON")
    p.add_argument("--assume-tflops", type=float, default=None,
                   help="with --dry-run: sustained bf16 TFLOP/s per GPU for the time estimate (default 150)")
    p.add_argument("--gpus", type=int, default=None, help="with --dry-run: estimate for this many GPUs")
    p.add_argument("--restart", action="store_true", help="ignore <out>/last.safetensors instead of resuming")
    p.add_argument("--quiet", action="store_true")


def train_overrides(args: argparse.Namespace) -> dict:
    """The flags' values (None where a flag was not given: the recipe's value stays)."""
    over = {k: getattr(args, k) for k in OVERRIDES}
    over["grad_checkpointing"] = args.grad_checkpointing
    if args.train_minutes is not None:
        over["max_minutes"] = args.train_minutes
    if args.quiet:
        over["progress"] = False
    return over


def parse_settings(items: list[str] | None) -> dict:
    """--set KEY=JSON items as a dict; a value that is not JSON is taken as a string, null as None."""
    settings = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainingError(f"--set {item!r}: expected KEY=JSON, e.g. --set max_steps=null or --set lr=1e-4")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def print_dry_run(cfg, args) -> None:
    from training.dryrun import dry_run, format_dry_run

    report = dry_run(cfg, gpus=args.gpus, assume_tflops=args.assume_tflops)
    print(json.dumps(report) if args.json else format_dry_run(report))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description="DQE-CIR training, one process or many "
                                "(torchrun --nproc-per-node N -m training train ...)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune DQE-CIR (DDP under torchrun)")
    add_train_args(t)
    t.add_argument("--stop-after", type=int, help="stop after this many steps, as an interruption would (tests)")
    args = p.parse_args(argv)

    from cirdata.errors import DataError  # here, not at the top: `dqe-cir --help` imports this module
    from encoder.errors import EncoderError
    from training.config import load_train_config
    from training.ddp import cleanup, setup
    from training.train import train

    dist = None
    try:
        cfg = load_train_config(args.recipe or args.config, parse_settings(args.set), **train_overrides(args))
        if args.dry_run:
            print_dry_run(cfg, args)
            return 0
        dist = setup()
        result = train(cfg, resume=not args.restart, stop_after=args.stop_after, dist=dist)
    except (TrainingError, DataError, EncoderError) as e:  # recipes and data raise DataError, tokenizers EncoderError
        where = f"[rank {dist.rank}] " if dist is not None and dist.enabled else ""
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None:
            cleanup(dist)
    if dist.is_main:
        print(json.dumps(result))
    return 0
