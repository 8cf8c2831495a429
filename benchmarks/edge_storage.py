"""The storage study on qdrant-edge (`python benchmarks/edge_search.py storage`): the pooled design's two-stage
request at an oversample ladder and two HNSW ef, local mode and edge exact MaxSim, fp16 and int8 storage, and
the response sizes with and without explain. Writes the `edge-results` section of docs/benchmarks/search-edge.md.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_name, shown, write_section
from benchmarks.edge_common import K, build_edge, edge_request, loadavg, measure, numpy_topk, pct
from encoder.fusion import l2_normalize

SECTION, PAGE_TITLE = "edge-results", "Search against a real engine (qdrant-edge)"


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


# --- the run ------------------------------------------------------------------------------------------
def cmd_storage(args) -> None:
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
        from qdrant_client.models import QuantizationSearchParams

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
    lines = ["## Measured", "",
             f"Command: `python benchmarks/edge_search.py storage --cache {a['cache']} --sizes "
             f"{' '.join(map(str, a['sizes']))} --local-queries {' '.join(map(str, a['local_queries']))} "
             f"--ef {a['ef']} --out {shown(path)}`  ",
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
    write_section(path, SECTION, lines, title=PAGE_TITLE)
