"""Real components: Redis at 127.0.0.1:6379 (db 15) and `celery -A indexer worker` subprocesses (solo
pool) writing to a local-mode Qdrant folder. Helpers in tests/workers.py."""

import re
import signal
import threading

import pytest

from indexer import IndexerError
from indexer.reindex_inprocess import SwapPolicy
from tests import workers
from tests.conftest import make_bad_catalog
from tests.workers import REDIS_URL, start_worker, stop, stored, wait_until


@pytest.fixture()
def celery_env(tmp_path, tiny_bundle, monkeypatch):
    yield from workers.celery_env(tmp_path, tiny_bundle, monkeypatch)


def copy_images(synth_small, dest, n):
    dest.mkdir()
    paths = sorted((synth_small / "val").glob("*.png"))[:n]
    for p in paths:
        (dest / p.name).write_bytes(p.read_bytes())
    return paths


def task_ids(tmp_path, worker: str, event: str) -> set[str]:
    """Ids of the chunk tasks a worker's log says were received / succeeded."""
    return set(re.findall(rf"Task indexer\.index_chunk\[([0-9a-f-]+)\] {event}", workers.log_text(tmp_path, worker)))


def test_full_then_incremental_job_through_a_worker(celery_env, synth_small, tmp_path):
    env, settings = celery_env
    from indexer.reindex_workers import index_with_workers

    paths = copy_images(synth_small, tmp_path / "cat", 24)
    worker = start_worker(env, tmp_path, "w1")
    try:
        report = index_with_workers(tmp_path / "cat", "catalog", settings, chunk_size=8, progress=False, timeout=240)
        assert report.indexed == 24 and not report.failed and not report.lost_chunks
        ids, count = stored(settings)
        assert count == 24 and len(set(ids)) == 24
        extra = sorted((synth_small / "val").glob("*.png"))[30]
        (tmp_path / "cat" / paths[0].name).write_bytes(extra.read_bytes())  # changed
        (tmp_path / "cat" / paths[1].name).unlink()  # removed
        (tmp_path / "cat" / extra.name).write_bytes(extra.read_bytes())  # added
        inc = index_with_workers(tmp_path / "cat", "catalog", settings, incremental=True, chunk_size=8,
                                 progress=False, timeout=240)
    finally:
        stop(worker)
    assert (inc.indexed, inc.unchanged, inc.deleted, inc.failed) == (2, 22, 1, [])
    assert inc.collection == report.collection and stored(settings)[1] == 24


def test_sigkill_mid_job_loses_and_duplicates_nothing(celery_env, synth_small, tmp_path):
    env, settings = celery_env
    from indexer import ledger
    from indexer.reindex_workers import index_with_workers

    copy_images(synth_small, tmp_path / "cat", 80)
    result = {}

    def run():
        try:
            result["report"] = index_with_workers(tmp_path / "cat", "catalog", settings, chunk_size=4, progress=False,
                                                  timeout=400)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = e

    r = ledger.client(REDIS_URL)
    worker = start_worker(env, tmp_path, "w1")
    job = threading.Thread(target=run)
    job.start()
    try:
        keys = wait_until(lambda: r.keys("dqe-cir:job:*:chunks"), "the job's first finished chunk")
        wait_until(lambda: r.hlen(keys[0]) >= 3, "three finished chunks")
    finally:
        stop(worker, signal.SIGKILL)  # mid-job: a task is in flight, unacknowledged
    assert r.hlen(keys[0]) < 20
    in_flight = task_ids(tmp_path, "w1", "received") - task_ids(tmp_path, "w1", "succeeded")
    worker2 = start_worker(env, tmp_path, "w2")
    try:
        # the killed worker's chunk comes back once the visibility timeout (6 s here) has passed
        wait_until(lambda: in_flight <= task_ids(tmp_path, "w2", "received"), "the killed chunk's redelivery",
                   limit=120, every=0.5)
        wait_until(lambda: not job.is_alive(), "the job to finish on the second worker", limit=420, every=0.5)
    finally:
        stop(worker2)
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.indexed == 80 and not report.failed
    ids, count = stored(settings)
    assert count == 80 and len(ids) == len(set(ids)) == 80


def test_bad_images_through_a_worker_land_in_the_failure_report(celery_env, synth_small, tmp_path):
    from indexer.reindex_workers import index_with_workers

    env, settings = celery_env
    bad = make_bad_catalog(tmp_path / "cat", sorted((synth_small / "val").glob("*.png"))[:6])
    worker = start_worker(env, tmp_path, "w1")
    try:
        report = index_with_workers(tmp_path / "cat", "catalog", settings, chunk_size=4, progress=False, timeout=240,
                                    policy=SwapPolicy(max_failed=0.5))
    finally:
        stop(worker)
    assert report.indexed == 6
    assert {f["item_id"] for f in report.failed} == bad and all(f["reason"] for f in report.failed)
    assert stored(settings)[1] == 6


def test_lost_chunks_are_named_and_a_second_job_on_the_alias_fails_fast(celery_env, synth_small, tmp_path):
    """No worker at all: the job reports its chunks as lost at its deadline instead of waiting forever, and
    meanwhile a second job on the same alias is refused at once by the Redis lock."""
    from indexer import ledger
    from indexer.reindex_workers import index_with_workers

    _, settings = celery_env
    copy_images(synth_small, tmp_path / "cat", 6)
    result = {}

    def first():
        try:
            index_with_workers(tmp_path / "cat", "catalog", settings, chunk_size=4, progress=False, timeout=3)
        except IndexerError as e:
            result["error"] = e

    r = ledger.client(REDIS_URL)
    job = threading.Thread(target=first)
    job.start()
    try:
        wait_until(lambda: r.keys("dqe-cir:lock:*:catalog"), "the first job's lock")
        with pytest.raises(IndexerError, match="another index job is running on alias 'catalog' \\(job [0-9a-f]+ on"):
            index_with_workers(tmp_path / "cat", "catalog", settings, progress=False, timeout=3)
    finally:
        job.join(timeout=120)
    error = result["error"]
    assert "lost chunks: chunk-00000 (val-" in str(error) and "chunk-00001" in str(error)
    report = error.report
    assert len(report.lost_chunks) == 2 and len(report.failed) == 6 and report.indexed == 0
    assert all("got no result within 3s" in f["reason"] for f in report.failed)
    assert stored(settings) is None and workers.collections(settings) == []  # the empty build was deleted
    assert not r.keys("dqe-cir:lock:*")  # released
    assert ledger.is_cancelled(r, report.job_id)  # late tasks will skip


def test_the_redis_lock_names_its_owner_expires_and_is_lost_loudly(celery_env):
    from indexer.locks import RedisAliasLock

    first = RedisAliasLock(REDIS_URL, "qdrant-a", "shop", "job 1 on host-a", ttl=1)
    first.acquire()
    with pytest.raises(IndexerError, match=r"alias 'shop' \(job 1 on host-a\).*expires in"):
        RedisAliasLock(REDIS_URL, "qdrant-a", "shop", "job 2").acquire()
    RedisAliasLock(REDIS_URL, "qdrant-b", "shop", "job 3").acquire()  # the same alias on another Qdrant is free
    second = RedisAliasLock(REDIS_URL, "qdrant-a", "shop", "job 2")
    wait_until(lambda: not first.redis.exists(first.name), "the unrenewed lock to expire", limit=30)
    second.acquire()
    with pytest.raises(IndexerError, match="lost the job lock"):
        first.renew()
    second.release()
