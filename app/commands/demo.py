"""`dqe-cir demo`: the main job end to end on the built-in synthetic catalog, no servers.

data -> the oracle -> the shipped model's metrics -> a short fine-tune -> ONNX export with its parity
check -> in-process indexing into the embedded engine (qdrant-edge; QDRANT_ENGINE) -> composed queries
through CIRSearch, next to the torch metrics of the same checkpoint -> a picture of a few queries.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from app.commands.training import print_table

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo" / "dqe-cir-demo.safetensors"
FINETUNE_RECIPE = "demo-finetune"  # the shipped model's last stage
DEMO_EXTRA = ("train,serve", ("training", "cirdata", "torch", "transformers", "onnx", "onnxruntime", "qdrant_client"))


def cmd_demo(args) -> int:
    from cirdata.oracle import oracle_metrics
    from cirdata.synth import ensure_synth

    work = Path(args.workdir)
    size = "small" if args.quick else args.size
    data = ensure_synth(work / f"synth-{size}-{args.seed}", size, args.seed)
    print_table(oracle_metrics(data, "val"), title="[oracle] ground-truth oracle on val (must be 100)")

    from cirdata.tables import load_cir_data
    from training.evaluate import evaluate
    from training.export import export_bundle
    from training.train import LAST, load_checkpoint, train

    model_path = Path(args.model)
    if not model_path.is_file():
        print(f"error: the shipped demo model {model_path} is missing; train one with "
              "`python scripts/train_demo_model.py`", file=sys.stderr)
        return 2
    model, tok, _ = load_checkpoint(model_path)
    val = load_cir_data("synth", data, "val", model.cfg.image_size, progress=True)
    print_table(evaluate(model, tok, val).metrics, title=f"[eval] shipped demo model {model_path} on synthetic val")

    minutes = 1.0 if args.quick and args.train_minutes is None else (args.train_minutes or 3.0)
    run = work / "finetune"
    print(f"[train] fine-tuning the shipped model for {minutes:g} min -> {run}")
    cfg = finetune_config(data, run, model_path, minutes, args.seed)
    print(f"[train] objective: {cfg.loss}" + (f" + {cfg.negatives} negatives" if cfg.pairwise else "")
          + f" (training/recipes/{FINETUNE_RECIPE}.json)")
    result = train(cfg, resume=False)
    print_table(result, title="[train] after fine-tuning, on synthetic val")
    tuned, tok, _ = load_checkpoint(run / LAST)
    print_steer(tuned, tok, val, data)

    bundle = work / "bundle"
    export_bundle(tuned, tok, bundle, source={"checkpoint": str(run / LAST), "preset": tuned.cfg.preset})

    from app.query_sheet import query_sheet
    from app.served_eval import served_eval

    n_served = None if args.quick else args.served_queries
    engine = set_aside_other_engine(work / "qdrant")
    print(f"[index] embedding the val catalog into the {engine} engine at {work / 'qdrant'} (in-process), then "
          f"{n_served or 'all'} composed queries through CIRSearch")
    served, tops, val_split, report = served_eval(bundle, data, "val", work / "qdrant", alias="synthetic-val",
                                                  max_queries=n_served)
    print(f"[index] {report.indexed} indexed, {len(report.failed)} failed, collection {report.collection}")
    reference = evaluate(tuned, tok, load_cir_data("synth", data, "val", tuned.cfg.image_size, False, n_served))
    table = {k: f"{v:6.2f}   {served[k]:6.2f}   {served[k] - v:+.2f}" for k, v in reference.metrics.items()
             if k in served}
    print_table(table, title="[search] metric   torch   served (bundle + Qdrant + CIRSearch)   diff")
    png, page = query_sheet(val_split, tops, work)
    print(f"[done] pictures of a few queries: {png} and {page}")
    print(f"[serve] try it in a browser (search page and HTTP API): {serve_command(work, data)}")
    return 0


def print_steer(model, tok, val, data: Path) -> None:
    """Do the attribute weights still steer after the fine-tune? The controllability measures of the
    fine-tuned model on the val split already loaded (docs/benchmarks/controllability.md has them for the
    shipped one)."""
    from training.controllability import key_numbers, measure

    if not {"color", "shape"} <= set(model.cfg.attributes):
        return
    nums = key_numbers(measure(model, tok, val, data))
    print_table({k: round(v, 3) for k, v in nums.items()},
                title="[steer] controllability after fine-tuning (cos(q_color, q_shape); top-10 agreement, color alone "
                      "vs shape alone, points; heads ranking the target first among probes, %; weight moves)")


def finetune_config(data: Path, run: Path, model_path: Path, minutes: float, seed: int):
    """The shipped model's own last stage (its model card says which objective that is), from
    `model_path`, laid over a time budget of `minutes` instead of the recipe's step count."""
    from training.train import load_train_config

    return load_train_config(FINETUNE_RECIPE, {"max_steps": None},  # the time budget sets the schedule's length
                             root=str(data), out=str(run), init=str(model_path), max_minutes=minutes, seed=seed,
                             progress=True)


def set_aside_other_engine(folder: Path) -> str:
    """The embedded engine the demo indexes with (QDRANT_ENGINE); a demo folder another engine wrote (an older
    demo ran on local mode) is renamed, not deleted, and said so."""
    from indexer.settings import load_settings
    from plugin import store

    engine = load_settings().qdrant_engine
    try:
        store.open_embedded(str(folder), engine).close()
    except store.StoreError:
        aside = folder.with_name(f"{folder.name}.{'local-mode' if engine == store.EDGE else 'edge'}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        print(f"[index] {folder} was written by the other embedded engine: moved to {aside}")
    return engine


def serve_command(work: Path, data: Path) -> str:
    """The one command that serves the demo collection and opens its search page."""
    import os
    import shlex

    exe = Path(sys.executable).parent / "dqe-cir"
    prog = os.path.relpath(exe) if exe.is_file() else "dqe-cir"
    args = [prog, "serve", "--bundle", work / "bundle", "--qdrant-path", work / "qdrant", "--collection",
            "synthetic-val", "--catalog-root", data, "--open"]
    return " ".join(shlex.quote(str(a)) for a in args) + "   (then http://127.0.0.1:8000/)"


def register(sub, needs: dict) -> None:
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
    needs["demo"] = DEMO_EXTRA
