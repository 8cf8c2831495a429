"""Sub-queries that specialise: attribute probes, the controllability measures, the probe losses, and a
training step that uses them (docs/METHOD.md, docs/benchmarks/controllability.md)."""

import json

import numpy as np
import pytest
import torch

from cirdata import controllability as ctl
from cirdata.errors import DataError
from cirdata.probes import ProbeRenderer, attribute_variants, edited_object
from cirdata.scenes import Obj, make_scene, scene_from_key, scene_key
from cirdata.tables import load_cir_data
from training.attributes import edit_labels
from training.losses import (
    attribute_invariance,
    attribute_sensitivity,
    probe_scores,
    subquery_decorrelation,
    weight_label_loss,
)

RED_CIRCLE = Obj("top left", "large", "red", "circle")
BLUE_STAR = Obj("bottom right", "small", "blue", "star")


def test_edited_object_and_attribute_variants():
    ref = make_scene([RED_CIRCLE, BLUE_STAR])
    recolored = make_scene([Obj("top left", "large", "green", "circle"), BLUE_STAR])
    assert edited_object(ref, recolored) == recolored[0]
    assert edited_object(ref, make_scene([BLUE_STAR])) is None  # a removal edits no object of the target
    colors = attribute_variants(recolored, recolored[0], "color")
    assert len(colors) == 7 and all(len(v) == 2 and v[1] == BLUE_STAR for v in colors)
    # a variant that would repeat another object's color+shape is not a valid scene: blue star stays unique
    stars = make_scene([Obj("top left", "large", "blue", "circle"), BLUE_STAR])
    assert all(v[0].shape != "star" for v in attribute_variants(stars, stars[0], "shape"))
    assert [v[0].size for v in attribute_variants(recolored, recolored[0], "size")] == ["small"]
    with pytest.raises(DataError, match="no probes for attribute 'material'"):
        attribute_variants(recolored, recolored[0], "material")


def test_scene_keys_read_back_into_scenes():
    scene = make_scene([RED_CIRCLE, BLUE_STAR])
    assert scene_from_key(scene_key(scene)) == scene


def test_a_probe_is_the_target_redrawn_with_one_attribute_changed(synth_small):
    """Rendered with the target's own jitter seed: the target's scene redrawn is its image, byte for byte."""
    val = load_cir_data("synth", synth_small, "val", 64, progress=False)
    renderer = ProbeRenderer(synth_small, "val", 64)
    i = next(j for j, k in enumerate(val.edit_kinds) if k == "color")
    t = val.tgt[i]
    assert np.array_equal(renderer.render(scene_from_key(val.scene_keys[t]), val.names[t]), val.pixels[t])
    probes = renderer.probes(val.scene_keys[val.ref[i]], val.scene_keys[t], val.names[t], "shape", 3,
                             np.random.default_rng(0))
    assert probes.shape == (3, 64, 64, 3) and not any(np.array_equal(p, val.pixels[t]) for p in probes)
    with pytest.raises(DataError, match="synth.json"):
        ProbeRenderer(synth_small / "val", "val", 64)


def test_top_k_agreement_counts_position_by_position_and_short_lists_as_misses():
    target = "tl:large-red-circle|br:small-blue-star"
    keys = [target, "tl:large-red-square|br:small-blue-circle", "tl:large-green-circle|br:small-blue-star",
            "tl:large-red-circle"]
    assert ctl.agrees(keys[1], target, "color") and not ctl.agrees(keys[1], target, "shape")
    assert ctl.agrees(keys[2], target, "shape") and not ctl.agrees(keys[2], target, "color")
    assert not ctl.agrees(keys[3], target, "color")  # an object fewer: positions differ
    got = ctl.top_k_agreement([[1, 2, 3]], [0], keys, "color", k=10)
    assert got.tolist() == [10.0]  # one of ten places agrees; the seven missing ones do not


def test_weight_settings_and_first_among():
    w = np.array([[0.2, 0.5]], np.float32)
    s = ctl.weight_settings(["color", "shape"])
    assert list(s) == ["model's", "base only", "color alone", "color x3", "shape alone", "shape x3"]
    assert s["color alone"](w).tolist() == [[3.0, 0.0]] and np.allclose(s["shape x3"](w), [[0.2, 1.5]])
    assert s["base only"](w).tolist() == [[0.0, 0.0]]
    s_t, s_p = np.array([0.9, 0.5, 0.7]), np.array([[0.1, 0.2, np.nan], [0.6, 0.1, 0.2], [np.nan] * 3])
    assert ctl.has_probes(s_p).tolist() == [True, True, False]
    assert ctl.first_among(s_t[:2], s_p[:2]).tolist() == [True, False]


def test_probe_losses_against_brute_force():
    torch.manual_seed(0)
    s_t = torch.tensor([[0.9, 0.2]])
    s_p = torch.tensor([[[0.1, 0.3, float("-inf")], [0.5, 0.4, 0.3]]])  # [n=1, A=2, k=3]
    got = attribute_sensitivity(s_t, s_p, 0.1)
    want = np.mean([-np.log(np.exp(9) / (np.exp(9) + np.exp(1) + np.exp(3))),
                    -np.log(np.exp(2) / (np.exp(2) + np.exp(5) + np.exp(4) + np.exp(3)))])
    assert float(got) == pytest.approx(want, rel=1e-5)
    # invariance: zero when a head scores the target and the other attribute's probes alike
    flat = torch.full((1, 2, 2, 3), 0.5)
    assert float(attribute_invariance(torch.full((1, 2), 0.5), flat, 0.1)) == pytest.approx(0.0, abs=1e-6)
    peaked = flat.clone()
    peaked[0, 0, 1] = -1.0  # head 0 puts the target far above attribute 1's probes
    assert float(attribute_invariance(torch.full((1, 2), 0.5), peaked, 0.1)) > 1.0
    q = torch.randn(3, 2, 8)
    assert float(subquery_decorrelation(torch.stack([q[:, 0], q[:, 0]], 1))) == pytest.approx(1.0)
    w = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")]])
    want = -np.mean([np.log(0.9), np.log(0.9)])
    assert float(weight_label_loss(w, labels)) == pytest.approx(want, rel=1e-5)


def test_probe_scores_mask_missing_probes():
    tokens = torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    at = np.array([[[0, 1]], [[2, -1]]])  # [n=2, A=1, k=2]
    s = probe_scores(q, tokens, at)
    assert torch.isinf(s[1, 1]) and float(s[0, 1]) == pytest.approx(float((tokens[1] @ q[0]).max()))


def test_edit_labels_from_edit_kinds_or_the_caption_lexicon():
    labels = edit_labels(["color", "shape", "both", "add", None], ["", "", "", "", "a red dress"], ["color", "shape"])
    assert labels[:3].tolist() == [[1, 0], [0, 1], [1, 1]]
    assert np.isnan(labels[3]).all() and labels[4].tolist() == [1, 0]


def test_a_training_step_with_probes_fresh_heads_and_a_heads_only_warmup(synth_small, tiny_trained, tmp_path):
    from training.config import load_train_config
    from training.train import Trainer, build_model

    cfg = load_train_config("demo-specialise", {
        "init": str(tiny_trained), "root": str(synth_small), "out": str(tmp_path), "batch_size": 8, "max_steps": 2,
        "attribute_warmup_steps": 1, "lambda_weight_labels": 0.2, "progress": False, "threads": 1})
    model, tok = build_model(cfg)
    from training.train import load_checkpoint

    shipped, _, _ = load_checkpoint(tiny_trained)
    head = model.attribute_heads["color"].weight
    assert not torch.allclose(head, shipped.attribute_heads["color"].weight)  # fresh, not the checkpoint's copy
    assert torch.count_nonzero(model.attribute_heads["color"].bias) == 0
    # folded: q_base's projection is the mean of the checkpoint's heads, and the new weights start nearly shut
    old = torch.stack([h.weight for h in shipped.attribute_heads.values()]).mean(0)
    assert torch.allclose(model.blip.text_projection.weight, old)
    assert torch.all(model.weight_gate.bias == -4.0)
    train = load_cir_data("synth", synth_small, "train", model.cfg.image_size, progress=False)
    trainer = Trainer(cfg, train, None, model, tok)
    lrs = {g["attribute"]: g["lr_mult"] for g in trainer.opt.param_groups}
    assert lrs == {False: 1.0, True: 10.0}
    backbone = model.blip.vision_model.embeddings.patch_embedding.weight.detach().clone()
    heads = head.detach().clone()
    trainer.run(stop_after=1)  # step 0 is in the heads-only warm-up
    assert torch.equal(backbone, model.blip.vision_model.embeddings.patch_embedding.weight)
    assert not torch.equal(heads, model.attribute_heads["color"].weight)
    trainer.run()  # step 1 trains everything
    assert not torch.equal(backbone, model.blip.vision_model.embeddings.patch_embedding.weight)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if s.get("event") == "step"]
    assert {"attr", "invariance", "decorr", "weight_labels"} <= set(logged[-1])
    assert all(np.isfinite(s["loss"]) for s in logged)


def test_probes_need_the_synthetic_set():
    from training.config import load_train_config
    from training.errors import TrainingError

    with pytest.raises(TrainingError, match="attribute_probes needs data 'synth'"):
        load_train_config("demo-specialise", {"data": "cirr", "phrasing_noise": 0.0, "lambda_attr_retrieval": 0.0})
    with pytest.raises(TrainingError, match="lambda_attr_retrieval needs data 'synth'"):
        load_train_config("demo-specialise", {"data": "cirr", "phrasing_noise": 0.0})


def test_attribute_head_init_copy_or_fresh():
    from training.errors import TrainingError
    from training.model import DQECIR, model_config

    copy = DQECIR(model_config("tiny", vocab_size=50))
    fresh = DQECIR(model_config("tiny", vocab_size=50, attribute_head_init="fresh"))
    def cos(head, model) -> float:
        return float(torch.nn.functional.cosine_similarity(head.weight.flatten(),
                                                           model.blip.text_projection.weight.flatten(), dim=0))

    assert cos(copy.attribute_heads["color"], copy) > 0.5  # text_projection + noise
    assert abs(cos(fresh.attribute_heads["color"], fresh)) < 0.2 and torch.count_nonzero(
        fresh.attribute_heads["color"].bias) == 0
    with pytest.raises(TrainingError, match="attribute_head_init"):
        model_config("tiny", vocab_size=50, attribute_head_init="random")
