"""Search against a real engine: qdrant-edge (Qdrant's Rust segment engine, in-process), the product's
embedded engine (plugin/edge.py) and a stand-in for a Qdrant server, with the project's schema and embeddings.

    # 1. embeddings (once, cached): synthetic images rendered by cirdata/synth.py, encoded with a bundle
    python benchmarks/edge_search.py embed --bundle BUNDLE --root SYNTH_ROOT --items 100000 --cache DIR
    # 2. the first-stage designs side by side (pooled, multivector, token; benchmarks/edge_designs.py):
    #    recall, latency, builds, bytes at each size, and recall against size -> docs/benchmarks/search-edge.md
    python benchmarks/edge_search.py run --cache DIR --sizes 10000 30000 100000
    # 3. the pooled design's storage study (benchmarks/edge_storage.py): oversample ladder, local mode,
    #    fp16/int8, response sizes -> the same page, its own section
    python benchmarks/edge_search.py storage --cache DIR --sizes 10000 100000
    # 4. the product's own path on an embedded engine (plugin.store + CIRSearch): edge (default) or local mode
    python benchmarks/edge_search.py embedded --engine edge --cache DIR --items 100000 --queries 200

Schemas: plugin/designs.py's, converted to edge's types. Queries: composed queries of the synthetic val split
(reference + text) through Encoder.compose and encoder.fusion.fuse. Ground truth: exact MaxSim in numpy over
the same fp32 vectors. This file holds the embeddings step and the product-path study; benchmarks/edge_common.py
what the studies share (the pooled request is the product's own, plugin.search.design_request, converted by
plugin.edge). Nothing of this is imported by the project.
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

from benchmarks.edge_common import K, loadavg, numpy_topk, pct  # noqa: E402


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


# --- the embedded engines: the product's own path (CIRSearch, plugin.store) on each --------------------------
SECTIONS = {"local": ("edge-local", "Search against a real engine (qdrant-edge)"),
            "edge": ("embedded-edge", "Search against a real engine (qdrant-edge)")}


def cmd_embedded(args) -> None:
    """Each design on an embedded engine as the product runs it: plugin.store builds the collection (edge: upsert,
    then store.seal's optimize, timed apart) and CIRSearch's own request path answers (alias look-up, the design's
    request, the engine's conversion), on the first --items of the cache. Recall@10 against exact MaxSim in numpy."""
    from qdrant_client import QdrantClient

    from benchmarks.common import cpu_name, now, shown, write_section
    from encoder import Encoder
    from plugin import CIRSearch, store

    cache, engine = Path(args.cache), args.engine
    meta = json.loads((cache / "meta.json").read_text())
    tokens = np.asarray(np.load(cache / "tokens.npy", mmap_mode="r")[: args.items])
    queries = np.load(cache / "queries.npz")["fused"][: args.queries]
    truths = [{meta["names"][j] for j in numpy_topk(q, tokens)} for q in queries]
    enc = Encoder(meta["bundle"], threads=1)
    started, rows = now(), []
    for name in args.designs:
        folder = Path(args.workdir) / f"embedded-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        client = QdrantClient(":memory:") if engine == "local" else store.open_embedded(str(folder), engine)
        store.create_collection(client, "c", enc.spec, design=name)
        t0 = time.perf_counter()
        for s in range(0, len(tokens), 500):
            store.upsert(client, "c", [store.Item(meta["names"][i], tokens[i], {"uri": meta["uris"][i]})
                                       for i in range(s, min(len(tokens), s + 500))])
        upsert_s, t0 = time.perf_counter() - t0, time.perf_counter()
        store.seal(client, "c")
        seal_s = time.perf_counter() - t0
        search = CIRSearch(client, "c", encoder=enc, exact_below=0)  # the approximate request, as at scale
        times, hits = [], 0
        for q, truth in zip(queries, truths, strict=True):
            t0 = time.perf_counter()
            found = search._on_target(lambda target, m, q=q, s=search: s._search(
                target, m, q[None], [None], None, K, None, s.oversample, False, False))[0]
            times.append(time.perf_counter() - t0)
            hits += len(truth & {p["item_id"] for p, _, _ in found})
        rows.append({"design": name, "upsert_s": upsert_s, "seal_s": seal_s, "p50": pct(times, 50),
                     "p95": pct(times, 95), "recall": hits / (K * len(queries))})
        print(f"[{engine}] {name}: {rows[-1]}", flush=True)
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    section, title = SECTIONS[engine]
    what = {"local": "qdrant-client's local mode (pure Python, exact: it has no HNSW)",
            "edge": "the edge engine (plugin/edge.py over qdrant-edge-py, the embedded default)"}[engine]
    lines = [f"Command: `python benchmarks/edge_search.py {args.cmd} --engine {engine} --cache {shown(cache)} "
             f"--items {args.items} --queries {args.queries} --designs {' '.join(args.designs)} --out "
             f"{shown(args.out)}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores; started {started}, load averages {loadavg()} at the "
             f"end; {what}; {len(tokens):,} items, {len(queries)} queries, each design's default settings "
             "(`plugin.designs.DESIGN_DEFAULTS`), through `CIRSearch` (its request, alias look-up and conversion; "
             "composing the query is not timed). Build: `store.upsert` in batches of 500, then `store.seal` "
             "(edge: optimize(), the HNSW graphs).", "",
             "| design | items | upsert s | seal s | p50 ms / query | p95 ms / query | Recall@10 vs exact |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['design']} | {len(tokens):,} | {r['upsert_s']:.1f} | {r['seal_s']:.1f} | {r['p50']:.2f} | "
              f"{r['p95']:.2f} | {r['recall']:.4f} |" for r in rows]
    write_section(args.out, section, lines, title=title)


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
    for cmd, engine in (("local", "local"), ("embedded", "edge")):  # `local`: embedded --engine local
        lo = sub.add_parser(cmd, help="each design on an embedded engine through CIRSearch (edge: the default)")
        lo.add_argument("--engine", choices=["edge", "local"], default=engine)
        lo.add_argument("--cache", default="/tmp/edge-bench/emb")
        lo.add_argument("--workdir", default="/tmp/edge-bench/work")
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
    elif args.cmd in ("local", "embedded"):
        cmd_embedded(args)
    elif args.cmd == "report":
        results = json.loads(Path(args.results).read_text())
        results["fits"] = edge_designs.fits(results)  # the fit is the page's reading of the measured recalls
        edge_designs.write_designs_doc(Path(args.out), results)
    else:
        from benchmarks import edge_storage

        edge_storage.cmd_storage(args)


if __name__ == "__main__":
    main()
