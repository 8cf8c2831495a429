import json
import shutil

import pytest

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
    model, tok, payload = load_checkpoint(tmp_path / "run" / "last.pt")
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
    train(b)  # resumes from b/last.pt
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


def test_caption_pretraining_and_grad_accumulation_run(synth_small, tmp_path):
    """The pretraining stage and gradient accumulation: a few steps each, finite falling-or-flat loss."""
    pre = TrainConfig(root=str(synth_small), out=str(tmp_path / "pre"), model="tiny", task="caption", max_steps=4,
                      batch_size=16, lr=1e-3, warmup_steps=1, progress=False)
    train(pre)
    losses = _losses(tmp_path / "pre")
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)
    ft = TrainConfig(root=str(synth_small), out=str(tmp_path / "ft"), model="tiny", init=str(tmp_path / "pre/last.pt"),
                     grad_accum=2, batch_size=8, max_steps=3, eval_every=0, progress=False)
    result = train(ft)
    assert result["steps"] == 3 and len(_losses(tmp_path / "ft")) == 3


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    from training.train import lr_at

    cfg = TrainConfig(lr=1e-3, warmup_steps=100, min_lr_ratio=0.01)
    assert lr_at(0, 1000, cfg) == pytest.approx(1e-5)
    assert lr_at(99, 1000, cfg) == pytest.approx(1e-3)
    assert lr_at(1000, 1000, cfg) == pytest.approx(1e-5)
    # a schedule shorter than ten warm-ups still decays: the warm-up shrinks to a tenth of it
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3) and lr_at(100, 100, cfg) == pytest.approx(1e-5)


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
    result = train(cfg)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    per_epoch = len(json.loads((synth_small / "captions" / "cap.synth.train.json").read_text())) // 16
    assert len(steps) > per_epoch, "the budget, not --epochs, sets the length"
    assert abs(result["planned_steps"] - result["steps"]) <= 2, result
    assert max(s["lr"] for s in steps) == pytest.approx(1e-3, rel=0.05)
    assert steps[-1]["lr"] < 0.05 * 1e-3, "the cosine has decayed by the end of the budget"
    elapsed = load_checkpoint(tmp_path / "run" / "last.pt")[2]["elapsed_s"]
    assert 0.9 * 60 <= elapsed <= 1.1 * 60, "the whole budget is used, and no more"
