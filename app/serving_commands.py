"""The serving-side commands: `dqe-cir index` (in-process or through Celery workers), `dqe-cir search`
and `dqe-cir doctor`. No torch; handlers import what they need when they run."""

from __future__ import annotations

import json
import sys


def cmd_index(args) -> int:
    from indexer.errors import IndexerError
    from indexer.settings import load_settings, qdrant_client, release_client, with_overrides

    settings = with_overrides(load_settings(), args.bundle, args.qdrant_path)
    if args.rollback:
        from indexer.jobs import rollback

        client = qdrant_client(settings)
        try:
            old, new = rollback(client, args.collection)
        finally:
            release_client(settings, client)
        print(f"alias {args.collection!r}: {old} -> {new}")
        return 0
    if not args.catalog:
        raise IndexerError("--catalog is required (a folder of images, or a .jsonl/.csv manifest)")
    indexes = dict(item.split("=", 1) for item in (args.payload_index or []))
    use_workers = args.workers == "celery" or (args.workers == "auto" and settings.broker_configured)
    if use_workers:
        from indexer.distributed import index_with_workers

        report = index_with_workers(args.catalog, args.collection, settings, incremental=args.incremental,
                                    chunk_size=args.chunk_size, payload_indexes=indexes, progress=not args.quiet,
                                    timeout=args.timeout, storage=args.storage)
    else:
        from encoder import Encoder
        from indexer.jobs import index_catalog

        client = qdrant_client(settings)
        try:
            report = index_catalog(client, Encoder(settings.bundle), args.catalog, args.collection,
                                   incremental=args.incremental, chunk_size=args.chunk_size,
                                   payload_indexes=indexes, allow_http=settings.allow_http, progress=not args.quiet,
                                   storage=args.storage)
        finally:
            release_client(settings, client)
    summary = report.to_dict()
    if args.failures:
        with open(args.failures, "w") as f:
            json.dump(report.failed, f, indent=1)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{report.mode} index of {report.total} items into {report.collection} (alias {report.alias!r}): "
              f"{report.indexed} indexed, {report.unchanged} unchanged, {report.deleted} deleted, "
              f"{len(report.failed)} failed in {report.seconds:.1f}s")
        for f in report.failed[:10]:
            print(f"  failed {f['item_id']}: {f['reason']}", file=sys.stderr)
        if len(report.failed) > 10:
            print(f"  ... {len(report.failed) - 10} more (--failures FILE writes them all)", file=sys.stderr)
    return 0


def register_index(sub) -> None:
    p = sub.add_parser("index", help="embed a catalog into Qdrant (a new version behind an alias)")
    p.add_argument("--catalog", help="folder of images, or a .jsonl/.csv manifest (id, uri, payload fields)")
    p.add_argument("--collection", default="catalog", help="the alias that searches use")
    p.add_argument("--bundle", help="model bundle (default: $DQE_CIR_BUNDLE)")
    p.add_argument("--qdrant-path", help="local-mode folder (default: $QDRANT_PATH, or $QDRANT_URL for a server)")
    p.add_argument("--incremental", action="store_true", help="only new or changed items; delete removed ones")
    p.add_argument("--rollback", action="store_true", help="point the alias back at the previous version")
    p.add_argument("--workers", choices=["auto", "celery", "none"], default="auto",
                   help="auto: Celery workers when CELERY_BROKER_URL is set, else in-process")
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--payload-index", action="append", metavar="FIELD=TYPE",
                   help="payload index for filtering (keyword, integer, float, bool, text, datetime)")
    p.add_argument("--storage", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="vector storage: fp32, float16 (half the RAM), int8 scalar quantisation")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting for workers after this many s")
    p.add_argument("--failures", help="write the failure report (JSON) here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_index)


def cmd_search(args) -> int:
    from encoder.fusion import parse_weights
    from indexer.settings import load_settings, qdrant_client, release_client, with_overrides
    from plugin.search import CIRSearch, ItemRef, SearchError

    settings = with_overrides(load_settings(), qdrant_path=args.qdrant_path)
    weights = parse_weights(args.weights)
    client = qdrant_client(settings)
    try:
        search = CIRSearch(client, args.collection, bundle=args.bundle or settings.bundle,
                           catalog_root=args.catalog_root)
        image = ItemRef(args.item) if args.item else args.image
        if image is None:
            raise SearchError("give --image PATH or --item ID (a catalog item as the reference)")
        hits = search.query(image, args.text, k=args.k, weights=weights, exact=True if args.exact else None,
                            explain=args.explain)
    finally:
        release_client(settings, client)
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


SERVE_EXTRA = ("serve", ("onnxruntime", "qdrant_client", "celery", "redis"))


def register(sub, needs: dict) -> None:
    """Add the serving commands; `needs[name]` records the extra each one requires."""
    register_index(sub)
    register_search(sub)
    register_doctor(sub)
    needs.update(index=SERVE_EXTRA, search=SERVE_EXTRA, doctor=SERVE_EXTRA)
