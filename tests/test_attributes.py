"""The attribute set is the recipe's: attribute-specific negatives, and a third attribute (size) carried
from training through export, index, search, the command line and the HTTP API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from app.service.routes import create_app
from app.service.settings import ServiceConfig
from encoder import Encoder
from encoder.bundle import read_bundle
from encoder.errors import EncoderError
from encoder.fusion import parse_weights, resolve_weights
from indexer.reindex_inprocess import index_catalog
from indexer.settings import load_settings
from plugin import CIRSearch, SearchError
from training.attributes import caption_attributes, twin_attribute, twin_negatives
from training.errors import TrainingError
from training.losses import attribute_loss
from training.train import TrainConfig, Trainer, build_model, train

THREE = ["color", "shape", "size"]


def test_twin_attribute_reads_the_one_attribute_two_scenes_differ_in():
    target = "tl:large-red-circle|br:small-blue-star"
    assert twin_attribute("tl:large-green-circle|br:small-blue-star", target) == "color"
    assert twin_attribute("tl:large-red-square|br:small-blue-star", target) == "shape"
    assert twin_attribute("tl:small-red-circle|br:small-blue-star", target) == "size"
    assert twin_attribute("tl:large-red-circle|bl:small-blue-star", target) == "position"
    assert twin_attribute("tl:large-green-square|br:small-blue-star", target) is None  # two attributes
    assert twin_attribute("tl:large-red-circle", target) is None  # an object fewer
    assert twin_attribute(target, target) is None
    # both objects recoloured: still a color-only difference
    assert twin_attribute("tl:large-pink-circle|br:small-cyan-star", target) == "color"


def test_twin_negatives_pick_each_attribute_s_own_img_set_member():
    keys = ["tl:large-red-circle", "tl:large-blue-circle", "tl:large-red-star", "tl:small-red-circle",
            "tl:small-blue-star", "tl:large-red-circle"]
    members = [[1, 2, 3, 4, 5]]
    got = twin_negatives(keys, np.array([0]), members, ["color", "shape", "size"])
    assert got.tolist() == [[1, 2, 3]]  # member 5 is the target's own scene, 4 differs in three ways
    assert twin_negatives(keys, np.array([0]), [[4]], ["color"]).tolist() == [[-1]]


def test_caption_lexicon_names_the_edited_attributes():
    assert caption_attributes("is red and has shorter sleeves", THREE).tolist() == [True, True, False]
    assert caption_attributes("make it bigger", THREE).tolist() == [False, False, True]
    assert caption_attributes("a dog on the beach", ["color", "texture"]).tolist() == [False, False]
    assert caption_attributes("a rough texture", ["texture"]).tolist() == [True]  # unknown name: the word itself


def test_attribute_loss_uses_only_each_attribute_s_own_negative():
    """A sub-query that scores the target above its own negative costs less than one that does not,
    and a query without a negative for an attribute adds nothing for it."""
    e = torch.eye(3)
    t_pos = e[[0, 0]][:, None]  # two queries, target token e0
    tokens = torch.cat([t_pos, e[[1, 2]][:, None]])  # negatives at 2 (e1) and 3 (e2)
    good = torch.stack([e[[0, 0]], e[[0, 0]]])  # sub-queries point at the target
    bad = torch.stack([e[[1, 0]], e[[2, 0]]])  # attribute 0's sub-query points at its negative
    neg_at = np.array([[2, -1], [3, -1]])
    assert attribute_loss(good, t_pos, tokens, neg_at, 0.1) < attribute_loss(bad, t_pos, tokens, neg_at, 0.1)
    assert float(attribute_loss(good, t_pos, tokens, np.full((2, 2), -1), 0.1)) == 0.0


def test_weights_are_checked_against_the_model_s_names():
    w = resolve_weights(np.zeros((1, 3), np.float32), {"size": 2}, THREE)
    assert w.tolist() == [[0, 0, 2]]
    with pytest.raises(EncoderError, match="this model's attributes: color, shape, size"):
        resolve_weights(np.zeros((1, 3), np.float32), {"texture": 1}, THREE)
    assert parse_weights(["size=2"]) == {"size": 2.0}  # names checked later, against the model
    with pytest.raises(EncoderError, match="color, shape"):
        parse_weights(["size=2"], ["color", "shape"])


def test_unlabelled_attribute_on_the_synthetic_set_is_a_clear_error(synth_small, tmp_path):
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path), model="tiny", max_steps=1, lambda_attr=0.2,
                      model_overrides={"attributes": ["color", "texture"]}, progress=False)
    model, tok = build_model(cfg)
    from cirdata.tables import load_cir_data

    data = load_cir_data("synth", synth_small, "train", model.cfg.image_size, progress=False, max_queries=8)
    with pytest.raises(TrainingError, match="texture"):
        Trainer(cfg, data, None, model, tok)


@pytest.fixture(scope="module")
def three_attribute_bundle(synth_small, tmp_path_factory):
    """A tiny model with color, shape and size, trained with the attribute term, then exported."""
    from training.export import export_bundle
    from training.train import load_checkpoint

    out = tmp_path_factory.mktemp("three_run")
    train(TrainConfig(root=str(synth_small), out=str(out), model="tiny", max_steps=12, epochs=1, batch_size=16,
                      lr=1e-3, warmup_steps=2, img_set_negatives=1, lambda_attr=0.5, eval_every=0, progress=False,
                      model_overrides={"attributes": THREE}))
    model, tok, meta = load_checkpoint(out / "last.safetensors")
    attr_terms = [h["attr"] for h in meta["history"] if h.get("event") == "step"]
    bundle = tmp_path_factory.mktemp("three_bundle")
    export_bundle(model, tok, bundle, log=lambda *_: None)
    return bundle, model, attr_terms


def test_third_attribute_end_to_end(three_attribute_bundle, synth_small, tmp_path):
    bundle, model, attr_terms = three_attribute_bundle
    assert model.cfg.attributes == tuple(THREE) and list(model.attribute_heads) == THREE
    assert len(attr_terms) == 12 and all(a > 0 for a in attr_terms)  # the attribute term trained every step
    spec = read_bundle(bundle)
    assert spec.attributes == THREE
    enc = Encoder(bundle)
    img = sorted((synth_small / "val").glob("*.png"))[0]
    parts = enc.compose([str(img)], ["make the red circle larger"])
    assert parts.q_attrs.shape == (1, 3, spec.embed_dim) and parts.weights.shape == (1, 3)
    assert np.allclose(np.linalg.norm(parts.q_attrs, axis=-1), 1, atol=1e-4)

    client = QdrantClient(":memory:")
    index_catalog(client, enc, synth_small / "val", alias="catalog", progress=False)
    search = CIRSearch(client, "catalog", encoder=enc)
    plain = search.query(str(img), "make the red circle larger", k=5, explain=True)
    sized = search.query(str(img), "make the red circle larger", k=5, weights={"size": 3.0}, explain=True)
    assert set(sized[0].weights) == set(THREE) and sized[0].weights["size"] == 3.0
    assert set(sized[0].breakdown) == {"base", *THREE}
    assert sized[0].weights["color"] == pytest.approx(plain[0].weights["color"])
    with pytest.raises(SearchError, match="color, shape, size"):
        search.query(str(img), "x", weights={"texture": 1.0})

    config = ServiceConfig(settings=load_settings({}), collection="catalog", catalog_root=str(synth_small / "val"))
    with TestClient(create_app(config, client=client, encoder=enc)) as api:
        assert api.get("/v1/info").json()["attributes"] == THREE
        r = api.post("/v1/search", json={"item_id": img.name, "text": "make it larger", "k": 3,
                                         "weights": {"size": 2.0}})
        assert r.status_code == 200, r.text
        assert r.json()["weights"]["size"] == 2.0 and set(r.json()["model_weights"]) == set(THREE)
        r = api.post("/v1/search", json={"item_id": img.name, "text": "x", "weights": {"texture": 1}})
        assert r.status_code == 422 and "color, shape, size" in r.text


def test_third_attribute_on_the_command_line(three_attribute_bundle, synth_small, tmp_path, capsys):
    from app.cli import main

    bundle, _, _ = three_attribute_bundle
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for p in sorted((synth_small / "val").glob("*.png"))[:12]:
        shutil.copy(p, catalog / p.name)
    qdrant = str(tmp_path / "qdrant")
    assert main(["index", "--catalog", str(catalog), "--bundle", str(bundle), "--qdrant-path", qdrant,
                 "--collection", "c", "--workers", "none", "--quiet"]) == 0
    capsys.readouterr()
    img = str(sorted(catalog.glob("*.png"))[0])
    assert main(["search", "--bundle", str(bundle), "--qdrant-path", qdrant, "--collection", "c", "--image", img,
                 "--text", "make it larger", "--weights", "size=2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and hits[0]["weights"]["size"] == 2.0
    assert main(["search", "--bundle", str(bundle), "--qdrant-path", qdrant, "--collection", "c", "--image", img,
                 "--text", "x", "--weights", "texture=2"]) != 0
    assert "color, shape, size" in capsys.readouterr().err
