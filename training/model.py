"""DQE-CIR on BLIP-2 modules from transformers (see METHOD.md).

encode_image(pixels)                  -> T [B, Q, D], per-token L2-normalised (catalog side)
compose(ref_pixels, input_ids, mask)  -> q_base [B, D] (normalised), q_attrs [B, A, D], weights [B, A]
fuse(q_base, q_attrs, weights)        -> q [B, D] = normalize(q_base + sum_a w_a q_a)
maxsim(q, T)                          -> s [B, N] = max_k <q, T_k>

A = len(cfg.attributes): one sub-query head and one learnable weight per attribute (color and shape by
default, as the paper; a recipe may name others, e.g. size or material). With cfg.subquery_norm each
sub-query is L2-normalised like q_base (scale parity: un-normalised heads had norms ~9 against 1 and
drowned q_base); checkpoints from before it load with subquery_norm False and score as they did.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig, Blip2VisionConfig

from encoder.preprocess import CLIP_MEAN, CLIP_STD
from training.errors import TrainingError

WEIGHT_MODES = ("off", "global", "sigmoid", "softmax")
FOLDED_GATE_BIAS = -4.0  # fold_attribute_heads: the new heads' weights start at sigmoid(-4) = 0.02
DEFAULT_ATTRIBUTES = ("color", "shape")


@dataclass
class ModelConfig:
    preset: str = "demo"
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    qformer_width: int = 128
    qformer_layers: int = 3
    qformer_heads: int = 4
    cross_attention_frequency: int = 1
    num_query_tokens: int = 8
    embed_dim: int = 128
    vocab_size: int = 0  # taken from the tokenizer
    max_text_len: int = 40
    dropout: float = 0.0
    attribute_weights: str = "sigmoid"  # off | global | sigmoid | softmax
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES  # one sub-query head and weight each
    subquery_norm: bool = True  # [ours] L2-normalise each sub-query before the weighted sum
    attribute_head_noise: float = 0.02
    attribute_head_init: str = "copy"  # copy: text_projection + noise (the form before) | fresh: nn.Linear's init
    freeze_vision: bool = False
    pretrained: str | None = None  # local save_pretrained dir of a Blip2ForImageTextRetrieval
    blip2_config: dict | None = None  # a pretrained model's whole transformers config (rebuilds it from a checkpoint)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.attribute_weights not in WEIGHT_MODES:
            raise TrainingError(f"attribute_weights must be one of {WEIGHT_MODES}, not {self.attribute_weights!r}")
        if self.image_size % self.patch_size:
            raise TrainingError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.attribute_head_init not in ("copy", "fresh"):
            raise TrainingError(f"attribute_head_init must be 'copy' or 'fresh', not {self.attribute_head_init!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.attributes = check_attributes(self.attributes)


def check_attributes(names) -> tuple[str, ...]:
    """Attribute names as a tuple: at least one, distinct, lower-case identifiers (they name ONNX
    outputs, JSON keys and command-line flags)."""
    names = tuple(names)
    bad = [n for n in names if not (isinstance(n, str) and n.isidentifier() and n == n.lower())]
    if not names or bad or len(set(names)) != len(names):
        raise TrainingError(f"attributes must be distinct lower-case names such as ['color', 'shape', 'size'], "
                            f"got {list(names)!r}")
    return names


PRESETS = {
    # For tests: seconds on a CPU.
    "tiny": dict(image_size=32, patch_size=8, vision_width=64, vision_layers=1, vision_heads=4, qformer_width=64,
                 qformer_layers=1, qformer_heads=4, num_query_tokens=4, embed_dim=32, max_text_len=24),
    # The shipped model (2.1M parameters): about 1.8 s per step of 64 queries on 2 CPU cores.
    "demo": dict(),
    # The real one: dims come from the checkpoint in `pretrained`; the ViT is frozen as in the paper.
    "blip2": dict(image_size=224, patch_size=14, freeze_vision=True, num_query_tokens=32, embed_dim=256,
                  max_text_len=77),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise TrainingError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = set(ModelConfig.__dataclass_fields__)
    bad = set(overrides) - known
    if bad:
        raise TrainingError(f"unknown model config keys {sorted(bad)}; known: {sorted(known)}")
    return ModelConfig(preset=preset, **{**PRESETS[preset], **overrides})


def blip2_config(cfg: ModelConfig) -> Blip2Config:
    """A from-scratch BLIP-2 config with the fresh-init traps fixed (ARCHITECTURE.md)."""
    vision = Blip2VisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        initializer_range=0.02, attention_dropout=cfg.dropout,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.qformer_width, num_hidden_layers=cfg.qformer_layers,
        num_attention_heads=cfg.qformer_heads, intermediate_size=4 * cfg.qformer_width,
        cross_attention_frequency=cfg.cross_attention_frequency, encoder_hidden_size=cfg.vision_width,
        max_position_embeddings=max(64, cfg.max_text_len), hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, use_qformer_text_input=True, pad_token_id=0,
    )
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                       num_query_tokens=cfg.num_query_tokens, image_text_hidden_size=cfg.embed_dim,
                       initializer_range=0.02)


def build_blip2(cfg: ModelConfig) -> Blip2ForImageTextRetrieval:
    if cfg.pretrained:
        path = pretrained_dir(cfg.pretrained)
        blip = Blip2ForImageTextRetrieval.from_pretrained(str(path), dtype=torch.float32)
        adopt_blip2_config(cfg, blip.config)
        return blip
    if cfg.blip2_config:  # a pretrained architecture whose weights come from a checkpoint
        return Blip2ForImageTextRetrieval(Blip2Config.from_dict(cfg.blip2_config))
    blip = Blip2ForImageTextRetrieval(blip2_config(cfg))
    with torch.no_grad():  # zeros would make every query token identical (and max-over-tokens moot)
        blip.query_tokens.normal_(0.0, 0.02)
    return blip


def pretrained_dir(path: str | Path) -> Path:
    """A local save_pretrained folder (never a hub name: nothing is downloaded)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path}: no config.json; expected a local save_pretrained folder of "
                            "Blip2ForImageTextRetrieval, e.g. Salesforce/blip2-itm-vit-g downloaded there "
                            "(docs/REPRODUCE.md), or pass --pretrained DIR")
    return path


def adopt_blip2_config(cfg: ModelConfig, config: Blip2Config) -> None:
    """Take the dims of a pretrained model into `cfg` (and its whole config, to rebuild it later)."""
    qc, vc = config.qformer_config, config.vision_config
    cfg.vision_width, cfg.qformer_width = vc.hidden_size, qc.hidden_size
    cfg.vision_layers, cfg.qformer_layers = vc.num_hidden_layers, qc.num_hidden_layers
    cfg.vision_heads, cfg.qformer_heads = vc.num_attention_heads, qc.num_attention_heads
    cfg.cross_attention_frequency = qc.cross_attention_frequency
    cfg.image_size, cfg.patch_size = vc.image_size, vc.patch_size
    cfg.num_query_tokens, cfg.embed_dim = config.num_query_tokens, config.image_text_hidden_size
    cfg.vocab_size = qc.vocab_size
    cfg.max_text_len = min(cfg.max_text_len, qc.max_position_embeddings)  # text positions end there
    cfg.blip2_config = json.loads(config.to_json_string())


class DQECIR(nn.Module):
    def __init__(self, cfg: ModelConfig, blip: Blip2ForImageTextRetrieval | None = None):
        super().__init__()
        self.cfg = cfg
        self.blip = blip if blip is not None else build_blip2(cfg)
        h, d = self.blip.config.qformer_config.hidden_size, self.blip.config.image_text_hidden_size
        # Attribute heads start from text_projection plus different noise: identical heads would
        # receive identical gradients and stay identical.
        a = len(cfg.attributes)
        self.attribute_heads = nn.ModuleDict({name: nn.Linear(h, d) for name in cfg.attributes})
        with torch.no_grad():
            for head in self.attribute_heads.values():
                head.weight.copy_(self.blip.text_projection.weight)
                head.weight.add_(torch.randn_like(head.weight) * cfg.attribute_head_noise)
                head.bias.copy_(self.blip.text_projection.bias)
        if cfg.attribute_head_init == "fresh":
            self.reset_attribute_heads()
        self.weight_gate = nn.Linear(h, a)  # text-conditioned (sigmoid / softmax)
        nn.init.normal_(self.weight_gate.weight, std=0.02)
        nn.init.zeros_(self.weight_gate.bias)
        self.global_weights = nn.Parameter(torch.zeros(a))  # the "global" variant, pre-sigmoid
        self.log_tau = nn.Parameter(torch.tensor(math.log(0.07)))
        if cfg.freeze_vision:
            for p in self.blip.vision_model.parameters():
                p.requires_grad_(False)

    def reset_attribute_heads(self) -> None:
        """Fresh attribute heads (nn.Linear's own init, zero bias) instead of copies of text_projection:
        copies start where q_base is and, measured, never leave it (docs/METHOD.md)."""
        with torch.no_grad():
            for head in self.attribute_heads.values():
                head.reset_parameters()
                head.bias.zero_()

    def fold_attribute_heads(self, gate_bias: float = FOLDED_GATE_BIAS) -> None:
        """Move what a trained model's heads know into q_base, then start fresh heads with their weights
        nearly shut: text_projection becomes the mean of the heads (they carried the fused query: un-normalised,
        near-copies, norm ~9 against q_base's 1), the heads are re-initialised and the weight gate's bias
        set to `gate_bias` (sigmoid(-4) = 0.02). Measured on the shipped demo model: q_base alone then scores
        what the old fused query did (R@1 57.2 vs 57.4), and so does the new fused query at the start (57.3),
        where fresh heads at the old weights fell to 45.4 (docs/benchmarks/controllability.md)."""
        with torch.no_grad():
            heads = list(self.attribute_heads.values())
            self.blip.text_projection.weight.copy_(torch.stack([h.weight for h in heads]).mean(0))
            self.blip.text_projection.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
            self.weight_gate.bias.fill_(gate_bias)
            self.global_weights.fill_(gate_bias)
        self.reset_attribute_heads()

    def set_qformer_checkpointing(self, on: bool = True) -> None:
        """Activation (gradient) checkpointing of the Q-Former's layers: their activations are recomputed
        in the backward pass instead of kept, for less GPU memory at about a third more Q-Former time."""
        qf = self.blip.qformer
        if hasattr(qf, "activation_checkpointing_enable"):  # transformers >= 5
            if on:
                qf.activation_checkpointing_enable({"use_reentrant": False})
            else:
                qf.activation_checkpointing_disable()
        elif on:
            qf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            qf.gradient_checkpointing_disable()

    # -- catalog side --------------------------------------------------------------------
    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blip.vision_model(pixel_values=pixels).last_hidden_state

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        b = self.blip
        feats = self.vision_features(pixels)
        queries = b.query_tokens.expand(feats.shape[0], -1, -1)
        out = b.qformer(query_embeds=queries, encoder_hidden_states=feats, encoder_attention_mask=None)
        return F.normalize(b.vision_projection(out.last_hidden_state), dim=-1)

    # -- text side -----------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A text alone (no image, no query tokens): the Q-Former's [CLS] state through text_projection,
        L2-normalised [B, D]. BLIP-2's image-text contrastive side, used by caption pretraining."""
        b = self.blip
        h = b.qformer(query_embeds=b.embeddings(input_ids=input_ids), query_length=0,
                      attention_mask=attention_mask).last_hidden_state[:, 0]
        return F.normalize(b.text_projection(h), dim=-1)

    # -- query side ----------------------------------------------------------------------
    def compose(self, ref_pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        b = self.blip
        feats = self.vision_features(ref_pixels)
        n = feats.shape[0]
        nq = b.query_tokens.shape[1]
        queries = b.query_tokens.expand(n, -1, -1)
        embeds = b.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([torch.ones(n, nq, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], dim=1)
        # encoder_attention_mask=None: all ones anyway, and passing it breaks the ONNX export.
        hidden = b.qformer(query_embeds=embeds, query_length=nq, attention_mask=mask, encoder_hidden_states=feats,
                           encoder_attention_mask=None).last_hidden_state
        z, h_text = hidden[:, :nq], hidden[:, nq]  # query-token states; the text's [CLS] state
        q_base = F.normalize(b.text_projection(z).mean(dim=1), dim=-1)
        q_attrs = torch.stack([head(z).mean(dim=1) for head in self.attribute_heads.values()], dim=1)
        if self.cfg.subquery_norm:
            q_attrs = F.normalize(q_attrs, dim=-1)
        return q_base, q_attrs, self.attribute_weights(h_text)

    def attribute_weights(self, h_text: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.attribute_weights
        n, a = h_text.shape[0], len(self.cfg.attributes)
        if mode == "off":
            return h_text.new_zeros(n, a)
        if mode == "global":
            return torch.sigmoid(self.global_weights).expand(n, a)
        logits = self.weight_gate(h_text)
        return torch.sigmoid(logits) if mode == "sigmoid" else torch.softmax(logits, dim=-1)

    @staticmethod
    def fuse(q_base, q_attrs, weights) -> torch.Tensor:
        return F.normalize(q_base + (weights[..., None] * q_attrs).sum(dim=1), dim=-1)

    def query(self, ref_pixels, input_ids, attention_mask) -> tuple[torch.Tensor, tuple]:
        parts = self.compose(ref_pixels, input_ids, attention_mask)
        return self.fuse(*parts), parts

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(0.01, 0.5)


class StepForward(nn.Module):
    """What a step computes on the model, behind one forward() so that DDP sees every parameter it
    uses: the composed query parts and the tokens of the column images, or (caption pretraining, no
    columns) the texts alone and the images' tokens; and the temperature."""

    def __init__(self, model: DQECIR):
        super().__init__()
        self.model = model

    def forward(self, pixels, input_ids, attention_mask, column_pixels=None):
        m = self.model
        if column_pixels is None:
            return m.encode_text(input_ids, attention_mask), m.encode_image(pixels), m.tau
        return m.compose(pixels, input_ids, attention_mask), m.encode_image(column_pixels), m.tau


def pretrained_tokenizer(path: Path):
    """The tokenizer beside a pretrained model: its tokenizer.json, or (only vocab.txt and the
    tokenizer config) transformers' fast tokenizer built from them."""
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), use_fast=True).backend_tokenizer
    except (OSError, ValueError, AttributeError) as e:
        raise TrainingError(f"{path}: no tokenizer.json and no tokenizer transformers can read ({e}); the model's "
                            "save_pretrained folder must hold its tokenizer too") from e


def maxsim(q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """s[b, n] = max_k <q_b, T_{n,k}>: Qdrant's MAX_SIM for a single query vector."""
    return torch.einsum("bd,nkd->bnk", q, tokens).amax(dim=-1)


@torch.no_grad()
def maxsim_scores(queries: torch.Tensor, pool_tokens: torch.Tensor, chunk: int | None = None,
                  max_elements: int = 1 << 25) -> np.ndarray:
    """maxsim of every query [Q, D] against a pool [N, K, D] as float32 numpy [Q, N], chunked over the
    pool so that the [Q, chunk, K] intermediate stays under `max_elements` (128 MB in float32) whatever
    the sizes (evaluation and TRNS mining both use it). Runs on the tensors' device."""
    if chunk is None:
        chunk = max(1, max_elements // max(1, queries.shape[0] * pool_tokens.shape[1]))
    out = np.empty((queries.shape[0], pool_tokens.shape[0]), dtype=np.float32)
    for s in range(0, pool_tokens.shape[0], chunk):
        part = pool_tokens[s : s + chunk]
        out[:, s : s + part.shape[0]] = maxsim(queries, part).float().cpu().numpy()
    return out


def inference_autocast(model: nn.Module):
    """bf16 autocast for evaluation and mining when the model is on a GPU; nothing on CPU (fp32)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def legacy_state_dict(state: dict, cfg: ModelConfig) -> dict:
    """Weights saved before the attribute set was configurable named the heads color_head and
    shape_head: map them to attribute_heads.<name>."""
    out = {}
    for k, v in state.items():
        head, _, rest = k.partition("_head.")
        if rest and head in cfg.attributes and not k.startswith("attribute_heads."):
            k = f"attribute_heads.{head}.{rest}"
        out[k] = v
    return out
