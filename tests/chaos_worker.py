"""`python -m tests.chaos_worker FAULT worker-args...`: a real Celery worker for the `indexer` app with one
fault injected into the chunk task's Qdrant write (tests only; see tests/test_celery_failures.py).

  raise      the write raises RuntimeError: a task that fails for good
  transient  the write raises ConnectionRefusedError every time, and max_retries is 1: retries run out
  hang       the write never returns and swallows the soft time limit: only the hard limit ends it
"""

from __future__ import annotations

import sys
import time

from celery.exceptions import SoftTimeLimitExceeded


def broken(*_args, **_kwargs):
    raise RuntimeError("injected fault: the store broke")


def refused(*_args, **_kwargs):
    raise ConnectionRefusedError("injected fault: Qdrant refused the connection")


def hang(*_args, **_kwargs):
    while True:
        try:
            time.sleep(60)
        except SoftTimeLimitExceeded:
            pass


FAULTS = {"raise": broken, "transient": refused, "hang": hang}

if __name__ == "__main__":
    import indexer.tasks as tasks
    from indexer.celery import app

    fault = sys.argv[1]
    tasks.store.upsert = FAULTS[fault]  # this process only (and its forked pool children)
    if fault == "transient":
        tasks.index_chunk.max_retries = 1
    app.worker_main(sys.argv[2:])
