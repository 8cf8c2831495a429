"""The first-stage designs (plugin/designs.py) in local mode: every design returns exact MaxSim's top k,
with filters, deletes, re-writes and the reference left out; the requests each design sends; the design
recorded in the collection's metadata, old collections read as pooled, a re-index moving to the default,
and `dqe-cir doctor` naming the design. Local mode has no HNSW (it scans), so these tests pin the request
shapes and the item-level bookkeeping; recall under a real graph is benchmarks/edge_search.py's job."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from encoder import ComposeOutput
from encoder.bundle import BundleSpec
from encoder.fusion import l2_normalize, maxsim
from plugin import CIRSearch, ItemRef, SearchError, StoreError, designs, store

Q, D, N = 4, 16, 60
COLORS = ("red", "green", "blue")
SPEC = BundleSpec(embed_dim=D, num_query_tokens=Q, image_size=32, mean=[0, 0, 0], std=[1, 1, 1], max_text_len=8,
                  opset=18, fingerprint="d" * 32)


class QueryEncoder:
    """Composes the query vector named by the text ("q0", "q1", ...), whatever the image: fused = q_base."""

    def __init__(self, queries: np.ndarray):
        self.spec, self.fingerprint, self.queries = SPEC, SPEC.fingerprint, queries

    def compose(self, images, texts):
        base = self.queries[[int(t[1:]) for t in texts]]
        b = len(texts)
        return ComposeOutput(q_base=base, q_attrs=np.zeros((b, 2, D), np.float32),
                             weights=np.zeros((b, 2), np.float32), attributes=("color", "shape"))


@pytest.fixture()
def data():
    rng = np.random.default_rng(7)
    tokens = l2_normalize(rng.normal(size=(N, Q, D))).astype(np.float32)
    queries = l2_normalize(rng.normal(size=(5, D))).astype(np.float32)
    ids = [f"item-{i:03d}" for i in range(N)]
    return tokens, queries, ids


def fill(client, design, data, storage="fp32", name="c") -> QdrantClient:
    tokens, _, ids = data
    store.create_collection(client, name, SPEC, {"color": "keyword"}, storage=storage, design=design)
    store.upsert(client, name, [store.Item(ids[i], tokens[i], {"color": COLORS[i % 3], "uri": f"{ids[i]}.png"})
                                for i in range(N)])
    return client


def exact_top(q, tokens, ids, k, keep=None):
    s = maxsim(q[None], tokens)[0]
    order = [i for i in np.argsort(-s, kind="stable") if keep is None or keep(i)][:k]
    return [ids[i] for i in order], s[order]


def searcher(client, data, **kw) -> CIRSearch:
    return CIRSearch(client, "c", encoder=QueryEncoder(data[1]), exact_below=0, **kw)  # never the exact path


@pytest.mark.parametrize("design", designs.DESIGNS)
def test_each_design_returns_exact_maxsims_top_k_with_and_without_a_filter(design, data, new_client):
    tokens, queries, ids = data
    search = searcher(fill(new_client(), design, data), data)
    for j, q in enumerate(queries):
        for exact in (False, True):
            hits = search.query("ref.png", f"q{j}", k=7, exact=exact, exclude_reference=False)
            want, scores = exact_top(q, tokens, ids, 7)
            assert [h.id for h in hits] == want
            assert np.allclose([h.score for h in hits], scores, atol=1e-5)
            assert all(designs.TOKEN_INDEX not in h.payload for h in hits)
        hits = search.query("ref.png", f"q{j}", k=5, filter={"color": "red"}, exclude_reference=False)
        assert [h.id for h in hits] == exact_top(q, tokens, ids, 5, keep=lambda i: i % 3 == 0)[0]


@pytest.mark.parametrize("design", designs.DESIGNS)
def test_delete_rewrite_count_and_scroll_address_items(design, data, new_client):
    tokens, queries, ids = data
    client = fill(new_client(), design, data)
    search = searcher(client, data)
    top = search.query("ref.png", "q0", k=1, exclude_reference=False)[0].id
    store.delete(client, "c", [top, ids[1]])
    assert store.count(client, "c") == N - 2
    per_item = Q if design == designs.TOKEN else 1
    assert client.count("c", exact=True).count == (N - 2) * per_item  # no token point of a deleted item is left
    hits = search.query("ref.png", "q0", k=5, exclude_reference=False)
    gone = {ids.index(top), 1}
    assert [h.id for h in hits] == exact_top(queries[0], tokens, ids, 5, keep=lambda i: i not in gone)[0]
    # written back with tokens equal to the query: it is first again, scored 1, and counted once
    fresh = np.tile(queries[0], (Q, 1))
    store.upsert(client, "c", [store.Item(top, fresh, {"color": "red", "uri": "x.png", "content_hash": "h1"})])
    store.upsert(client, "c", [store.Item(top, fresh, {"color": "red", "uri": "x.png", "content_hash": "h2"})])
    hits = search.query("ref.png", "q0", k=2, exclude_reference=False)
    assert hits[0].id == top and abs(hits[0].score - 1.0) < 1e-5 and hits[1].id != top
    assert store.count(client, "c") == N - 1 and client.count("c", exact=True).count == (N - 1) * per_item
    assert store.content_hashes(client, "c", [top, ids[1], ids[2]]) == {top: "h2", ids[2]: None}
    payloads = list(store.scroll_payloads(client, "c", batch=7))
    assert sorted(p["item_id"] for p in payloads) == sorted(set(ids) - {ids[1]})
    assert all(designs.TOKEN_INDEX not in p for p in payloads)
    assert store.item_payload(client, "c", top) == {"color": "red", "uri": "x.png", "content_hash": "h2",
                                                    "item_id": top}
    assert store.item_payload(client, "c", ids[1]) is None


@pytest.mark.parametrize("design", designs.DESIGNS)
def test_the_reference_item_is_left_out_in_every_design(design, data, new_client):
    tokens, queries, ids = data
    search = searcher(fill(new_client(), design, data), data)
    ref = exact_top(queries[2], tokens, ids, 1)[0][0]  # the query's best match is the reference itself
    hits = search.query(ItemRef(ref), "q2", k=6)
    assert [h.id for h in hits] == exact_top(queries[2], tokens, ids, 6, keep=lambda i: ids[i] != ref)[0]
    hits = search.query(ItemRef(ref), "q2", k=6, filter={"color": ["green", "blue"]})
    keep = {ids[i] for i in range(N) if i % 3 != 0} - {ref}
    assert [h.id for h in hits] == exact_top(queries[2], tokens, ids, 6, keep=lambda i: ids[i] in keep)[0]


@pytest.mark.parametrize("design", designs.DESIGNS)
def test_explain_breaks_the_score_down_from_the_items_tokens(design, data, new_client):
    tokens, queries, ids = data
    search = searcher(fill(new_client(), design, data), data)
    hits = search.query("ref.png", "q3", k=4, explain=True, exclude_reference=False)
    for h in hits:
        assert h.breakdown["base"] == pytest.approx(float((tokens[ids.index(h.id)] @ queries[3]).max()), abs=1e-5)
        assert h.breakdown["color"] == 0.0 and h.breakdown["shape"] == 0.0  # the fake composer's zero sub-queries


def record(client, monkeypatch) -> list:
    sent = []
    for method in ("query_batch_points", "query_points_groups"):
        real = getattr(client, method)
        monkeypatch.setattr(client, method, lambda *a, _m=method, _r=real, **kw: sent.append((_m, kw)) or _r(*a, **kw))
    return sent


@pytest.mark.parametrize("storage", ["fp32", "int8"])
def test_each_design_sends_its_own_request(data, monkeypatch, storage, new_client):
    rescore = models.QuantizationSearchParams(rescore=True, oversampling=4.0) if storage == "int8" else None
    # multivector: [q] on the `tokens` graph, no prefetch, the recorded ef
    client = fill(new_client(), designs.MULTIVECTOR, data, storage)
    sent = record(client, monkeypatch)
    searcher(client, data).query("ref.png", "q0", k=3)
    (method, kw), = sent
    request = kw["requests"][0]
    assert method == "query_batch_points" and request.using == store.TOKENS and request.prefetch is None
    mv_ef = designs.DESIGN_DEFAULTS[designs.MULTIVECTOR].hnsw_ef
    assert request.query == [data[1][0].tolist()] and request.params.hnsw_ef == mv_ef
    assert request.params.exact is False and request.params.quantization == rescore
    searcher(client, data, hnsw_ef=300).query("ref.png", "q0", k=3, exact=True)
    assert sent[-1][1]["requests"][0].params.hnsw_ef == 300 and sent[-1][1]["requests"][0].params.exact is True
    # token: one grouped query per composed query, each item's best token
    client = fill(new_client(), designs.TOKEN, data, storage)
    sent = record(client, monkeypatch)
    searcher(client, data).query_batch(["a.png", "b.png"], ["q0", "q1"], k=3)
    assert [m for m, _ in sent] == ["query_points_groups"] * 2
    kw = sent[0][1]
    assert (kw["group_by"], kw["group_size"], kw["limit"], kw["using"]) == ("item_id", 1, 3, designs.TOKEN_VECTOR)
    token_ef = designs.DESIGN_DEFAULTS[designs.TOKEN].hnsw_ef
    assert kw["search_params"].hnsw_ef == token_ef and kw["search_params"].quantization == rescore
    # pooled: the two-stage request as before
    client = fill(new_client(), designs.POOLED, data, storage)
    sent = record(client, monkeypatch)
    searcher(client, data).query("ref.png", "q0", k=3)
    request = sent[0][1]["requests"][0]
    assert request.prefetch.using == store.POOLED_VECTOR and request.using == store.TOKENS


def test_the_design_is_recorded_and_old_collections_read_as_pooled(data, new_client):
    client = fill(new_client(), designs.TOKEN, data)
    info = store.collection_info(client, "c")
    assert info["design"] == "token" and info["design_params"] == {"m": 16, "ef_construct": 100, "hnsw_ef": 128}
    assert info["items"] == N and info["points"] == N * Q
    vectors = client.get_collection("c").config.params.vectors
    assert set(vectors) == {designs.TOKEN_VECTOR} and vectors[designs.TOKEN_VECTOR].hnsw_config.m == 16
    store.set_state(client, "c", store.COMPLETE)
    raw = client.get_collection("c").config.metadata[store.META_KEY]
    assert "items" not in raw and "points" not in raw and raw["design"] == "token"  # nothing derived written back
    # a collection from before designs: no key in its metadata, the pooled schema
    old = fill(new_client(), designs.POOLED, data)
    meta = {k: v for k, v in old.get_collection("c").config.metadata[store.META_KEY].items() if k != "design"}
    old.update_collection("c", metadata={store.META_KEY: meta})
    assert "design" not in old.get_collection("c").config.metadata[store.META_KEY]
    assert store.collection_info(old, "c")["design"] == "pooled"
    tokens, queries, ids = data
    hits = searcher(old, data).query("ref.png", "q1", k=5, exclude_reference=False)
    assert [h.id for h in hits] == exact_top(queries[1], tokens, ids, 5)[0]


def test_bad_designs_are_refused_with_what_to_do(data, new_client):
    client = new_client()
    with pytest.raises(StoreError, match=r"unknown design 'graph'; use one of \('pooled', 'multivector', 'token'\)"):
        store.create_collection(client, "c", SPEC, design="graph")
    with pytest.raises(StoreError, match="give m"):
        store.create_collection(client, "c", SPEC, design=designs.Design(designs.TOKEN, hnsw_ef=64))
    with pytest.raises(StoreError, match="hnsw_ef must be a positive integer"):
        store.create_collection(client, "c", SPEC, design=designs.Design(designs.MULTIVECTOR, m=16, hnsw_ef=0))
    assert not client.collection_exists("c")  # nothing half-made
    store.create_collection(client, "c", SPEC, design=designs.Design(designs.MULTIVECTOR, m=32, hnsw_ef=200))
    assert store.collection_info(client, "c")["design_params"] == {"m": 32, "hnsw_ef": 200}
    with pytest.raises(StoreError, match="holds 4 tokens an item"):
        store.upsert(client, "c", [store.Item("x", np.ones((3, D), np.float32), {})])
    meta = client.get_collection("c").config.metadata[store.META_KEY]
    client.update_collection("c", metadata={store.META_KEY: {**meta, "design": "graph"}})
    with pytest.raises(SearchError, match="design 'graph', which this version of dqe-cir does not know"):
        searcher(client, data)
    client.update_collection("c", metadata={store.META_KEY: {**meta, "design_params": {"m": 16, "levels": 3}}})
    with pytest.raises(StoreError, match=r"records settings this version of dqe-cir does not know \(levels\)"):
        store.collection_info(client, "c")
    with pytest.raises(SearchError, match="hnsw_ef must be a positive integer"):
        CIRSearch(fill(new_client(), designs.POOLED, data), "c", encoder=QueryEncoder(data[1]), hnsw_ef=-1)


def test_a_reindex_keeps_the_design_unless_told_and_searchers_follow_a_move(data, monkeypatch, new_client):
    from indexer.versions import new_version

    tokens, queries, ids = data
    client = new_client()
    items = [store.Item(ids[i], tokens[i], {"uri": f"{ids[i]}.png"}) for i in range(N)]
    monkeypatch.setattr(store, "DEFAULT_DESIGN", designs.POOLED)  # an alias built before the default moved
    old = new_version(client, "cat", SPEC)  # what indexer/reindex_inprocess.py and indexer/reindex_workers.py call
    store.upsert(client, old, items)
    store.switch_alias(client, "cat", old)
    now = [0.0]
    search = CIRSearch(client, "cat", encoder=QueryEncoder(queries), exact_below=0, clock=lambda: now[0])
    want = exact_top(queries[4], tokens, ids, 5)[0]
    assert [h.id for h in search.query("r.png", "q4", k=5, exclude_reference=False)] == want
    monkeypatch.setattr(store, "DEFAULT_DESIGN", designs.TOKEN)
    kept = new_version(client, "cat", SPEC)  # a re-index keeps the alias's design, whatever the default now
    assert store.collection_info(client, kept)["design"] == "pooled"
    store.drop_collection(client, kept)
    new = new_version(client, "cat", SPEC, design=designs.TOKEN)  # moved when told
    store.upsert(client, new, items)
    assert store.collection_info(client, old)["design"] == "pooled"  # the live version is untouched
    assert store.collection_info(client, new)["design"] == "token"
    store.switch_alias(client, "cat", new)
    now[0] = 60.0
    assert [h.id for h in search.query("r.png", "q4", k=5, exclude_reference=False)] == want
    assert search.target == new and search.meta["design"] == "token"


def test_doctor_says_which_design_a_collection_uses(tmp_path, data, monkeypatch):
    from indexer.doctor import check_qdrant
    from indexer.settings import load_settings

    path = tmp_path / "q"
    client = store.open_embedded(str(path))
    store.create_collection(client, "shop__1", SPEC, design=designs.TOKEN)
    store.upsert(client, "shop__1", [store.Item("a", data[0][0], {}), store.Item("b", data[0][1], {})])
    store.switch_alias(client, "shop", "shop__1")
    client.close()
    settings = load_settings({"QDRANT_PATH": str(path)})
    check = next(c for c in check_qdrant(settings, "shop", SPEC) if c.name == "collection")
    assert check.ok and "2 items (8 points)" in check.detail
    assert "design token (m 16, ef_construct 100, hnsw_ef 128)" in check.detail
    assert f"a full re-index with --design {store.DEFAULT_DESIGN} moves it there" in check.detail
    monkeypatch.setattr(store, "DEFAULT_DESIGN", designs.TOKEN)
    check = next(c for c in check_qdrant(settings, "shop", SPEC) if c.name == "collection")
    assert check.ok and "design token" in check.detail and "moves it there" not in check.detail


def test_bytes_per_item_by_design_and_the_readme_table():
    from pathlib import Path

    assert store.bytes_per_item(8, 128, "fp32", "pooled") == 4608  # the pooled design's (8 + 1) x 128 x 4
    assert store.bytes_per_item(8, 128) == 4096  # the default design's (multivector) 8 x 128 x 4
    assert store.bytes_per_item(8, 128, "fp32", "multivector") == store.bytes_per_item(8, 128, "fp32", "token") == 4096
    assert store.bytes_per_item(32, 256, "int8", "token") == 8192
    assert designs.hnsw_bytes_per_item(8, "pooled", m=16) == designs.hnsw_bytes_per_item(8, "multivector") == 132
    assert designs.hnsw_bytes_per_item(8, "token") == round(8 * 4 * (32 + 16 / 15))  # Q nodes of 2m + m/(m-1) links
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("Sizing: vector RAM per catalog image"):]
    table = table[:table.index("\n\n", table.index("| model"))]
    for q, d in ((8, 128), (32, 256)):
        for design in designs.DESIGNS:
            row = next(line for line in table.splitlines() if f"Q={q}, D={d}" in line and f"| {design} |" in line)
            for storage in ("fp32", "fp16", "int8"):
                assert f"{store.bytes_per_item(q, d, storage, design):,} B" in row, (row, storage)
            links = designs.hnsw_bytes_per_item(q, design)
            assert f"| {links:,} B | {(store.bytes_per_item(q, d, 'fp32', design) + links) / 1e3:.1f} GB |" in row, row


def test_a_pooled_design_can_carry_its_own_graph_settings(data, monkeypatch, new_client):
    client = new_client()
    store.create_collection(client, "c", SPEC, design=designs.Design(designs.POOLED, m=32, hnsw_ef=200))
    vectors = client.get_collection("c").config.params.vectors
    assert vectors[store.POOLED_VECTOR].hnsw_config.m == 32 and vectors[store.TOKENS].hnsw_config.m == 0
    store.upsert(client, "c", [store.Item(data[2][i], data[0][i], {}) for i in range(N)])
    sent = record(client, monkeypatch)
    searcher(client, data).query("ref.png", "q0", k=3)
    assert sent[0][1]["requests"][0].prefetch.params.hnsw_ef == 200


# --- the benchmark's own logic (benchmarks/edge_designs.py) -------------------------------------
def test_the_recall_fit_finds_the_size_at_099_and_refuses_to_fit_zeros():
    from benchmarks.edge_designs import fit_miss_rate

    sizes = [10_000, 30_000, 100_000]
    # miss = 1e-6 x size exactly: b = 1, and 1 - 0.99 is reached at 10,000 items
    f = fit_miss_rate(sizes, [1 - 1e-6 * s for s in sizes], 2000)
    assert f["exponent"] == pytest.approx(1.0) and f["size_at_target"] == pytest.approx(10_000, rel=1e-6)
    f = fit_miss_rate(sizes, [1 - 1e-9 * s for s in sizes], 2000)
    assert f["size_at_target"] == pytest.approx(10_000_000, rel=1e-6) and "far (over 10x) beyond" in f["note"]
    f = fit_miss_rate(sizes, [1.0, 1.0, 0.999], 2000)
    assert f["exponent"] is None and f["size_at_target"] is None and "a miss at one size only" in f["note"]
    f = fit_miss_rate(sizes, [0.98, 0.99, 0.995], 2000)
    assert f["size_at_target"] is None and "does not grow" in f["note"] and f["below_at"] == 10_000


def test_the_replayed_group_by_returns_exact_maxsims_top_k(tmp_path, data):
    pytest.importorskip("qdrant_edge")
    from benchmarks.edge_designs import build_design, grouped_query

    tokens, queries, ids = data
    shard, info = build_design(tmp_path / "s", designs.make_design(designs.TOKEN), tokens, ids,
                               [f"{i}.png" for i in ids])
    try:
        assert info["points"] == N * Q and info["disk"]["vectors"] >= N * Q * D * 4
        for q in queries:
            for exact in (True, False):  # a catalog this small is scanned either way: both must be exact
                assert grouped_query(shard, q, 64, exact=exact) == exact_top(q, tokens, ids, 10)[0]
    finally:
        shard.close()


def test_dqe_cir_index_design_flag_builds_that_design(tiny_bundle, synth_small, tmp_path):
    """`dqe-cir index --design token` makes the new version a token collection; a plain re-index goes back
    to the default design; search works on both."""

    from app.cli import main

    common = ["--bundle", str(tiny_bundle), "--qdrant-path", str(tmp_path / "q"), "--collection", "shop"]
    base = ["index", "--catalog", str(synth_small / "val"), "--workers", "none", "--quiet", "--json", *common]
    assert main([*base, "--design", "token"]) == 0
    client = store.open_embedded(str(tmp_path / "q"))
    try:
        live = store.alias_target(client, "shop")
        assert store.collection_info(client, live)["design"] == "token"
    finally:
        client.close()
    item = sorted(p.name for p in (synth_small / "val").iterdir())[0]
    search = ["search", "--item", item, "--text", "make it red", "-k", "3", "--catalog-root", str(synth_small / "val"),
              "--json", *common]
    assert main(search) == 0
    assert main(base) == 0  # a re-index without --design keeps the alias's design
    client = store.open_embedded(str(tmp_path / "q"))
    try:
        assert store.collection_info(client, store.alias_target(client, "shop"))["design"] == "token"
    finally:
        client.close()
    assert main([*base, "--design", store.DEFAULT_DESIGN]) == 0
    client = store.open_embedded(str(tmp_path / "q"))
    try:
        assert store.collection_info(client, store.alias_target(client, "shop"))["design"] == store.DEFAULT_DESIGN
    finally:
        client.close()
    assert main(search) == 0


class OneRoundGroupBy:
    """A client whose grouped query replays ONE round of a Qdrant server's group_by (lib/collection/src/grouping):
    a single request for the k best token points (k = the groups asked for), grouped by item: with Q tokens
    an item, as few as k / Q groups come back. Local mode groups exactly, so no other test sees this."""

    def __init__(self, client: QdrantClient):
        self.client, self.rounds = client, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def query_points_groups(self, collection_name, group_by, query, using, query_filter, search_params, limit,
                            group_size, with_payload):
        self.rounds += 1
        pts = self.client.query_points(collection_name, query=query, using=using, query_filter=query_filter,
                                       search_params=search_params, limit=limit, with_payload=True).points
        groups: dict = {}
        for p in pts:
            groups.setdefault(p.payload[group_by], p)
        return models.GroupsResult(groups=[models.PointGroup(id=key, hits=[p]) for key, p in groups.items()])


def test_the_token_design_fills_k_even_when_the_servers_group_by_answers_short(data, new_client):
    """k=100 over 150 items of Q=4 tokens: one round of the server's group-by yields about 25-100 groups. The
    searcher asks again for the rest (leaving out the items found) until k, and the answer is exact MaxSim's."""
    rng = np.random.default_rng(3)
    n, k = 150, 100
    tokens = l2_normalize(rng.normal(size=(n, Q, D))).astype(np.float32)
    queries, ids = data[1], [f"item-{i:03d}" for i in range(n)]
    client = new_client()
    store.create_collection(client, "c", SPEC, design="token")
    store.upsert(client, "c", [store.Item(ids[i], tokens[i], {"uri": f"{ids[i]}.png"}) for i in range(n)])
    replay = OneRoundGroupBy(client)
    search = CIRSearch(replay, "c", encoder=QueryEncoder(queries), exact_below=0)
    first = replay.query_points_groups("c", "item_id", queries[0].tolist(), designs.TOKEN_VECTOR, None, None, k, 1,
                                       True)
    assert len(first.groups) < k  # the replay does answer short
    for j, q in enumerate(queries):
        replay.rounds = 0
        hits = search.query("ref.png", f"q{j}", k=k, exclude_reference=False)
        want, scores = exact_top(q, tokens, ids, k)
        assert [h.id for h in hits] == want and np.allclose([h.score for h in hits], scores, atol=1e-5)
        assert replay.rounds > 1
