"""Checkpoints are safetensors + JSON: round trips, the trainer's state, and the old pickles refused
or converted."""

import json

import numpy as np
import pytest
import torch

from cirdata.vocab import build_tokenizer
from tests.cir_layouts import tiny_blip2
from training.checkpoint import (
    FORMAT,
    convert_legacy,
    file_kind,
    load_checkpoint,
    load_trainer_state,
    pack,
    read_meta,
    save_checkpoint,
    unpack,
)
from training.errors import TrainingError
from training.model import DQECIR, model_config
from training.trns import NegativeSampler


def _tiny():
    from encoder.text import TextTokenizer

    torch.manual_seed(0)
    raw = build_tokenizer()
    return DQECIR(model_config("tiny", vocab_size=raw.get_vocab_size())), TextTokenizer(raw, 24)


def _outputs(model, tok):
    torch.manual_seed(1)
    ids, mask = tok(["make it red", "a blue star instead"])
    with torch.no_grad():
        px = torch.randn(2, 3, model.cfg.image_size, model.cfg.image_size)
        return [model.encode_image(px), *model.compose(px, torch.from_numpy(ids), torch.from_numpy(mask))]


def test_round_trip_is_exact_and_half_is_small(tmp_path):
    model, tok = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model.eval(), tok, {"step": 7, "train_config": {"lr": 1e-3}})
    assert file_kind(path) == "safetensors" and not (tmp_path / "m.safetensors.tmp").exists()
    loaded, tok2, meta = load_checkpoint(path)
    assert meta["step"] == 7 and meta["train_config"] == {"lr": 1e-3} and meta["model_config"]["preset"] == "tiny"
    for a, b in zip(_outputs(model, tok), _outputs(loaded.eval(), tok2), strict=True):
        assert torch.equal(a, b)
    half = save_checkpoint(tmp_path / "h.safetensors", model, tok, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert load_checkpoint(half)[0].blip.query_tokens.dtype == torch.float32


def test_pretrained_architecture_is_rebuilt_from_the_checkpoint(tmp_path):
    """A model from a pretrained folder (dims not in any preset) loads back from its checkpoint alone."""
    from training.train import TrainConfig, build_model

    tiny_blip2(tmp_path / "hf")
    model, tok = build_model(TrainConfig(model="blip2", pretrained=str(tmp_path / "hf")))
    path = save_checkpoint(tmp_path / "m.safetensors", model.eval(), tok)
    (tmp_path / "hf" / "config.json").unlink()  # the folder is not needed any more
    loaded, tok2, meta = load_checkpoint(path)
    assert meta["model_config"]["blip2_config"]["num_query_tokens"] == 4
    for a, b in zip(_outputs(model, tok), _outputs(loaded.eval(), tok2), strict=True):
        assert torch.equal(a, b)


def test_trainer_state_packs_optimizer_sampler_and_rngs(tmp_path):
    model, tok = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.log_tau.sum().backward()
    opt.step()
    sampler = NegativeSampler([np.array([3, 1, 2]), np.array([], dtype=np.int64), np.array([9])], seed=4)
    sampler.draw(np.array([0, 2]))
    rng = np.random.default_rng(5)
    state = {"optimizer": opt.state_dict(), "sampler": sampler.state_dict(), "neg_rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "history": [{"loss": 0.5}], "step": 3}
    save_checkpoint(tmp_path / "c.safetensors", model, tok, state)
    back = load_trainer_state(tmp_path / "c.safetensors")
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    s2 = NegativeSampler.from_state_dict(back["sampler"])
    assert [z.tolist() for z in s2.zones] == [z.tolist() for z in sampler.zones]
    q = np.array([0, 0, 2, 0])
    assert s2.draw(q).tolist() == sampler.draw(q).tolist()
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = back["neg_rng"]
    assert rng2.integers(1 << 40) == rng.integers(1 << 40)
    assert torch.equal(back["torch_rng"], torch.get_rng_state()) and back["history"] == [{"loss": 0.5}]


def test_pack_is_json_and_unpack_inverts_it():
    tensors = {}
    obj = {"a": torch.arange(3), "b": [1, 2.5, None, "x", (np.int64(4), np.arange(2))], 7: {"c": True}}
    packed = pack(obj, tensors)
    json.dumps(packed)
    back = unpack(json.loads(json.dumps(packed)), tensors.__getitem__)
    assert torch.equal(back["a"], obj["a"]) and back[7] == {"c": True}
    assert back["b"][:4] == [1, 2.5, None, "x"] and back["b"][4][0] == 4 and back["b"][4][1].tolist() == [0, 1]
    with pytest.raises(TrainingError, match="cannot store a object"):
        pack({"x": object()}, {})


def _legacy(path, model, tok, **extra):
    payload = {"format": "dqe-cir-checkpoint/1", "model": {k: v.half() for k, v in model.state_dict().items()},
               "model_config": vars(model.cfg), "tokenizer": tok.to_str(), "train_config": {"lr": 1.0}, "step": 5}
    payload.update(extra)
    torch.save(payload, path)


def test_old_pickles_are_refused_then_converted(tmp_path):
    model, tok = _tiny()
    old = tmp_path / "old.pt"
    _legacy(old, model, tok)
    with pytest.raises(TrainingError, match=r"old pickle checkpoint.*convert_checkpoint.py"):
        load_checkpoint(old)
    new = convert_legacy(old, tmp_path / "new.safetensors")  # tensors and plain values only: no trust needed
    loaded, _, meta = load_checkpoint(new)
    assert meta["step"] == 5 and meta["converted_from"] == "old.pt"
    assert torch.equal(loaded.blip.query_tokens, model.blip.query_tokens.half().float())
    with pytest.raises(TrainingError, match="no optimizer state to resume from"):
        load_trainer_state(new)


class Opaque:  # a Python object in an old training state (the old sampler was one)
    pass


def test_a_pickle_with_objects_needs_trust(tmp_path):
    model, tok = _tiny()
    old = tmp_path / "run.pt"
    _legacy(old, model, tok, sampler=Opaque())
    with pytest.raises(TrainingError, match="--trust-pickle"):
        convert_legacy(old, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    convert_legacy(old, tmp_path / "x.safetensors", trust_pickle=True)
    assert read_meta(tmp_path / "x.safetensors")["step"] == 5


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(TrainingError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TrainingError, match=f"not a DQE-CIR checkpoint.*{FORMAT}"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_shipped_demo_model_is_safetensors_and_small():
    from app.commands.demo import SHIPPED_MODEL

    assert SHIPPED_MODEL.suffix == ".safetensors" and file_kind(SHIPPED_MODEL) == "safetensors"
    assert SHIPPED_MODEL.stat().st_size < 25e6
    model, _, meta = load_checkpoint(SHIPPED_MODEL)
    assert meta["model_config"]["preset"] == "demo" and meta["step"] > 0


def test_file_kind_is_not_fooled_by_a_header_length_ending_in_0x80(tmp_path):
    """A safetensors header of 0x..80 bytes starts with the byte a pickle starts with."""
    import json as _json

    header = _json.dumps({"__metadata__": {"pad": ""}}).encode()
    header += b" " * ((0x180 - len(header)) % 0x100 or 0x100)
    assert len(header) % 0x100 == 0x80
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert path.read_bytes()[:1] == b"\x80"
    assert file_kind(path) == "safetensors"
    (tmp_path / "old.pt").write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
    assert file_kind(tmp_path / "old.pt") == "pickle"
