"""int8 (onnxruntime dynamic quantisation, `dqe-cir export --quantize int8`) against the fp32 bundle of
the same checkpoint, on CPU: throughput of the image encoder and the composer at batch 1 and 32, on 1
and 2 onnxruntime threads, and the CIRR-protocol metrics on the synthetic val split, computed through
the bundles (Encoder + MaxSim in numpy; no Qdrant, no torch at scoring time). One run, side by side.

    python benchmarks/encoder_int8.py [--checkpoint models/demo/dqe-cir-demo.safetensors]
        [--root runs/demo/synth-demo-0] [--size demo] [--out docs/benchmarks/encoder-int8.md]
        [--threads 1 2] [--batches 1 32] [--reps N]

--root is made when missing (`dqe-cir data synth --out ROOT --size SIZE --seed 0`). Writes only its
marked section (`encoder-int8`) of --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, now, recorded_command, shown, write_section  # noqa: E402
from cirdata.datasets import load_cirr  # noqa: E402
from cirdata.protocol import cirr_queries, rank_gallery, ranked_metrics  # noqa: E402
from encoder import Encoder  # noqa: E402
from encoder.fusion import maxsim  # noqa: E402

SECTION = "encoder-int8"
TITLE = "int8 encoder on CPU (dynamic quantisation) against fp32"
TEXTS = ["make the red circle blue", "replace the yellow star with a small purple hexagon", "same but green"]


def median_rate(fn, batch: int, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def throughput(bundles: dict[str, Path], threads: int, batches=(1, 32), reps_override: int | None = None
               ) -> list[dict]:
    rows = []
    encoders = {name: Encoder(path, threads=threads, providers=["CPUExecutionProvider"]) for name, path in
                bundles.items()}
    size = next(iter(encoders.values())).spec.image_size
    for batch in batches:
        reps = reps_override or (200 if batch == 1 else 30)
        px = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
        row = {"threads": threads, "batch": batch}
        for _ in range(2):  # two rounds, alternating the engines, keep the better of each
            for name, enc in encoders.items():
                e = median_rate(lambda x=px, en=enc: en.encode_pixels(x), batch, reps)
                c = median_rate(lambda x=px, t=texts, en=enc: en.compose_pixels(x, t), batch, reps)
                row[f"{name}_encode"] = max(row.get(f"{name}_encode", 0.0), e)
                row[f"{name}_compose"] = max(row.get(f"{name}_compose", 0.0), c)
        rows.append(row)
        print(row, flush=True)
    return rows


def val_metrics(bundle: Path, root: Path) -> dict:
    data = load_cirr(root, "val")
    enc = Encoder(bundle, max_batch=64, providers=["CPUExecutionProvider"])
    gallery = data.gallery
    tokens = enc.encode_images([str(data.images[n]) for n in gallery])
    queries = [q for q in data.queries if q.target is not None]
    data.queries = queries
    parts = [enc.compose([str(data.images[q.reference]) for q in queries[s: s + 64]],
                         [q.caption for q in queries[s: s + 64]]) for s in range(0, len(queries), 64)]
    q = np.concatenate([p.fused() for p in parts])
    scores = np.concatenate([maxsim(q[s: s + 100], tokens) for s in range(0, len(q), 100)])
    protocol_queries = cirr_queries(data)
    metrics = ranked_metrics("cirr", protocol_queries, rank_gallery(gallery, protocol_queries, scores))
    return {**metrics, "queries": len(queries)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "demo" / "dqe-cir-demo.safetensors"))
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--size", default="demo", choices=["small", "demo", "large"],
                    help="the synthetic set's size, when --root has to be made")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "encoder-int8.md"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime threads, one row set each")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default 200 at batch 1, "
                                                           "30 above)")
    args = ap.parse_args()
    from cirdata.synth import ensure_synth
    from training.checkpoint import load_checkpoint
    from training.errors import TrainingError
    from training.export import export_bundle

    ensure_synth(args.root, size=args.size, seed=0)
    started, load_before = now(), load_averages()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, _ = load_checkpoint(args.checkpoint)
        bundles = {"fp32": Path(tmp) / "fp32", "int8": Path(tmp) / "int8"}
        parity = {}
        for name, path in bundles.items():
            log: list[str] = []
            try:
                export_bundle(model, tok, path, quantize="int8" if name == "int8" else None, log=log.append)
            except TrainingError as e:  # `dqe-cir export` refuses it; the bundle is written first: measured anyway
                log.append(f"[export] REFUSED by the parity check: {e}")
            parity[name] = [line.replace("[export] ", "") for line in log
                            if "parity" in line or "ranking" in line or "REFUSED" in line]
            print("\n".join(log), flush=True)
        rows = [r for t in args.threads for r in throughput(bundles, t, args.batches, args.reps)]
        metrics = {}
        for name, path in bundles.items():
            t = time.perf_counter()
            metrics[name] = val_metrics(path, Path(args.root))
            print(name, metrics[name], f"{time.perf_counter() - t:.0f}s", flush=True)
    write_report(Path(args.out), args, rows, metrics, parity, started, load_before, load_averages())


def write_report(path: Path, args, rows, metrics, parity, started, load_before, load_after) -> None:
    n_val = metrics["fp32"].get("queries")
    lines = [f"Command: `{recorded_command('encoder_int8.py')}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, onnxruntime CPU. Started {started} (load averages "
             f"1/5/15 min: {load_before}), finished {now()} ({load_after}). One run; "
             "images (or queries) per second, median of repeated runs after a warm-up, the better of two rounds "
             "that alternate the engines.", "",
             "## Throughput", "",
             "| threads | batch | fp32 encode | int8 encode | x | fp32 compose | int8 compose | x |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['batch']} | {r['fp32_encode']:.0f} | {r['int8_encode']:.0f} | "
                     f"{r['int8_encode'] / r['fp32_encode']:.2f} | {r['fp32_compose']:.0f} | "
                     f"{r['int8_compose']:.0f} | {r['int8_compose'] / r['fp32_compose']:.2f} |")
    keys = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Avg"]
    lines += ["", "## Retrieval on the synthetic val split (CIRR protocol, through the bundles)", ""]
    if n_val:
        lines += [f"{n_val:,} val queries of `{shown(args.root)}`.", ""]
    lines += ["| bundle | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    lines.append("| int8 - fp32 | " + " | ".join(f"{metrics['int8'][k] - metrics['fp32'][k]:+.2f}" for k in keys)
                 + " |")
    lines += ["", "## Export checks (against torch)", ""]
    for name, entries in parity.items():
        lines += [f"- {name}: " + "; ".join(entries)]
    write_section(path, SECTION, lines, title=TITLE)


if __name__ == "__main__":
    main()
