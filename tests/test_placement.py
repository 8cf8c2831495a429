"""A Qdrant cluster's knobs: shards, replicas, write consistency and on-disk vectors reach create_collection,
are recorded in the collection's metadata, shown by `dqe-cir doctor`, refused where they cannot apply,
and ignored with a warning by the embedded engines (plugin/placement.py)."""

import pytest
from qdrant_client import QdrantClient

from encoder.bundle import BundleSpec
from plugin import store
from plugin.placement import Placement, describe, placement_from_meta

SPEC = BundleSpec(embed_dim=8, num_query_tokens=2, image_size=32, mean=[0, 0, 0], std=[1, 1, 1], max_text_len=8,
                  opset=18, fingerprint="p" * 32)
CLUSTER = Placement(shards=6, replication_factor=2, write_consistency_factor=2, on_disk=True)


class Recording:
    """A client that keeps the keyword arguments of every create_collection call (and passes it on)."""

    def __init__(self, client: QdrantClient):
        self.client, self.created = client, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_collection(self, name, **kw):
        self.created.append(kw)
        return self.client.create_collection(name, **kw)


def test_placement_is_checked():
    assert Placement().is_default and Placement().to_meta() == {} and Placement().create_kwargs() == {}
    with pytest.raises(ValueError, match="positive integer"):
        Placement(shards=0)
    with pytest.raises(ValueError, match="no write could ever be acknowledged"):
        Placement(replication_factor=2, write_consistency_factor=3)
    assert placement_from_meta({"placement": CLUSTER.to_meta()}) == CLUSTER
    assert describe(CLUSTER) == ("placement: shards 6, replication factor 2, write consistency factor 2, "
                                 "vectors and HNSW on disk")


@pytest.mark.parametrize("design", ["pooled", "multivector", "token"])
def test_the_request_carries_the_placement_and_local_mode_warns(design):
    client = Recording(QdrantClient(":memory:"))
    with pytest.warns(UserWarning, match=r"embedded engine \(local\) has no cluster"):
        store.create_collection(client, "c", SPEC, design=design, placement=CLUSTER)
    kw = client.created[-1]
    assert (kw["shard_number"], kw["replication_factor"], kw["write_consistency_factor"]) == (6, 2, 2)
    assert kw["on_disk_payload"] is True
    for name, params in kw["vectors_config"].items():
        assert params.on_disk is True, name
        if params.hnsw_config is not None and params.hnsw_config.m != 0:
            assert params.hnsw_config.on_disk is True, name
    assert store.collection_info(client, "c")["placement"] == CLUSTER.to_meta()
    store.create_collection(client, "d", SPEC, design=design)  # the default: nothing passed, nothing recorded
    assert "shard_number" not in client.created[-1] and "placement" not in store.collection_info(client, "d")


def test_doctor_prints_the_placement_and_an_incremental_run_refuses_one(tmp_path, tiny_bundle, synth_small):
    from app.cli import main
    from indexer import IndexerError
    from indexer.doctor import check_qdrant
    from indexer.reindex_inprocess import index_catalog
    from indexer.settings import load_settings

    path = tmp_path / "q"
    client = store.open_embedded(str(path))  # the default engine, the one load_settings below opens
    from encoder import Encoder

    with pytest.warns(UserWarning, match="embedded engine \\(edge\\) has no cluster"):
        index_catalog(client, Encoder(tiny_bundle), synth_small / "val", alias="shop", progress=False,
                      placement=Placement(shards=3, on_disk=True))
    with pytest.raises(IndexerError, match="full re-index"):
        index_catalog(client, Encoder(tiny_bundle), synth_small / "val", alias="shop", progress=False,
                      incremental=True, placement=Placement(shards=2))
    client.close()
    check = next(c for c in check_qdrant(load_settings({"QDRANT_PATH": str(path)}), "shop", None)
                 if c.name == "collection")
    assert check.ok and "placement: shards 3, vectors and HNSW on disk" in check.detail
    code = main(["index", "--catalog", str(synth_small / "val"), "--collection", "shop", "--qdrant-path", str(path),
                 "--bundle", str(tiny_bundle), "--workers", "none", "--replication-factor", "2",
                 "--write-consistency-factor", "3", "--quiet"])
    assert code == 2
