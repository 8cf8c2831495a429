"""The fed encoder: catalog items are read and decoded in a small thread pool (PIL releases the GIL
while it decodes and resizes), handed to onnxruntime a batch at a time through a bounded queue, and
their points written by one background thread with at most one batch in flight.

    decode pool (workers) --[queue: `depth` batches ahead]--> encode (caller's thread) --> upsert thread

Same outcome as the sequential path (embed_chunk, then upsert): the same points in the
same order, a bad item recorded as failed with its reason, an unchanged one (incremental) skipped
before it is decoded. A batch's result is yielded only once its points are written, and an error of
the store (a lookup or an upsert) or of the encoder is raised to the caller, never swallowed; what was
queued behind it is cancelled.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoder import Encoder, EncoderError
from indexer.catalog import CatalogItem, fetch_bytes, item_fingerprint
from indexer.errors import IndexerError
from indexer.report import JobReport
from plugin import store

# One decoder per core beyond the first, which onnxruntime needs; more than 4 rarely pays at batch sizes of 64.
DECODE_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
QUEUE_DEPTH = 2  # batches decoded ahead of the encoder: bounds memory at (depth + 1) batches of pixels

Writer = Callable[[list[store.Item]], None]
KnownHashes = Callable[[list[str]], dict[str, str]]


@dataclass
class ChunkResult:
    good: list[store.Item] = field(default_factory=list)  # embedded, to be written
    failed: list[dict] = field(default_factory=list)  # {"item_id", "uri", "reason"}
    unchanged: list[str] = field(default_factory=list)  # ids whose content hash matched (incremental)

    def add_to(self, report: JobReport) -> None:
        report.indexed += len(self.good)
        report.unchanged += len(self.unchanged)
        report.failed += self.failed

    def extend(self, other: ChunkResult) -> None:
        self.good += other.good
        self.failed += other.failed
        self.unchanged += other.unchanged


@dataclass
class _Prepared:
    item: CatalogItem
    digest: str = ""
    pixels: np.ndarray | None = None  # None: unchanged (incremental) or failed
    failure: str | None = None


def _prepare(encoder: Encoder, item: CatalogItem, root: Path, allow_http: bool,
             known: Callable[[], dict[str, str] | None]) -> _Prepared:
    """Fetch, hash and (unless unchanged) decode one item. `known()`: the stored content hashes or None."""
    try:
        data = fetch_bytes(item, root, allow_http)
        digest = item_fingerprint(item, data)
        hashes = known()
        if hashes is not None and hashes.get(item.item_id) == digest:
            return _Prepared(item, digest)
        return _Prepared(item, digest, encoder.preprocess([data])[0])
    except (IndexerError, EncoderError) as e:
        return _Prepared(item, failure=str(e))


def _encode(encoder: Encoder, prepared: list[_Prepared]) -> ChunkResult:
    result, todo = ChunkResult(), []
    for p in prepared:
        if p.failure is not None:
            result.failed.append({"item_id": p.item.item_id, "uri": p.item.uri, "reason": p.failure})
        elif p.pixels is None:
            result.unchanged.append(p.item.item_id)
        else:
            todo.append(p)
    if todo:
        tokens = encoder.encode_pixels(np.stack([p.pixels for p in todo]))
        result.good = [store.Item(p.item.item_id, tokens[i], {**p.item.payload, "uri": p.item.uri,
                                                               "content_hash": p.digest})
                       for i, p in enumerate(todo)]
    return result


def embed_chunk(encoder: Encoder, items: Sequence[CatalogItem], root: Path, allow_http: bool = False,
                known: dict[str, str] | None = None) -> ChunkResult:
    """The sequential path: fetch and decode each item in turn, then encode them in one batch. With
    `known` (item id -> stored content hash) the unchanged ones are skipped. A bad item becomes a
    failure with its reason, and the chunk goes on."""
    return _encode(encoder, [_prepare(encoder, it, root, allow_http, lambda: known) for it in items])


class _SerialWorker:
    """One daemon thread running the store calls in order (a ThreadPoolExecutor's threads are joined at
    interpreter exit: an upsert that never returns would keep a killed task's process, and the local-mode
    folder it holds, alive)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="dqe-upsert", daemon=True).start()

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        self._calls.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # handed to the caller through the future
                    future.set_exception(e)

    def close(self) -> None:
        """Stop after the running call; calls still queued are cancelled (their waiters get CancelledError)."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                call[0].cancel()
        self._calls.put(None)


def fed_batches(encoder: Encoder, batches: Iterable[Sequence[CatalogItem]], root: Path, write: Writer,
                known: KnownHashes | None = None, allow_http: bool = False, workers: int = DECODE_WORKERS,
                depth: int = QUEUE_DEPTH) -> Iterator[tuple[Sequence[CatalogItem], ChunkResult]]:
    """Embed and write catalog batches; yield (batch, its result) in order, each once `write` has stored
    its points. `known(ids)` (incremental) returns the stored content hashes; it runs on the writer's
    thread, so the Qdrant client is never used by two threads at once."""
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="dqe-decode")
    writer = _SerialWorker()
    ahead: deque[tuple[Sequence[CatalogItem], list[Future]]] = deque()
    source = iter(batches)

    def feed() -> None:
        batch = next(source, None)
        if batch is None:
            return
        hashes = writer.submit(known, [it.item_id for it in batch]).result if known is not None else lambda: None
        ahead.append((batch, [pool.submit(_prepare, encoder, it, root, allow_http, hashes) for it in batch]))

    in_flight: tuple[Sequence[CatalogItem], ChunkResult, Future] | None = None
    try:
        for _ in range(max(1, depth)):
            feed()
        while ahead:
            batch, futures = ahead.popleft()
            feed()
            result = _encode(encoder, [f.result() for f in futures])
            if in_flight is not None:
                in_flight[2].result()  # at most one batch in flight; its error is raised here
                yield in_flight[0], in_flight[1]
            in_flight = (batch, result, writer.submit(write, result.good))
        if in_flight is not None:
            in_flight[2].result()
            yield in_flight[0], in_flight[1]
    finally:  # on an error nothing waits for the writer: a hung upsert must not hang the caller's exit
        for _, futures in ahead:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        writer.close()

