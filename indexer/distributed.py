"""Re-index jobs fanned out to Celery workers, with progress read from the Redis ledger.

The coordinator never holds a local-mode Qdrant folder while workers write: it opens the client to
create the collection, closes it, and opens it again only to check the count and switch the alias.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from encoder.bundle import read_bundle
from indexer.catalog import read_catalog
from indexer.errors import IndexerError
from indexer.jobs import JobReport, new_version_name, plan_incremental
from indexer.settings import Settings, qdrant_client, release_client
from plugin import store


def index_with_workers(catalog: str | Path, alias: str, settings: Settings, incremental: bool = False,
                       chunk_size: int = 32, payload_indexes: dict | None = None, progress: bool = True,
                       timeout: float | None = None, poll: float = 0.5, storage: str = "fp32") -> JobReport:
    from indexer.tasks import done_key, failed_key, index_chunk, ledger

    t0 = time.time()
    spec = read_bundle(settings.bundle)
    root, items = read_catalog(catalog)
    client = qdrant_client(settings)
    try:
        if incremental:
            plan = plan_incremental(client, spec.fingerprint, root, items, alias, settings.allow_http)
            name, todo = plan.collection, plan.todo
            report = JobReport(alias, name, "incremental", total=len(items), unchanged=plan.unchanged,
                               failed=list(plan.failed))
        else:
            name, todo = new_version_name(client, alias), items
            store.create_collection(client, name, spec, payload_indexes, storage)
            report = JobReport(alias, name, "full", total=len(items))
    finally:
        release_client(settings, client)

    job_id = uuid.uuid4().hex
    r = ledger(settings.redis_url)
    try:
        r.ping()
    except Exception as e:
        raise IndexerError(f"cannot reach the job ledger at {settings.redis_url}: {e}") from e
    for s in range(0, len(todo), chunk_size):
        chunk = [asdict(it) for it in todo[s: s + chunk_size]]
        index_chunk.apply_async(args=[job_id, name, chunk, str(root)])
    bar = tqdm(total=len(todo), desc=f"index {name} via workers", unit="img", disable=not progress)
    seen = 0
    while True:
        finished = r.scard(done_key(job_id)) + r.hlen(failed_key(job_id))
        bar.update(finished - seen)
        seen = finished
        if finished >= len(todo):
            break
        if timeout is not None and time.time() - t0 > timeout:
            bar.close()
            raise IndexerError(f"job {job_id}: {finished} of {len(todo)} items done after {timeout:.0f}s; are "
                               "workers running (celery -A indexer worker)? The alias was not switched")
        time.sleep(poll)
    bar.close()
    report.indexed = r.scard(done_key(job_id))
    report.failed += [{"item_id": k, **json.loads(v)} for k, v in r.hgetall(failed_key(job_id)).items()]

    client = qdrant_client(settings)
    try:
        if incremental:
            store.delete(client, name, plan.gone)
            report.deleted = len(plan.gone)
        else:
            stored = store.count(client, name)
            if stored != report.indexed:
                raise IndexerError(f"collection {name} holds {stored} points but {report.indexed} were indexed; "
                                   f"the alias {alias!r} was not switched")
            report.previous = store.switch_alias(client, alias, name)
    finally:
        release_client(settings, client)
    report.seconds = time.time() - t0
    return report
