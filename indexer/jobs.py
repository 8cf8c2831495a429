"""Re-index jobs, in-process (the embedded default): every catalog item ends indexed, unchanged or in the
job's failure report with a reason.

Full job: a new version `<alias>__<version>` (indexer.versions), filled chunk by chunk, checked, then
the alias switched atomically, or the switch refused (IndexerError with the report) and the build
removed. Incremental job: in the alias's current collection, fetch each item once, skip it when its
content hash (bytes + payload) equals the stored one, embed the rest, and delete the items gone from
the catalog. The catalog is streamed: memory holds its ids and one chunk, never all of its images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient
from tqdm import tqdm

from encoder import Encoder, EncoderError
from indexer.catalog import Catalog, CatalogItem, fetch_bytes, item_fingerprint, open_catalog
from indexer.errors import IndexerError
from indexer.report import JobReport, SwapPolicy
from indexer.versions import abandon_quietly, finish_full, finish_incremental, incremental_target, new_version, rollback
from plugin import store

__all__ = ["ChunkResult", "JobReport", "SwapPolicy", "embed_chunk", "index_catalog", "rollback"]


@dataclass
class ChunkResult:
    good: list[store.Item] = field(default_factory=list)  # embedded, to be written
    failed: list[dict] = field(default_factory=list)  # {"item_id", "uri", "reason"}
    unchanged: list[str] = field(default_factory=list)  # ids whose content hash matched (incremental)

    def add_to(self, report: JobReport) -> None:
        report.indexed += len(self.good)
        report.unchanged += len(self.unchanged)
        report.failed += self.failed


def embed_chunk(encoder: Encoder, items: Sequence[CatalogItem], root: Path, allow_http: bool = False,
                known: dict[str, str] | None = None) -> ChunkResult:
    """Fetch each item once; with `known` (item id -> stored content hash) skip the unchanged ones; encode
    the rest in one batch. A bad item becomes a failure with its reason, and the chunk goes on."""
    result, pixels, todo = ChunkResult(), [], []
    for it in items:
        try:
            data = fetch_bytes(it, root, allow_http)
            digest = item_fingerprint(it, data)
            if known is not None and known.get(it.item_id) == digest:
                result.unchanged.append(it.item_id)
                continue
            pixels.append(encoder.preprocess([data])[0])
            todo.append((it, digest))
        except (IndexerError, EncoderError) as e:
            result.failed.append({"item_id": it.item_id, "uri": it.uri, "reason": str(e)})
    if todo:
        tokens = encoder.encode_pixels(np.stack(pixels))
        result.good = [store.Item(it.item_id, tokens[i], {**it.payload, "uri": it.uri, "content_hash": h})
                       for i, (it, h) in enumerate(todo)]
    return result


def index_catalog(client: QdrantClient, encoder: Encoder, catalog: str | Path, alias: str = "catalog",
                  incremental: bool = False, chunk_size: int = 64, payload_indexes: dict | None = None,
                  allow_http: bool = False, progress: bool = True,
                  on_progress: Callable[[int, int], None] | None = None, storage: str = "fp32",
                  policy: SwapPolicy | None = None) -> JobReport:
    """Run a full or incremental job. Raises IndexerError, with the report in `.report`, when the build
    must not go live (see indexer.report). The caller holds the alias's job lock (indexer.run does)."""
    policy = policy or SwapPolicy()
    t0 = time.time()
    cat = open_catalog(catalog)
    if incremental:
        name = incremental_target(client, alias, encoder.fingerprint)
    else:
        name = new_version(client, alias, encoder.spec, payload_indexes, storage)
    report = JobReport(alias, name, "incremental" if incremental else "full", total=cat.count)
    try:
        _fill(client, encoder, cat, report, chunk_size, allow_http, progress, on_progress)
    except BaseException:
        if not incremental:
            abandon_quietly(client, name, policy, "the job stopped with an error")
        raise
    report.seconds = time.time() - t0
    if incremental:
        finish_incremental(client, report, cat.ids, policy)
    else:
        finish_full(client, report, policy)
    report.seconds = time.time() - t0
    return report


def _fill(client: QdrantClient, encoder: Encoder, cat: Catalog, report: JobReport, chunk_size: int,
          allow_http: bool, progress: bool, on_progress: Callable[[int, int], None] | None) -> None:
    incremental = report.mode == "incremental"
    bar = tqdm(total=cat.count, desc=f"index {report.collection}", unit="img", disable=not progress)
    done = 0
    for chunk in cat.chunks(chunk_size):
        known = store.content_hashes(client, report.collection, [i.item_id for i in chunk]) if incremental else None
        result = embed_chunk(encoder, chunk, cat.root, allow_http, known)
        store.upsert(client, report.collection, result.good)
        result.add_to(report)
        done += len(chunk)
        bar.update(len(chunk))
        if on_progress:
            on_progress(done, cat.count)
    bar.close()
