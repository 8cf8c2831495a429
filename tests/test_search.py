import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from encoder import ComposeOutput, Encoder
from encoder.bundle import BundleSpec
from encoder.fusion import maxsim, pooled
from indexer import IndexerError
from indexer.reindex_inprocess import SwapPolicy, index_catalog, rollback
from plugin import CIRSearch, ItemRef, SearchError, store
from plugin.search import DEFAULT_OVERSAMPLE
from tests.conftest import make_bad_catalog


@pytest.fixture()
def catalog(synth_small):
    return synth_small / "val"


@pytest.fixture()
def indexed(tiny_bundle, catalog, new_client):
    client = new_client()
    enc = Encoder(tiny_bundle)
    report = index_catalog(client, enc, catalog, alias="catalog", progress=False)
    return client, enc, report


def test_full_index_and_alias(indexed, catalog):
    client, enc, report = indexed
    n = len(list(catalog.glob("*.png")))
    assert report.indexed == n and not report.failed and report.previous is None
    name = store.alias_target(client, "catalog")
    assert name == report.collection and store.count(client, "catalog") == n
    assert store.collection_info(client, "catalog")["fingerprint"] == enc.fingerprint


def test_exact_mode_equals_brute_force_maxsim(indexed, catalog):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc)
    paths = sorted(catalog.glob("*.png"))
    tokens = enc.encode_images(paths)
    ids = [p.name for p in paths]
    for ref, text in [(paths[0], "make the red circle blue"), (paths[5], "add a small green star top left")]:
        hits = search.query(ref, text, k=20, exact=True, exclude_reference=False)
        q = enc.compose([ref], [text]).fused()
        s = maxsim(q, tokens)[0]
        order = np.argsort(-s, kind="stable")[:20]
        assert [h.id for h in hits] == [ids[i] for i in order]
        assert np.allclose([h.score for h in hits], s[order], atol=1e-5)


def test_pooled_two_stage_path_against_exact_maxsim(tiny_bundle, catalog, monkeypatch, new_client):
    """A pooled collection with exact_below lowered under its size, so the two-stage path runs: prefetch
    on `pooled`, then MaxSim on `tokens`. Its hits are exact MaxSim over the k x oversample best pooled
    candidates, and with an oversample that covers the collection they are exact MaxSim over everything."""
    monkeypatch.setattr(store, "DEFAULT_DESIGN", "pooled")
    client, enc = new_client(), Encoder(tiny_bundle)
    index_catalog(client, enc, catalog, alias="catalog", progress=False)
    assert store.collection_info(client, "catalog")["design"] == "pooled"
    paths = sorted(catalog.glob("*.png"))
    tokens = enc.encode_images(paths)
    ids = [p.name for p in paths]
    sent = []
    real = client.query_batch_points
    monkeypatch.setattr(client, "query_batch_points", lambda *a, **kw: sent.append(kw["requests"]) or real(*a, **kw))
    default = CIRSearch(client, "catalog", encoder=enc, exact_below=10)  # oversample: the default
    limit = 10 * DEFAULT_OVERSAMPLE
    covering = CIRSearch(client, "catalog", encoder=enc, exact_below=10, oversample=len(paths) // 10 + 1)
    for ref, text in [(paths[0], "make the red circle blue"), (paths[5], "add a small green star top left"),
                      (paths[9], "remove the square")]:
        q = enc.compose([ref], [text]).fused()
        hits = default.query(ref, text, k=10, exclude_reference=False)
        assert sent[-1][0].prefetch is not None and sent[-1][0].prefetch.limit == limit
        candidates = np.argsort(-(pooled(tokens) @ q[0]), kind="stable")[:limit]
        order = candidates[np.argsort(-maxsim(q, tokens[candidates])[0], kind="stable")[:10]]
        assert [h.id for h in hits] == [ids[i] for i in order]
        assert np.allclose([h.score for h in hits], maxsim(q, tokens[order])[0], atol=1e-5)
        hits = covering.query(ref, text, k=10, exclude_reference=False)
        assert sent[-1][0].prefetch is not None
        exact = np.argsort(-maxsim(q, tokens)[0], kind="stable")[:10]
        assert [h.id for h in hits] == [ids[i] for i in exact]


def test_searcher_follows_the_alias_across_a_reindex_with_the_same_bundle(tiny_bundle, catalog, new_client):
    client = new_client()
    enc = Encoder(tiny_bundle)
    a = index_catalog(client, enc, catalog, alias="c", progress=False).collection
    now = [0.0]
    search = CIRSearch(client, "c", encoder=enc, clock=lambda: now[0], refresh_seconds=5)
    ref = next(catalog.glob("*.png"))
    assert search.target == a and len(search.query(ref, "make it red", k=3, exact=True)) == 3
    b = index_catalog(client, enc, catalog, alias="c", progress=False).collection
    search.query(ref, "make it red", k=3, exact=True)
    assert search.target == a  # within refresh_seconds: still the checked version (which still exists)
    now[0] = 6.0
    search.query(ref, "make it red", k=3, exact=True)
    assert search.target == b
    c = index_catalog(client, enc, catalog, alias="c", progress=False, policy=SwapPolicy(keep=1)).collection
    assert not client.collection_exists(b)  # pruned under the searcher, inside its refresh window
    assert len(search.query(ref, "make it red", k=3, exact=True)) == 3 and search.target == c


def test_searcher_stops_when_the_alias_moves_to_another_bundle(indexed, catalog):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc, refresh_seconds=0)
    old = search.target
    spec = BundleSpec(embed_dim=enc.spec.embed_dim, num_query_tokens=enc.spec.num_query_tokens, image_size=32,
                      mean=[0, 0, 0], std=[1, 1, 1], max_text_len=8, opset=18, fingerprint="0" * 32)
    store.create_collection(client, "catalog__29990101000000", spec)
    store.switch_alias(client, "catalog", "catalog__29990101000000")
    with pytest.raises(SearchError) as e:
        search.query(next(catalog.glob("*.png")), "make it red", k=3)
    msg = str(e.value)
    assert old in msg and "catalog__29990101000000" in msg and enc.fingerprint in msg and "0" * 32 in msg
    store.switch_alias(client, "catalog", old)  # rolled back: the searcher follows again
    assert len(search.query(next(catalog.glob("*.png")), "make it red", k=3)) == 3


def test_reference_item_is_excluded_and_filters_apply(indexed, catalog):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc, catalog_root=catalog)
    first = sorted(p.name for p in catalog.glob("*.png"))[0]
    hits = search.query(ItemRef(first), "same but green", k=5, exact=True)
    assert first not in [h.id for h in hits] and len(hits) == 5
    hits = search.query(ItemRef(first), "same but green", k=3, exact=True,
                        filter={"item_id": [first, "val-000001.png"]})
    assert [h.id for h in hits] == ["val-000001.png"]
    assert hits[0].breakdown == {} and set(hits[0].weights) == {"color", "shape"}  # lean by default


def test_explain_adds_the_breakdown_and_only_then_fetches_vectors(indexed, catalog, monkeypatch):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc, catalog_root=catalog)
    first = sorted(p.name for p in catalog.glob("*.png"))[0]
    sent = []
    real = client.query_batch_points
    monkeypatch.setattr(client, "query_batch_points", lambda *a, **kw: sent.append(kw["requests"]) or real(*a, **kw))
    lean = search.query(ItemRef(first), "same but green", k=3, exact=True)
    rich = search.query(ItemRef(first), "same but green", k=3, exact=True, explain=True)
    assert [h.id for h in lean] == [h.id for h in rich] and [h.score for h in lean] == [h.score for h in rich]
    assert sent[0][0].with_vector is False and sent[1][0].with_vector == ["tokens"]
    for h in rich:
        assert set(h.breakdown) == {"base", "color", "shape"}
        assert max(h.breakdown.values()) <= 1.0 + 1e-5


def test_bad_queries(indexed, catalog):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc)
    img = next(catalog.glob("*.png"))
    with pytest.raises(SearchError, match="k must be a positive integer"):
        search.query(img, "make it red", k=0)
    with pytest.raises(SearchError, match="empty"):
        search.query(img, "  ")
    with pytest.raises(SearchError, match="not a readable image"):
        search.query(b"garbage", "make it red")
    with pytest.raises(SearchError, match="filter value"):
        search.query(img, "make it red", filter={"price": 1.5})
    with pytest.raises(SearchError, match="does not exist"):
        CIRSearch(client, "nope", encoder=enc)


class FakeEncoder:
    """Composer outputs chosen by hand: q_color points at item 'red', q_shape at item 'star'."""

    def __init__(self, spec):
        self.spec, self.fingerprint = spec, spec.fingerprint

    def compose(self, images, texts):
        e = np.eye(4, dtype=np.float32)
        return ComposeOutput(q_base=e[[0]], q_attrs=e[None, [1, 2]], weights=np.array([[0.5, 0.5]], "f4"),
                             attributes=("color", "shape"))


def test_weight_overrides_move_color_and_shape_matches(new_client):
    spec = BundleSpec(embed_dim=4, num_query_tokens=2, image_size=32, mean=[0, 0, 0], std=[1, 1, 1],
                      max_text_len=8, opset=18, fingerprint="f" * 32)
    client = new_client()
    store.create_collection(client, "c", spec)
    e = np.eye(4, dtype=np.float32)
    base = e[0] * 0.8
    items = {"red": base + 0.6 * e[1], "star": base + 0.6 * e[2], "plain": np.array([0.6, 0, 0, 0.8], "f4")}
    store.upsert(client, "c", [store.Item(k, np.stack([v / np.linalg.norm(v), e[3]]), {}) for k, v in items.items()])
    search = CIRSearch(client, "c", encoder=FakeEncoder(spec))
    top = lambda w: search.query(np.zeros((4, 4, 3), "u1"), "x", k=3, weights=w, exact=True)[0].id  # noqa: E731
    assert top({"color": 3.0, "shape": 0.0}) == "red"
    assert top({"color": 0.0, "shape": 3.0}) == "star"
    with pytest.raises(SearchError, match="unknown attribute"):
        top({"texture": 1.0})


def test_fingerprint_mismatch_is_refused(indexed, tiny_bundle):
    client, enc, _ = indexed
    other = FakeEncoder(BundleSpec(embed_dim=4, num_query_tokens=2, image_size=32, mean=[0, 0, 0], std=[1, 1, 1],
                                   max_text_len=8, opset=18, fingerprint="0" * 32))
    with pytest.raises(SearchError, match="indexed with bundle"):
        CIRSearch(client, "catalog", encoder=other)


def test_bad_items_land_in_the_failure_report(tiny_bundle, tmp_path, catalog, new_client):
    bad = make_bad_catalog(tmp_path / "cat", sorted(catalog.glob("*.png"))[:5])
    client = new_client()
    report = index_catalog(client, Encoder(tiny_bundle), tmp_path / "cat", alias="c", progress=False,
                           policy=SwapPolicy(max_failed=0.5))  # 4 of 9 fail: over the default 1%
    assert report.indexed == 5
    assert {f["item_id"] for f in report.failed} == bad
    assert all(f["reason"] for f in report.failed)


def test_incremental_touches_exactly_the_changed_items(tiny_bundle, tmp_path, catalog, new_client):
    src = sorted(catalog.glob("*.png"))[:8]
    cat = tmp_path / "cat"
    cat.mkdir()
    for p in src[:6]:
        (cat / p.name).write_bytes(p.read_bytes())
    client = new_client()
    enc = Encoder(tiny_bundle)
    first = index_catalog(client, enc, cat, alias="c", progress=False)
    (cat / src[0].name).write_bytes(src[7].read_bytes())  # edited
    (cat / src[1].name).unlink()  # deleted
    (cat / src[6].name).write_bytes(src[6].read_bytes())  # added
    report = index_catalog(client, enc, cat, alias="c", incremental=True, progress=False)
    assert (report.indexed, report.deleted, report.unchanged) == (2, 1, 4)
    assert report.collection == first.collection and store.count(client, "c") == 6


def test_reindex_switches_alias_and_rolls_back(tiny_bundle, catalog, new_client):
    client = new_client()
    enc = Encoder(tiny_bundle)
    a = index_catalog(client, enc, catalog, alias="c", progress=False)
    b = index_catalog(client, enc, catalog, alias="c", progress=False)
    assert b.previous == a.collection and store.alias_target(client, "c") == b.collection
    assert rollback(client, "c") == (b.collection, a.collection)
    with pytest.raises(IndexerError, match="no older complete version"):
        rollback(client, "c")
    with pytest.raises(IndexerError, match="run a full index first"):
        index_catalog(client, enc, catalog, alias="other", incremental=True, progress=False)


def test_qdrant_filter_objects_pass_through(indexed, catalog):
    client, enc, _ = indexed
    search = CIRSearch(client, "catalog", encoder=enc)
    flt = models.Filter(must=[models.FieldCondition(key="item_id", match=models.MatchValue(value="val-000003.png"))])
    hits = search.query(next(catalog.glob("*.png")), "make it red", k=5, filter=flt, exact=True,
                        exclude_reference=False)
    assert [h.id for h in hits] == ["val-000003.png"]


def test_reader_sees_old_or_new_collection_never_partial(tiny_bundle, catalog, new_client):
    client = new_client()
    enc = Encoder(tiny_bundle)
    n = len(list(catalog.glob("*.png")))
    index_catalog(client, enc, catalog, alias="c", progress=False)
    seen = []

    def reader(done, total):  # called between chunks, while the new version is half full
        seen.append(store.count(client, "c"))
        hits = CIRSearch(client, "c", encoder=enc).query(next(catalog.glob("*.png")), "make it red", k=3,
                                                         exact=True)
        assert len(hits) == 3

    index_catalog(client, enc, catalog, alias="c", progress=False, chunk_size=100, on_progress=reader)
    assert len(seen) >= 7 and set(seen) == {n}
    assert store.count(client, "c") == n


@pytest.mark.slow
def test_served_eval_equals_torch_eval(tiny_trained, tiny_bundle, synth_small, tmp_path):
    from app.served_eval import served_eval
    from cirdata.tables import load_cir_data
    from training.evaluate import evaluate
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(tiny_trained)
    torch_m = evaluate(model, tok, load_cir_data("synth", synth_small, "val", model.cfg.image_size, False, 60)).metrics
    served, tops, _, report = served_eval(tiny_bundle, synth_small, "val", tmp_path / "q", progress=False,
                                          max_queries=60)
    assert report.indexed == len(load_cir_data("synth", synth_small, "val", 32, False).names)
    for k, v in served.items():
        assert abs(v - torch_m[k]) <= 0.1, (k, v, torch_m[k])
    assert len(tops) == 60 and all(len(t) == 5 for t in tops)


@pytest.mark.parametrize("storage", ["fp16", "int8"])
def test_storage_options_index_and_search(tiny_bundle, catalog, storage, new_client):
    from plugin.store import bytes_per_item

    client = new_client()
    enc = Encoder(tiny_bundle)
    report = index_catalog(client, enc, catalog, alias="c", progress=False, storage=storage)
    hits = CIRSearch(client, "c", encoder=enc).query(next(catalog.glob("*.png")), "make it red", k=5, exact=True)
    assert report.indexed > 0 and len(hits) == 5
    assert bytes_per_item(32, 256, "fp32", "pooled") == 33792 and bytes_per_item(8, 128, storage, "pooled") < 4608


@pytest.mark.parametrize("storage", ["fp32", "int8"])
def test_int8_requests_ask_for_rescoring_and_fp32_ones_do_not(tiny_bundle, catalog, storage, monkeypatch, new_client):
    """Local mode ignores quantisation, so the request itself is checked: on int8, MaxSim re-scores the
    codes' top k x 4 with the originals and the prefetch re-scores on `pooled`; fp32 sends no params.
    (The pooled design's requests; tests/test_search_designs.py checks the others'.)"""
    monkeypatch.setattr(store, "DEFAULT_DESIGN", "pooled")
    client = new_client()
    enc = Encoder(tiny_bundle)
    index_catalog(client, enc, catalog, alias="c", progress=False, storage=storage)
    assert store.collection_info(client, store.alias_target(client, "c"))["storage"] == storage
    sent = []
    real = client.query_batch_points
    monkeypatch.setattr(client, "query_batch_points", lambda *a, **kw: sent.append(kw["requests"]) or real(*a, **kw))
    search = CIRSearch(client, "c", encoder=enc)
    image = next(catalog.glob("*.png"))
    assert len(search.query(image, "make it red", k=5, exact=True)) == 5
    assert len(search.query(image, "make it red", k=5, exact=False)) == 5
    exact, two_stage = sent[0][0], sent[1][0]
    if storage == "fp32":
        assert exact.params is None and two_stage.params is None and two_stage.prefetch.params is None
        return
    for request in (exact, two_stage):
        assert request.params.quantization == models.QuantizationSearchParams(rescore=True, oversampling=4.0)
    assert two_stage.prefetch.params.quantization.rescore is True


def test_storage_of_reads_old_collections_config():
    info = models.CollectionInfo.model_construct(config=models.CollectionConfig.model_construct(
        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type="int8")),
        params=models.CollectionParams.model_construct(vectors={})))
    assert store.storage_of(info) == "int8"


def test_readme_sizing_table_matches_the_schema():
    from pathlib import Path

    from plugin.store import bytes_per_item

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for q, d in ((8, 128), (32, 256)):
        for storage in ("fp32", "fp16", "int8"):
            assert f"{bytes_per_item(q, d, storage, 'pooled'):,} B" in readme


def test_a_qdrant_server_that_is_down_raises_backend_unavailable(tiny_bundle):
    """follow() ran outside the error wrapping: a client pointed at a closed port raised qdrant-client's own
    exception instead of BackendUnavailable (a PluginError)."""
    import socket

    from plugin import BackendUnavailable, PluginError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(BackendUnavailable) as e:
        CIRSearch(client, "catalog", encoder=Encoder(tiny_bundle))
    assert isinstance(e.value, PluginError)


def test_a_reference_item_whose_image_is_gone_is_the_catalogs_fault(tiny_bundle, catalog, tmp_path, new_client):
    """An item_id reference whose stored file is missing (or has no uri) raised BadQuery (the caller's fault,
    HTTP 400) with the server's absolute path in the message: now ItemImageMissing (404), no path."""
    import shutil

    from app.service.backend import search_error
    from plugin import BadQuery, ItemImageMissing, ItemImageUnavailable

    folder = tmp_path / "cat"
    shutil.copytree(catalog, folder)
    client, enc = new_client(), Encoder(tiny_bundle)
    index_catalog(client, enc, folder, alias="c", progress=False)
    search = CIRSearch(client, "c", encoder=enc, catalog_root=folder)
    victim = sorted(folder.glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(ItemImageMissing) as e:
        search.query(ItemRef(victim.name), "make it red")
    assert not isinstance(e.value, BadQuery) and str(tmp_path) not in str(e.value)
    assert search_error(e.value).status == 404
    other = sorted(folder.glob("*.png"))[0]
    client.set_payload(search.target, {"uri": ""}, points=[store.point_id(other.name)])
    with pytest.raises(ItemImageMissing, match="no stored uri"):
        search.query(ItemRef(other.name), "make it red")
    client.set_payload(search.target, {"uri": "https://images.example/x.png"}, points=[store.point_id(other.name)])
    with pytest.raises(ItemImageUnavailable, match="DQE_CIR_ALLOW_HTTP") as e:
        search.query(ItemRef(other.name), "make it red")
    assert search_error(e.value).status == 503


def test_searches_racing_an_alias_switch_between_designs_use_the_queried_collections_design(tiny_bundle, catalog,
                                                                                            new_client):
    """_search read the design, size and storage from the shared self.meta: a refresh in another thread
    could send one collection's request shape to another. Two threads: one searches, one moves the alias
    between a multivector and a token version and refreshes the searcher; every answer must be exact."""
    import threading

    client, enc = new_client(), Encoder(tiny_bundle)
    index_catalog(client, enc, catalog, alias="c", progress=False, design="multivector")
    multi = store.alias_target(client, "c")
    index_catalog(client, enc, catalog, alias="c", progress=False, design="token")
    token = store.alias_target(client, "c")
    search = CIRSearch(client, "c", encoder=enc, refresh_seconds=0.0)
    img = sorted(catalog.glob("*.png"))[0]
    want = [h.id for h in search.query(img, "make it red", k=5, exact=True)]
    errors, stop = [], threading.Event()

    def switcher():
        i = 0
        while not stop.is_set():
            store.switch_alias(client, "c", (multi, token)[i % 2])
            search.current(force=True)
            i += 1

    t = threading.Thread(target=switcher)
    t.start()
    try:
        for _ in range(40):
            try:
                assert [h.id for h in search.query(img, "make it red", k=5, exact=True)] == want
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
