"""`dqe-cir search`: one composed query from the command line."""

from __future__ import annotations

import json


def cmd_search(args) -> int:
    from indexer.settings import load_settings, qdrant_client
    from plugin.search import CIRSearch, ItemRef, SearchError

    settings = load_settings()
    if args.qdrant_path:
        settings = settings.__class__(**{**settings.__dict__, "qdrant_path": args.qdrant_path, "qdrant_url": None})
    weights = {}
    for item in args.weights or []:
        key, _, value = item.partition("=")
        try:
            weights[key] = float(value)
        except ValueError as e:
            raise SearchError(f"--weights takes ATTR=NUMBER, got {item!r}") from e
    client = qdrant_client(settings)
    try:
        search = CIRSearch(client, args.collection, bundle=args.bundle or settings.bundle,
                           catalog_root=args.catalog_root)
        image = ItemRef(args.item) if args.item else args.image
        if image is None:
            raise SearchError("give --image PATH or --item ID (a catalog item as the reference)")
        hits = search.query(image, args.text, k=args.k, weights=weights or None,
                            exact=True if args.exact else None)
    finally:
        client.close()
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
        return 0
    for rank, h in enumerate(hits, start=1):
        parts = " ".join(f"{k}={v:.3f}" for k, v in h.breakdown.items())
        print(f"{rank:3d}. {h.id:<30} score {h.score:.4f}  ({parts})  {h.payload.get('uri', '')}")
    if hits:
        print("weights: " + ", ".join(f"{k}={v:.2f}" for k, v in hits[0].weights.items()))
    return 0


def register(sub) -> None:
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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
