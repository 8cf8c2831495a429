"""Real components: Redis at 127.0.0.1:6379 (db 15) and `celery -A indexer worker` subprocesses (solo
pool) writing to a local-mode Qdrant folder."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture()
def celery_env(tmp_path, tiny_bundle, monkeypatch):
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running at 127.0.0.1:6379 (CI starts it in .ci/run)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"CELERY_BROKER_URL": REDIS_URL, "QDRANT_PATH": str(tmp_path / "qdrant"), "DQE_CIR_BUNDLE": str(tiny_bundle),
           "DQE_CIR_TASK_TIME_LIMIT": "5", "DQE_CIR_VISIBILITY_TIMEOUT": "6",
           "DQE_CIR_QUEUE": f"test-{uuid.uuid4().hex[:8]}", "DQE_CIR_THREADS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import indexer.celery as celery_mod
    from indexer.settings import load_settings

    settings = load_settings()
    # The app reads the environment at import; point it at this test's broker and queue, and put
    # everything back afterwards so that other tests see the defaults.
    saved = {k: celery_mod.app.conf[k] for k in ("broker_url", "result_backend", "task_default_queue")}
    celery_mod.app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL, task_default_queue=settings.queue)
    import indexer.tasks as tasks_mod

    monkeypatch.setattr(celery_mod, "settings", settings)
    monkeypatch.setattr(tasks_mod, "settings", settings)
    yield {**os.environ, **env}, settings
    celery_mod.app.conf.update(**saved)


def start_worker(env, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "indexer", "worker", "--pool", "solo",
                             "--loglevel", "INFO", "-Q", env["DQE_CIR_QUEUE"], "-n", f"{name}@%h"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)


def point_ids(settings):
    from qdrant_client import QdrantClient

    client = QdrantClient(path=settings.qdrant_path)
    try:
        from plugin import store

        return [p["item_id"] for p in store.scroll_payloads(client, "catalog", ["item_id"])], \
            store.count(client, "catalog")
    finally:
        client.close()


def test_full_job_through_a_worker(celery_env, synth_small, tmp_path):
    env, settings = celery_env
    from indexer.distributed import index_with_workers

    worker = start_worker(env, tmp_path, "w1")
    try:
        report = index_with_workers(synth_small / "val", "catalog", settings, chunk_size=64, progress=False,
                                    timeout=240)
    finally:
        stop(worker)
    n = len(list((synth_small / "val").glob("*.png")))
    assert report.indexed == n and not report.failed
    ids, count = point_ids(settings)
    assert count == n and len(set(ids)) == n


def test_sigkill_mid_job_loses_and_duplicates_nothing(celery_env, synth_small, tmp_path):
    env, settings = celery_env
    from indexer.distributed import index_with_workers
    from indexer.tasks import done_key, ledger

    catalog = synth_small / "val"
    n = len(list(catalog.glob("*.png")))
    result = {}

    def run():
        try:
            result["report"] = index_with_workers(catalog, "catalog", settings, chunk_size=8, progress=False,
                                                  timeout=400)
        except Exception as e:  # surfaced by the assertion below
            result["error"] = e

    worker = start_worker(env, tmp_path, "w1")
    job = threading.Thread(target=run)
    job.start()
    r = ledger(REDIS_URL)
    deadline = time.time() + 180
    while time.time() < deadline:
        keys = r.keys("dqe-cir:job:*:done")
        if keys and r.scard(keys[0]) >= 40:
            break
        time.sleep(0.2)
    else:
        stop(worker, signal.SIGKILL)
        pytest.fail(f"the worker made no progress; see {tmp_path / 'w1.log'}")
    stop(worker, signal.SIGKILL)  # mid-job: a task is in flight, unacknowledged
    done_at_kill = r.scard(r.keys("dqe-cir:job:*:done")[0])
    assert done_at_kill < n
    worker2 = start_worker(env, tmp_path, "w2")
    try:
        job.join(timeout=420)
    finally:
        stop(worker2)
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.indexed == n and not report.failed
    ids, count = point_ids(settings)
    assert count == n and len(ids) == len(set(ids)) == n
    assert done_key  # the ledger key helper is what the job read


def test_bad_images_through_a_worker_land_in_the_failure_report(celery_env, synth_small, tmp_path):
    from indexer.distributed import index_with_workers
    from tests.conftest import make_bad_catalog

    env, settings = celery_env
    bad = make_bad_catalog(tmp_path / "cat", sorted((synth_small / "val").glob("*.png"))[:6])
    worker = start_worker(env, tmp_path, "w1")
    try:
        report = index_with_workers(tmp_path / "cat", "catalog", settings, chunk_size=4, progress=False, timeout=240)
    finally:
        stop(worker)
    assert report.indexed == 6
    assert {f["item_id"] for f in report.failed} == bad and all(f["reason"] for f in report.failed)
    ids, count = point_ids(settings)
    assert count == 6
