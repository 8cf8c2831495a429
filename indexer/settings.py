"""Configuration from the environment. Every variable the indexer reads is listed here, with its default.

CELERY_BROKER_URL           redis://127.0.0.1:6379/0  Celery broker; `dqe-cir index` uses workers only when set
CELERY_RESULT_BACKEND       the broker URL            Celery result backend
DQE_CIR_REDIS_URL           the broker URL            where job progress and failure reports live
QDRANT_URL                  (unset)                   Qdrant server, e.g. http://qdrant:6333
QDRANT_API_KEY              (unset)                   API key for QDRANT_URL
QDRANT_PATH                 qdrant_data               the embedded engine's folder, used when QDRANT_URL is unset
QDRANT_ENGINE               edge                      what serves QDRANT_PATH: edge (qdrant-edge, in-process, HNSW) or
                                                      local (qdrant-client's local mode: pure Python, exact, slow)
DQE_CIR_BUNDLE              exports/bundle            model bundle folder
DQE_CIR_CATALOG_ROOT        (unset)                   workers refuse catalogs whose root is not under it
DQE_CIR_ALLOW_HTTP          0                         1: fetch http(s) URIs (size cap, timeouts, no private hosts)
DQE_CIR_TASK_TIME_LIMIT     600                       seconds a chunk task may run (hard limit)
DQE_CIR_VISIBILITY_TIMEOUT  2 x the task time limit   Redis visibility timeout: unacked tasks are redelivered after it
DQE_CIR_QUEUE               dqe-cir                   Celery queue the chunk tasks go to
DQE_CIR_PROVIDERS           (best available)          onnxruntime providers, comma-separated
DQE_CIR_THREADS             (onnxruntime default)     intra-op threads per worker process
DQE_CIR_PRELOAD             1                         0: a worker loads the bundle at its first task, not at start
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

ENV_VARS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DQE_CIR_REDIS_URL", "QDRANT_URL", "QDRANT_API_KEY",
            "QDRANT_PATH", "QDRANT_ENGINE", "DQE_CIR_BUNDLE", "DQE_CIR_CATALOG_ROOT", "DQE_CIR_ALLOW_HTTP",
            "DQE_CIR_TASK_TIME_LIMIT",
            "DQE_CIR_VISIBILITY_TIMEOUT", "DQE_CIR_QUEUE", "DQE_CIR_PROVIDERS", "DQE_CIR_THREADS",
            "DQE_CIR_PRELOAD")
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Settings:
    broker_url: str
    result_backend: str
    redis_url: str
    qdrant_url: str | None
    qdrant_api_key: str | None
    qdrant_path: str
    qdrant_engine: str
    bundle: str
    allow_http: bool
    task_time_limit: int
    visibility_timeout: int
    queue: str
    catalog_root: str | None

    @property
    def broker_configured(self) -> bool:
        return bool(os.environ.get("CELERY_BROKER_URL"))


def load_settings(env: dict | None = None) -> Settings:
    env = os.environ if env is None else env
    broker = env.get("CELERY_BROKER_URL") or DEFAULT_BROKER
    limit = int(env.get("DQE_CIR_TASK_TIME_LIMIT") or 600)
    return Settings(
        broker_url=broker,
        result_backend=env.get("CELERY_RESULT_BACKEND") or broker,
        redis_url=env.get("DQE_CIR_REDIS_URL") or broker,
        qdrant_url=env.get("QDRANT_URL") or None,
        qdrant_api_key=env.get("QDRANT_API_KEY") or None,
        qdrant_path=env.get("QDRANT_PATH") or "qdrant_data",
        qdrant_engine=(env.get("QDRANT_ENGINE") or "edge").strip().lower(),
        bundle=env.get("DQE_CIR_BUNDLE") or "exports/bundle",
        allow_http=(env.get("DQE_CIR_ALLOW_HTTP") or "0").lower() in ("1", "true", "yes"),
        task_time_limit=limit,
        visibility_timeout=int(env.get("DQE_CIR_VISIBILITY_TIMEOUT") or 2 * limit),
        queue=env.get("DQE_CIR_QUEUE") or "dqe-cir",
        catalog_root=env.get("DQE_CIR_CATALOG_ROOT") or None,
    )


def with_overrides(settings: Settings, bundle: str | None = None, qdrant_path: str | None = None) -> Settings:
    """Command-line flags over the environment: --bundle, and --qdrant-path (which means local mode)."""
    changes = {}
    if bundle:
        changes["bundle"] = bundle
    if qdrant_path:
        changes.update(qdrant_path=qdrant_path, qdrant_url=None)
    return replace(settings, **changes)


def qdrant_client(settings: Settings, serving: bool = False):
    """A client for the configured Qdrant: the server when QDRANT_URL is set, else the embedded engine
    QDRANT_ENGINE on the folder QDRANT_PATH (edge: one process a collection; local: one process the whole
    folder; so callers close it when done). `serving`: the service's client, which never optimises."""
    from qdrant_client import QdrantClient

    from plugin import store

    if settings.qdrant_url:
        return QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
    return store.open_embedded(settings.qdrant_path, settings.qdrant_engine, serving=serving)


@contextmanager
def open_client(settings: Settings) -> Iterator:
    """`with open_client(settings) as client:` a client for one job step, closed afterwards: a local-mode
    folder goes back to the next process or task (it holds a lock), a server connection is not left
    behind. Workers keep one server-mode client per process instead (indexer.tasks)."""
    client = qdrant_client(settings)
    try:
        yield client
    finally:
        client.close()
