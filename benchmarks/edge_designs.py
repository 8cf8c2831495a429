"""The first-stage designs side by side on qdrant-edge (issue #24): `python benchmarks/edge_search.py run`.

Per catalog size, every design is built from the cached embeddings with the layout plugin/designs.py gives a
Qdrant collection (vectors_config, item_points, bookkeeping_indexes, converted to edge's types), filled with
`update`, indexed with `optimize()`, and queried with the request CIRSearch sends for it:

  pooled       HNSW prefetch of k x oversample on `pooled`, MaxSim on `tokens` (edge_search.edge_request)
  multivector  [q] on `tokens` (MAX_SIM, HNSW m > 0), with SearchParams(hnsw_ef)
  token        a grouped query (group_by item_id, group size 1) on `token`. Edge has no group_by, so
               grouped_query replays what the server does for it (Qdrant lib/collection/src/grouping/
               group_by.rs): requests of limit k, each leaving out the groups already filled and the points
               already seen, until k groups are filled (at most 5 + 5 requests), then the payloads.

Measured against exact MaxSim in numpy: Recall@10, p50/p95 latency (every variant on a query before the next
query, rotating which goes first), build time, bytes on disk by part (vectors, HNSW graph, payload + its
indexes; the WAL left out) after optimize(); each design's exact request on a few queries checks the layout
and the request (it must give recall 1.000). Then, per variant, a power-law fit of the miss rate
(1 - Recall@10) against the catalog size and the size at which Recall@10 would fall below 0.99.
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
from benchmarks.edge_common import K, edge_request, loadavg, measure, numpy_topk
from plugin import designs
from plugin.search import DEFAULT_OVERSAMPLE

SECTION, PAGE_TITLE = "edge-designs", "Search against a real engine (qdrant-edge)"
TARGET = 0.99
MAX_GROUP_REQUESTS = 5  # group_by.rs: MAX_GET_GROUPS_REQUESTS (and as many MAX_GROUP_FILLING_REQUESTS)


# --- building ------------------------------------------------------------------------------------
def disk_bytes(path: Path) -> dict:
    """Bytes on disk by part: allocated blocks, at most the file's length (vector chunks are sparse mmaps)."""
    out = {"vectors": 0, "hnsw": 0, "payload": 0, "other": 0}
    for f in path.rglob("*"):
        parts = f.relative_to(path).parts
        if not f.is_file() or parts[0] == "wal":
            continue
        st = f.stat()
        size = min(st.st_size, st.st_blocks * 512)
        key = next((k for prefix, k in (("vector_storage", "vectors"), ("vector_index", "hnsw"),
                                        ("payload", "payload")) if any(p.startswith(prefix) for p in parts)), "other")
        out[key] += size
    return out


def build_design(path: Path, design: designs.Design, tokens: np.ndarray, names: list[str], uris: list[str],
                 indexing_threshold_kb: int | None = None):
    from qdrant_edge import EdgeConfig, EdgeOptimizersConfig, EdgeShard, Point, UpdateOperation

    from plugin.edge import payload_type, vector_params

    shutil.rmtree(path, ignore_errors=True)
    vectors = designs.vectors_config(design, tokens.shape[-1], "fp32")
    optimizers = EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb) if indexing_threshold_kb else None
    shard = EdgeShard.create(str(path), EdgeConfig(vectors={n: vector_params(p) for n, p in vectors.items()},
                                                   optimizers=optimizers))
    for field, kind in designs.bookkeeping_indexes(design).items():  # as create_collection: before any point
        shard.update(UpdateOperation.create_field_index(field, payload_type(kind)))
    t0 = time.perf_counter()
    for s in range(0, len(tokens), 1000):
        points = [Point(p.id, p.vector, p.payload) for i in range(s, min(s + 1000, len(tokens)))
                  for p in designs.item_points(design, names[i], tokens[i], {"item_id": names[i], "uri": uris[i]})]
        shard.update(UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    shard.optimize()
    optimize_s, optimize_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    shard.flush()
    info = shard.info()
    return shard, {"upsert_s": upsert_s, "optimize_s": optimize_s, "optimize_cpu_s": optimize_cpu_s,
                   "segments": info.segments_count, "points": info.points_count,
                   "indexed_vectors": info.indexed_vectors_count, "disk": disk_bytes(path),
                   "computed_vectors": designs.bytes_per_item(tokens.shape[1], tokens.shape[2], "fp32", design.name)
                   * len(tokens),
                   "hnsw_bound": designs.hnsw_bytes_per_item(tokens.shape[1], design.name, design.m or 16)
                   * len(tokens)}


# --- the requests --------------------------------------------------------------------------------
def multivector_query(shard, q: np.ndarray, ef: int | None, exact: bool = False) -> list[str]:
    from qdrant_edge import Query, QueryRequest, SearchParams

    hits = shard.query(QueryRequest(limit=K, query=Query.Nearest([q.astype(np.float32).tolist()], using=designs.TOKENS),
                                    params=SearchParams(hnsw_ef=ef, exact=exact), with_payload=True))
    return [h.payload["item_id"] for h in hits]


def grouped_query(shard, q: np.ndarray, ef: int | None, exact: bool = False, k: int = K) -> list[str]:
    """The server's group_by with group size 1 on `token`, request by request (see the module docstring):
    the item ids of the k best groups, i.e. the items with the best single tokens."""
    from qdrant_edge import (
        FieldCondition,
        Filter,
        HasIdCondition,
        IsEmptyCondition,
        MatchExcept,
        Query,
        QueryRequest,
        SearchParams,
    )

    vec, params = q.astype(np.float32).tolist(), SearchParams(hnsw_ef=ef, exact=exact)
    best: dict[str, tuple[float, object]] = {}  # item id -> (score, point id) of its best token
    seen: set = set()
    for attempt in range(2 * MAX_GROUP_REQUESTS):
        must = []
        if best and attempt < MAX_GROUP_REQUESTS:  # the filling requests only leave out the points seen
            must.append(FieldCondition("item_id", match=MatchExcept(list(best))))
        must_not = [IsEmptyCondition("item_id")] + ([HasIdCondition(seen)] if seen else [])
        hits = shard.query(QueryRequest(limit=k, query=Query.Nearest(vec, using=designs.TOKEN_VECTOR), params=params,
                                        filter=Filter(must=must or None, must_not=must_not), with_payload=["item_id"]))
        if not hits:
            break
        for h in hits:
            seen.add(h.id)
            item = h.payload["item_id"]
            if item not in best or h.score > best[item][0]:
                best[item] = (h.score, h.id)
        if len(best) >= k:
            break
    top = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    shard.retrieve([pid for _, (_, pid) in top], with_payload=True, with_vector=False)  # the server fills payloads
    return [item for item, _ in top]


def variants(args, shards: dict, n: int) -> tuple[list, list]:
    """(name, design, fn(q) -> item ids, queries) for the approximate requests and for the exact checks
    (of `n` queries, the exact checks on the first --exact-queries)."""
    approx, exact = [], []
    checks = min(args.exact_queries, n)
    if "pooled" in shards:
        s = shards["pooled"]
        approx += [(f"pooled, oversample {o}", "pooled",
                    lambda q, o=o, s=s: [h.payload["item_id"] for h in s.query(edge_request(q, o))], n)
                   for o in args.oversample]
        exact.append(("pooled, exact", "pooled",
                      lambda q, s=s: [h.payload["item_id"] for h in s.query(edge_request(q, None))], checks))
    if "multivector" in shards:
        s = shards["multivector"]
        approx += [(f"multivector, ef {ef}", "multivector", lambda q, ef=ef, s=s: multivector_query(s, q, ef), n)
                   for ef in args.mv_ef]
        exact.append(("multivector, exact", "multivector", lambda q, s=s: multivector_query(s, q, None, True), checks))
    if "token" in shards:
        s = shards["token"]
        approx += [(f"token, ef {ef}", "token", lambda q, ef=ef, s=s: grouped_query(s, q, ef), n)
                   for ef in args.token_ef]
        exact.append(("token, exact", "token", lambda q, s=s: grouped_query(s, q, None, True), checks))
    return approx, exact


# --- the run -------------------------------------------------------------------------------------
def cmd_designs(args) -> None:
    cache, work = Path(args.cache), Path(args.workdir)
    meta = json.loads((cache / "meta.json").read_text())
    all_tokens = np.load(cache / "tokens.npy", mmap_mode="r")
    queries = np.load(cache / "queries.npz")["fused"][: args.queries or None]
    work.mkdir(parents=True, exist_ok=True)
    import qdrant_edge

    results = {"args": vars(args), "sizes": [],
               "started": {"date": datetime.datetime.now().isoformat(timespec="minutes"), "loadavg": loadavg()},
               "cpu": cpu_name(), "cores": os.cpu_count(), "queries": len(queries),
               "versions": {"qdrant_edge": getattr(qdrant_edge, "__version__", "0.9.0")},
               "dims": {"Q": int(all_tokens.shape[1]), "D": int(all_tokens.shape[2])}}
    print(f"[run] {len(queries)} queries, sizes {args.sizes}, designs {args.designs}; {results['started']}", flush=True)
    t_run = time.perf_counter()
    for size in args.sizes:
        if size > len(all_tokens):
            raise SystemExit(f"--sizes {size}: the cache holds {len(all_tokens)} items; embed more (--items)")
        tokens = np.ascontiguousarray(all_tokens[:size])
        names, uris = meta["names"][:size], meta["uris"][:size]
        row = {"size": size, "build": {}}
        t0 = time.perf_counter()
        truth = [set(names[i] for i in numpy_topk(q, tokens)) for q in queries]
        print(f"[run] {size:,}: exact MaxSim ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
        shards = {}
        for name in args.designs:
            design = designs.make_design(designs.Design(name, m=None if name == "pooled" else args.m,
                                                        ef_construct=None if name == "pooled" else args.ef_construct))
            t0 = time.perf_counter()
            shards[name], row["build"][name] = build_design(work / f"{name}-{size}", design, tokens, names, uris,
                                                            args.indexing_threshold_kb)
            b = row["build"][name]
            print(f"[run] {size:,}: {name} built in {time.perf_counter() - t0:.0f}s (upsert {b['upsert_s']:.0f}s, "
                  f"optimize {b['optimize_s']:.0f}s), {b['points']:,} points, {b['indexed_vectors']:,} indexed, "
                  f"disk {json.dumps(b['disk'])}", flush=True)
        approx, exact = variants(args, shards, len(queries))
        lat, rec = {}, {}
        for label, group in (("approximate", approx), ("exact checks", exact)):
            t0 = time.perf_counter()
            engines = [(name, lambda q, fn=fn: set(fn(q)), limit) for name, _, fn, limit in group]
            g_lat, g_rec = measure(queries, truth, engines)
            lat.update(g_lat)
            rec.update(g_rec)
            print(f"[run] {size:,}: {label} measured in {time.perf_counter() - t0:.0f}s: "
                  + ", ".join(f"{n} {g_rec[n]:.3f} ({g_lat[n]['p50']:.2f} ms)" for n in g_rec), flush=True)
        row["recall"], row["latency"] = rec, lat
        row["design_of"] = {name: d for name, d, _, _ in approx + exact}
        row["exact_checks"] = [name for name, _, _, _ in exact]
        for name, shard in shards.items():
            shard.close()
            shutil.rmtree(work / f"{name}-{size}", ignore_errors=True)
        results["sizes"].append(row)
        (work / "designs-results.json").write_text(json.dumps(results, indent=1))
        print(f"[run] {size:,} done; {time.perf_counter() - t_run:.0f}s so far", flush=True)
    results["fits"] = fits(results)
    results["finished"] = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "loadavg": loadavg(),
                           "seconds": time.perf_counter() - t_run}
    (work / "designs-results.json").write_text(json.dumps(results, indent=1))
    write_designs_doc(Path(args.out), results)


# --- recall against catalog size -----------------------------------------------------------------
def fit_miss_rate(sizes: list[int], recalls: list[float], hits_per_size: int) -> dict:
    """A power law miss = 1 - Recall@10 = c * size^b, fitted by least squares on log-log through the sizes with
    at least one miss, and the size where it reaches 1 - TARGET. With fewer than two such sizes nothing is fitted
    (a zero carries no slope); an all-hit size bounds its miss rate by 3 / hits (the rule of three, 95 %)."""
    miss = [1.0 - r for r in recalls]
    used = [(s, m) for s, m in zip(sizes, miss, strict=True) if m > 0]
    out = {"sizes": sizes, "recalls": recalls, "exponent": None, "size_at_target": None}
    below = [s for s, r in zip(sizes, recalls, strict=True) if r < TARGET]
    if below:
        out["below_at"] = below[0]
    if len(used) < 2:
        bound = f"a size without a miss ({hits_per_size:,} top-10 slots) has miss < {3 / hits_per_size:.4f} (95 %)"
        out["note"] = ("no miss at any size: no fit; " if not used else "a miss at one size only: no slope; ") + bound
        return out
    b, a = np.polyfit(np.log([s for s, _ in used]), np.log([m for _, m in used]), 1)
    out["exponent"] = float(b)
    if b <= 1e-9:  # a flat fit (equal miss rates) is not growth either
        out["note"] = "the miss rate does not grow with the catalog over these sizes"
    else:
        at = out["size_at_target"] = float(np.exp((np.log(1 - TARGET) - a) / b))
        reach = ("within the sizes measured" if at <= max(sizes) else
                 "extrapolated" + (" far (over 10x) beyond the sizes measured" if at > 10 * max(sizes) else ""))
        out["note"] = f"fitted on {len(used)} sizes; {reach}"
    return out


def fits(results: dict) -> dict:
    rows = results["sizes"]
    names = [n for n in rows[0]["recall"] if n not in rows[0]["exact_checks"]] if rows else []
    hits = results["queries"] * K
    return {n: fit_miss_rate([r["size"] for r in rows if n in r["recall"]],
                             [r["recall"][n] for r in rows if n in r["recall"]], hits) for n in names}


# --- the page ------------------------------------------------------------------------------------
def write_designs_doc(path: Path, r: dict) -> None:
    """Rewrite the page's `edge-designs` section (appended when missing); nothing else."""
    a = r["args"]
    cmd = (f"python benchmarks/edge_search.py run --cache {a['cache']} --sizes {' '.join(map(str, a['sizes']))} "
           f"--designs {' '.join(a['designs'])} --oversample {' '.join(map(str, a['oversample']))} "
           f"--mv-ef {' '.join(map(str, a['mv_ef']))} --token-ef {' '.join(map(str, a['token_ef']))} --m {a['m']}"
           + (f" --indexing-threshold-kb {a['indexing_threshold_kb']}" if a["indexing_threshold_kb"] else "")
           + f" --out {shown(path)}")
    lines = ["## Measured: the designs side by side", "", f"Command: `{cmd}`  ",
             f"Machine: {r['cpu']}, {r['cores']} cores; qdrant-edge-py {r['versions']['qdrant_edge']}; "
             f"Q x D = {r['dims']['Q']} x {r['dims']['D']}; {r['queries']} queries. Started {r['started']['date']} "
             f"(load averages {r['started']['loadavg']}), finished {r['finished']['date']} (load averages "
             f"{r['finished']['loadavg']}), {r['finished']['seconds'] / 60:.1f} min.", "",
             "### Recall@10 against exact MaxSim, and latency per query", "",
             "| items | design | request | Recall@10 | p50 ms | p95 ms | queries |", "|---|---|---|---|---|---|---|"]
    for row in r["sizes"]:
        for name, lt in row["latency"].items():
            design, _, setting = name.partition(", ")
            lines.append(f"| {row['size']:,} | {design} | {setting} | {row['recall'][name]:.3f} | {lt['p50']:.2f} | "
                         f"{lt['p95']:.2f} | {lt['n']} |")
    lines += ["", "### Builds and bytes on disk per item (after optimize(); WAL left out)", "",
              "| items | design | points | indexed vectors | upsert s | optimize() wall s | optimize() CPU s | "
              "vectors B/item (computed) | HNSW graph B/item (bound) | payload + indexes B/item | other B/item |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["sizes"]:
        n = row["size"]
        for design, b in row["build"].items():
            d = b["disk"]
            lines.append(f"| {n:,} | {design} | {b['points']:,} | {b['indexed_vectors']:,} | {b['upsert_s']:.0f} | "
                         f"{b['optimize_s']:.0f} | {b['optimize_cpu_s']:.0f} | {d['vectors'] / n:,.0f} "
                         f"({b['computed_vectors'] / n:,.0f}) | {d['hnsw'] / n:,.0f} ({b['hnsw_bound'] / n:,.0f}) | "
                         f"{d['payload'] / n:,.0f} | {d['other'] / n:,.0f} |")
    sizes = [row["size"] for row in r["sizes"]]
    lines += ["", f"### Recall@10 against catalog size: fit of 1 - Recall@10 = c x size^b, size where it falls "
              f"below {TARGET}", "",
              "| request | " + " | ".join(f"{s:,}" for s in sizes) + " | b | size at 0.99 | note |",
              "|---" * (len(sizes) + 4) + "|"]
    for name, f in r["fits"].items():
        at = dict(zip(f["sizes"], f["recalls"], strict=True))
        cells = " | ".join(f"{at[s]:.4f}" if s in at else "-" for s in sizes)
        exponent = f"{f['exponent']:.2f}" if f["exponent"] is not None else "-"
        target = f"{f['size_at_target']:,.0f}" if f["size_at_target"] else "-"
        note = f["note"] + (f"; already below {TARGET} at {f['below_at']:,}" if "below_at" in f else "")
        lines.append(f"| {name} | {cells} | {exponent} | {target} | {note} |")
    write_section(path, SECTION, lines, title=PAGE_TITLE)


def add_arguments(r) -> None:
    """The `run` subcommand's options (benchmarks/edge_search.py builds the parser)."""
    r.add_argument("--cache", default="/tmp/edge-bench/emb")
    r.add_argument("--workdir", default="/tmp/edge-bench/work")
    r.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    r.add_argument("--designs", nargs="+", choices=designs.DESIGNS, default=list(designs.DESIGNS))
    r.add_argument("--oversample", type=int, nargs="+", default=[DEFAULT_OVERSAMPLE],
                   help="pooled: the prefetch's k x oversample (default: plugin.search.DEFAULT_OVERSAMPLE)")
    r.add_argument("--mv-ef", type=int, nargs="+", default=[64, 128, 256], help="multivector: hnsw_ef of queries")
    r.add_argument("--token-ef", type=int, nargs="+", default=[64, 128, 256], help="token: hnsw_ef of queries")
    r.add_argument("--m", type=int, default=16, help="HNSW m of the multivector and token graphs")
    r.add_argument("--ef-construct", type=int, default=100)
    r.add_argument("--queries", type=int, default=0, help="use the first N cached queries (0: all)")
    r.add_argument("--exact-queries", type=int, default=20, help="queries of each design's exact check")
    r.add_argument("--indexing-threshold-kb", type=int, default=None,
                   help="edge's indexing threshold (default 10,000 KB: a smaller segment gets no graph); "
                        "lower it for tiny test catalogs only")
    r.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "search-edge.md"))
