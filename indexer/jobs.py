"""Re-index jobs, in-process (the embedded default): every catalog item ends indexed or in the job's
failure report with a reason.

Full job: a new versioned collection `<alias>__<version>`, filled chunk by chunk, its count checked,
then the alias switched atomically; the previous version stays for `rollback`.
Incremental job: in the alias's current collection, embed only new or changed items (content hash of
bytes + payload; the bundle fingerprint must match) and delete the items gone from the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient
from tqdm import tqdm

from encoder import Encoder, EncoderError
from indexer.catalog import CatalogItem, fetch_bytes, item_fingerprint, read_catalog
from indexer.errors import IndexerError
from plugin import store


@dataclass
class JobReport:
    alias: str
    collection: str
    mode: str  # full | incremental
    total: int = 0
    indexed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[dict] = field(default_factory=list)  # {"item_id", "uri", "reason"}
    previous: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def embed_items(encoder: Encoder, items: Sequence[CatalogItem], root: Path, allow_http: bool = False,
                contents: dict[str, bytes] | None = None) -> tuple[list[store.Item], list[dict]]:
    """Read, preprocess and encode a chunk; bad items become failures, the rest are encoded in one batch."""
    good, pixels, failed = [], [], []
    for it in items:
        try:
            data = contents[it.item_id] if contents and it.item_id in contents else fetch_bytes(it, root, allow_http)
            pixels.append(encoder.preprocess([data])[0])
            good.append((it, item_fingerprint(it, data)))
        except (IndexerError, EncoderError) as e:
            failed.append({"item_id": it.item_id, "uri": it.uri, "reason": str(e)})
    if not good:
        return [], failed
    tokens = encoder.encode_pixels(np.stack(pixels))
    out = [store.Item(it.item_id, tokens[i], {**it.payload, "uri": it.uri, "content_hash": h})
           for i, (it, h) in enumerate(good)]
    return out, failed


def new_version_name(client: QdrantClient, alias: str) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    name, n = f"{alias}__{stamp}", 1
    existing = {c.name for c in client.get_collections().collections}
    while name in existing:
        name, n = f"{alias}__{stamp}-{n}", n + 1
    return name


def index_catalog(client: QdrantClient, encoder: Encoder, catalog: str | Path, alias: str = "catalog",
                  incremental: bool = False, chunk_size: int = 64, payload_indexes: dict | None = None,
                  allow_http: bool = False, progress: bool = True,
                  on_progress: Callable[[int, int], None] | None = None, storage: str = "fp32") -> JobReport:
    t0 = time.time()
    root, items = read_catalog(catalog)
    if incremental:
        report = _incremental(client, encoder, root, items, alias, chunk_size, allow_http, progress)
    else:
        report = _full(client, encoder, root, items, alias, chunk_size, payload_indexes, allow_http, progress,
                       on_progress, storage)
    report.seconds = time.time() - t0
    return report


def _full(client, encoder, root, items, alias, chunk_size, payload_indexes, allow_http, progress, on_progress,
          storage):
    name = new_version_name(client, alias)
    store.create_collection(client, name, encoder.spec, payload_indexes, storage)
    report = JobReport(alias, name, "full", total=len(items))
    bar = tqdm(total=len(items), desc=f"index {name}", unit="img", disable=not progress)
    for s in range(0, len(items), chunk_size):
        chunk = items[s: s + chunk_size]
        good, failed = embed_items(encoder, chunk, root, allow_http)
        store.upsert(client, name, good)
        report.indexed += len(good)
        report.failed += failed
        bar.update(len(chunk))
        if on_progress:
            on_progress(s + len(chunk), len(items))
    bar.close()
    stored = store.count(client, name)
    if stored != report.indexed:
        raise IndexerError(f"collection {name} holds {stored} points but {report.indexed} were indexed; "
                           f"the alias {alias!r} was not switched")
    report.previous = store.switch_alias(client, alias, name)
    return report


@dataclass
class IncrementalPlan:
    collection: str
    todo: list[CatalogItem]  # new or changed
    contents: dict[str, bytes]  # their bytes, already read
    unchanged: int
    gone: set[str]  # ids in the collection but not in the catalog
    failed: list[dict]  # unreadable now


def plan_incremental(client: QdrantClient, fingerprint: str, root: Path, items: Sequence[CatalogItem], alias: str,
                     allow_http: bool = False) -> IncrementalPlan:
    """Compare the catalog with the alias's collection: content hash (bytes + payload) per item, and the
    bundle fingerprint for the whole collection."""
    name = store.alias_target(client, alias)
    if name is None:
        raise IndexerError(f"alias {alias!r} does not exist yet; run a full index first (without --incremental)")
    try:
        store.check_fingerprint(client, name, fingerprint)
    except store.StoreError as e:
        raise IndexerError(f"{e}. An incremental run needs the same bundle; run a full re-index") from e
    existing = {p["item_id"]: p.get("content_hash")
                for p in store.scroll_payloads(client, name, ["item_id", "content_hash"])}
    plan = IncrementalPlan(name, [], {}, 0, set(existing) - {it.item_id for it in items}, [])
    for it in items:
        try:
            data = fetch_bytes(it, root, allow_http)
        except IndexerError as e:
            plan.failed.append({"item_id": it.item_id, "uri": it.uri, "reason": str(e)})
            continue
        if existing.get(it.item_id) == item_fingerprint(it, data):
            plan.unchanged += 1
        else:
            plan.todo.append(it)
            plan.contents[it.item_id] = data
    return plan


def _incremental(client, encoder, root, items, alias, chunk_size, allow_http, progress):
    plan = plan_incremental(client, encoder.fingerprint, root, items, alias, allow_http)
    report = JobReport(alias, plan.collection, "incremental", total=len(items), unchanged=plan.unchanged,
                       failed=list(plan.failed))
    bar = tqdm(total=len(plan.todo), desc=f"index {plan.collection} (changed)", unit="img", disable=not progress)
    for s in range(0, len(plan.todo), chunk_size):
        chunk = plan.todo[s: s + chunk_size]
        good, failed = embed_items(encoder, chunk, root, allow_http, plan.contents)
        store.upsert(client, plan.collection, good)
        report.indexed += len(good)
        report.failed += failed
        bar.update(len(chunk))
    bar.close()
    store.delete(client, plan.collection, plan.gone)
    report.deleted = len(plan.gone)
    return report


def rollback(client: QdrantClient, alias: str) -> tuple[str, str]:
    """Point the alias back at the version before the current one. Returns (from, to)."""
    current = store.alias_target(client, alias)
    if current is None:
        raise IndexerError(f"alias {alias!r} does not exist")
    older = [v for v in store.versions(client, alias) if v < current]
    if not older:
        raise IndexerError(f"alias {alias!r} points at {current}, and no older version is kept to roll back to")
    store.switch_alias(client, alias, older[-1])
    return current, older[-1]
