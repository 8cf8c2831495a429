"""Re-index jobs fanned out to Celery workers, with progress read from the Redis ledger (indexer.ledger).

The coordinator holds the alias's job lock for the whole job, streams the catalog into chunk tasks
(it keeps the catalog's ids and one line per chunk, never image bytes: workers fetch each item once),
and waits until every chunk is recorded as finished or the deadline passes. The default deadline is
the visibility timeout plus one task time limit per chunk: every chunk run to its limit one after the
other, plus one redelivery. Chunks still unreported then are named in the report as lost, their items
failed with that reason, and the job is cancelled in the ledger so that late tasks skip.
It never holds a local-mode Qdrant folder while workers write: it opens a client for each step.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from encoder.bundle import read_bundle
from indexer import ledger
from indexer.catalog import DEFAULT_CHUNK_SIZE, Catalog, open_catalog
from indexer.locks import AliasLocks, alias_lock
from indexer.report import JobReport, SwapPolicy
from indexer.settings import Settings, open_client
from indexer.versions import abandon_quietly, finish, incremental_target, new_version
from plugin.placement import Placement


@dataclass(frozen=True)
class Chunk:
    name: str
    first: str
    last: str
    size: int

    def describe(self) -> str:
        return f"{self.name} ({self.first} .. {self.last}, {self.size} items)"


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def default_deadline(n_chunks: int, task_time_limit: float, visibility_timeout: float) -> float:
    """Seconds to wait for `n_chunks` chunks: each run to its time limit in turn, plus one redelivery."""
    return visibility_timeout + n_chunks * task_time_limit


def index_with_workers(catalog: str | Path, alias: str, settings: Settings, incremental: bool = False,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, payload_indexes: dict | None = None, progress: bool = True,
                       timeout: float | None = None, poll: float = 0.5, storage: str = "fp32",
                       policy: SwapPolicy | None = None, design: str | None = None,
                       design_settings: dict | None = None, placement: Placement | None = None) -> JobReport:
    """A full or incremental job through `celery -A indexer worker` processes. `timeout`: seconds to wait
    for the chunks (default: default_deadline). Raises IndexerError, with the report in `.report`, when
    the build must not go live."""
    policy = policy or SwapPolicy()
    t0 = time.time()
    spec = read_bundle(settings.bundle)
    cat = open_catalog(catalog)
    r = ledger.connect(settings.redis_url)
    job_id = uuid.uuid4().hex
    with alias_lock(settings, alias, job_id, distributed=True) as lock:
        with open_client(settings) as client:
            if incremental:
                name = incremental_target(client, alias, spec.fingerprint, design, placement,
                                          **(design_settings or {}))
            else:
                name = new_version(client, alias, spec, payload_indexes, storage, design, placement,
                                   **(design_settings or {}))
        report = JobReport(alias, name, "incremental" if incremental else "full", total=cat.count, job_id=job_id)
        try:
            chunks = _dispatch(cat, chunk_size, job_id, name, incremental, lock)
            deadline = timeout if timeout is not None else default_deadline(
                len(chunks), settings.task_time_limit, settings.visibility_timeout)
            lost = _wait(r, job_id, chunks, deadline, poll, lock, progress, cat.count, name)
        except BaseException:
            ledger.cancel(r, job_id)
            if not incremental:
                with open_client(settings) as client:
                    abandon_quietly(client, name, policy, "the job stopped with an error")
            raise
        report.indexed, report.unchanged, report.failed = ledger.outcome(r, job_id)
        if lost:
            ledger.cancel(r, job_id)
            _fail_lost(report, cat, chunk_size, lost, deadline, settings.queue)
        report.seconds = time.time() - t0
        with open_client(settings) as client:
            finish(client, report, cat.ids, policy)
    report.seconds = time.time() - t0
    return report


def _dispatch(cat: Catalog, chunk_size: int, job_id: str, collection: str, incremental: bool,
              lock: AliasLocks) -> list[Chunk]:
    from indexer.tasks import index_chunk

    chunks = []
    for n, items in enumerate(cat.chunks(chunk_size)):
        name = chunk_name(n)
        index_chunk.apply_async(kwargs={"job_id": job_id, "chunk": name, "collection": collection,
                                        "items": [asdict(it) for it in items], "root": str(cat.root),
                                        "incremental": incremental})
        chunks.append(Chunk(name, items[0].item_id, items[-1].item_id, len(items)))
        lock.renew()
    return chunks


def _wait(r, job_id: str, chunks: list[Chunk], deadline: float, poll: float, lock: AliasLocks, progress: bool,
          total: int, name: str) -> list[Chunk]:
    """Wait until every chunk is finished; the chunks still unfinished at the deadline (lost)."""
    start = time.time()
    bar = tqdm(total=total, desc=f"index {name} via workers", unit="img", disable=not progress)
    try:
        while True:
            finished, ok, failed = ledger.counts(r, job_id)
            bar.n = ok + failed
            bar.refresh()
            if finished >= len(chunks):
                return []
            if time.time() - start > deadline:
                done = ledger.finished_chunks(r, job_id)
                return [c for c in chunks if c.name not in done]
            lock.renew()
            time.sleep(poll)
    finally:
        bar.close()


def _fail_lost(report: JobReport, cat: Catalog, chunk_size: int, lost: list[Chunk], deadline: float,
               queue: str) -> None:
    """Every item of a lost chunk becomes a failure with the reason (the catalog is read again for them)."""
    report.lost_chunks = [c.describe() for c in lost]
    lost_names = {c.name for c in lost}
    for n, items in enumerate(cat.chunks(chunk_size)):
        name = chunk_name(n)
        if name in lost_names:
            reason = (f"{name} got no result within {deadline:.0f}s: no worker took it from queue {queue!r}, or "
                      "its worker was lost (is `celery -A indexer worker` running?)")
            report.failed += [{"item_id": it.item_id, "uri": it.uri, "reason": reason} for it in items]
