"""The embedded engine (plugin/edge.py): what Edge lacks and the plugin emulates (aliases, metadata, filters
converted whole), the folder's rules (one engine a folder, one process a collection), and durability (an
acknowledged write survives kill -9; a killed re-index completes on the next run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from encoder.bundle import BundleSpec
from encoder.fusion import l2_normalize
from plugin import store
from plugin.edge import EdgeClient
from plugin.errors import BadFilter, ShardBusy, StoreError

ROOT = Path(__file__).resolve().parents[1]
SPEC = BundleSpec(embed_dim=16, num_query_tokens=4, image_size=32, mean=[0, 0, 0], std=[1, 1, 1], max_text_len=8,
                  opset=18, fingerprint="f" * 32)
N = 60


def items(n: int = N, seed: int = 0) -> list[store.Item]:
    rng = np.random.default_rng(seed)
    tokens = l2_normalize(rng.normal(size=(n, 4, 16))).astype(np.float32)
    return [store.Item(f"item-{i:03d}", tokens[i], {"color": ["red", "blue", "green"][i % 3], "size": i,
                                                    "tags": ["a", "b"] if i % 2 else ["c"],
                                                    **({"sale": True} if i % 5 == 0 else {})})
            for i in range(n)]


def filled(client, name: str = "c", design: str = store.DEFAULT_DESIGN):
    store.create_collection(client, name, SPEC, {"color": "keyword", "size": "integer"}, design=design)
    store.upsert(client, name, items())
    store.seal(client, name)
    return client


FILTERS = {
    "match value": models.Filter(must=[models.FieldCondition(key="color", match=models.MatchValue(value="red"))]),
    "match any": models.Filter(must=[models.FieldCondition(key="color", match=models.MatchAny(any=["red", "blue"]))]),
    "match except": models.Filter(must=[models.FieldCondition(key="color",
                                                              match=models.MatchExcept(**{"except": ["red"]}))]),
    "range": models.Filter(must=[models.FieldCondition(key="size", range=models.Range(gte=10, lt=30))]),
    "must_not + should": models.Filter(should=[models.FieldCondition(key="tags[]", match=models.MatchValue(value="c")),
                                               models.FieldCondition(key="size", range=models.Range(lt=5))],
                                       must_not=[models.HasIdCondition(has_id=[store.point_id("item-002")])]),
    "nested filter, is_empty": models.Filter(must=[models.Filter(must_not=[
        models.IsEmptyCondition(is_empty=models.PayloadField(key="sale"))])]),
    "values_count": models.Filter(must=[models.FieldCondition(key="tags", values_count=models.ValuesCount(gte=2))]),
    "min_should": models.Filter(min_should=models.MinShould(conditions=[
        models.FieldCondition(key="color", match=models.MatchValue(value="red")),
        models.FieldCondition(key="size", range=models.Range(lt=20)),
        models.FieldCondition(key="tags[]", match=models.MatchValue(value="a"))], min_count=2)),
}


@pytest.mark.parametrize("kind", sorted(FILTERS))
def test_a_filter_selects_the_same_items_on_edge_as_in_local_mode(kind, tmp_path):
    edge, local = filled(EdgeClient(tmp_path / "e")), filled(QdrantClient(":memory:"))
    flt = FILTERS[kind]
    try:
        def ids(client):
            points, _ = client.scroll("c", scroll_filter=flt, limit=1000, with_payload=["item_id"])
            return sorted(p.payload["item_id"] for p in points)

        want = ids(local)
        assert want and len(want) < N  # the filter selects something, and not everything
        assert ids(edge) == want
        assert edge.count("c", count_filter=flt, exact=True).count == len(want)
    finally:
        edge.close()


def test_a_filter_part_edge_cannot_express_is_refused_not_dropped(tmp_path):
    import datetime

    client = filled(EdgeClient(tmp_path / "e"))
    try:
        dated = models.FieldCondition(key="day", range=models.DatetimeRange(gte=datetime.date(2026, 1, 1)))
        assert client.count("c", count_filter=models.Filter(must=[dated])).count == 0  # a date converts
        with pytest.raises(StoreError, match="indexed_only"):
            client.query_points("c", query=[[0.0] * 16], using="tokens", search_params=models.SearchParams(
                indexed_only=True))
        slice_ = models.SliceCondition(slice=models.Slice(total=2, index=0))
        with pytest.raises(BadFilter, match="SliceCondition is not supported by the edge engine"):
            client.count("c", count_filter=models.Filter(must=[slice_]))
        with pytest.raises(BadFilter, match="says nothing"):
            client.count("c", count_filter=models.Filter(must=[models.FieldCondition(key="color")]))
    finally:
        client.close()


def test_aliases_switch_atomically_survive_a_reopen_and_go_with_their_collection(tmp_path):
    client = filled(filled(EdgeClient(tmp_path / "e"), "v1"), "v2")
    assert store.switch_alias(client, "shop", "v1") is None
    assert store.switch_alias(client, "shop", "v2") == "v1"
    with pytest.raises(ValueError, match="Alias nope not found"):
        client.update_collection_aliases(change_aliases_operations=[models.RenameAliasOperation(
            rename_alias=models.RenameAlias(old_alias_name="nope", new_alias_name="x"))])
    with pytest.raises(ValueError, match="not found"):  # a bad operation changes nothing
        client.update_collection_aliases(change_aliases_operations=[
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="shop")),
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="nope", alias_name="shop"))])
    client.close()
    again = EdgeClient(tmp_path / "e")
    try:
        assert store.aliases(again) == {"shop": "v2"} and store.count(again, "shop") == N
        store.set_state(again, "shop", store.COMPLETE)  # metadata through the alias, kept in the sidecar
        assert store.collection_info(again, "v2")["state"] == store.COMPLETE
        assert again.delete_collection("v2") and store.aliases(again) == {}
        assert store.collections(again) == ["v1"] and not again.delete_collection("shop")
        leftover = tmp_path / "e" / "collections" / ".deleted-v9-0000"  # a delete killed after its rename
        (leftover / "shard").mkdir(parents=True)
        (leftover / "collection.json").write_text("{}")
        assert store.collections(again) == ["v1"]
    finally:
        again.close()
    EdgeClient(tmp_path / "e").close()
    assert not leftover.exists()  # swept when a client opens the folder


HOLD = """
import sys, time
from plugin.edge import EdgeClient
client = EdgeClient(sys.argv[1])
client.count(sys.argv[2])
print("open", flush=True)
time.sleep(60)
"""


def test_a_collection_held_by_another_process_is_busy_and_transient_while_others_open(tmp_path):
    import threading

    from indexer.versions import current_design

    client = filled(filled(EdgeClient(tmp_path / "e"), "live", design="token"), "next")
    store.switch_alias(client, "shop", "live")
    client.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "e"), "live"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        client = EdgeClient(tmp_path / "e", busy_timeout=2.0)
        assert store.count(client, "next") == N
        raised = []

        def wait_for_live():
            try:
                store.count(client, "live")
            except ShardBusy as e:
                raised.append(e)

        waiting = threading.Thread(target=wait_for_live)
        waiting.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert store.count(client, "next") == N  # not held up by the other thread's wait for "live"
        assert time.monotonic() - t0 < 1.0
        waiting.join()
        assert raised
        with pytest.raises(ShardBusy, match="open in another process") as e:
            store.count(client, "live")
        assert store.is_transient(e.value)
        # what a re-index reads of the live version needs no shard: the design is kept while the service holds it
        t0 = time.monotonic()
        assert current_design(client, "shop").name == "token" and time.monotonic() - t0 < 1.0
        client.close()
    finally:
        holder.kill()
        holder.wait()
    client = EdgeClient(tmp_path / "e")  # a killed holder frees it
    assert store.count(client, "live") == N
    client.close()


def test_one_engine_a_folder_and_the_service_never_optimises(tmp_path):
    local = QdrantClient(path=str(tmp_path / "l"))
    filled(local)
    local.close()
    with pytest.raises(StoreError, match="local mode .*QDRANT_ENGINE=local.*dqe-cir index"):
        store.open_embedded(str(tmp_path / "l"), store.EDGE)
    filled(EdgeClient(tmp_path / "e")).close()
    with pytest.raises(StoreError, match="edge-engine folder"):
        store.open_embedded(str(tmp_path / "e"), store.LOCAL)
    with pytest.raises(StoreError, match="unknown embedded engine"):
        store.open_embedded(str(tmp_path / "x"), "sqlite")
    serving = store.open_embedded(str(tmp_path / "e"), store.EDGE, serving=True)
    try:
        assert store.engine(serving) == store.EDGE and store.engine(QdrantClient(":memory:")) == store.LOCAL
        with pytest.raises(StoreError, match="indexing processes only"):
            store.seal(serving, "c")
    finally:
        serving.close()


def test_settings_choose_the_engine_and_doctor_names_it(tmp_path):
    from indexer.doctor import check_qdrant
    from indexer.settings import load_settings, qdrant_client

    edge = load_settings({"QDRANT_PATH": str(tmp_path / "e")})
    assert edge.qdrant_engine == "edge"
    client = qdrant_client(edge)
    filled(client, "shop__1")
    store.switch_alias(client, "shop", "shop__1")
    client.close()
    checks = check_qdrant(edge, "shop", SPEC)
    assert all(c.ok for c in checks), checks
    assert "qdrant-edge-py 0.9.0" in checks[0].detail and f"{N} items" in checks[1].detail
    assert checks[2].detail == "shop__1 (alias shop): design multivector, building"
    local = qdrant_client(load_settings({"QDRANT_PATH": str(tmp_path / "l"), "QDRANT_ENGINE": "local"}))
    assert store.engine(local) == store.LOCAL
    local.close()


def test_an_interrupted_optimise_leaves_nothing_behind_on_the_next_open(tmp_path):
    filled(EdgeClient(tmp_path / "e")).close()
    leftover = tmp_path / "e" / "collections" / "c" / "shard" / "temp_segments" / "segment_builder_x"
    leftover.mkdir(parents=True)
    (leftover / "data").write_bytes(b"half a segment")
    client = EdgeClient(tmp_path / "e")
    assert store.count(client, "c") == N and not leftover.exists()
    client.close()


WRITER = """
import sys
import numpy as np
from plugin import store
from plugin.edge import EdgeClient
from tests.test_edge import SPEC, items
client = EdgeClient(sys.argv[1])
store.create_collection(client, "c", SPEC)
all_items = items(100000 // 50)
for s in range(0, len(all_items), 10):
    store.upsert(client, "c", all_items[s:s + 10])
    print(s + 10, flush=True)  # acknowledged: upsert returned
"""


def test_an_acknowledged_write_survives_kill_9(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "e")], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    acked = 0
    for line in writer.stdout:
        acked = int(line)
        if acked >= 300:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    client = EdgeClient(tmp_path / "e")
    try:
        got = {p["item_id"] for p in store.scroll_payloads(client, "c", ["item_id"])}
        assert {f"item-{i:03d}" for i in range(acked)} <= got
    finally:
        client.close()


@pytest.mark.slow
def test_a_reindex_killed_midway_completes_on_the_next_run_while_a_reader_keeps_serving(tiny_bundle, synth_small,
                                                                                        tmp_path):
    """kill -9 during `dqe-cir index` (in-process, edge): the next run completes and prunes the dead build; a
    searcher in this process holds the live version open the whole time and follows the alias to the new one."""
    from encoder import Encoder
    from plugin.search import CIRSearch

    folder, catalog = tmp_path / "q", synth_small / "val"
    common = ["--bundle", str(tiny_bundle), "--qdrant-path", str(folder), "--collection", "shop"]
    index = [sys.executable, "-m", "app.cli", "index", "--catalog", str(catalog), "--workers", "none", "--json",
             "--quiet", *common]
    env = {**os.environ, "QDRANT_ENGINE": "edge", "CELERY_BROKER_URL": ""}
    assert subprocess.run(index, cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == 0
    reader = EdgeClient(folder, allow_optimize=False)
    search = CIRSearch(reader, "shop", encoder=Encoder(tiny_bundle), refresh_seconds=0)
    first = search.follow()
    ref = sorted(catalog.glob("*.png"))[0]
    before = [h.id for h in search.query(ref, "make it red", k=5)]
    killed = subprocess.Popen(index, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(store.collections(reader)) < 2:
        time.sleep(0.02)  # the next version exists (its schema file; the shard is never opened here)
    time.sleep(0.3)  # into the fill: 785 images take seconds to embed, so the build is still `building`
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert [h.id for h in search.query(ref, "make it red", k=5)] == before  # served throughout
    building = [c for c in store.collections(reader) if c != first]
    assert building and store.collection_info(reader, building[0])["state"] == store.BUILDING
    done = subprocess.run(index, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    n = len(list(catalog.glob("*.png")))
    assert report["indexed"] == n and search.follow() == report["collection"] != first
    assert store.count(reader, "shop") == n and building[0] not in store.collections(reader)  # pruned
    assert [h.id for h in search.query(ref, "make it red", k=5)] == before  # same bundle, same catalog
    assert set(reader._shards) <= set(store.collections(reader))  # pruned versions were let go of
    reader.close()

