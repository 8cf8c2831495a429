"""Prometheus metrics of the HTTP service: requests, errors and latency per route, and the two stages of a
composed query timed apart (compose: the ONNX composer; search: Qdrant, reference lookup included).

Each app has its own registry (tests build several apps in one process). With several uvicorn worker
processes, `dqe-cir serve` sets PROMETHEUS_MULTIPROC_DIR and /metrics adds up every worker's values.
"""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# seconds: a few ms (compose on a GPU) up to 10 s (an exact search over a big local-mode collection)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dqe_cir_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.errors = Counter("dqe_cir_http_errors", "HTTP error responses (4xx and 5xx) by route and error code",
                              ["route", "code"], registry=r)
        self.latency = Histogram("dqe_cir_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.compose = Histogram("dqe_cir_compose_seconds", "composed-query encoding (preprocessing + ONNX composer)",
                                 buckets=BUCKETS, registry=r)
        self.search = Histogram("dqe_cir_search_seconds", "Qdrant stage of a query (reference lookup, search, "
                                "re-score)", buckets=BUCKETS, registry=r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class TimedEncoder:
    """Wraps the Encoder that CIRSearch calls, to time `compose` and keep the model's own attribute
    weights of the last call, per thread (a query runs start to end in one worker thread)."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._local = threading.local()

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def compose(self, images, texts):
        start = time.perf_counter()
        out = self._encoder.compose(images, texts)
        self._local.seconds = time.perf_counter() - start
        self._local.weights = out.weights
        return out

    def last(self) -> tuple[float, object]:
        """(seconds, model weights [B, 2]) of this thread's last compose, then forgets them."""
        seconds, weights = getattr(self._local, "seconds", 0.0), getattr(self._local, "weights", None)
        self._local.seconds, self._local.weights = 0.0, None
        return seconds, weights
