"""The fed encoder (indexer.pipeline): same points as the sequential path, failures kept per item,
store errors raised."""

import numpy as np
import pytest
from qdrant_client import QdrantClient

from encoder import Encoder, EncoderError
from indexer.catalog import chunked, open_catalog
from indexer.pipeline import embed_chunk, fed_batches
from indexer.reindex_inprocess import index_catalog
from plugin import store
from tests.conftest import make_bad_catalog


@pytest.fixture()
def bad_catalog(synth_small, tmp_path):
    bad = make_bad_catalog(tmp_path / "cat", sorted((synth_small / "val").glob("*.png"))[:37])
    return tmp_path / "cat", bad


def test_same_points_as_the_sequential_path(tiny_bundle, bad_catalog):
    folder, bad = bad_catalog
    enc = Encoder(tiny_bundle)
    cat = open_catalog(folder)
    items = [it for chunk in cat.chunks(1000) for it in chunk]
    written = []
    fed = list(fed_batches(enc, chunked(items, 8), cat.root, written.append, workers=2))
    expected = [embed_chunk(enc, batch, cat.root) for batch in chunked(items, 8)]
    assert [len(b) for b, _ in fed] == [len(b) for b in chunked(items, 8)]
    for (_, got), want, stored in zip(fed, expected, written, strict=True):
        assert [g.item_id for g in got.good] == [w.item_id for w in want.good] == [s.item_id for s in stored]
        assert [g.payload for g in got.good] == [w.payload for w in want.good]
        for g, w in zip(got.good, want.good, strict=True):
            np.testing.assert_array_equal(g.tokens, w.tokens)
        assert got.failed == want.failed
    assert {f["item_id"] for _, r in fed for f in r.failed} == bad


def test_a_decode_failure_in_the_pool_is_a_failed_item(tiny_bundle, bad_catalog, monkeypatch):
    folder, _ = bad_catalog
    enc = Encoder(tiny_bundle)
    cat = open_catalog(folder)
    items = [it for chunk in cat.chunks(1000) for it in chunk if it.item_id.endswith(".png")][:10]
    real = enc.preprocess
    victim = items[3].item_id

    def flaky(images):
        if images and isinstance(images[0], bytes) and images[0] == (cat.root / victim).read_bytes():
            raise EncoderError("simulated decoder failure")
        return real(images)

    monkeypatch.setattr(enc, "preprocess", flaky)
    results = [r for _, r in fed_batches(enc, chunked(items, 4), cat.root, lambda good: None, workers=2)]
    failed = [f for r in results for f in r.failed]
    assert [f["item_id"] for f in failed if f["item_id"] == victim] == [victim]
    assert any("simulated decoder failure" in f["reason"] for f in failed)
    assert victim not in {g.item_id for r in results for g in r.good}


def test_an_upsert_failure_propagates(tiny_bundle, synth_small):
    enc = Encoder(tiny_bundle)
    cat = open_catalog(synth_small / "val")
    items = [it for chunk in cat.chunks(1000) for it in chunk][:24]
    calls = []

    def write(good):
        calls.append(len(good))
        if len(calls) == 2:
            raise RuntimeError("qdrant went away")

    yielded = []
    with pytest.raises(RuntimeError, match="qdrant went away"):
        for batch, _ in fed_batches(enc, chunked(items, 8), cat.root, write, workers=2):
            yielded.append(batch)
    assert len(yielded) == 1  # only the batch whose write succeeded was reported
    assert len(calls) == 2  # nothing was written after the failure


def test_index_catalog_raises_an_upsert_failure_and_drops_the_build(tiny_bundle, synth_small, monkeypatch):
    client = QdrantClient(":memory:")

    def broken(*_a, **_kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "upsert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        index_catalog(client, Encoder(tiny_bundle), synth_small / "val", alias="p", progress=False)
    assert not [c for c in store.collections(client) if c.startswith("p__")]
