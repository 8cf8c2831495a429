"""The Celery app: `celery -A indexer worker` finds it here (Celery looks up `indexer.celery`).

JSON only, acks_late + reject_on_worker_lost (a killed worker's task is redelivered, and deterministic
point ids make the redelivery overwrite instead of duplicate), prefetch 1, and a Redis visibility
timeout above the task time limit. The bundle is loaded once per worker process, after the fork.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

from indexer.settings import load_settings

settings = load_settings()


def restore_interval(visibility_timeout: int) -> int:
    """Seconds between the broker's sweeps that put back tasks whose worker died (kombu's default is 100)."""
    return max(1, min(10, visibility_timeout // 2))


app = Celery("indexer", broker=settings.broker_url, backend=settings.result_backend, include=["indexer.tasks"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=settings.task_time_limit,
    # the soft limit raises inside the task (its chunk is recorded as failed) a little before the hard kill
    task_soft_time_limit=max(1, settings.task_time_limit - min(10, max(1, settings.task_time_limit // 10))),
    # kombu sweeps for unacknowledged tasks past their visibility timeout only every interval x throttle
    # seconds (10 x 10 by default): sweep every few seconds so a dead worker's chunk comes back soon after
    broker_transport_options={"visibility_timeout": settings.visibility_timeout,
                              "unacked_restore_interval": restore_interval(settings.visibility_timeout),
                              "unacked_restore_throttle": 1},
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    task_default_queue=settings.queue,
)


@worker_process_init.connect
def _load_bundle_in_child(**_) -> None:
    """Prefork children load the bundle right after the fork (never the parent). The solo pool has no
    children: its first task loads it."""
    from indexer.tasks import worker_encoder

    if os.environ.get("DQE_CIR_PRELOAD", "1") == "1":
        worker_encoder()
