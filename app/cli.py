"""`dqe-cir`: the command line of the whole project.

The parser is built from each side's command module (app/commands: training, serving, demo);
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
    from app.commands import demo, serving, training

    p = argparse.ArgumentParser(prog="dqe-cir", description="DQE-CIR composed image retrieval for Qdrant")
    sub = p.add_subparsers(dest="command", required=True)
    needs: dict[str, tuple[str, tuple[str, ...]]] = {}
    for module in (training, demo, serving):
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
        from app.commands.serving import SERVE_EXTRA

        extra, modules = f"{extra},{SERVE_EXTRA[0]}", modules + SERVE_EXTRA[1]
    absent = [m for m in modules if not _installed(m)]
    if not absent:
        return None
    return (f"`dqe-cir {command}` needs the {extra!r} extra (missing: {', '.join(absent)}); "
            f"install it with: pip install '{DISTRIBUTION}[{extra}]'")


# each package's error type, and the third-party module without which the package cannot be imported
PACKAGE_ERRORS = (("cirdata.errors", "DataError", "cirdata"), ("training.errors", "TrainingError", "training"),
                  ("encoder.errors", "EncoderError", "onnxruntime"), ("indexer.errors", "IndexerError", "indexer"),
                  ("plugin.errors", "PluginError", "qdrant_client"))


def package_errors() -> tuple[type[Exception], ...]:
    """The error types of the packages this install has: the serving image carries no training/ or
    cirdata/, a `train`-only install no plugin (its errors cannot be raised where it is absent)."""
    out = []
    for module, name, needs in PACKAGE_ERRORS:
        if _installed(module.split(".")[0]) and _installed(needs):
            out.append(getattr(importlib.import_module(module), name))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    parser, needs = build_parser()
    args, unknown = parser.parse_known_args(argv)
    problem = missing_extra(args.command, args, needs)
    if problem:  # before unknown flags: where a side is not installed, its commands know no flags
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    errors = package_errors()
    try:
        return args.func(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
