"""The Redis job ledger: what became of every chunk and item of a Celery job; the coordinator reads it.

Keys per job (they expire after LEDGER_TTL):
  dqe-cir:job:<id>:done       SET   item ids indexed
  dqe-cir:job:<id>:unchanged  SET   item ids whose content hash had not changed (incremental runs)
  dqe-cir:job:<id>:failed     HASH  item id -> {"uri", "reason"}
  dqe-cir:job:<id>:chunks     HASH  chunk name -> {"state": "ok" | "failed", "reason"}: finished chunks
  dqe-cir:job:<id>:cancelled  STR   set when the coordinator stopped waiting: chunks not yet run are skipped
A redelivered chunk writes the same ids again, so counts never double; an item one delivery indexed
is never reported failed by another, and a chunk that finished "ok" stays so.
"""

from __future__ import annotations

import json

import redis

from indexer.errors import IndexerError

LEDGER_TTL = 7 * 24 * 3600
PARTS = ("done", "unchanged", "failed", "chunks", "cancelled")


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def connect(url: str) -> redis.Redis:
    """A ledger client that has answered a ping."""
    r = client(url)
    try:
        r.ping()
    except redis.RedisError as e:
        raise IndexerError(f"cannot reach the job ledger at {url}: {e}; start Redis or set DQE_CIR_REDIS_URL") from e
    return r


def key(job_id: str, part: str) -> str:
    return f"dqe-cir:job:{job_id}:{part}"


def _expire_all(pipe, job_id: str) -> None:
    for part in PARTS:
        pipe.expire(key(job_id, part), LEDGER_TTL)


def record_chunk(r: redis.Redis, job_id: str, chunk: str, indexed: list[str], unchanged: list[str],
                 failed: list[dict]) -> None:
    """A chunk that ran: its indexed, unchanged and failed items, and the chunk as finished."""
    pipe = r.pipeline()
    if indexed:
        pipe.sadd(key(job_id, "done"), *indexed)
        pipe.hdel(key(job_id, "failed"), *indexed)
    if unchanged:
        pipe.sadd(key(job_id, "unchanged"), *unchanged)
    for f in failed:
        pipe.hset(key(job_id, "failed"), f["item_id"], json.dumps({"uri": f["uri"], "reason": f["reason"]}))
    pipe.hset(key(job_id, "chunks"), chunk, json.dumps({"state": "ok", "reason": ""}))
    _expire_all(pipe, job_id)
    pipe.execute()


def record_chunk_failure(r: redis.Redis, job_id: str, chunk: str, items: list[dict], reason: str) -> None:
    """A chunk that failed for good: each of its items not already indexed is failed with `reason`."""
    state = r.hget(key(job_id, "chunks"), chunk)
    if state and json.loads(state)["state"] == "ok":
        return  # an earlier delivery finished it
    ids = [i["item_id"] for i in items]
    indexed = r.smismember(key(job_id, "done"), ids) if ids else []
    pipe = r.pipeline()
    for item, done in zip(items, indexed, strict=True):
        if not done:
            pipe.hset(key(job_id, "failed"), item["item_id"], json.dumps({"uri": item["uri"], "reason": reason}))
    pipe.hset(key(job_id, "chunks"), chunk, json.dumps({"state": "failed", "reason": reason}))
    _expire_all(pipe, job_id)
    pipe.execute()


def cancel(r: redis.Redis, job_id: str) -> None:
    r.set(key(job_id, "cancelled"), "1", ex=LEDGER_TTL)


def is_cancelled(r: redis.Redis, job_id: str) -> bool:
    return bool(r.exists(key(job_id, "cancelled")))


def finished_chunks(r: redis.Redis, job_id: str) -> set[str]:
    return set(r.hkeys(key(job_id, "chunks")))


def counts(r: redis.Redis, job_id: str) -> tuple[int, int, int]:
    """(chunks finished, items indexed or unchanged, items failed) so far: for progress."""
    pipe = r.pipeline()
    pipe.hlen(key(job_id, "chunks"))
    pipe.scard(key(job_id, "done"))
    pipe.scard(key(job_id, "unchanged"))
    pipe.hlen(key(job_id, "failed"))
    chunks, done, unchanged, failed = pipe.execute()
    return chunks, done + unchanged, failed


def outcome(r: redis.Redis, job_id: str) -> tuple[int, int, list[dict]]:
    """(indexed, unchanged, failed items) once the job is over."""
    raw = r.hgetall(key(job_id, "failed"))
    indexed = r.smismember(key(job_id, "done"), list(raw)) if raw else []
    failed = [{"item_id": k, **json.loads(v)} for (k, v), done in zip(raw.items(), indexed, strict=True) if not done]
    return r.scard(key(job_id, "done")), r.scard(key(job_id, "unchanged")), sorted(failed, key=lambda f: f["item_id"])
