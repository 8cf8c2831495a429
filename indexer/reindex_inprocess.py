"""Re-index jobs, in-process (the embedded default): every catalog item ends indexed, unchanged or in the
job's failure report with a reason.

Full job: a new version `<alias>__<version>` (indexer.versions), filled chunk by chunk, checked, then
the alias switched atomically, or the switch refused (IndexerError with the report) and the build
removed. Chunks go through the fed encoder (indexer.pipeline: decoding in a thread pool, upserts in
the background); `decode_workers=0` runs them one step after another instead.

Incremental job: in the alias's current collection, fetch each item once, skip it when its
content hash (bytes + payload) equals the stored one, embed the rest, and delete the items gone from
the catalog. The catalog is streamed: memory holds its ids and a few chunks (the one being encoded,
the one being written and the decoded ones queued ahead), never all of its images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from qdrant_client import QdrantClient
from tqdm import tqdm

from encoder import Encoder
from indexer.catalog import DEFAULT_CHUNK_SIZE, Catalog, open_catalog
from indexer.pipeline import DECODE_WORKERS, ChunkResult, embed_chunk, fed_batches
from indexer.report import JobReport, SwapPolicy
from indexer.versions import abandon_quietly, finish, incremental_target, new_version, rollback
from plugin import store
from plugin.placement import Placement

__all__ = ["ChunkResult", "JobReport", "SwapPolicy", "embed_chunk", "index_catalog", "rollback"]


def index_catalog(client: QdrantClient, encoder: Encoder, catalog: str | Path, alias: str = "catalog",
                  incremental: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE, payload_indexes: dict | None = None,
                  allow_http: bool = False, progress: bool = True,
                  on_progress: Callable[[int, int], None] | None = None, storage: str = "fp32",
                  policy: SwapPolicy | None = None, decode_workers: int = DECODE_WORKERS,
                  design: str | None = None, design_settings: dict | None = None,
                  placement: Placement | None = None) -> JobReport:
    """Run a full or incremental job. Raises IndexerError, with the report in `.report`, when the build
    must not go live (see indexer.report). The caller holds the alias's job lock (indexer.reindex does)."""
    policy = policy or SwapPolicy()
    t0 = time.time()
    cat = open_catalog(catalog)
    if incremental:
        name = incremental_target(client, alias, encoder.fingerprint, design, placement,
                                  **(design_settings or {}))
    else:
        name = new_version(client, alias, encoder.spec, payload_indexes, storage, design, placement,
                           **(design_settings or {}))
    report = JobReport(alias, name, "incremental" if incremental else "full", total=cat.count)
    try:
        _fill(client, encoder, cat, report, chunk_size, allow_http, progress, on_progress, decode_workers)
    except BaseException:
        if not incremental:
            abandon_quietly(client, name, policy, "the job stopped with an error")
        raise
    report.seconds = time.time() - t0
    finish(client, report, cat.ids, policy)
    report.seconds = time.time() - t0
    return report


def _fill(client: QdrantClient, encoder: Encoder, cat: Catalog, report: JobReport, chunk_size: int,
          allow_http: bool, progress: bool, on_progress: Callable[[int, int], None] | None,
          decode_workers: int) -> None:
    name = report.collection
    known = (lambda ids: store.content_hashes(client, name, ids)) if report.mode == "incremental" else None
    bar = tqdm(total=cat.count, desc=f"index {name}", unit="img", disable=not progress)
    done = 0
    if decode_workers > 0:
        results = fed_batches(encoder, cat.chunks(chunk_size), cat.root, lambda good: store.upsert(client, name, good),
                              known, allow_http, workers=decode_workers)
    else:
        results = _sequential(client, encoder, cat, name, chunk_size, allow_http, known)
    for chunk, result in results:
        result.add_to(report)
        done += len(chunk)
        bar.update(len(chunk))
        if on_progress:
            on_progress(done, cat.count)
    bar.close()


def _sequential(client: QdrantClient, encoder: Encoder, cat: Catalog, name: str, chunk_size: int, allow_http: bool,
                known) -> Iterator[tuple[list, ChunkResult]]:
    """Read, decode, encode and write each chunk one step after another (decode_workers=0)."""
    for chunk in cat.chunks(chunk_size):
        result = embed_chunk(encoder, chunk, cat.root, allow_http, known([i.item_id for i in chunk]) if known else None)
        store.upsert(client, name, result.good)
        yield chunk, result
