"""Search against a real engine: qdrant-edge (Qdrant's Rust segment engine, in-process) as a
benchmark-only stand-in for a Qdrant server, with the project's schema and the project's embeddings.

    # 1. embeddings (once, cached): synthetic images rendered by cirdata/synth.py, encoded with a bundle
    python benchmarks/edge_search.py embed --bundle BUNDLE --root SYNTH_ROOT --items 100000 --cache DIR
    # 2. the first-stage designs side by side (pooled, multivector, token; benchmarks/edge_designs.py):
    #    recall, latency, builds, bytes at each size, and recall against size -> docs/benchmarks/search-edge.md
    python benchmarks/edge_search.py run --cache DIR --sizes 10000 30000 100000
    # 3. the pooled design's storage study (benchmarks/edge_storage.py): oversample ladder, local mode,
    #    fp16/int8, response sizes -> the same page, its own section
    python benchmarks/edge_search.py storage --cache DIR --sizes 10000 100000

Schemas: plugin/designs.py's, converted to edge's types. Queries: composed queries of the synthetic val split
(reference + text) through Encoder.compose and encoder.fusion.fuse. Ground truth: exact MaxSim in numpy over
the same fp32 vectors. This file holds the embeddings step and what both studies share.

Needs the `bench` extra (qdrant-edge-py). Nothing of this is imported by the project.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_averages  # noqa: E402
from encoder.fusion import maxsim, pooled  # noqa: E402

K = 10


loadavg = load_averages  # the name edge_designs.py and edge_storage.py import


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


# --- 1. embeddings --------------------------------------------------------------------------------
def cmd_embed(args) -> None:
    from cirdata.datasets import load_cirr
    from encoder import Encoder

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    enc = Encoder(args.bundle, threads=args.threads, max_batch=64)
    names, paths = [], []
    for split in ("val", "test1", "train"):  # val first: every query's target is in every catalog size
        d = load_cirr(args.root, split)
        names += list(d.images)
        paths += [str(p) for p in d.images.values()]
    if len(names) < args.items:
        raise SystemExit(f"{args.root} has {len(names)} images, fewer than --items {args.items}: "
                         "generate a larger synthetic set (cirdata.synth.generate size='large')")
    names, paths = names[: args.items], paths[: args.items]
    t0 = time.perf_counter()
    parts = []
    chunk = 5000
    for s in range(0, len(paths), chunk):
        part = cache / f"tokens-{s // chunk:03d}.npy"
        if not part.is_file():  # resumable: each chunk is written as soon as it is encoded
            tok = enc.encode_pixels(enc.preprocess(paths[s: s + chunk]))
            np.save(part, tok.astype(np.float32))
        parts.append(part)
        done = min(s + chunk, len(paths))
        rate = done / (time.perf_counter() - t0)
        print(f"[embed] {done}/{len(paths)} images, {rate:.0f}/s so far", flush=True)
    tokens = np.concatenate([np.load(p) for p in parts])
    np.save(cache / "tokens.npy", tokens)
    for p in parts:
        p.unlink()
    embed_s = time.perf_counter() - t0
    val = load_cirr(args.root, "val")
    queries = val.queries[: args.queries]
    t0 = time.perf_counter()
    out = enc.compose([str(val.images[q.reference]) for q in queries], [q.caption for q in queries])
    compose_s = time.perf_counter() - t0
    np.savez(cache / "queries.npz", fused=out.fused(), q_base=out.q_base, q_attrs=out.q_attrs, weights=out.weights,
             attributes=np.array(out.attributes))
    meta = {"names": names, "uris": [str(Path(p).relative_to(Path(args.root).resolve())) for p in paths],
            "root": str(args.root), "bundle": str(args.bundle), "fingerprint": enc.fingerprint,
            "num_query_tokens": enc.spec.num_query_tokens, "embed_dim": enc.spec.embed_dim,
            "queries": [{"reference": q.reference, "caption": q.caption, "target": q.target} for q in queries],
            "embed_seconds": embed_s, "compose_seconds": compose_s, "threads": args.threads,
            "date": datetime.datetime.now().isoformat(timespec="minutes"), "loadavg": loadavg()}
    (cache / "meta.json").write_text(json.dumps(meta))
    print(f"[embed] {len(names)} images in {embed_s:.0f}s ({len(names) / embed_s:.0f}/s), "
          f"{len(queries)} queries composed in {compose_s:.1f}s -> {cache}")


# --- engines --------------------------------------------------------------------------------------
def edge_config(d: int, storage: str = "fp32"):
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeVectorParams,
        HnswIndexConfig,
        MultiVectorComparator,
        MultiVectorConfig,
        ScalarQuantizationConfig,
        ScalarType,
        VectorStorageDatatype,
    )

    # the same choices as plugin.store.create_collection
    dtype = VectorStorageDatatype.Float16 if storage == "fp16" else None
    quant = ScalarQuantizationConfig(type=ScalarType.Int8, always_ram=True) if storage == "int8" else None
    return EdgeConfig(
        vectors={
            "tokens": EdgeVectorParams(size=d, distance=Distance.Dot, datatype=dtype, on_disk=storage == "int8",
                                       multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                                       hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000)),
            "pooled": EdgeVectorParams(size=d, distance=Distance.Cosine, datatype=dtype),
        },
        quantization_config=quant,
    )


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


def edge_request(q: np.ndarray, oversample: int | None, ef: int | None = None, with_vector=False,
                 with_payload=True, quant=None):
    """The same request as CIRSearch._request: exact MaxSim (oversample None) or HNSW prefetch of
    k x oversample on `pooled`, re-scored by MaxSim on `tokens`. `quant`: QuantizationSearchParams
    for the MaxSim stage (int8 storage)."""
    from qdrant_edge import Prefetch, Query, QueryRequest, SearchParams

    vec = q.astype(np.float32).tolist()
    params = SearchParams(quantization=quant) if quant is not None else None
    if oversample is None:
        return QueryRequest(limit=K, query=Query.Nearest([vec], using="tokens"), with_payload=with_payload,
                            with_vector=with_vector, params=params)
    prefetch = Prefetch(limit=K * oversample, query=Query.Nearest(vec, using="pooled"),
                        params=SearchParams(hnsw_ef=ef) if ef else None)
    return QueryRequest(limit=K, query=Query.Nearest([vec], using="tokens"), prefetches=[prefetch],
                        with_payload=with_payload, with_vector=with_vector, params=params)


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


# --- local mode: the embedded default's cost per design ---------------------------------------------
def cmd_local(args) -> None:
    """Each design in qdrant-client's local mode (what `dqe-cir demo` and the tests use; it scans, it has no
    HNSW): upsert time and the time of CIRSearch's own request per query, on the first --items of the cache."""
    from qdrant_client import QdrantClient

    from benchmarks.common import cpu_name, now, shown, write_section
    from encoder import Encoder
    from plugin import CIRSearch, store

    cache = Path(args.cache)
    meta = json.loads((cache / "meta.json").read_text())
    tokens = np.load(cache / "tokens.npy", mmap_mode="r")[: args.items]
    queries = np.load(cache / "queries.npz")["fused"][: args.queries]
    enc = Encoder(meta["bundle"], threads=1)
    started, rows = now(), []
    for name in args.designs:
        client = QdrantClient(":memory:")
        store.create_collection(client, "c", enc.spec, design=name)
        t0 = time.perf_counter()
        for s in range(0, len(tokens), 500):
            store.upsert(client, "c", [store.Item(meta["names"][i], np.asarray(tokens[i]), {"uri": meta["uris"][i]})
                                       for i in range(s, min(len(tokens), s + 500))])
        upsert_s = time.perf_counter() - t0
        search = CIRSearch(client, "c", encoder=enc, exact_below=0)  # the approximate request, as at scale
        times, hits = [], 0
        for q in queries:
            t0 = time.perf_counter()
            found = search._search("c", search.current()[1], q[None], [None], None, K, None, search.oversample, False,
                                   False)[0]
            times.append(time.perf_counter() - t0)
            truth = {meta["names"][j] for j in np.argsort(-maxsim(q[None], np.asarray(tokens))[0])[:K]}
            hits += len(truth & {p["item_id"] for p, _, _ in found})
        rows.append({"design": name, "upsert_s": upsert_s, "p50": pct(times, 50), "p95": pct(times, 95),
                     "recall": hits / (K * len(queries))})
        print(f"[local] {name}: {rows[-1]}", flush=True)
        client.close()
    lines = [f"Command: `python benchmarks/edge_search.py local --cache {shown(cache)} --items {args.items} "
             f"--queries {args.queries} --designs {' '.join(args.designs)} --out {shown(args.out)}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores; started {started}; {len(tokens):,} items, "
             f"{len(queries)} queries, each design's default settings (`plugin.designs.DESIGN_DEFAULTS`).", "",
             "| design | items | upsert s | p50 ms / query | p95 ms / query | Recall@10 vs exact |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {len(tokens):,} | {r['upsert_s']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
              f"{r['recall']:.3f} |" for r in rows]
    write_section(args.out, "edge-local", lines, title="Search against a real engine (qdrant-edge)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="encode the catalog images and compose the queries (cached)")
    e.add_argument("--bundle", required=True)
    e.add_argument("--root", required=True, help="a synthetic set (cirdata.synth.generate), CIRR layout")
    e.add_argument("--items", type=int, default=100000)
    e.add_argument("--queries", type=int, default=200)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache", default="/tmp/edge-bench/emb")
    r = sub.add_parser("run", help="the first-stage designs side by side (reads the cache)")
    from benchmarks import edge_designs

    edge_designs.add_arguments(r)
    lo = sub.add_parser("local", help="each design in qdrant-client's local mode (the embedded default)")
    lo.add_argument("--cache", default="/tmp/edge-bench/emb")
    lo.add_argument("--items", type=int, default=4500)
    lo.add_argument("--queries", type=int, default=20)
    lo.add_argument("--designs", nargs="+", default=["pooled", "multivector", "token"],
                    choices=["pooled", "multivector", "token"])
    lo.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "search-edge.md"))
    rp = sub.add_parser("report", help="rewrite the page's edge-designs section from a run's results JSON")
    rp.add_argument("--results", default="/tmp/edge-bench/work/designs-results.json")
    rp.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "search-edge.md"))
    st = sub.add_parser("storage", help="the pooled design's oversample ladder, fp16/int8, response sizes")
    st.add_argument("--cache", default="/tmp/edge-bench/emb")
    st.add_argument("--workdir", default="/tmp/edge-bench/work")
    st.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    st.add_argument("--oversample", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    st.add_argument("--storage-oversample", type=int, nargs="+", default=[8, 16, 32, 64],
                    help="two-stage oversample factors measured on fp16 and int8 storage")
    st.add_argument("--explain-oversample", type=int, default=32,
                    help="the two-stage request whose responses are measured with and without explain")
    st.add_argument("--ef", type=int, default=256, help="the higher HNSW ef tried besides the default")
    st.add_argument("--local-queries", type=int, nargs="+", default=[200, 20],
                    help="queries measured in local mode, per size (local mode is slow)")
    st.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "search-edge.md"))
    args = ap.parse_args()
    if args.cmd == "embed":
        cmd_embed(args)
    elif args.cmd == "run":
        edge_designs.cmd_designs(args)
    elif args.cmd == "local":
        cmd_local(args)
    elif args.cmd == "report":
        results = json.loads(Path(args.results).read_text())
        results["fits"] = edge_designs.fits(results)  # the fit is the page's reading of the measured recalls
        edge_designs.write_designs_doc(Path(args.out), results)
    else:
        from benchmarks import edge_storage

        edge_storage.cmd_storage(args)


if __name__ == "__main__":
    main()
