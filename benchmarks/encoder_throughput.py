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

from benchmarks.common import cpu_name, recorded_command, write_section  # noqa: E402
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


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


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
                t_enc = timeit(lambda x=tpx: model.encode_image(x), reps[b])
                t_comp = timeit(lambda x=tpx, i=tids, m=tmask: model.compose(x, i, m), reps[b])
            row = {"config": name, "batch": b, "torch_encode": b / t_enc, "torch_compose": b / t_comp}
            for lvl, (enc, comp) in sessions.items():
                feeds = {"pixel_values": px, "input_ids": ids, "attention_mask": mask}
                row[f"ort_{lvl}_encode"] = b / timeit(lambda e=enc, x=px: e.run(None, {"pixel_values": x}), reps[b])
                row[f"ort_{lvl}_compose"] = b / timeit(lambda c=comp, f=feeds: c.run(None, f), reps[b])
            log(f"  {name} batch {b}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()
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
                         "3/2/1 for prod)")
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

    rows += bench_config("demo", model, tok, args.batches, reps({1: 20, 8: 10, 32: 5}), args.threads, list(LEVELS),
                         log)
    if not args.skip_prod:
        tok_p = TextTokenizer(build_tokenizer(), PROD["max_text_len"])
        torch.manual_seed(0)
        prod = DQECIR(model_config("demo", vocab_size=tok_p.vocab_size, **PROD)).eval()
        log(f"  production-shaped model: {sum(p.numel() for p in prod.parameters()) / 1e6:.0f}M parameters")
        rows += bench_config("prod", prod, tok_p, args.batches, reps({1: 3, 8: 2, 32: 1}), args.threads,
                             ["disabled", "all"], log)
    write_report(Path(args.out), rows, args)


def write_report(path: Path, rows: list[dict], args) -> None:
    lines = [
        f"Command: `{recorded_command('encoder_throughput.py')}`  ",
        f"Machine: {cpu_name()}, {args.threads} threads for both engines; torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}. Measured side by side in one run; images (or queries) per second, "
        "median of repeated runs after a warm-up.",
        "",
        "Ratio = onnxruntime (all graph optimisations) / torch eager.",
        "",
        "| config | batch | torch encode | ORT encode | ratio | torch compose | ORT compose | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['batch']} | {r['torch_encode']:.1f} | {r['ort_all_encode']:.1f} | "
                     f"{r['ort_all_encode'] / r['torch_encode']:.2f} | {r['torch_compose']:.1f} | "
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
