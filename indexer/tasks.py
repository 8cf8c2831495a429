"""Worker tasks and the Redis job ledger that the coordinator reads progress from.

Ledger keys (per job): dqe-cir:job:<id>:done   SET of item ids indexed
                       dqe-cir:job:<id>:failed HASH item id -> reason
A redelivered chunk re-adds the same ids to the set, so counts never double.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from encoder import Encoder
from indexer.catalog import CatalogItem
from indexer.celery import app, settings
from indexer.jobs import embed_items
from indexer.settings import release_client
from plugin import store

_ENCODER: tuple[int, Encoder] | None = None
LEDGER_TTL = 7 * 24 * 3600


def worker_encoder() -> Encoder:
    """The bundle, loaded once per process (re-loaded after a fork: sessions do not survive one)."""
    global _ENCODER
    if _ENCODER is None or _ENCODER[0] != os.getpid():
        _ENCODER = (os.getpid(), Encoder(settings.bundle))
    return _ENCODER[1]


def ledger(redis_url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(redis_url or settings.redis_url, decode_responses=True)


def done_key(job_id: str) -> str:
    return f"dqe-cir:job:{job_id}:done"


def failed_key(job_id: str) -> str:
    return f"dqe-cir:job:{job_id}:failed"


class TransientError(Exception):
    """A store or broker hiccup worth retrying (connection refused, timeout, a busy local-mode folder)."""


def _is_transient(e: Exception) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return any(s in text for s in ("connection", "timeout", "timed out", "unavailable", "already accessed",
                                   "temporarily", "503", "502"))


@app.task(bind=True, name="indexer.index_chunk", autoretry_for=(TransientError,), retry_backoff=True,
          retry_backoff_max=60, retry_jitter=True, max_retries=8)
def index_chunk(self, job_id: str, collection: str, items: list[dict], root: str) -> dict:
    """Embed a chunk of catalog items and upsert them; bad items go to the job's failure report."""
    enc = worker_encoder()
    catalog_items = [CatalogItem(i["item_id"], i["uri"], i.get("payload") or {}) for i in items]
    root_path = Path(root).resolve()
    if settings.catalog_root and not root_path.is_relative_to(Path(settings.catalog_root).resolve()):
        reason = f"catalog root {root_path} is outside DQE_CIR_CATALOG_ROOT"
        good, failed = [], [{"item_id": i.item_id, "uri": i.uri, "reason": reason} for i in catalog_items]
    else:
        good, failed = embed_items(enc, catalog_items, root_path, settings.allow_http)
    try:
        client = _client()
        try:
            store.check_fingerprint(client, collection, enc.fingerprint)
            store.upsert(client, collection, good)
        finally:
            release_client(settings, client)
    except store.StoreError:
        raise  # a fingerprint mismatch is no hiccup: fail loudly
    except Exception as e:
        if _is_transient(e):
            raise TransientError(str(e)) from e
        raise
    r = ledger()
    pipe = r.pipeline()
    if good:
        pipe.sadd(done_key(job_id), *[g.item_id for g in good])
    for f in failed:
        pipe.hset(failed_key(job_id), f["item_id"], json.dumps({"uri": f["uri"], "reason": f["reason"]}))
    pipe.expire(done_key(job_id), LEDGER_TTL)
    pipe.expire(failed_key(job_id), LEDGER_TTL)
    pipe.execute()
    return {"indexed": len(good), "failed": len(failed)}


def _client():
    from indexer.settings import qdrant_client

    return qdrant_client(settings)
