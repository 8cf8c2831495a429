"""Query latency of CIRSearch in local mode, split into compose and search time, against a numpy
brute-force MaxSim over the same stored vectors (the floor), all in one run; and the two-stage
search's Recall@10 against exact MaxSim for several oversample factors (which sets the default).

    python benchmarks/search_latency.py --bundle BUNDLE --root runs/demo/synth-demo-0 [--sizes 10000 50000]
        [--queries 200] [--oversample 2 4 8 16] [--out docs/benchmarks/search.md]

Stored items: the synthetic demo set's real images (val + test1 + train, embedded with the bundle, as
many as the largest size needs), topped up with random unit token vectors to reach each size. Queries:
synthetic val queries. Writes only its marked section (`search-latency`) of --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, recorded_command, write_section  # noqa: E402
from cirdata.datasets import load_cirr  # noqa: E402
from encoder import Encoder  # noqa: E402
from encoder.fusion import l2_normalize, maxsim  # noqa: E402
from plugin import CIRSearch, store  # noqa: E402
from plugin.search import design_request  # noqa: E402


def embed_real(enc: Encoder, root: Path, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    names, paths = [], []
    for split in ("val", "test1", "train"):
        d = load_cirr(root, split)
        names += list(d.images)
        paths += list(d.images.values())
    names, paths = names[:limit], paths[:limit]
    tokens = np.concatenate([enc.encode_images(paths[s: s + 256]) for s in range(0, len(paths), 256)])
    return names, tokens


def pct(values, q) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--oversample", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "search.md"))
    args = ap.parse_args()
    from qdrant_client import QdrantClient

    enc = Encoder(args.bundle, threads=args.threads)
    t = time.perf_counter()
    names, real = embed_real(enc, Path(args.root), max(args.sizes))
    print(f"embedded {len(names)} real images in {time.perf_counter() - t:.0f}s", flush=True)
    val = load_cirr(args.root, "val")
    queries = val.queries[: args.queries]
    rng = np.random.default_rng(0)
    rows, recall_rows = [], []
    for size in args.sizes:
        n_real = min(size, len(names))
        extra = l2_normalize(rng.normal(size=(size - n_real, *real.shape[1:]))).astype(np.float32)
        tokens = np.concatenate([real[:n_real], extra])
        ids = names[:n_real] + [f"random-{i}" for i in range(size - n_real)]
        client = QdrantClient(":memory:")
        # the pooled design's two-stage request is what this page studies (search-edge.md: every design)
        store.create_collection(client, "bench", enc.spec, design="pooled")
        for s in range(0, size, 1000):
            store.upsert(client, "bench", [store.Item(ids[i], tokens[i], {}) for i in range(s, min(s + 1000, size))])
        search = CIRSearch(client, "bench", encoder=enc)
        compose_t, exact_t, staged_t, numpy_t = [], [], [], []
        recall = {o: [] for o in args.oversample}
        for q in queries:
            t0 = time.perf_counter()
            parts, _ = search.compose([val.images[q.reference]], [q.caption])
            vec = parts.fused()
            t1 = time.perf_counter()
            compose_t.append(t1 - t0)
            t0 = time.perf_counter()
            exact = client.query_points("bench", **_kw(design_request(vec[0], 10, None, True, 1)))
            exact_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.query_points("bench", **_kw(design_request(vec[0], 10, None, False, search.oversample)))
            staged_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s = maxsim(vec, tokens)[0]
            np.argpartition(-s, 10)[:10]
            numpy_t.append(time.perf_counter() - t0)
            truth = {p.id for p in exact.points}
            for o in (args.oversample if size == args.sizes[0] else []):  # recall: on the first size only
                got = client.query_points("bench", **_kw(design_request(vec[0], 10, None, False, o)))
                recall[o].append(len(truth & {p.id for p in got.points}) / 10)
        rows.append((size, compose_t, exact_t, staged_t, numpy_t))
        if size == args.sizes[0]:
            recall_rows.append((size, {o: float(np.mean(v)) for o, v in recall.items()}))
        print(size, {o: round(float(np.mean(v)), 3) for o, v in recall.items()}, flush=True)
    write(Path(args.out), rows, recall_rows, args, enc)


def _kw(request) -> dict:
    return {"query": request.query, "using": request.using, "prefetch": request.prefetch,
            "query_filter": request.filter, "limit": request.limit, "with_payload": False}


def write(path, rows, recall_rows, args, enc) -> None:
    lines = [f"Command: `{recorded_command('search_latency.py')}`  ",
             f"Machine: {cpu_name()}; qdrant-client local mode (in-process, exact scoring in Python/numpy). Vectors: "
             f"{enc.spec.num_query_tokens} x {enc.spec.embed_dim} per item; {args.queries} synthetic val queries; "
             "milliseconds per query.", "",
             "| items | compose p50 | compose p95 | exact search p50 | p95 | two-stage p50 | p95 | "
             "numpy brute force p50 | p95 | exact / numpy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size, c, e, s, n in rows:
        lines.append(f"| {size:,} | {pct(c, 50):.1f} | {pct(c, 95):.1f} | {pct(e, 50):.1f} | {pct(e, 95):.1f} | "
                     f"{pct(s, 50):.1f} | {pct(s, 95):.1f} | {pct(n, 50):.1f} | {pct(n, 95):.1f} | "
                     f"{pct(e, 50) / pct(n, 50):.1f} |")
    lines += ["", "Two-stage (HNSW prefetch of k x oversample on `pooled`, MaxSim re-score on `tokens`): Recall@10 "
              "against exact MaxSim.", "", "| items | " + " | ".join(f"oversample {o}" for o in args.oversample)
              + " |", "|---" * (len(args.oversample) + 1) + "|"]
    for size, rec in recall_rows:
        lines.append(f"| {size:,} | " + " | ".join(f"{rec[o]:.3f}" for o in args.oversample) + " |")
    write_section(path, "search-latency", lines, title="Search latency (local mode)")


if __name__ == "__main__":
    main()
