"""The serving-side commands: `dqe-cir index` (in-process or through Celery workers), `dqe-cir search`,
`dqe-cir doctor` and `dqe-cir serve` (the HTTP service and web page). No torch; handlers import what they
need when they run."""

from __future__ import annotations

import json
import sys


def cmd_index(args) -> int:
    from indexer.catalog import DEFAULT_CHUNK_SIZE
    from indexer.errors import IndexerError
    from indexer.reindex import run_index, run_rollback
    from indexer.report import SwapPolicy, parse_share
    from indexer.settings import load_settings, with_overrides
    from plugin.store import parse_payload_indexes

    settings = with_overrides(load_settings(), args.bundle, args.qdrant_path)
    if args.rollback:
        old, new = run_rollback(settings, args.collection)
        print(f"alias {args.collection!r}: {old} -> {new}")
        return 0
    if not args.catalog:
        raise IndexerError("--catalog is required (a folder of images, or a .jsonl/.csv manifest)")
    policy = SwapPolicy(max_failed=parse_share(args.max_failed), keep=args.keep, keep_failed=args.keep_failed)
    use_workers = args.workers == "celery" or (args.workers == "auto" and settings.broker_configured)
    chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    try:
        report = run_index(settings, args.catalog, args.collection, workers=use_workers, incremental=args.incremental,
                           chunk_size=chunk_size, payload_indexes=parse_payload_indexes(args.payload_index),
                           storage=args.storage, policy=policy, progress=not args.quiet, timeout=args.timeout,
                           design=args.design, design_settings={"m": args.m, "ef_construct": args.ef_construct,
                                                                "hnsw_ef": args.hnsw_ef},
                           placement=placement_of(args))
    except IndexerError as e:
        if e.report is None:
            raise
        _print_report(e.report, args)  # the job ran but did not go live: the report says why
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_report(report, args)
    return 0


def placement_of(args):
    """--shards / --replication-factor / --write-consistency-factor / --on-disk as a Placement (an IndexerError
    for values Qdrant could never honour)."""
    from indexer.errors import IndexerError
    from plugin.placement import Placement

    try:
        return Placement(shards=args.shards, replication_factor=args.replication_factor,
                         write_consistency_factor=args.write_consistency_factor, on_disk=args.on_disk)
    except ValueError as e:
        raise IndexerError(f"--shards / --replication-factor / --write-consistency-factor: {e}") from e


def _print_report(report, args) -> None:
    if args.failures:
        with open(args.failures, "w") as f:
            json.dump(report.failed, f, indent=1)
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    print(f"{report.mode} index of {report.total} items into {report.collection} (alias {report.alias!r}): "
          f"{report.indexed} indexed, {report.unchanged} unchanged, {report.deleted} deleted, "
          f"{len(report.failed)} failed in {report.seconds:.1f}s")
    if report.pruned:
        print(f"  removed older versions: {', '.join(report.pruned)}")
    for c in report.lost_chunks:
        print(f"  lost {c}", file=sys.stderr)
    for f in report.failed[:10]:
        print(f"  failed {f['item_id']}: {f['reason']}", file=sys.stderr)
    if len(report.failed) > 10:
        print(f"  ... {len(report.failed) - 10} more (--failures FILE writes them all)", file=sys.stderr)


def register_index(sub) -> None:
    p = sub.add_parser("index", help="embed a catalog into Qdrant (a new version behind an alias)")
    p.add_argument("--catalog", help="folder of images, or a .jsonl/.csv manifest (id, uri, payload fields)")
    p.add_argument("--collection", default="catalog", help="the alias that searches use")
    p.add_argument("--bundle", help="model bundle (default: $DQE_CIR_BUNDLE)")
    p.add_argument("--qdrant-path", help="local-mode folder (default: $QDRANT_PATH, or $QDRANT_URL for a server)")
    p.add_argument("--incremental", action="store_true", help="only new or changed items; delete removed ones")
    p.add_argument("--rollback", action="store_true",
                   help="point the alias back at the newest complete older version")
    p.add_argument("--workers", choices=["auto", "celery", "none"], default="auto",
                   help="auto: Celery workers when CELERY_BROKER_URL is set, else in-process")
    p.add_argument("--chunk-size", type=int, help="items per chunk, one Celery task (default: 32)")
    p.add_argument("--payload-index", action="append", metavar="FIELD=TYPE",
                   help="payload index for filtering (keyword, integer, float, bool, text, datetime)")
    p.add_argument("--design", choices=["pooled", "multivector", "token"],
                   help="first-stage layout of the new version (default: the alias's current design and settings; "
                        "a new alias gets plugin.store.DEFAULT_DESIGN; see the README's sizing table)")
    p.add_argument("--m", type=int, help="HNSW links per node of the searched graph (default: the design's)")
    p.add_argument("--ef-construct", type=int, help="HNSW build beam (default: the design's)")
    p.add_argument("--hnsw-ef", type=int, help="HNSW search beam recorded for queries (default: the design's)")
    p.add_argument("--shards", type=int, help="Qdrant cluster: shards of the new version (default: the server's)")
    p.add_argument("--replication-factor", type=int,
                   help="Qdrant cluster: copies of each shard (2+: searches survive a node that is down)")
    p.add_argument("--write-consistency-factor", type=int,
                   help="Qdrant cluster: replicas that must apply a write before it is acknowledged")
    p.add_argument("--on-disk", action="store_true",
                   help="vectors and HNSW memory-mapped from disk (catalogs larger than a node's RAM)")
    p.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="vector storage: fp32, float16 (half the RAM), int8 scalar quantisation")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the workers' chunks (default: the visibility timeout plus one task time "
                        "limit per chunk); chunks not done by then are reported as lost")
    p.add_argument("--max-failed", default="1%",
                   help="largest share of failed items that still switches the alias (default 1%%; 0.05 or 5%%)")
    p.add_argument("--keep", type=int, default=2,
                   help="complete versions kept after a successful switch, the live one included (default 2)")
    p.add_argument("--keep-failed", action="store_true",
                   help="keep a build that was refused (state failed) instead of deleting it")
    p.add_argument("--failures", help="write the failure report (JSON) here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_index)


def cmd_search(args) -> int:
    from encoder.fusion import parse_weights
    from indexer.settings import load_settings, open_client, with_overrides
    from plugin.search import CIRSearch, ItemRef, SearchError

    settings = with_overrides(load_settings(), qdrant_path=args.qdrant_path)
    weights = parse_weights(args.weights)
    with open_client(settings) as client:
        search = CIRSearch(client, args.collection, bundle=args.bundle or settings.bundle,
                           catalog_root=args.catalog_root, allow_http=settings.allow_http)
        image = ItemRef(args.item) if args.item else args.image
        if image is None:
            raise SearchError("give --image PATH or --item ID (a catalog item as the reference)")
        hits = search.query(image, args.text, k=args.k, weights=weights, exact=True if args.exact else None,
                            explain=args.explain)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
        return 0
    for rank, h in enumerate(hits, start=1):
        parts = " ".join(f"{k}={v:.3f}" for k, v in h.breakdown.items()) or "-"
        print(f"{rank:3d}. {h.id:<30} score {h.score:.4f}  ({parts})  {h.payload.get('uri', '')}")
    if hits:
        print("weights: " + ", ".join(f"{k}={v:.2f}" for k, v in hits[0].weights.items()))
    return 0


def cmd_doctor(args) -> int:
    from indexer.doctor import run_checks
    from indexer.settings import load_settings, with_overrides

    settings = with_overrides(load_settings(), args.bundle, args.qdrant_path)
    checks = run_checks(args.collection, settings, broker=not args.no_broker)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks]))
    else:
        for c in checks:
            print(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                print(f"       fix: {c.fix}")
    return 0 if all(c.ok for c in checks) else 1


def register_search(sub) -> None:
    p = sub.add_parser("search", help="a composed query: reference image + modification text")
    p.add_argument("--image", help="reference image file")
    p.add_argument("--item", help="or: a catalog item id as the reference (excluded from its results)")
    p.add_argument("--text", required=True, help='the modification, e.g. "make it red"')
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--weights", action="append", metavar="ATTR=W", help="override attribute weights: color=2")
    p.add_argument("--collection", default="catalog")
    p.add_argument("--bundle", help="model bundle (default: $DQE_CIR_BUNDLE)")
    p.add_argument("--qdrant-path", help="local-mode folder (default: $QDRANT_PATH)")
    p.add_argument("--catalog-root", help="folder that catalog uris are relative to (for --item)")
    p.add_argument("--exact", action="store_true", help="exact MaxSim over every item")
    p.add_argument("--explain", action="store_true", help="per-attribute score breakdown (fetches token vectors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)


def register_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check the bundle, onnxruntime, Qdrant, the collection and the broker")
    p.add_argument("--collection", default="catalog")
    p.add_argument("--bundle", help="default: $DQE_CIR_BUNDLE")
    p.add_argument("--qdrant-path", help="default: $QDRANT_URL, else $QDRANT_PATH")
    p.add_argument("--no-broker", action="store_true", help="skip the broker check (in-process deployments)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def cmd_serve(args) -> int:
    import os

    import uvicorn

    from app.service.settings import ConfigError, config_from_env
    from encoder.bundle import read_bundle

    try:
        config = config_from_env(bundle=args.bundle, qdrant_path=args.qdrant_path, collection=args.collection,
                                 catalog_root=args.catalog_root, max_upload_mb=args.max_upload_mb,
                                 cors_origins=args.cors_origin, concurrency=args.concurrency)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    read_bundle(config.bundle)  # a missing or broken bundle stops here; a missing collection only delays /readyz
    if args.workers > 1 and config.local_mode:
        print("error: --workers above 1 needs a Qdrant server (QDRANT_URL): an embedded folder (QDRANT_PATH) opens "
              "each collection in one process", file=sys.stderr)
        return 2
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
    where = config.settings.qdrant_url or f"{config.settings.qdrant_engine} folder {config.settings.qdrant_path}"
    print(f"[serve] collection {config.collection!r} on {where}, bundle {config.bundle}, {args.workers} worker(s); "
          f"open {url}", flush=True)
    if args.open:
        import threading
        import webbrowser

        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    if args.workers == 1:
        from app.service.routes import create_app

        uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    import tempfile

    os.environ.update(config.env())  # the worker processes read their config from the environment
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="dqe-cir-metrics-"))
    uvicorn.run("app.service.routes:app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port,
                log_level=args.log_level)
    return 0


def register_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP search service and web page (FastAPI + uvicorn) over one collection")
    p.add_argument("--collection", help="the alias to serve (default: $DQE_CIR_COLLECTION, else catalog)")
    p.add_argument("--bundle", help="model bundle (default: $DQE_CIR_BUNDLE)")
    p.add_argument("--qdrant-path", help="local-mode folder (default: $QDRANT_URL, else $QDRANT_PATH)")
    p.add_argument("--catalog-root", help="folder the indexed uris are relative to; images are served from it "
                                          "(default: $DQE_CIR_CATALOG_ROOT)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface (in a container)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes, each with its own encoder; above 1 needs a Qdrant server")
    p.add_argument("--concurrency", type=int, help="searches one worker runs at once (default 4)")
    p.add_argument("--max-upload-mb", type=float, help="largest uploaded image (default: $DQE_CIR_MAX_UPLOAD_MB or 10)")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="allow browser calls from this origin (default: $DQE_CIR_CORS_ORIGINS; off when unset)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--open", action="store_true", help="open the page in a web browser once started")
    p.set_defaults(func=cmd_serve)


SERVE_EXTRA = ("serve", ("onnxruntime", "qdrant_client", "celery", "redis"))
API_EXTRA = ("serve,api", ("onnxruntime", "qdrant_client", "fastapi", "uvicorn", "python_multipart",
                           "prometheus_client"))


def register(sub, needs: dict) -> None:
    """Add the serving commands; `needs[name]` records the extra each one requires."""
    register_index(sub)
    register_search(sub)
    register_doctor(sub)
    register_serve(sub)
    needs.update(index=SERVE_EXTRA, search=SERVE_EXTRA, doctor=SERVE_EXTRA, serve=API_EXTRA)
