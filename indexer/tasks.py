"""Worker tasks: embed a chunk of catalog items and write it, recording the outcome in the job ledger
(indexer.ledger) whether the chunk succeeds or fails for good.

A chunk fails for good on a StoreError (e.g. a worker whose bundle differs from the collection's), on
any other unexpected exception, on a time limit, or when its retries for transient errors (a store or
broker hiccup, judged by exception type) run out; then `ChunkTask.on_failure` records every item of
the chunk not already indexed as failed, with the reason. Celery calls it in the worker process, or in
the pool's parent when the hard time limit killed the child.

Qdrant clients: a server-mode client is made once per worker process and closed at its shutdown; a
local-mode client is opened and closed around each use (the folder allows one holder at a time).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from celery import Task
from celery.signals import worker_process_shutdown, worker_shutdown

from encoder import Encoder
from indexer import ledger
from indexer.catalog import CatalogItem, chunked
from indexer.celery import app, settings
from indexer.pipeline import ChunkResult, fed_batches
from indexer.settings import qdrant_client
from plugin import store
from plugin.errors import ShardBusy

log = logging.getLogger(__name__)
_ENCODER: tuple[int, Encoder] | None = None
_CLIENT: tuple[int, object] | None = None
CHUNK_ARGS = ("job_id", "chunk", "collection", "items", "root", "incremental")
# A chunk is fed to the encoder in batches of this size, so decoding the next batch and writing the last
# one overlap encoding this one (indexer.pipeline).
TASK_BATCH = 16


def worker_encoder() -> Encoder:
    """The bundle, loaded once per process (re-loaded after a fork: sessions do not survive one)."""
    global _ENCODER
    if _ENCODER is None or _ENCODER[0] != os.getpid():
        _ENCODER = (os.getpid(), Encoder(settings.bundle))
    return _ENCODER[1]


@contextmanager
def task_client() -> Iterator:
    """The process's server-mode client, or a local-mode client for this one use."""
    global _CLIENT
    if settings.qdrant_url:
        if _CLIENT is None or _CLIENT[0] != os.getpid():
            _CLIENT = (os.getpid(), qdrant_client(settings))
        yield _CLIENT[1]
        return
    client = qdrant_client(settings)
    try:
        yield client
    finally:
        client.close()


@worker_process_shutdown.connect
@worker_shutdown.connect
def close_worker_client(**_) -> None:
    """Close this process's server-mode client when the worker (or its pool child) shuts down."""
    global _CLIENT
    if _CLIENT is not None and _CLIENT[0] == os.getpid():
        _CLIENT[1].close()
    _CLIENT = None


class TransientError(Exception):
    """A store or broker hiccup worth retrying (connection refused, timeout, a busy server or folder)."""


def is_transient(e: BaseException) -> bool:
    return store.is_transient(e) or isinstance(e, (redis.ConnectionError, redis.TimeoutError))


class ChunkTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        call = {**dict(zip(CHUNK_ARGS, args, strict=False)), **(kwargs or {})}
        reason = f"chunk {call['chunk']} failed: {type(exc).__name__}: {exc}"
        try:
            ledger.record_chunk_failure(ledger.client(settings.redis_url), call["job_id"], call["chunk"],
                                        call["items"], reason)
        except redis.RedisError:  # the coordinator will report the chunk as lost at its deadline
            log.exception("could not record the failure of %s of job %s in the ledger", call["chunk"], call["job_id"])


@app.task(bind=True, base=ChunkTask, name="indexer.index_chunk", autoretry_for=(TransientError,),
          retry_backoff=True, retry_backoff_max=60, retry_jitter=True, max_retries=8)
def index_chunk(self, job_id: str, chunk: str, collection: str, items: list[dict], root: str,
                incremental: bool = False) -> dict:
    """Embed a chunk of catalog items and upsert them; bad items go to the job's failure report."""
    r = ledger.client(settings.redis_url)
    if ledger.is_cancelled(r, job_id):
        ledger.record_chunk_failure(r, job_id, chunk, items, f"chunk {chunk} was not run: the job had stopped "
                                                             "waiting for it")
        return {"skipped": len(items)}
    catalog_items = [CatalogItem(i["item_id"], i["uri"], i.get("payload") or {}) for i in items]
    root_path = Path(root).resolve()
    try:
        if settings.catalog_root and not root_path.is_relative_to(Path(settings.catalog_root).resolve()):
            reason = f"catalog root {root_path} is outside DQE_CIR_CATALOG_ROOT"
            result = ChunkResult(failed=[{"item_id": i.item_id, "uri": i.uri, "reason": reason}
                                         for i in catalog_items])
        else:
            result = _embed_and_write(collection, catalog_items, root_path, incremental)
        ledger.record_chunk(r, job_id, chunk, [g.item_id for g in result.good], result.unchanged, result.failed)
    except ShardBusy as e:  # another worker process has the embedded collection open: its turn ends soon
        raise TransientError(f"{e} (attempt {self.request.retries + 1} of {self.max_retries + 1})") from e
    except store.StoreError:
        raise  # a fingerprint mismatch or a missing collection is no hiccup: fail for good, loudly
    except Exception as e:
        if is_transient(e):
            raise TransientError(f"{type(e).__name__}: {e} (attempt {self.request.retries + 1} of "
                                 f"{self.max_retries + 1})") from e
        raise
    return {"indexed": len(result.good), "unchanged": len(result.unchanged), "failed": len(result.failed)}


def _embed_and_write(collection: str, items: list[CatalogItem], root: Path, incremental: bool) -> ChunkResult:
    """Embed the chunk through the fed encoder and write it; one client for the whole chunk (local mode:
    the folder is opened once, not once for the look-up and again for the write)."""
    enc = worker_encoder()
    result = ChunkResult()
    with task_client() as client:
        store.check_fingerprint(client, collection, enc.fingerprint)
        known = (lambda ids: store.content_hashes(client, collection, ids)) if incremental else None
        for _, part in fed_batches(enc, chunked(items, TASK_BATCH), root,
                                   lambda good: store.upsert(client, collection, good), known, settings.allow_http):
            result.extend(part)
    return result
