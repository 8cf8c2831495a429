import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Blip2ForImageTextRetrieval

from cirdata.vocab import build_tokenizer
from encoder.text import TextTokenizer
from training.checkpoint import load_checkpoint, save_checkpoint
from training.errors import TrainingError
from training.model import DQECIR, blip2_config, build_blip2, maxsim, model_config
from training.train import TrainConfig, build_model


def _tiny_hf(tmp_path):
    cfg = model_config("tiny", vocab_size=build_tokenizer().get_vocab_size())
    torch.manual_seed(0)
    hf = Blip2ForImageTextRetrieval(blip2_config(cfg)).eval()
    with torch.no_grad():
        hf.query_tokens.normal_(0, 0.02)
    hf.save_pretrained(tmp_path)
    build_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return hf


def test_pretrained_dir_loads_and_image_tokens_match_transformers(tmp_path):
    hf = _tiny_hf(tmp_path)
    cfg = model_config("blip2", pretrained=str(tmp_path), attribute_weights="sigmoid")
    model = DQECIR(cfg, build_blip2(cfg)).eval()
    assert cfg.image_size == 32 and cfg.num_query_tokens == 4 and cfg.embed_dim == 32
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.randint(5, 50, (3, 7))
    with torch.no_grad():
        ours = model.encode_image(pixels)
        theirs = hf(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids)).image_embeds
    assert ours.shape == (3, 4, 32)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3, 4), atol=1e-5)


def test_build_model_blip2_preset_uses_the_checkpoint_tokenizer(tmp_path):
    _tiny_hf(tmp_path)
    model, tok = build_model(TrainConfig(model="blip2", model_overrides={"pretrained": str(tmp_path)}))
    assert model.cfg.freeze_vision and not any(p.requires_grad for p in model.blip.vision_model.parameters())
    ids, mask = tok(["make the red circle blue"])
    q_base, q_attrs, w = model.compose(torch.randn(1, 3, 32, 32), torch.from_numpy(ids), torch.from_numpy(mask))
    assert q_base.shape == (1, 32) and q_attrs.shape == (1, 2, 32) and w.shape == (1, 2)


def test_missing_pretrained_dir_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="no config.json"):
        build_blip2(model_config("blip2", pretrained=str(tmp_path / "nope")))
    with pytest.raises(TrainingError, match="unknown model preset"):
        model_config("huge")
    with pytest.raises(TrainingError, match="attribute_weights"):
        model_config("tiny", attribute_weights="maybe")


@pytest.mark.parametrize("mode", ["off", "global", "sigmoid", "softmax"])
def test_compose_outputs_and_weight_variants(mode):
    torch.manual_seed(0)
    model = DQECIR(model_config("tiny", vocab_size=300, attribute_weights=mode)).eval()
    ids = torch.randint(5, 200, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        q_base, q_attrs, w = model.compose(torch.randn(2, 3, 32, 32), ids, mask)
        q = model.fuse(q_base, q_attrs, w)
    assert torch.allclose(q_base.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(q_attrs.norm(dim=-1), torch.ones(2, 2), atol=1e-5), "sub-queries at q_base's scale"
    want = torch.nn.functional.normalize(q_base + w[:, :1] * q_attrs[:, 0] + w[:, 1:] * q_attrs[:, 1], dim=-1)
    assert torch.allclose(q, want, atol=1e-6)
    assert torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)
    if mode == "off":
        assert torch.equal(w, torch.zeros(2, 2)) and torch.allclose(q, q_base, atol=1e-6)
    if mode == "softmax":
        assert torch.allclose(w.sum(-1), torch.ones(2))
    if mode == "global":
        assert torch.equal(w[0], w[1])
    heads = model.attribute_heads
    assert not torch.allclose(heads["color"].weight, heads["shape"].weight), "heads must start different"


def test_attribute_set_is_configurable_and_checked():
    model = DQECIR(model_config("tiny", vocab_size=300, attributes=("color", "shape", "size"))).eval()
    ids = torch.randint(5, 200, (2, 6))
    with torch.no_grad():
        q_base, q_attrs, w = model.compose(torch.randn(2, 3, 32, 32), ids, torch.ones_like(ids))
    assert q_attrs.shape == (2, 3, 32) and w.shape == (2, 3)
    assert list(model.attribute_heads) == ["color", "shape", "size"]
    for bad in ((), ("color", "color"), ("Color",), ("two words",)):
        with pytest.raises(TrainingError, match="attributes must be"):
            model_config("tiny", attributes=bad)


def test_legacy_checkpoint_keeps_unnormalised_sub_queries(tmp_path):
    """A checkpoint from before the attribute set was configurable (heads color_head / shape_head, no
    subquery_norm key) loads under the new names and scores exactly as it was trained: unnormalised."""
    torch.manual_seed(0)
    model = DQECIR(model_config("tiny", vocab_size=300, subquery_norm=False)).eval()
    tok = TextTokenizer(build_tokenizer(), model.cfg.max_text_len)
    new = save_checkpoint(tmp_path / "new.safetensors", model, tok)
    with safe_open(str(new), framework="pt") as f:
        meta = f.metadata()
        tensors = {k.replace("attribute_heads.color.", "color_head.").replace("attribute_heads.shape.", "shape_head."):
                   f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["model_config"])
    del cfg["subquery_norm"], cfg["attributes"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**meta, "model_config": json.dumps(cfg)})
    old, _, _ = load_checkpoint(tmp_path / "old.safetensors")
    assert old.cfg.subquery_norm is False and old.cfg.attributes == ("color", "shape")
    ids = torch.randint(5, 200, (2, 6))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model.compose(px, ids, torch.ones_like(ids)), old.eval().compose(px, ids, torch.ones_like(ids)),
                        strict=True):
            assert torch.equal(a, b)


def test_fresh_init_is_not_degenerate():
    torch.manual_seed(0)
    model = DQECIR(model_config("tiny", vocab_size=300)).eval()
    with torch.no_grad():
        tokens = model.encode_image(torch.randn(2, 3, 32, 32))
    # query tokens re-initialised: the tokens of one image differ from each other
    assert (tokens[0, 0] - tokens[0, 1]).abs().max() > 1e-3
    assert model.blip.vision_model.embeddings.patch_embedding.weight.std() > 1e-3


def test_maxsim_is_max_over_tokens():
    q = torch.tensor([[1.0, 0.0]])
    tokens = torch.tensor([[[0.0, 1.0], [0.6, 0.8]], [[-1.0, 0.0], [0.0, -1.0]]])
    assert torch.allclose(maxsim(q, tokens), torch.tensor([[0.6, 0.0]]))


def test_pretrained_tokenizer_from_vocab_txt_when_there_is_no_tokenizer_json(tmp_path):
    """Some BLIP-2 folders ship the BERT vocab.txt and tokenizer_config.json only."""
    import json

    from training.model import pretrained_tokenizer

    vocab = build_tokenizer().get_vocab()
    (tmp_path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                "do_lower_case": True}))
    text = "Make the red circle blue"
    assert pretrained_tokenizer(tmp_path).encode(text).ids == build_tokenizer().encode(text).ids
    with pytest.raises(TrainingError, match="no tokenizer.json"):
        pretrained_tokenizer(tmp_path / "empty")
