"""`dqe-cir index`: build or update a catalog collection, in-process or through Celery workers."""

from __future__ import annotations

import json
import sys


def cmd_index(args) -> int:
    from indexer.errors import IndexerError
    from indexer.settings import load_settings, qdrant_client

    settings = load_settings()
    if args.bundle:
        settings = settings.__class__(**{**settings.__dict__, "bundle": args.bundle})
    if args.qdrant_path:
        settings = settings.__class__(**{**settings.__dict__, "qdrant_path": args.qdrant_path, "qdrant_url": None})
    if args.rollback:
        from indexer.jobs import rollback

        client = qdrant_client(settings)
        try:
            old, new = rollback(client, args.collection)
        finally:
            client.close()
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
            client.close()
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


def register(sub) -> None:
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
