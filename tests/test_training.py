import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.errors import TrainingError
from training.train import TrainConfig, load_checkpoint, load_train_config, train


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "step"]


@pytest.mark.slow
def test_tiny_model_learns_on_the_small_synthetic_set(synth_small, tmp_path):
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "run"), model="tiny", epochs=5, batch_size=32,
                      lr=1e-3, warmup_steps=10, img_set_negatives=1, eval_every=0, seed=0, progress=False)
    result = train(cfg)
    losses = _losses(tmp_path / "run")
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3, "the loss must fall"
    gallery = json.loads((synth_small / "image_splits" / "split.synth.val.json").read_text())
    random_r10, random_r50 = 100 * 10 / (len(gallery) - 1), 100 * 50 / (len(gallery) - 1)
    assert result["R@10"] > 2 * random_r10, result
    assert result["R@50"] > 2.5 * random_r50, result
    model, tok, payload = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert payload["step"] == result["steps"] == 90


def test_resume_continues_the_same_loss_curve(synth_small, tmp_path):
    common = dict(root=str(synth_small), model="tiny", epochs=2, batch_size=64, lr=1e-3, warmup_steps=2,
                  loss="pairwise", negatives="trns", trns={"bounds": "quantile", "low": 0.05, "high": 0.3},
                  lambda_margin=0.5, lambda_attr=0.2, eval_every=0, seed=1, progress=False)
    a = TrainConfig(out=str(tmp_path / "a"), **common)
    train(a)
    b = TrainConfig(out=str(tmp_path / "b"), **common)
    train(b, stop_after=12)  # interrupted after the TRNS rebuild of epoch 1 (9 steps an epoch)
    assert len(_losses(tmp_path / "b")) == 12
    train(b)  # resumes from b/last.safetensors
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(la) == len(lb) == 18
    assert lb == pytest.approx(la, abs=1e-5)


def test_resume_with_another_config_is_refused(synth_small, tmp_path):
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "r"), model="tiny", max_steps=1, eval_every=0,
                      batch_size=8, progress=False)
    train(cfg)
    other = TrainConfig(**{**cfg.__dict__, "lr": 1.0})
    with pytest.raises(TrainingError, match="another config"):
        train(other)
    shutil.rmtree(tmp_path / "r")


def test_bad_config_and_checkpoint_are_clear_errors(tmp_path):
    (tmp_path / "c.json").write_text('{"epochs": 2, "lossy": 1}')
    with pytest.raises(TrainingError, match=r"unknown training config keys \['lossy'\]"):
        load_train_config(tmp_path / "c.json")
    with pytest.raises(TrainingError, match="loss must be"):
        load_train_config(None, loss="hinge")
    with pytest.raises(TrainingError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_phrasing_noise_reaches_the_training_texts_and_only_on_the_synthetic_set(synth_small, tmp_path,
                                                                                monkeypatch):
    import training.train as tr

    seen: list[tuple[str, str]] = []
    real = tr.noisy_phrasing

    def spy(text, rng, p, fillers):
        out = real(text, rng, p, fillers)
        seen.append((text, out))
        return out

    monkeypatch.setattr(tr, "noisy_phrasing", spy)
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "n"), model="tiny", max_steps=2, eval_every=0,
                      batch_size=16, phrasing_noise=0.5, progress=False)
    train(cfg)
    assert len(seen) == 32 and sum(a != b for a, b in seen) > 16
    with pytest.raises(TrainingError, match="phrasing_noise needs data 'synth'.*not data 'cirr'"):
        load_train_config(None, data="cirr", phrasing_noise=0.2)
    with pytest.raises(TrainingError, match="task 'caption'"):
        load_train_config(None, task="caption", phrasing_noise=0.2)
    for bad in (1.5, None, "0.2"):
        with pytest.raises(TrainingError, match="phrasing_noise is a probability"):
            load_train_config(None, settings={"phrasing_noise": bad})


def test_caption_pretraining_and_grad_accumulation_run(synth_small, tmp_path):
    """The pretraining stage and gradient accumulation: a few steps each, finite falling-or-flat loss."""
    pre = TrainConfig(root=str(synth_small), out=str(tmp_path / "pre"), model="tiny", task="caption", max_steps=4,
                      batch_size=16, lr=1e-3, warmup_steps=1, progress=False)
    train(pre)
    losses = _losses(tmp_path / "pre")
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    ft = TrainConfig(root=str(synth_small), out=str(tmp_path / "ft"), model="tiny",
                     init=str(tmp_path / "pre" / "last.safetensors"), grad_accum=2, batch_size=8, max_steps=3,
                     eval_every=0, progress=False)
    result = train(ft)
    assert result["steps"] == 3 and len(_losses(tmp_path / "ft")) == 3


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    from training.train import lr_at

    cfg = TrainConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.01)
    assert lr_at(0, 1000, cfg) == pytest.approx(1e-5)
    assert lr_at(99, 1000, cfg) == pytest.approx(1e-3)
    assert lr_at(1000, 1000, cfg) == pytest.approx(1e-5)
    # a schedule shorter than five warm-ups still decays: the warm-up shrinks to a fifth of it
    assert lr_at(19, 100, cfg) == pytest.approx(1e-3) and lr_at(100, 100, cfg) == pytest.approx(1e-5)


def test_budget_total_steps():
    from training.train import budget_total_steps

    assert budget_total_steps(10, elapsed_s=20, budget_s=60, seconds_per_step=2) == 30
    assert budget_total_steps(10, elapsed_s=70, budget_s=60, seconds_per_step=2) == 11  # over: one more at most
    assert budget_total_steps(10, elapsed_s=0, budget_s=600, seconds_per_step=1, cap=50) == 50


def test_max_minutes_lays_the_schedule_over_the_budget(synth_small, tmp_path, monkeypatch):
    """A fake clock (0.25 s per reading) makes the pace deterministic: the run must end when the
    budget does, with the learning rate at the end of its cosine, whatever --epochs says."""
    import training.train as tr

    clock = iter(range(10**9))
    monkeypatch.setattr(tr.time, "time", lambda: next(clock) * 0.25)
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "run"), model="tiny", epochs=1, batch_size=16,
                      lr=1e-3, warmup_steps=5, max_minutes=1.0, eval_every=0, eval_max_queries=10, seed=0,
                      progress=False)
    steps = _ran_to_the_end_of_the_budget(train(cfg), tmp_path / "run", cfg)
    per_epoch = len(json.loads((synth_small / "captions" / "cap.synth.train.json").read_text())) // 16
    assert len(steps) > per_epoch, "the budget, not --epochs, sets the length"
    assert max(s["lr"] for s in steps) == pytest.approx(1e-3, rel=0.05)


def _ran_to_the_end_of_the_budget(result: dict, run: Path, cfg: TrainConfig) -> list[dict]:
    """The checks every time-budgeted run must pass: it ends where its schedule does, with the cosine
    decayed and the whole --max-minutes spent, no more. Returns the run's step events."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    assert abs(result["planned_steps"] - result["steps"]) <= 2, result
    assert steps[-1]["lr"] < 0.05 * cfg.lr, "the cosine has decayed by the end of the budget"
    elapsed = load_checkpoint(run / "last.safetensors")[2]["elapsed_s"]
    budget = cfg.max_minutes * 60
    assert 0.9 * budget <= elapsed <= 1.1 * budget, "the whole budget is used, and no more"
    return steps


def test_max_minutes_leaves_a_long_mining_out_of_the_step_pace(synth_small, tmp_path, monkeypatch):
    """A TRNS mining that takes a third of the budget before the first step must come out of the time
    left, not inflate the measured step time (that ended a 12-minute DQE-CIR run after 41 steps)."""
    import training.train as tr

    now = [0.0]

    def tick() -> float:
        now[0] += 0.25
        return now[0]

    def slow_mining(*args, **kwargs):
        now[0] += 20.0
        return mine_negatives(*args, **kwargs)

    mine_negatives = tr.mine_negatives
    monkeypatch.setattr(tr.time, "time", tick)
    monkeypatch.setattr(tr, "mine_negatives", slow_mining)
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "run"), model="tiny", loss="pairwise",
                      negatives="trns", trns_warmup_epochs=0, trns_rebuild_every=100, epochs=100, batch_size=16,
                      lr=1e-3, warmup_steps=5, max_minutes=1.0, eval_every=0, eval_max_queries=10, seed=0,
                      progress=False)
    _ran_to_the_end_of_the_budget(train(cfg), tmp_path / "run", cfg)


# --- the paper-scale recipes -----------------------------------------------------------------------
def test_recipes_carry_methods_training_recipe(tmp_path):
    """METHOD.md: batch 32, AdamW wd 0.05, cosine to lr/100, ViT frozen (the blip2 preset), FashionIQ 30
    epochs at 5e-6, CIRR 50 at 1e-5, TRNS every epochs // 6 after a warm-up of one interval."""
    from training.model import PRESETS

    fiq, cirr = load_train_config("fashioniq-blip2"), load_train_config("cirr-blip2")
    for cfg in (fiq, cirr):
        assert (cfg.batch_size, cfg.weight_decay, cfg.min_lr_ratio, cfg.model) == (32, 0.05, 0.01, "blip2")
        assert (cfg.loss, cfg.negatives, cfg.trns_warmup_epochs, cfg.trns_pool) == ("pairwise", "trns", None, "auto")
    assert PRESETS["blip2"]["freeze_vision"]
    assert (fiq.data, fiq.epochs, fiq.lr) == ("fashioniq", 30, 5e-6)
    assert (cirr.data, cirr.epochs, cirr.lr) == ("cirr", 50, 1e-5)
    from training.config import RECIPES

    assert load_train_config(RECIPES / "cirr-blip2.json", lr=2e-5, epochs=None).lr == 2e-5  # a path; flags override
    with pytest.raises(TrainingError, match="no recipe 'cirr-blip3'.*cirr-blip2"):
        load_train_config("cirr-blip3")
    with pytest.raises(TrainingError, match="--pretrained loads a BLIP-2"):
        load_train_config("demo", pretrained="x")


def test_cli_recipe_and_pretrained_flags(tmp_path, capsys):
    """`dqe-cir train --recipe NAME --pretrained DIR --dry-run`: the recipe with the flags on top."""
    from app.cli import main
    from tests.cir_layouts import cirr, tiny_blip2

    root, hf = cirr(tmp_path / "cirr"), tiny_blip2(tmp_path / "hf")
    assert main(["train", "--recipe", "cirr-blip2", "--root", str(root), "--pretrained", str(hf), "--batch-size",
                 "8", "--set", "trns_chunk=64", "--dry-run", "--json", "--gpus", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["recipe"]["pretrained"] == str(hf) and r["recipe"]["batch_size"] == 8 and r["recipe"]["trns_chunk"] == 64
    assert r["data"]["queries"] == 8 and r["data"]["pools"] == [24]  # CIRR's pool: every training image
    assert r["estimates"][0]["gpus"] == 2 and r["estimates"][0]["steps_per_epoch"] == 1


def test_cli_lists_every_loss_and_recipe():
    from training import cli
    from training.config import LOSSES, RECIPES, recipe_names

    assert cli.LOSS_CHOICES == LOSSES and cli.RECIPES == RECIPES and "demo-both" in recipe_names()


def test_set_null_unsets_a_recipe_key_and_a_bad_set_is_refused():
    """`--set max_steps=null` unsets the recipe's step count (so --max-minutes lays the schedule), where
    an absent flag leaves the recipe's value; `--set` without KEY= is a clear error, not a silent no-op."""
    import argparse

    from training.cli import add_train_args, parse_settings, train_overrides

    parser = argparse.ArgumentParser()
    add_train_args(parser)

    def config(*flags):
        args = parser.parse_args(["--recipe", "demo-finetune", *flags])
        return load_train_config(args.recipe, parse_settings(args.set), **train_overrides(args))

    assert config().max_steps == 300
    unset = config("--set", "max_steps=null", "--max-minutes", "5")
    assert (unset.max_steps, unset.max_minutes) == (None, 5)
    assert config("--set", "trns_pool=all", "--set", 'trns={"low": 0.1}').trns == {"low": 0.1}
    with pytest.raises(TrainingError, match="--set 'max_steps'.*KEY=JSON"):
        parse_settings(["max_steps"])


def test_dry_run_counts_and_estimates_on_the_real_fashioniq_annotations(tmp_path):
    """No image is read (there are none): parameters, queries, pools and steps are exact; the memory
    estimate of the activations is within a factor 2 of what autograd really saves (measured here on
    CPU in fp32, the formula's bytes doubled)."""
    from tests.cir_layouts import tiny_blip2
    from tests.conftest import shared_data
    from training.dryrun import dry_run
    from training.train import build_model

    hf = tiny_blip2(tmp_path / "hf")
    cfg = load_train_config("fashioniq-blip2", root=str(shared_data("fashioniq")), pretrained=str(hf))
    r = dry_run(cfg, gpus=1)
    model, _ = build_model(cfg)
    assert r["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert r["parameters"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert r["data"]["queries"] == 18000 and r["data"]["pools"] == [5985, 5988, 6027]  # each category's targets
    e = r["estimates"][0]
    assert e["steps_per_epoch"] == 18000 // 32 and e["total_steps"] == 30 * 562 and e["trns_rebuilds"] == 5
    assert e["gpu_memory_gib"]["peak_training"] > e["gpu_memory_gib"]["weights_grads_adamw"] > 0


def _saved_bytes(model, b: int, text_len: int) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one pairwise step (fp32, CPU)."""
    seen: dict[int, int] = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    size = model.cfg.image_size
    ids = torch.randint(5, 50, (b, text_len))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        q = model.compose(torch.randn(b, 3, size, size), ids, torch.ones_like(ids))[0]
        t = model.encode_image(torch.randn(2 * b, 3, size, size))
        (q[:, None] * t[:b]).sum().backward()
    return sum(seen.values())


def test_activation_estimate_is_within_a_factor_two_of_autograd(tmp_path):
    """Measured here: the estimate is 0.98x what autograd keeps, 0.74x with checkpointing, which keeps
    a tenth of it."""
    from training.dryrun import model_dims, qformer_act
    from training.model import DQECIR, model_config

    cfg = model_config("blip2", image_size=64, patch_size=8, vision_width=96, vision_layers=2, vision_heads=4,
                       qformer_width=96, qformer_layers=4, qformer_heads=4, cross_attention_frequency=2,
                       num_query_tokens=8, embed_dim=32, max_text_len=24, vocab_size=300)
    measured = {}
    for ckpt in (False, True):
        model = DQECIR(cfg).train()
        model.set_qformer_checkpointing(ckpt)
        d, b = model_dims(model), 8
        estimate = 2 * (b * qformer_act(d, d.queries + d.text, ckpt) + 2 * b * qformer_act(d, d.queries, ckpt)
                        + 3 * b * d.s_v * d.h_v * 2)  # fp32: twice the bf16 bytes
        measured[ckpt] = _saved_bytes(model, b, d.text)
        assert 0.5 < estimate / measured[ckpt] < 2, (ckpt, estimate, measured[ckpt])
    assert measured[True] < 0.2 * measured[False]


def test_grad_checkpointing_gives_the_same_loss_and_gradients(synth_small, tmp_path):
    from cirdata.tables import load_cir_data
    from training.train import Trainer, build_model

    cfg = TrainConfig(root=str(synth_small), model="tiny", loss="pairwise", negatives="random", batch_size=8,
                      lambda_attr=0.2, progress=False)
    data = load_cir_data("synth", synth_small, "train", 32, progress=False)
    grads = []
    for ckpt in (False, True):
        model, tok = build_model(TrainConfig(**{**cfg.__dict__, "grad_checkpointing": ckpt}))
        trainer = Trainer(TrainConfig(**{**cfg.__dict__, "grad_checkpointing": ckpt}), data, None, model, tok)
        assert model.blip.qformer.encoder.layer[0].gradient_checkpointing == ckpt
        loss, _ = trainer.loss_cir(np.arange(8))
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1], strict=True))


def test_bf16_autocast_runs_on_cpu_too(synth_small, tmp_path):
    """The GPU's precision path (bf16 autocast) is the CPU's code with one flag: two steps, finite loss."""
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "bf16"), model="tiny", precision="bf16",
                      batch_size=8, max_steps=2, eval_every=0, eval_max_queries=10, progress=False)
    assert train(cfg)["steps"] == 2
    losses = _losses(tmp_path / "bf16")
    assert len(losses) == 2 and all(0 < v < 20 for v in losses)


def test_fashioniq_negatives_come_from_the_querys_category(tmp_path):
    """METHOD.md: the pool is the training targets of the same category, for the warm-up's random
    negatives and for the mined mid-zones alike; never the reference or the target."""
    from cirdata.tables import load_cir_data
    from tests.cir_layouts import fashioniq
    from training.train import Trainer, build_model

    root = fashioniq(tmp_path / "fiq", per_category=16, splits=("train",))
    cfg = TrainConfig(data="fashioniq", root=str(root), model="tiny", loss="pairwise", batch_size=4, progress=False,
                      trns={"bounds": "quantile", "low": 0.0, "high": 1.0})
    data = load_cir_data("fashioniq", root, "train", 32, progress=False)
    model, tok = build_model(cfg)
    trainer = Trainer(cfg, data, None, model, tok)
    q = np.arange(len(data.ref))
    for _ in range(20):
        neg = trainer.negatives(q)
        assert (data.group[neg] == data.query_group).all()
        assert not (neg == data.tgt).any() and not (neg == data.ref).any()
        assert set(neg.tolist()) <= set(data.tgt.tolist())
    torch.manual_seed(0)
    trainer.rebuild_mid_zones()
    for i, zone in enumerate(trainer.sampler.zones):
        assert len(zone) and (data.group[zone] == data.query_group[i]).all()
        assert data.tgt[i] not in zone and data.ref[i] not in zone


OBJECTIVE = ("loss", "negatives", "trns", "trns_pool", "lambda_pair", "pair_tau", "lambda_margin", "margin",
             "lambda_attr", "img_set_negatives", "phrasing_noise", "attribute_probes", "lambda_invariance",
             "lambda_decorrelation", "lambda_weight_labels")


def _trainer(synth_small, tmp_path, **kw):
    from cirdata.tables import load_cir_data
    from training.train import Trainer, build_model

    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path), model="tiny", batch_size=8, eval_every=0,
                      progress=False, **kw)
    model, tok = build_model(cfg)
    data = load_cir_data("synth", synth_small, "train", model.cfg.image_size, progress=False)
    return Trainer(cfg, data, None, model, tok)


def _loss_of_batch(trainer, seed: int = 0) -> float:
    import random

    trainer.neg_rng, trainer.text_rng = np.random.default_rng(seed), random.Random(seed)
    with torch.no_grad():
        return float(trainer.loss_cir(np.arange(8))[0])


def test_pairwise_term_has_a_temperature_of_its_own(synth_small, tmp_path):
    """The pairwise KL divides by cfg.pair_tau, not by the contrastive loss's learned temperature."""
    import math

    t = _trainer(synth_small, tmp_path, loss="pairwise", negatives="random", pair_tau=0.1)
    t.model.eval()
    with torch.no_grad():
        t.model.log_tau.fill_(math.log(0.01))
    a = _loss_of_batch(t)
    with torch.no_grad():
        t.model.log_tau.fill_(math.log(0.5))
    assert _loss_of_batch(t) == pytest.approx(a, abs=1e-6)
    t.cfg.pair_tau = 0.02
    assert _loss_of_batch(t) != pytest.approx(a, abs=1e-3)
    with pytest.raises(TrainingError, match="pair_tau"):
        TrainConfig(pair_tau=0).validate()


def test_attribute_term_gets_each_attribute_s_img_set_twin(synth_small, tmp_path):
    """On the synthetic set the color head's negative differs from the target in color alone, the shape
    head's in shape alone; a query without such a twin gets no term for that attribute."""
    from training.attributes import twin_attribute

    t = _trainer(synth_small, tmp_path, lambda_attr=0.5, img_set_negatives=1)
    keys, names = t.train.scene_keys, t.model.cfg.attributes
    twins = t.attr_twins
    assert twins.shape == (len(t.train.ref), 2) and (twins >= 0).mean() > 0.3
    for i in range(50):
        for j, name in enumerate(names):
            if twins[i, j] >= 0:
                assert twin_attribute(keys[twins[i, j]], keys[t.train.tgt[i]]) == name
                assert twins[i, j] in t.train.members[i]
    cols, at = t.attribute_columns(np.arange(8), None)
    assert ((at >= 0) == (twins[:8] >= 0)).all() and cols.tolist() == twins[:8][twins[:8] >= 0].tolist()
    assert _loss_of_batch(t) > _loss_of_batch(_trainer(synth_small, tmp_path / "b", img_set_negatives=1))


@pytest.mark.parametrize("loss", ["contrastive", "pairwise", "both"])
def test_each_attribute_term_scores_against_its_own_twin_image(synth_small, tmp_path, monkeypatch, loss):
    """Inside loss_cir: the tokens each attribute term takes as its negative are those of that attribute's
    img_set twin, and a query without a twin gets no term (not some other column's image)."""
    import training.train as train_module

    t = _trainer(synth_small, tmp_path, loss=loss, negatives="random", lambda_attr=0.5, img_set_negatives=2)
    real_forward = t.forward

    def forward(ref, texts, cols, extra=None):  # every column's tokens carry its image index
        parts, tokens, tau = real_forward(ref, texts, cols, extra)
        return parts, torch.from_numpy(np.asarray(cols, np.float32))[:, None, None].expand_as(tokens), tau

    seen = {}

    def spy(q_attrs, t_pos, tokens, neg_at, tau, per_attribute):
        seen["images"] = np.where(neg_at >= 0, tokens[np.maximum(neg_at, 0), 0, 0].numpy(), -1).astype(int)
        return q_attrs.new_zeros(())

    monkeypatch.setattr(t, "forward", forward)
    monkeypatch.setattr(train_module, "attribute_loss", spy)
    without = np.flatnonzero((t.attr_twins < 0).any(axis=1))  # add / remove edits have no such twin
    qi = np.concatenate([without[:4], np.flatnonzero((t.attr_twins >= 0).all(axis=1))[:4]])
    with torch.no_grad():
        t.loss_cir(qi)
    want = t.attr_twins[qi]
    assert (want < 0).any() and (want >= 0).any(), "the batch should hold queries with and without twins"
    assert seen["images"].tolist() == want.tolist()


def test_both_loss_mines_and_adds_the_pairwise_terms_to_the_contrastive_one(synth_small, tiny_trained, tmp_path):
    cfg = TrainConfig(root=str(synth_small), out=str(tmp_path / "both"), init=str(tiny_trained), loss="both",
                      negatives="trns", trns={"bounds": "quantile", "low": 0.0, "high": 0.05}, trns_pool="all",
                      trns_warmup_epochs=0, img_set_negatives=2, lambda_margin=0.5, lambda_attr=0.2, max_steps=3,
                      batch_size=16, eval_every=0, progress=False, model_overrides={"subquery_norm": True})
    assert train(cfg, resume=False)["steps"] == 3
    events = [json.loads(line) for line in (tmp_path / "both" / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "trns_rebuild"
    steps = [e for e in events if e["event"] == "step"]
    assert all({"kl", "margin", "attr", "delta"} <= set(e) for e in steps)
    assert all(e["loss"] > e["kl"] + 0.5 * e["margin"] for e in steps)  # the contrastive part is in there too


def test_demo_dqe_recipe_runs_dqe_cir_from_a_trained_model(synth_small, tiny_trained, tmp_path):
    """DQE-CIR's last stage for the demo model: from a trained checkpoint it mines TRNS mid-zones at
    once (no random-negative warm-up) and trains with the pairwise objective."""
    cfg = load_train_config("demo-dqe", root=str(synth_small), out=str(tmp_path / "ft"), init=str(tiny_trained),
                            max_steps=3, progress=False)
    assert train(cfg, resume=False)["steps"] == 3
    events = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "trns_rebuild" and events[0]["epoch"] == 0
    assert all("delta" in e for e in events if e["event"] == "step")


def test_demo_fine_tunes_with_the_shipped_models_last_stage():
    """The README's promise: `make demo` fine-tunes with the objective the shipped model's last stage used."""
    from app.commands.demo import FINETUNE_RECIPE, SHIPPED_MODEL
    from training.checkpoint import read_meta

    shipped = {**TrainConfig().__dict__, **read_meta(SHIPPED_MODEL)["train_config"]}  # keys added since: defaults
    recipe = load_train_config(FINETUNE_RECIPE)
    assert {k: shipped[k] for k in OBJECTIVE} == {k: getattr(recipe, k) for k in OBJECTIVE}


def test_demo_finetune_is_the_recipe_over_a_time_budget(tmp_path):
    from app.commands.demo import FINETUNE_RECIPE, finetune_config

    cfg = finetune_config(tmp_path / "data", tmp_path / "run", tmp_path / "m.safetensors", 1.5, 3)
    recipe = load_train_config(FINETUNE_RECIPE)
    assert (cfg.max_minutes, cfg.max_steps, cfg.seed, cfg.init) == (1.5, None, 3, str(tmp_path / "m.safetensors"))
    assert {k: getattr(cfg, k) for k in OBJECTIVE} == {k: getattr(recipe, k) for k in OBJECTIVE}
