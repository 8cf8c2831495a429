"""The outermost layer of the service (pure ASGI): the request-body cap and per-request metrics.

A body over the cap is refused with 413 before it is read when Content-Length says so, and as soon as it
passes the cap otherwise (a chunked upload), so no handler ever spools an oversized upload.
"""

from __future__ import annotations

import json
import time

from app.service.metrics import ServiceMetrics


class BodyTooLarge(Exception):
    pass


class Guard:
    def __init__(self, app, metrics: ServiceMetrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        received = 0

        async def receive_capped():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                await self._too_large(scope, send_wrapper, declared)
            else:
                await self.app(scope, receive_capped, send_wrapper)
        except BodyTooLarge:
            if status["sent"]:
                raise
            await self._too_large(scope, send_wrapper, received)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status["code"], time.perf_counter() - started)

    async def _too_large(self, scope, send, size: int) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.errors.labels(route, "too_large").inc()
        body = json.dumps({"error": {"code": "too_large", "message": f"the request body ({size:,}+ bytes) is over "
                                     f"the {self.max_body:,}-byte limit; send a smaller image"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
