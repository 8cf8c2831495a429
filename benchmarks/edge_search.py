"""Search against a real engine: qdrant-edge (Qdrant's Rust segment engine, in-process) as a
benchmark-only stand-in for a Qdrant server, with the project's schema and the project's embeddings.

    # 1. embeddings (once, cached): synthetic images rendered by training/synth.py, encoded with a bundle
    python benchmarks/edge_search.py embed --bundle BUNDLE --root SYNTH_ROOT --items 100000 --cache DIR
    # 2. the tables: recall and latency at each size, fp16/int8, response sizes -> docs/benchmarks/search-edge.md
    python benchmarks/edge_search.py run --cache DIR --sizes 10000 100000

Schema (plugin/store.py): `tokens` multivector Q x D, dot product, MAX_SIM, no HNSW graph (m=0);
`pooled` D, cosine, HNSW (Qdrant's defaults m=16, ef_construct=100); built with `optimize()`.
Queries: composed queries of the synthetic val split (reference + text) through Encoder.compose and
encoder.fusion.fuse. Ground truth: exact MaxSim in numpy over the same fp32 vectors.

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

from benchmarks.common import cpu_name  # noqa: E402
from encoder.fusion import l2_normalize, maxsim, pooled  # noqa: E402

K = 10
MARK_START, MARK_END = "<!-- edge-results:start -->", "<!-- edge-results:end -->"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


# --- 1. embeddings --------------------------------------------------------------------------------
def cmd_embed(args) -> None:
    from encoder import Encoder
    from training.datasets import load_cirr

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
                         "generate a larger synthetic set (training.synth.generate size='large')")
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


def build_local(tokens: np.ndarray, names: list[str], uris: list[str], meta: dict):
    from qdrant_client import QdrantClient

    from encoder.bundle import read_bundle
    from plugin import store

    client = QdrantClient(":memory:")
    store.create_collection(client, "bench", read_bundle(meta["bundle"]))
    t0 = time.perf_counter()
    for s in range(0, len(tokens), 1000):
        store.upsert(client, "bench", [store.Item(names[i], tokens[i], {"uri": uris[i]})
                                       for i in range(s, min(s + 1000, len(tokens)))])
    return client, time.perf_counter() - t0


def local_exact(client, q: np.ndarray):
    from plugin import store

    return client.query_points("bench", query=[q.astype(np.float32).tolist()], using=store.TOKENS, limit=K,
                               with_payload=True, with_vectors=False)


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


# --- 2. the run ------------------------------------------------------------------------------------
def cmd_run(args) -> None:
    from plugin import store

    cache = Path(args.cache)
    meta = json.loads((cache / "meta.json").read_text())
    all_tokens = np.load(cache / "tokens.npy", mmap_mode="r")
    qz = np.load(cache / "queries.npz")
    queries = qz["fused"]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "loadavg": loadavg()}
    print(f"[run] start {started}", flush=True)
    results = {"sizes": [], "args": vars(args), "started": started, "cpu": cpu_name(), "cores": os.cpu_count(),
               "embed": {k: meta[k] for k in ("embed_seconds", "compose_seconds", "date", "loadavg", "threads")}}
    import qdrant_edge

    results["versions"] = {"qdrant_edge": getattr(qdrant_edge, "__version__", "0.9.0")}
    for size in args.sizes:
        tokens = np.ascontiguousarray(all_tokens[:size])
        names, uris = meta["names"][:size], meta["uris"][:size]
        ids = [store.point_id(n) for n in names]
        by_id = {pid: i for i, pid in enumerate(ids)}
        payloads = [{"item_id": n, "uri": u} for n, u in zip(names, uris, strict=True)]
        truth = [set(numpy_topk(q, tokens).tolist()) for q in queries]
        row = {"size": size, "build": {}}
        t0 = time.perf_counter()
        shard, row["build"]["fp32"] = build_edge(work / f"edge-{size}-fp32", tokens, ids, payloads)
        print(f"[run] {size}: edge fp32 built {row['build']['fp32']} ({time.perf_counter() - t0:.0f}s)", flush=True)
        local, local_upsert = (None, 0.0)
        n_local = min(args.local_queries[min(len(args.local_queries) - 1, args.sizes.index(size))], len(queries))
        if n_local:
            local, local_upsert = build_local(tokens, names, uris, meta)
            print(f"[run] {size}: local mode filled in {local_upsert:.0f}s", flush=True)
        row["local_upsert_s"], row["local_queries"] = local_upsert, n_local
        def ids_of(points, by_id=by_id):
            return {by_id[str(p.id)] for p in points}

        # the full scans, and then the two-stage requests, each group on the same query in a rotating
        # order (a scan of 40-400 MB evicts the caches of whatever runs next)
        scans = [("edge exact", lambda q, s=shard: ids_of(s.query(edge_request(q, None))), len(queries)),
                 ("numpy", lambda q, t=tokens: set(numpy_topk(q, t).tolist()), len(queries))]
        if n_local:
            scans.insert(0, ("local exact", lambda q, c=local: ids_of(local_exact(c, q).points), n_local))
        staged = [(f"edge {o} {ef}", lambda q, o=o, ef=ef, s=shard: ids_of(s.query(edge_request(q, o, ef))),
                   len(queries)) for ef in (None, args.ef) for o in args.oversample]
        lat, rec = measure(queries, truth, scans)
        lat2, rec2 = measure(queries, truth, staged)
        lat.update(lat2)
        rec.update(rec2)
        row["latency"], row["recall"] = lat, rec
        print(f"[run] {size}: {json.dumps(row['recall'])}", flush=True)
        scans = local = None  # local mode holds its copy of the vectors in Python objects
        if size == args.sizes[0]:
            results["response"] = response_sizes(shard, queries, meta, work, args.explain_oversample)
        shard.close()
        shutil.rmtree(work / f"edge-{size}-fp32", ignore_errors=True)
        # fp16 and int8 storage: recall against the fp32 exact MaxSim, same queries
        row["storage"] = {}
        from qdrant_edge import QuantizationSearchParams

        requery = QuantizationSearchParams(rescore=True, oversampling=4.0)
        originals = QuantizationSearchParams(ignore=True)
        for storage in ("fp16", "int8"):
            t0 = time.perf_counter()
            shard, row["build"][storage] = build_edge(work / f"edge-{size}-{storage}", tokens, ids, payloads, storage)
            print(f"[run] {size}: edge {storage} built {row['build'][storage]} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            variants = [("exact", None, None)] + [(f"two-stage {o}", o, None) for o in args.storage_oversample]
            if storage == "int8":
                variants += [("exact, rescore + oversampling 4", None, requery),
                             ("exact, originals (quantization ignored)", None, originals)]
                variants += [(f"two-stage {o}, rescore + oversampling 4", o, requery)
                             for o in args.storage_oversample]
            engines = [(name, lambda q, o=o, qp=qp, s=shard: ids_of(s.query(edge_request(q, o, quant=qp))),
                        len(queries)) for name, o, qp in variants]
            slat, srec = measure(queries, truth, engines)
            row["storage"][storage] = {name: {"recall": srec[name], **slat[name]} for name, _, _ in variants}
            print(f"[run] {size}: {storage} {json.dumps(row['storage'][storage])}", flush=True)
            shard.close()
            shutil.rmtree(work / f"edge-{size}-{storage}", ignore_errors=True)
        results["sizes"].append(row)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    results["finished"] = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "loadavg": loadavg()}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    write_doc(Path(args.out), results)


# --- lean responses --------------------------------------------------------------------------------
def response_sizes(shard, queries, meta, work: Path, oversample: int) -> dict:
    """Bytes a client receives for k=10 hits with and without the hits' token vectors (explain), in
    the two wire forms of a Qdrant server: REST JSON and gRPC protobuf, converted from the engine's
    own result points by qdrant-client's models; and the client-side time to decode each."""
    out = {"demo": measure_responses(shard, queries, meta["num_query_tokens"], meta["embed_dim"], oversample),
           "oversample": oversample}
    # BLIP-2 dims: random unit token vectors (the byte count depends on the shape, not on the values)
    q_, d_ = 32, 256
    rng = np.random.default_rng(0)
    n = 2000
    tok = l2_normalize(rng.normal(size=(n, q_, d_))).astype(np.float32)
    names = [f"blip2-{i:06d}" for i in range(n)]
    from plugin import store

    big, _ = build_edge(work / "edge-blip2", tok, [store.point_id(x) for x in names],
                        [{"item_id": x, "uri": f"./val/{x}.png"} for x in names])
    qs = l2_normalize(rng.normal(size=(len(queries), d_))).astype(np.float32)
    out["blip2"] = measure_responses(big, qs, q_, d_, oversample)
    big.close()
    shutil.rmtree(work / "edge-blip2", ignore_errors=True)
    return out


def measure_responses(shard, queries, q_tokens: int, dim: int, oversample: int) -> dict:
    from qdrant_client import grpc
    from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc
    from qdrant_client.http import models  # the REST models (qdrant_client.models.QueryResponse is fastembed's)

    res = {"Q": q_tokens, "D": dim}
    for label, with_vector in (("lean", False), ("explain", ["tokens"])):
        engine_t, json_b, pb_b, json_t, pb_t = [], [], [], [], []
        for q in queries:
            t = time.perf_counter()
            hits = shard.query(edge_request(q, oversample, with_vector=with_vector))
            engine_t.append(time.perf_counter() - t)
            points = [models.ScoredPoint(id=str(h.id), version=h.version, score=h.score, payload=h.payload,
                                         vector=h.vector or None) for h in hits]
            body = models.QueryResponse(points=points).model_dump_json(exclude_none=True).encode()
            json_b.append(len(body))
            msg = grpc.QueryResponse(result=[RestToGrpc.convert_scored_point(p) for p in points]).SerializeToString()
            pb_b.append(len(msg))
            t = time.perf_counter()
            models.QueryResponse.model_validate_json(body)
            json_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            [GrpcToRest.convert_scored_point(p) for p in grpc.QueryResponse.FromString(msg).result]
            pb_t.append(time.perf_counter() - t)
        res[label] = {"engine_p50": pct(engine_t, 50), "engine_p95": pct(engine_t, 95),
                      "json_bytes": float(np.mean(json_b)), "protobuf_bytes": float(np.mean(pb_b)),
                      "json_decode_p50": pct(json_t, 50), "protobuf_decode_p50": pct(pb_t, 50)}
    return res


# --- the report -------------------------------------------------------------------------------------
def write_doc(path: Path, r: dict) -> None:
    a = r["args"]
    lines = [MARK_START, "", "## Measured", "",
             f"Command: `python benchmarks/edge_search.py run --cache {a['cache']} --sizes "
             f"{' '.join(map(str, a['sizes']))} --local-queries {' '.join(map(str, a['local_queries']))} "
             f"--ef {a['ef']}`  ",
             f"Machine: {r['cpu']}, {r['cores']} cores; qdrant-edge-py {r['versions']['qdrant_edge']}. "
             f"Started {r['started']['date']} (load averages 1/5/15 min: {r['started']['loadavg']}), finished "
             f"{r['finished']['date']} (load averages {r['finished']['loadavg']}).  ",
             f"Embeddings: encoded {r['embed']['date']} in {r['embed']['embed_seconds']:.0f} s with "
             f"{r['embed']['threads']} onnxruntime threads (load averages then: {r['embed']['loadavg']}).", ""]
    o_list, ef = a["oversample"], a["ef"]
    lines += ["### Recall@10 of two-stage against exact MaxSim (fp32)", "",
              "| items | HNSW ef | " + " | ".join(f"oversample {o}" for o in o_list) + " | edge exact | local exact |",
              "|---" * (len(o_list) + 4) + "|"]
    for row in r["sizes"]:
        for e in (None, ef):
            rc = row["recall"]
            lines.append(f"| {row['size']:,} | {e or 'default'} | "
                         + " | ".join(f"{rc[f'edge {o} {e}']:.3f}" for o in o_list)
                         + f" | {rc['edge exact']:.3f} | "
                         + (f"{rc['local exact']:.3f}" if "local exact" in rc else "-") + " |")
    lines += ["", "### Latency per query (ms), side by side in one run", "",
              "| items | engine | queries | p50 | p95 |", "|---|---|---|---|---|"]
    for row in r["sizes"]:
        lt = row["latency"]
        order = ["local exact", "edge exact", "numpy"] + [f"edge {o} None" for o in o_list] + \
                [f"edge {o} {ef}" for o in o_list]
        for key in order:
            if key not in lt:
                continue
            label = {"local exact": "local mode, exact MaxSim", "edge exact": "edge, exact MaxSim",
                     "numpy": "numpy brute force MaxSim"}.get(key)
            if label is None:
                _, o, e = key.split()
                label = f"edge, two-stage, oversample {o}, ef {'default' if e == 'None' else e}"
            lines.append(f"| {row['size']:,} | {label} | {lt[key]['n']} | {lt[key]['p50']:.2f} | "
                         f"{lt[key]['p95']:.2f} |")
    lines += ["", "### fp16 and int8 storage on edge: Recall@10 against fp32 exact MaxSim", "",
              "| items | storage | request | Recall@10 | p50 ms | p95 ms |", "|---|---|---|---|---|---|"]
    for row in r["sizes"]:
        for storage, variants in row["storage"].items():
            for name, v in variants.items():
                lines.append(f"| {row['size']:,} | {storage} | {name} | {v['recall']:.3f} | {v['p50']:.2f} | "
                             f"{v['p95']:.2f} |")
    lines += ["", "### Index builds", "",
              "| items | storage | upsert s | optimize() wall s | optimize() CPU s | segments | indexed vectors | "
              "on disk MB |", "|---|---|---|---|---|---|---|---|"]
    for row in r["sizes"]:
        for storage, b in row["build"].items():
            lines.append(f"| {row['size']:,} | {storage} | {b['upsert_s']:.0f} | {b['optimize_s']:.0f} | "
                         f"{b['optimize_cpu_s']:.0f} | {b['segments']} | {b['indexed_vectors']:,} | "
                         f"{b['disk_mb']:.0f} |")
        if row["local_queries"]:
            lines.append(f"| {row['size']:,} | local mode (fill) | {row['local_upsert_s']:.0f} | - | - | - | - | - |")
    resp = r.get("response")
    if resp:
        lines += ["", "### Response size with and without explain (k=10, payload = item_id + uri, two-stage "
                  f"request with oversample {resp['oversample']})", "",
                  "| dims (Q x D) | response | REST JSON bytes | gRPC protobuf bytes | engine p50 ms | "
                  "JSON decode p50 ms | protobuf decode p50 ms |", "|---|---|---|---|---|---|---|"]
        for key in ("demo", "blip2"):
            m = resp[key]
            for label in ("lean", "explain"):
                v = m[label]
                lines.append(f"| {m['Q']} x {m['D']} | {'no vectors' if label == 'lean' else 'explain: tokens'} | "
                             f"{v['json_bytes']:,.0f} | {v['protobuf_bytes']:,.0f} | {v['engine_p50']:.2f} | "
                             f"{v['json_decode_p50']:.2f} | {v['protobuf_decode_p50']:.2f} |")
    lines += ["", MARK_END]
    block = "\n".join(lines)
    text = path.read_text() if path.is_file() else "# Search against a real engine (qdrant-edge)\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed", help="encode the catalog images and compose the queries (cached)")
    e.add_argument("--bundle", required=True)
    e.add_argument("--root", required=True, help="a synthetic set (training.synth.generate), CIRR layout")
    e.add_argument("--items", type=int, default=100000)
    e.add_argument("--queries", type=int, default=200)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--cache", default="/tmp/edge-bench/emb")
    r = sub.add_parser("run", help="build the engines and measure (reads the cache)")
    r.add_argument("--cache", default="/tmp/edge-bench/emb")
    r.add_argument("--workdir", default="/tmp/edge-bench/work")
    r.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    r.add_argument("--oversample", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    r.add_argument("--storage-oversample", type=int, nargs="+", default=[8, 16, 32, 64],
                   help="two-stage oversample factors measured on fp16 and int8 storage")
    r.add_argument("--explain-oversample", type=int, default=32,
                   help="the two-stage request whose responses are measured with and without explain")
    r.add_argument("--ef", type=int, default=256, help="the higher HNSW ef tried besides the default")
    r.add_argument("--local-queries", type=int, nargs="+", default=[200, 20],
                   help="queries measured in local mode, per size (local mode is slow)")
    r.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "search-edge.md"))
    args = ap.parse_args()
    {"embed": cmd_embed, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
