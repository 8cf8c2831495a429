"""`dqe-cir`: the command line of the whole project.

The parser is built from each side's command module (training_commands, serving_commands, demo);
none of them imports torch, onnxruntime or qdrant-client until a command runs, so `--help` is
instant and an install with only one extra runs that extra's commands. A command whose extra is
missing says which one to install instead of failing on an import.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

DISTRIBUTION = "dqe-cir-search"


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from app import demo, serving_commands, training_commands

    p = argparse.ArgumentParser(prog="dqe-cir", description="DQE-CIR composed image retrieval for Qdrant")
    sub = p.add_subparsers(dest="command", required=True)
    needs: dict[str, tuple[str, tuple[str, ...]]] = {}
    for module in (training_commands, demo, serving_commands):
        module.register(sub, needs)
    return p, needs


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(command: str, args: argparse.Namespace, needs: dict) -> str | None:
    """The message for a command whose extra is not installed, or None when it can run."""
    extra, modules = needs.get(command, ("", ()))
    if getattr(args, "served", False):  # `eval --served` scores through Qdrant as well
        from app.serving_commands import SERVE_EXTRA

        extra, modules = f"{extra},{SERVE_EXTRA[0]}", modules + SERVE_EXTRA[1]
    absent = [m for m in modules if not _installed(m)]
    if not absent:
        return None
    return (f"`dqe-cir {command}` needs the {extra!r} extra (missing: {', '.join(absent)}); "
            f"install it with: pip install '{DISTRIBUTION}[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    parser, needs = build_parser()
    args = parser.parse_args(argv)
    problem = missing_extra(args.command, args, needs)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from encoder.errors import EncoderError
    from indexer.errors import IndexerError
    from training.errors import TrainingError

    errors: tuple[type[Exception], ...] = (TrainingError, EncoderError, IndexerError)
    if _installed("qdrant_client"):  # plugin's errors exist only where the plugin can be imported
        from plugin.search import SearchError
        from plugin.store import StoreError

        errors += (SearchError, StoreError)
    try:
        return args.func(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
