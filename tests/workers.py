"""Helpers for the tests with real components: Redis at 127.0.0.1:6379 (db 15) and `celery -A indexer
worker` subprocesses writing to a local-mode Qdrant folder. Waits are on events (ledger state, worker
logs, process exits), polled, with a generous limit that only matters when something is broken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/15"


def celery_env(tmp_path: Path, bundle: Path, monkeypatch, **extra: str):
    """The environment of a test's workers and coordinator (generator body of a fixture)."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.fail("Redis is not running at 127.0.0.1:6379 (CI starts it in .ci/run)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"CELERY_BROKER_URL": REDIS_URL, "QDRANT_PATH": str(tmp_path / "qdrant"), "DQE_CIR_BUNDLE": str(bundle),
           "DQE_CIR_TASK_TIME_LIMIT": "5", "DQE_CIR_VISIBILITY_TIMEOUT": "6",
           "DQE_CIR_QUEUE": f"test-{uuid.uuid4().hex[:8]}", "DQE_CIR_THREADS": "1", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import indexer.celery as celery_mod
    import indexer.tasks as tasks_mod
    from indexer.settings import load_settings

    settings = load_settings()
    # The app reads the environment at import; point it at this test's broker and queue, and put
    # everything back afterwards so that other tests see the defaults.
    saved = {k: celery_mod.app.conf[k] for k in ("broker_url", "result_backend", "task_default_queue")}
    celery_mod.app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL, task_default_queue=settings.queue)
    monkeypatch.setattr(celery_mod, "settings", settings)
    monkeypatch.setattr(tasks_mod, "settings", settings)
    yield {**os.environ, **env}, settings
    celery_mod.app.conf.update(**saved)


def start_worker(env: dict, tmp_path: Path, name: str, fault: str | None = None, pool: str = "solo"):
    """A real worker process; with `fault`, tests.chaos_worker injects that fault into it first."""
    log = open(tmp_path / f"{name}.log", "w")
    head = ["-m", "tests.chaos_worker", fault] if fault else ["-m", "celery", "-A", "indexer"]
    args = ["worker", "--pool", pool, "--loglevel", "INFO", "-Q", env["DQE_CIR_QUEUE"], "-n", f"{name}@%h"]
    if pool == "prefork":
        args += ["--concurrency", "1"]
    return subprocess.Popen([sys.executable, *head, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)


def wait_until(predicate, what: str, limit: float = 300.0, every: float = 0.1):
    """Poll `predicate` until it returns something true; fail naming `what` after `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"gave up waiting for {what} after {limit:.0f}s")


def log_text(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text(errors="replace")


def stored(settings, alias: str = "catalog") -> tuple[list[str], int] | None:
    """(item ids, count) behind `alias` in the local-mode folder, or None when the alias does not exist."""
    from indexer.settings import qdrant_client
    from plugin import store

    client = qdrant_client(settings)
    try:
        if store.alias_target(client, alias) is None:
            return None
        return [p["item_id"] for p in store.scroll_payloads(client, alias, ["item_id"])], store.count(client, alias)
    finally:
        client.close()


def collections(settings) -> list[str]:
    from indexer.settings import qdrant_client
    from plugin import store

    client = qdrant_client(settings)
    try:
        return sorted(store.collections(client))
    finally:
        client.close()
