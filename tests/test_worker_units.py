"""Worker pieces without a worker: which errors are retried (by type), the per-process server-mode
client, the job ledger's bookkeeping (real Redis), the coordinator's default deadline."""

import dataclasses
import json

import httpx
import pytest
import redis
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from indexer import ledger
from indexer.reindex_workers import default_deadline
from plugin import store
from plugin.store import is_transient

REDIS_URL = "redis://127.0.0.1:6379/15"


def _raised_while_handling(cause: Exception, exc: Exception) -> Exception:
    try:
        try:
            raise cause
        except type(cause):
            raise exc  # noqa: B904 (the implicit context is what local mode gives us)
    except type(exc) as e:
        return e


def test_transient_errors_are_told_by_type():
    from portalocker.exceptions import LockException

    response = lambda code: UnexpectedResponse(code, "x", b"", httpx.Headers())  # noqa: E731
    for e in (ConnectionRefusedError("no"), TimeoutError(), httpx.ConnectError("down"), response(503),
              response(429), ResponseHandlingException(httpx.ReadTimeout("slow")),
              _raised_while_handling(LockException(), RuntimeError("Storage folder is already accessed"))):
        assert is_transient(e), e
    for e in (ValueError("Collection c not found"), response(400), response(404), store.StoreError("mismatch"),
              RuntimeError("connection timeout unavailable 503"), KeyError("x")):
        assert not is_transient(e), e  # words in a message do not make an error transient


def test_redis_hiccups_are_transient_for_tasks():
    from indexer.tasks import is_transient as task_transient

    assert task_transient(redis.ConnectionError("down")) and task_transient(redis.TimeoutError())
    assert not task_transient(redis.ResponseError("WRONGTYPE"))


def test_one_server_mode_client_per_worker_process_closed_at_shutdown(monkeypatch):
    import indexer.tasks as tasks

    made = []

    class FakeClient:
        closed = False

        def close(self):
            self.closed = True

    def factory(settings):
        made.append(FakeClient())
        return made[-1]

    monkeypatch.setattr(tasks, "qdrant_client", factory)
    monkeypatch.setattr(tasks, "_CLIENT", None)
    monkeypatch.setattr(tasks, "settings", dataclasses.replace(tasks.settings, qdrant_url="http://127.0.0.1:1"))
    for _ in range(3):
        with tasks.task_client() as client:
            assert client is made[0]
    assert len(made) == 1 and not made[0].closed
    tasks.close_worker_client()
    assert made[0].closed and tasks._CLIENT is None
    monkeypatch.setattr(tasks, "settings", dataclasses.replace(tasks.settings, qdrant_url=None))
    with tasks.task_client():
        pass
    assert len(made) == 2 and made[1].closed  # local mode: opened and closed around each use


def test_ledger_never_counts_an_item_twice():
    r = ledger.client(REDIS_URL)
    try:
        r.ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running at 127.0.0.1:6379 (CI starts it in .ci/run)")
    job = "unit-test-job"
    for part in ledger.PARTS:
        r.delete(ledger.key(job, part))
    items = [{"item_id": i, "uri": f"{i}.png"} for i in ("a", "b", "c")]
    ledger.record_chunk_failure(r, job, "chunk-00000", items, "worker lost its store")
    ledger.record_chunk(r, job, "chunk-00000", ["a", "b"], [], [{"item_id": "c", "uri": "c.png", "reason": "corrupt"}])
    ledger.record_chunk_failure(r, job, "chunk-00000", items, "a late duplicate failed")  # ok stays ok
    assert ledger.outcome(r, job) == (2, 0, [{"item_id": "c", "uri": "c.png", "reason": "corrupt"}])
    assert json.loads(r.hget(ledger.key(job, "chunks"), "chunk-00000"))["state"] == "ok"
    ledger.record_chunk(r, job, "chunk-00001", ["d"], [], [])
    ledger.record_chunk_failure(r, job, "chunk-00002", [{"item_id": "d", "uri": "d.png"}], "redelivered and failed")
    assert ledger.outcome(r, job)[:2] == (3, 0)  # d stays indexed
    assert ledger.counts(r, job)[0] == 3 and 0 < r.ttl(ledger.key(job, "done")) <= ledger.LEDGER_TTL


def test_default_deadline_grows_with_the_chunks():
    assert default_deadline(10, task_time_limit=600, visibility_timeout=1200) == 1200 + 10 * 600
    assert default_deadline(1, 5, 6) < default_deadline(2, 5, 6)


def test_a_busy_embedded_collection_is_retried_not_failed_for_good(monkeypatch):
    """ShardBusy is a StoreError (which fails a chunk for good), but another worker process holding the edge
    collection is a turn to wait for: the task raises TransientError, which Celery retries."""
    import indexer.tasks as tasks
    from plugin.errors import ShardBusy

    def busy(*_):
        raise ShardBusy("collection 'c' is open in another process")

    monkeypatch.setattr(tasks, "_embed_and_write", busy)
    with pytest.raises(tasks.TransientError, match="open in another process"):
        tasks.index_chunk._orig_run("job-units", "chunk-0", "c", [], "/tmp")
    monkeypatch.setattr(tasks, "_embed_and_write", lambda *_: (_ for _ in ()).throw(store.StoreError("mismatch")))
    with pytest.raises(store.StoreError, match="mismatch"):
        tasks.index_chunk._orig_run("job-units", "chunk-0", "c", [], "/tmp")
