"""`dqe-cir train --dry-run`: what a recipe will cost, before any image is read or weight loaded.

Counted: parameters (the model is built on the meta device from the pretrained folder's config.json),
queries, images, negative pools and steps (from the annotation files only). Estimated, with the
formulas below (not measured; no GPU run has been made): peak GPU memory per GPU, TRNS mining memory
and the training time at an assumed sustained throughput.

Peak GPU memory per GPU = fp32 weights + (trainable) fp32 gradients, AdamW's two fp32 moments and
autocast's bf16 weight copies + activations saved for the backward pass + the frozen ViT's largest
transient + 1.5 GB (CUDA context, allocator slack). Activations, in bf16 bytes (Korthikanti et al.
2022, per transformer layer of s tokens, width h, a heads): 34 s h + 5 a s^2; per Q-Former
cross-attention layer over K query tokens and the ViT's s_v tokens: 11 K h + 4 s_v h + 5 a K s_v; plus
each image's ViT features (s_v x h_v). Every text is taken at max_text_len tokens (the worst case a
batch padded to its longest text reaches). With grad_checkpointing the Q-Former keeps only each
layer's input (s h) plus one layer's activations.
Time: FLOPs (2 per multiply-add; the frozen ViT forward only, the Q-Former forward and backward =
3x, 4x with checkpointing) over `assume_tflops` sustained bf16 TFLOP/s per GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import TrainConfig
from training.errors import TrainingError

GIB = 1024**3
OVERHEAD_BYTES = 1.5 * GIB
DEFAULT_TFLOPS = 150.0  # sustained bf16 TFLOP/s per GPU: about half an A100's dense peak, a sixth of an H100's


@dataclass
class Dims:
    """What the estimates need of the architecture."""
    image_size: int
    patch: int
    h_v: int  # ViT width, layers, heads, MLP width
    l_v: int
    a_v: int
    i_v: int
    h: int  # Q-Former width, layers, heads, MLP width, cross-attention every f layers
    layers: int
    heads: int
    inter: int
    cross_every: int
    queries: int  # query tokens K
    text: int  # text tokens (max_text_len)
    embed: int  # D

    @property
    def s_v(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


@dataclass
class Sizes:
    queries: int
    images: int
    pools: list[int]  # images in each negative pool
    val_queries: int = 0
    val_images: int = 0


def build_meta_model(cfg: TrainConfig):
    """The DQE-CIR model of the recipe on the meta device (no memory, no weights read)."""
    import torch
    from transformers import Blip2Config

    from cirdata.vocab import build_tokenizer
    from training.model import DQECIR, adopt_blip2_config, model_config, pretrained_dir

    overrides = {k: v for k, v in cfg.model_overrides.items() if k != "pretrained"}
    mc = model_config(cfg.model, **overrides)
    pretrained = cfg.pretrained or cfg.model_overrides.get("pretrained")
    if cfg.model == "blip2":
        if not pretrained:
            raise TrainingError("the blip2 model needs --pretrained DIR (its config.json is all the dry run reads)")
        try:
            adopt_blip2_config(mc, Blip2Config.from_pretrained(str(pretrained_dir(pretrained))))
        except (OSError, ValueError) as e:
            raise TrainingError(f"{pretrained}: no readable config.json of a BLIP-2 model ({e})") from e
    else:
        mc.vocab_size = mc.vocab_size or build_tokenizer().get_vocab_size()
    with torch.device("meta"):
        return DQECIR(mc)


def model_dims(model) -> Dims:
    vc, qc, mc = model.blip.config.vision_config, model.blip.config.qformer_config, model.cfg
    return Dims(vc.image_size, vc.patch_size, vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads,
                vc.intermediate_size, qc.hidden_size, qc.num_hidden_layers, qc.num_attention_heads,
                qc.intermediate_size, qc.cross_attention_frequency, mc.num_query_tokens, mc.max_text_len,
                mc.embed_dim)


def data_sizes(cfg: TrainConfig, image_size: int) -> Sizes:
    """Counts from the annotation files (images are listed, never read); a bad file fails here as it
    would in training."""
    from cirdata.tables import load_cir_data
    from training.trns import negative_pools

    train = load_cir_data(cfg.data, cfg.root, "train", image_size, progress=False, lazy=True)
    pools = negative_pools(train, cfg.trns_pool)
    val = load_cir_data(cfg.data, cfg.root, "val", image_size, False, cfg.eval_max_queries, lazy=True)
    return Sizes(len(train.ref), len(train.names), [len(p) for p in pools.pools], len(val.ref), len(val.names))


# --- the formulas ------------------------------------------------------------------------------
def layer_act(s: int, h: int, a: int) -> float:
    return 34 * s * h + 5 * a * s * s


def cross_act(d: Dims) -> float:
    return 11 * d.queries * d.h + 4 * d.s_v * d.h + 5 * d.heads * d.queries * d.s_v


def qformer_act(d: Dims, s: int, checkpointing: bool) -> float:
    """Bytes one Q-Former pass over s tokens (K queries + text) keeps for the backward pass."""
    if checkpointing:
        return d.layers * s * d.h * 2
    return d.layers * layer_act(s, d.h, d.heads) + (d.layers // d.cross_every) * cross_act(d)


def vit_flops(d: Dims) -> float:
    return d.l_v * d.s_v * (8 * d.h_v**2 + 4 * d.h_v * d.i_v + 4 * d.s_v * d.h_v)


def qformer_flops(d: Dims, s: int) -> float:
    self_part = d.layers * s * (8 * d.h**2 + 4 * d.h * d.inter + 4 * s * d.h)
    cross = (d.layers // d.cross_every) * (d.queries * (4 * d.h**2 + 4 * d.s_v * d.h) + d.s_v * 4 * d.h_v * d.h)
    return self_part + cross


def columns_per_query(cfg: TrainConfig) -> int:
    """Images encoded per query besides its reference: the target, the img_set distractors
    (contrastive), the pairwise negative, and up to one attribute negative per attribute."""
    attrs = len(cfg.model_overrides.get("attributes", ("color", "shape"))) if cfg.lambda_attr else 0
    return 1 + (cfg.img_set_negatives if cfg.contrastive else 0) + int(cfg.pairwise) + attrs


def estimate(d: Dims, sizes: Sizes, cfg: TrainConfig, params_total: int, params_trainable: int, gpus: int = 1,
             assume_tflops: float = DEFAULT_TFLOPS) -> dict:
    """Memory (bytes) and time (hours) of the recipe on `gpus` GPUs; pure arithmetic, see the module doc."""
    if cfg.batch_size % gpus:
        raise TrainingError(f"batch_size {cfg.batch_size} does not split evenly over {gpus} GPUs")
    b = cfg.batch_size // gpus
    cols = b * columns_per_query(cfg)
    s_compose, ck = d.queries + d.text, cfg.grad_checkpointing
    activations = (b * qformer_act(d, s_compose, ck) + cols * qformer_act(d, d.queries, ck)
                   + (b + cols) * d.s_v * d.h_v * 2)
    if ck:  # one layer's activations during its recomputation
        activations += b * layer_act(s_compose, d.h, d.heads) + cols * layer_act(d.queries, d.h, d.heads)
    vit_transient = max(b, cols) * d.s_v * (d.i_v + d.a_v * d.s_v) * 2
    states = params_total * 4 + params_trainable * (4 + 8 + 2)
    pool = max(sizes.pools) if sizes.pools else 0
    pool_tokens = sum(sizes.pools) * d.queries * d.embed * 4  # every pool's images, held while mining
    gpu_train = states + activations + vit_transient + OVERHEAD_BYTES
    gpu_mining = params_total * 4 + pool_tokens + 256 * d.s_v * (d.i_v + d.a_v * d.s_v) * 2 + OVERHEAD_BYTES

    steps_per_epoch = max(1, sizes.queries // (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    qf_passes = 4 if ck else 3
    step_flops = cfg.batch_size * cfg.grad_accum * (
        (1 + columns_per_query(cfg)) * vit_flops(d)
        + qf_passes * (qformer_flops(d, s_compose) + columns_per_query(cfg) * qformer_flops(d, d.queries)))
    from training.trns import rebuild_epochs

    epochs = math.ceil(total_steps / steps_per_epoch)
    mining = cfg.mines
    rebuilds = len(rebuild_epochs(epochs, cfg.trns_warmup_epochs, cfg.trns_rebuild_every)) if mining else 0
    encode = vit_flops(d) + qformer_flops(d, d.queries)
    compose = vit_flops(d) + qformer_flops(d, s_compose)
    mining_flops = sum(sizes.pools) * encode + sizes.queries * compose
    evals = (epochs // cfg.eval_every if cfg.eval_every else 0) + 1
    eval_flops = sizes.val_images * encode + sizes.val_queries * compose
    rate = gpus * assume_tflops * 1e12
    hours = {"train": total_steps * step_flops / rate / 3600, "mining": rebuilds * mining_flops / rate / 3600,
             "eval": evals * eval_flops / assume_tflops / 1e12 / 3600}  # eval runs on rank 0 alone
    return {
        "gpus": gpus, "batch_per_gpu": b, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "epochs": epochs, "trns_rebuilds": rebuilds,
        "gpu_memory_gib": {"weights_grads_adamw": states / GIB, "activations": activations / GIB,
                           "vit_transient": vit_transient / GIB, "overhead": OVERHEAD_BYTES / GIB,
                           "peak_training": gpu_train / GIB, "peak_mining": gpu_mining / GIB},
        "trns_memory_gib": {"pool_tokens_fp32": pool_tokens / GIB,
                            "host_per_chunk": cfg.trns_chunk * pool * (4 * 4 + 1) / GIB,
                            "old_full_matrix": sizes.queries * sizes.images * (4 + 3 * 8 + 1) / GIB},
        "flops_per_step": step_flops, "assumed_tflops_per_gpu": assume_tflops,
        "hours": {**{k: round(v, 2) for k, v in hours.items()}, "total": round(sum(hours.values()), 2)},
    }


def dry_run(cfg: TrainConfig, gpus: int | None = None, assume_tflops: float | None = None) -> dict:
    model = build_meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    d = model_dims(model)
    sizes = data_sizes(cfg, d.image_size)
    out = {"recipe": {k: getattr(cfg, k) for k in ("data", "root", "model", "pretrained", "loss", "negatives",
                                                    "epochs", "batch_size", "lr", "grad_checkpointing", "trns_chunk")},
           "parameters": {"total": total, "trainable": trainable,
                          "vision": sum(p.numel() for p in model.blip.vision_model.parameters()),
                          "qformer": sum(p.numel() for p in model.blip.qformer.parameters())},
           "data": {"queries": sizes.queries, "images": sizes.images, "pools": sizes.pools,
                    "val_queries": sizes.val_queries, "val_images": sizes.val_images,
                    "pixel_table_gib": sizes.images * d.image_size**2 * 3 / GIB},
           "dims": vars(d) | {"s_v": d.s_v}}
    counts = [gpus] if gpus else [1, 8]
    out["estimates"] = [estimate(d, sizes, cfg, total, trainable, g, assume_tflops or DEFAULT_TFLOPS) for g in counts]
    return out


def format_dry_run(r: dict) -> str:
    p, data = r["parameters"], r["data"]
    lines = [f"dry run of {r['recipe']['data']} / {r['recipe']['model']} ({r['recipe']['pretrained'] or 'no weights'})",
             f"  parameters     {p['total']:,} total, {p['trainable']:,} trainable (ViT {p['vision']:,}, "
             f"Q-Former {p['qformer']:,})",
             f"  data           {data['queries']:,} training queries, {data['images']:,} images (pixel table "
             f"{data['pixel_table_gib']:.1f} GiB in RAM per process with images=memory); negative pools "
             f"{', '.join(f'{n:,}' for n in data['pools'])}; val {data['val_queries']:,} queries, "
             f"{data['val_images']:,} images"]
    for e in r["estimates"]:
        m, t, h = e["gpu_memory_gib"], e["trns_memory_gib"], e["hours"]
        lines += [f"  on {e['gpus']} GPU(s): batch {e['batch_per_gpu']} per GPU, {e['steps_per_epoch']:,} steps an "
                  f"epoch, {e['total_steps']:,} steps, {e['trns_rebuilds']} TRNS rebuilds",
                  f"    GPU memory (estimate) peak {m['peak_training']:.1f} GiB training = weights+grads+AdamW "
                  f"{m['weights_grads_adamw']:.1f} + activations {m['activations']:.1f} + ViT transient "
                  f"{m['vit_transient']:.1f} + overhead {m['overhead']:.1f}; {m['peak_mining']:.1f} GiB mining",
                  f"    TRNS mining    pool tokens {t['pool_tokens_fp32']:.2f} GiB (fp32), host "
                  f"{t['host_per_chunk']:.2f} GiB per chunk of {r['recipe']['trns_chunk']} queries (the old code's "
                  f"queries x whole gallery matrices: {t['old_full_matrix']:.1f} GiB)",
                  f"    time (estimate at {e['assumed_tflops_per_gpu']:g} TFLOP/s per GPU) {h['total']:.1f} h = "
                  f"train {h['train']:.1f} + mining {h['mining']:.1f} + eval {h['eval']:.1f}"]
    return "\n".join(lines)
