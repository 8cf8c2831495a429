"""Chunks that fail for good, through real `celery -A indexer worker` processes and real Redis: each item
of such a chunk ends in the ledger as failed with the reason, the coordinator returns instead of
hanging, the alias stays where it was, and the empty build is deleted. Faults are injected by
tests/chaos_worker.py; the different-bundle worker needs no injection."""

import shutil

import pytest

from indexer import IndexerError
from tests import workers
from tests.workers import start_worker, stop, stored


@pytest.fixture()
def celery_env(tmp_path, tiny_bundle, monkeypatch):
    yield from workers.celery_env(tmp_path, tiny_bundle, monkeypatch)


@pytest.fixture()
def live(celery_env, synth_small, tmp_path):
    """A catalog of 8 images whose alias already points at a good version (indexed in-process)."""
    from encoder import Encoder
    from indexer.reindex_inprocess import index_catalog
    from indexer.settings import qdrant_client

    _, settings = celery_env
    cat = tmp_path / "cat"
    cat.mkdir()
    for p in sorted((synth_small / "val").glob("*.png"))[:8]:
        (cat / p.name).write_bytes(p.read_bytes())
    client = qdrant_client(settings)
    try:
        version = index_catalog(client, Encoder(settings.bundle), cat, "catalog", progress=False).collection
    finally:
        client.close()
    return cat, version


def failed_job(env, settings, tmp_path, cat, version, fault=None, pool="solo", worker_env=None):
    """Run a full job on one worker; it must be refused. Returns the IndexerError."""
    from indexer.reindex_workers import index_with_workers

    worker = start_worker({**env, **(worker_env or {})}, tmp_path, "w1", fault=fault, pool=pool)
    try:
        with pytest.raises(IndexerError) as e:
            index_with_workers(cat, "catalog", settings, chunk_size=4, progress=False, timeout=300)
    finally:
        stop(worker)
    report = e.value.report
    assert report is not None and report.indexed == 0 and len(report.failed) == 8 and not report.lost_chunks
    assert "none of the 8 items was indexed" in str(e.value) and f"still points at {version}" in str(e.value)
    assert workers.collections(settings) == [version]  # the failed build was deleted
    assert stored(settings)[1] == 8  # search goes on against the old version
    return e.value


def test_a_task_that_raises(celery_env, live, tmp_path):
    env, settings = celery_env
    error = failed_job(env, settings, tmp_path, *live, fault="raise")
    reasons = {f["reason"] for f in error.report.failed}
    assert reasons == {f"chunk chunk-0000{n} failed: RuntimeError: injected fault: the store broke" for n in (0, 1)}


def test_retries_that_run_out(celery_env, live, tmp_path):
    env, settings = celery_env
    error = failed_job(env, settings, tmp_path, *live, fault="transient")
    for f in error.report.failed:
        assert "TransientError: ConnectionRefusedError: injected fault" in f["reason"]
        assert "(attempt 2 of 2)" in f["reason"]


def test_a_worker_with_a_different_bundle(celery_env, live, tmp_path, tiny_bundle):
    from encoder.bundle import read_bundle, write_bundle_json

    env, settings = celery_env
    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text() + "\n")
    write_bundle_json(other, read_bundle(other, verify=False))  # a valid bundle, but not the collection's
    error = failed_job(env, settings, tmp_path, *live, worker_env={"DQE_CIR_BUNDLE": str(other)})
    ours, theirs = read_bundle(tiny_bundle).fingerprint, read_bundle(other).fingerprint
    for f in error.report.failed:
        assert "BundleMismatch" in f["reason"]
        assert f"indexed with bundle {ours}, but this bundle is {theirs}" in f["reason"]


def test_a_chunk_killed_by_the_hard_time_limit(celery_env, live, tmp_path):
    """Prefork pool (time limits need it): the task ignores the soft limit, the pool kills it at the hard
    limit (5 s here), and the pool's parent records the chunk as failed."""
    env, settings = celery_env
    error = failed_job(env, settings, tmp_path, *live, fault="hang", pool="prefork")
    for f in error.report.failed:
        assert "TimeLimitExceeded" in f["reason"], f
