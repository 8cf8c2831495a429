"""Jobs as `dqe-cir index` runs them: each under the alias's job lock (indexer.locks), in-process or
through Celery workers."""

from __future__ import annotations

import uuid
from pathlib import Path

from indexer.catalog import DEFAULT_CHUNK_SIZE
from indexer.report import JobReport, SwapPolicy
from indexer.settings import Settings, open_client
from plugin.placement import Placement


def run_index(settings: Settings, catalog: str | Path, alias: str, workers: bool = False, incremental: bool = False,
              chunk_size: int = DEFAULT_CHUNK_SIZE, payload_indexes: dict | None = None, storage: str = "fp32",
              policy: SwapPolicy | None = None, progress: bool = True, timeout: float | None = None,
              design: str | None = None, design_settings: dict | None = None,
              placement: Placement | None = None) -> JobReport:
    """A full or incremental job; IndexerError (with `.report` when the job ran) if it did not go live."""
    if workers:
        from indexer.reindex_workers import index_with_workers

        return index_with_workers(catalog, alias, settings, incremental=incremental, chunk_size=chunk_size,
                                  payload_indexes=payload_indexes, progress=progress, timeout=timeout,
                                  storage=storage, policy=policy, design=design,
                                  design_settings=design_settings, placement=placement)
    from encoder import Encoder
    from indexer.locks import alias_lock
    from indexer.reindex_inprocess import index_catalog

    encoder = Encoder(settings.bundle)
    with alias_lock(settings, alias, uuid.uuid4().hex) as lock, open_client(settings) as client:
        return index_catalog(client, encoder, catalog, alias, incremental=incremental, chunk_size=chunk_size,
                             payload_indexes=payload_indexes, allow_http=settings.allow_http, progress=progress,
                             on_progress=lambda *_: lock.renew(), storage=storage, policy=policy, design=design,
                             design_settings=design_settings, placement=placement)


def run_rollback(settings: Settings, alias: str) -> tuple[str, str]:
    """Point the alias at its newest complete older version, under the job lock. Returns (from, to)."""
    from indexer.locks import alias_lock
    from indexer.versions import rollback

    with alias_lock(settings, alias, f"rollback-{uuid.uuid4().hex[:8]}"), open_client(settings) as client:
        return rollback(client, alias)
