"""What the qdrant-edge benchmarks share (edge_search.py, edge_designs.py, edge_storage.py): the engine's
schema for the pooled study, building a shard, the product's request converted for edge, and measuring."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_averages
from encoder.fusion import maxsim, pooled
from plugin import designs

K = 10
loadavg = load_averages


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))



# --- engines --------------------------------------------------------------------------------------
def edge_config(d: int, storage: str = "fp32"):
    """The pooled design's schema as plugin.store.create_collection makes it, converted by plugin.edge."""
    from qdrant_edge import EdgeConfig

    from plugin.edge import scalar_quantization, vector_params
    from plugin.store import quantization_config

    vectors = designs.vectors_config(designs.Design(designs.POOLED), d, storage)
    return EdgeConfig(vectors={n: vector_params(p) for n, p in vectors.items()},
                      quantization_config=scalar_quantization(quantization_config(storage)))


def build_edge(path: Path, tokens: np.ndarray, ids: list[str], payloads: list[dict], storage: str = "fp32",
               optimize: bool = True) -> tuple:
    from qdrant_edge import EdgeShard, Point, UpdateOperation

    shutil.rmtree(path, ignore_errors=True)
    shard = EdgeShard.create(str(path), edge_config(tokens.shape[-1], storage))
    pool = pooled(tokens)
    t0 = time.perf_counter()
    for s in range(0, len(tokens), 1000):
        points = [Point(ids[i], {"tokens": tokens[i].tolist(), "pooled": pool[i].tolist()}, payloads[i])
                  for i in range(s, min(s + 1000, len(tokens)))]
        shard.update(UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    if optimize:
        shard.optimize()
    optimize_s, optimize_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    info = shard.info()
    return shard, {"upsert_s": upsert_s, "optimize_s": optimize_s, "optimize_cpu_s": optimize_cpu_s,
                   "segments": info.segments_count, "points": info.points_count,
                   "indexed_vectors": info.indexed_vectors_count,
                   "disk_mb": sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 1e6}


def edge_request(q: np.ndarray, oversample: int | None, ef: int | None = None, with_vector=False, quant=None):
    """CIRSearch's own request for the pooled design (plugin.search.design_request: exact MaxSim when oversample
    is None, else HNSW prefetch of k x oversample on `pooled` re-scored by MaxSim on `tokens`), converted for edge
    by plugin.edge, the product's converter. `quant`: a qdrant-client QuantizationSearchParams for the MaxSim
    stage instead of the product's int8 request (rescore on both stages): the storage study's variants."""
    from qdrant_client import models

    from plugin.edge import query_request
    from plugin.search import design_request

    request = design_request(q, K, None, exact=oversample is None, oversample=oversample or 1,
                             design=designs.Design(designs.POOLED, hnsw_ef=ef), explain=bool(with_vector),
                             int8=quant is not None)
    if quant is not None:
        request.params = models.SearchParams(quantization=quant)
    return query_request(request)


def measure(queries, truth, engines) -> tuple[dict, dict]:
    """Latency and Recall@10 of each engine (name, fn(query) -> set of row indices, how many queries),
    every engine on one query before the next query, starting at a different engine each time."""
    times = {name: [] for name, _, _ in engines}
    hits = {name: [] for name, _, _ in engines}
    for i, q in enumerate(queries):
        shift = i % len(engines)
        for name, fn, limit in engines[shift:] + engines[:shift]:
            if i >= limit:
                continue
            t = time.perf_counter()
            got = fn(q)
            times[name].append(time.perf_counter() - t)
            hits[name].append(len(truth[i] & got) / K)
    lat = {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in times.items() if v}
    return lat, {k: float(np.mean(v)) for k, v in hits.items() if v}


def numpy_topk(q: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    s = maxsim(q[None], tokens)[0]
    top = np.argpartition(-s, K)[:K]
    return top[np.argsort(-s[top])]
