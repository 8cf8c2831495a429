"""Throughput of the exported image encoder and composer: onnxruntime (CPU) against torch eager,
measured side by side in one run, for the demo config and a production-shaped config.

    python benchmarks/encoder_throughput.py [--out docs/benchmarks/encoder.md] [--threads 2] [--skip-prod]
        [--checkpoint models/demo/dqe-cir-demo.safetensors] [--batches 1 8 32] [--reps N]

Writes only its marked section (`encoder-throughput`) of --out: docs/benchmarks/encoder.md, or
docs/benchmarks/encoder-demo-idle.md for the demo config alone (`--skip-prod --out ...`).

Demo config: --checkpoint (the shipped demo model; a randomly initialised demo model when it is
missing). Production-shaped: a ViT-B/16-sized vision model at 224 px and a BERT-base-sized Q-Former
with 32 query tokens, random weights (timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, recorded_command, write_section  # noqa: E402
from cirdata.vocab import build_tokenizer  # noqa: E402
from encoder.text import TextTokenizer  # noqa: E402
from training.export import export_bundle  # noqa: E402
from training.model import DQECIR, model_config  # noqa: E402
from training.train import load_checkpoint  # noqa: E402

PROD = dict(image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12, qformer_width=768,
            qformer_layers=12, qformer_heads=12, cross_attention_frequency=2, num_query_tokens=32, embed_dim=256,
            max_text_len=40)
LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
SHIPPED = ROOT / "models" / "demo" / "dqe-cir-demo.safetensors"
SECTION = "encoder-throughput"
TITLE = "Encoder throughput: onnxruntime CPU vs torch eager"
TEXTS = ["make the red circle blue", "replace the yellow star with a small purple hexagon", "same but green",
         "turn the blue square into a cross"]


SPREADS: dict[tuple, float] = {}  # (config, batch, what) -> (slowest - fastest) / median of the timed runs


def timeit(fn, reps: int, key: tuple = ()) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    if key:
        SPREADS[key] = (max(times) - min(times)) / median
    return median


def flops_per_item(fn, batch: int) -> float:
    """FLOPs of one call divided by its batch, counted by torch's FlopCounterMode (matmuls, convolutions and
    attention: what dominates; elementwise work is left out, so this is a floor)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # with autograd on: its module hooks fail under no_grad / inference_mode
        fn()
    return counter.get_total_flops() / batch


def gemm_ceiling(threads: int, reps: int = 10) -> tuple[float, str]:
    """(GFLOP/s, which) of the fastest fp32 square matmul this machine's cores reach at `threads` threads, median
    of `reps` each: torch's at n 1024 and 2048 and onnxruntime's own MatMul (its MLAS kernels, what the
    exported encoder runs on) at 2048. The operation that dominates a transformer, measured in the same run."""
    import onnx
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    best = (0.0, "")
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, (2 * n ** 3 / timeit(lambda a=a, b=b: torch.mm(a, b), reps) / 1e9, f"torch mm n={n}"))
    n = 2048
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        sess = session(path, "all", threads)
        feeds = {x: np.random.default_rng(0).normal(size=(n, n)).astype(np.float32) for x in "ab"}
        best = max(best, (2 * n ** 3 / timeit(lambda: sess.run(None, feeds), reps) / 1e9, f"onnxruntime MatMul n={n}"))
    return best


def session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_config(name: str, model: DQECIR, tok: TextTokenizer, batches, reps, threads, levels, log) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        export_bundle(model, tok, tmp, log=lambda *_: None, check=False)
        log(f"  exported {name} in {time.time() - t0:.0f}s")
        sessions = {lvl: (session(Path(tmp) / "image_encoder.onnx", lvl, threads),
                          session(Path(tmp) / "composer.onnx", lvl, threads)) for lvl in levels}
        size = model.cfg.image_size
        for b in batches:
            px = np.random.default_rng(0).normal(size=(b, 3, size, size)).astype(np.float32)
            ids, mask = tok([TEXTS[i % len(TEXTS)] for i in range(b)])
            tpx, tids, tmask = torch.from_numpy(px), torch.from_numpy(ids), torch.from_numpy(mask)
            with torch.inference_mode():
                t_enc = timeit(lambda x=tpx: model.encode_image(x), reps[b], (name, b, "torch_encode"))
                t_comp = timeit(lambda x=tpx, i=tids, m=tmask: model.compose(x, i, m), reps[b],
                                (name, b, "torch_compose"))
            row = {"config": name, "batch": b, "torch_encode": b / t_enc, "torch_compose": b / t_comp,
                   "flops_encode": flops_per_item(lambda x=tpx: model.encode_image(x), b),
                   "flops_compose": flops_per_item(lambda x=tpx, i=tids, m=tmask: model.compose(x, i, m), b)}
            for lvl, (enc, comp) in sessions.items():
                feeds = {"pixel_values": px, "input_ids": ids, "attention_mask": mask}
                row[f"ort_{lvl}_encode"] = b / timeit(lambda e=enc, x=px: e.run(None, {"pixel_values": x}), reps[b],
                                                      (name, b, f"ort_{lvl}_encode"))
                row[f"ort_{lvl}_compose"] = b / timeit(lambda c=comp, f=feeds: c.run(None, f), reps[b],
                                                       (name, b, f"ort_{lvl}_compose"))
            log(f"  {name} batch {b}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                    if k not in ("config", "batch")))
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "encoder.md"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-prod", action="store_true")
    ap.add_argument("--checkpoint", default=str(SHIPPED), help="the demo config's weights (timing does not "
                                                               "depend on them)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reps", type=int, default=None,
                    help="timed runs per measurement (default: 20/10/5 for the demo config at batch 1/8/32, "
                         "7/5/3 for prod)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = print
    rows = []
    if Path(args.checkpoint).is_file():
        model, tok, _ = load_checkpoint(args.checkpoint)
    elif Path(args.checkpoint) != SHIPPED:
        raise SystemExit(f"--checkpoint {args.checkpoint}: no such file")
    else:  # no shipped model in this checkout: a random demo model times the same
        tok = TextTokenizer(build_tokenizer(), 40)
        model = DQECIR(model_config("demo", vocab_size=tok.vocab_size))
    model.eval()

    def reps(table: dict[int, int]) -> dict[int, int]:
        return {b: args.reps or table.get(b, 1) for b in args.batches}

    args.gemm_before, args.gemm_which = gemm_ceiling(args.threads)
    log(f"  fp32 GEMM ceiling: {args.gemm_before:.0f} GFLOP/s at {args.threads} threads ({args.gemm_which})")
    rows += bench_config("demo", model, tok, args.batches, reps({1: 20, 8: 10, 32: 5}), args.threads, list(LEVELS),
                         log)
    if not args.skip_prod:
        tok_p = TextTokenizer(build_tokenizer(), PROD["max_text_len"])
        torch.manual_seed(0)
        prod = DQECIR(model_config("demo", vocab_size=tok_p.vocab_size, **PROD)).eval()
        log(f"  production-shaped model: {sum(p.numel() for p in prod.parameters()) / 1e6:.0f}M parameters")
        rows += bench_config("prod", prod, tok_p, args.batches, reps({1: 7, 8: 5, 32: 3}), args.threads,
                             ["disabled", "all"], log)
    args.gemm_after, which = gemm_ceiling(args.threads)
    log(f"  fp32 GEMM ceiling after: {args.gemm_after:.0f} GFLOP/s ({which})")
    args.load = load_averages()
    write_report(Path(args.out), rows, args)


def write_report(path: Path, rows: list[dict], args) -> None:
    lines = [
        f"Command: `{recorded_command('encoder_throughput.py')}`  ",
        f"Machine: {cpu_name()}, {args.threads} threads for both engines; torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}. Measured side by side in one run; images (or queries) per second, "
        "median of repeated runs after a warm-up.",
        "",
        f"The machine's fp32 GEMM ceiling, measured in the same run at {args.threads} threads (the fastest of torch's "
        f"square matmul at n 1024 and 2048 and onnxruntime's MatMul at 2048, median of 10 each; the fastest was "
        f"{args.gemm_which}): {args.gemm_before:.0f} GFLOP/s before the models, {args.gemm_after:.0f} after. "
        f"Load averages at the end: {args.load}.",
        "",
        "Ratio = onnxruntime (all graph optimisations) / torch eager. GFLOP / item: torch's FlopCounterMode on "
        "one call (matmuls and attention; a floor). Of ceiling = ORT items/s x FLOPs per item / the lower GEMM "
        "ceiling. Spread = (slowest - fastest) / median of the timed runs, ORT encode / torch encode.",
        "",
        "| config | batch | GFLOP / image | torch encode | ORT encode | ratio | ORT of ceiling | spread | "
        "GFLOP / query | torch compose | ORT compose | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ceiling = min(args.gemm_before, args.gemm_after) * 1e9
    for r in rows:
        key = (r["config"], r["batch"])
        spread = f"{SPREADS.get((*key, 'ort_all_encode'), 0):.0%} / {SPREADS.get((*key, 'torch_encode'), 0):.0%}"
        lines.append(f"| {r['config']} | {r['batch']} | {r['flops_encode'] / 1e9:.2f} | {r['torch_encode']:.1f} | "
                     f"{r['ort_all_encode']:.1f} | {r['ort_all_encode'] / r['torch_encode']:.2f} | "
                     f"{r['ort_all_encode'] * r['flops_encode'] / ceiling:.2f} | {spread} | "
                     f"{r['flops_compose'] / 1e9:.2f} | {r['torch_compose']:.1f} | "
                     f"{r['ort_all_compose']:.1f} | {r['ort_all_compose'] / r['torch_compose']:.2f} |")
    lines += ["", "## Graph optimisation levels (onnxruntime, images or queries per second)", "",
              "| config | batch | level | encode | compose |", "|---|---|---|---|---|"]
    for r in rows:
        for lvl in LEVELS:
            if f"ort_{lvl}_encode" in r:
                lines.append(f"| {r['config']} | {r['batch']} | {lvl} | {r[f'ort_{lvl}_encode']:.1f} | "
                             f"{r[f'ort_{lvl}_compose']:.1f} |")
    write_section(path, SECTION, lines, title=TITLE)


if __name__ == "__main__":
    main()
