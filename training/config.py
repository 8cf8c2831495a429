"""Training configuration: one dataclass, filled from a recipe (training/recipes/NAME.json or any JSON
file of its fields) and then from flags. Keys starting with "_" in a recipe are notes, not fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cirdata.datasets import read_json
from training.errors import TrainingError
from training.trns import TRNS_POOLS, MidZoneConfig

LOSSES = ("contrastive", "pairwise", "both")

RECIPES = Path(__file__).resolve().parent / "recipes"


@dataclass
class TrainConfig:
    data: str = "synth"  # synth | cirr | fashioniq
    root: str = "runs/demo/synth-demo-0"
    out: str = "runs/train"
    model: str = "demo"
    pretrained: str | None = None  # blip2: a save_pretrained dir of Blip2ForImageTextRetrieval (+ its tokenizer)
    model_overrides: dict = field(default_factory=dict)
    init: str | None = None  # checkpoint to start from (weights only)
    task: str = "cir"  # cir | caption (image-caption pretraining)
    # contrastive | pairwise | both (in-batch contrastive + the pairwise terms, the pairwise negative
    # joining the contrastive columns: ours, docs/METHOD.md)
    loss: str = "contrastive"
    negatives: str = "trns"  # random | trns: the pairwise negative
    trns: dict = field(default_factory=dict)  # MidZoneConfig fields
    trns_warmup_epochs: int | None = None  # random negatives before the first mining; None: the first rebuild interval
    trns_rebuild_every: int | None = None  # epochs between rebuilds; None: epochs // 6 (METHOD.md)
    # auto: METHOD.md's (FashionIQ: the category's training targets; else every image) | all | targets
    trns_pool: str = "auto"
    trns_chunk: int = 1024  # queries scored at a time when mining: host memory O(chunk x pool)
    lambda_pair: float = 1.0  # the pairwise KL's weight (pairwise and both)
    # [ours] the pairwise KL's own, fixed temperature: the learned contrastive one sinks to its 0.01 clamp,
    # and at 0.015 the mid-zone's Delta/tau ~ 11 left the KL ~0.016 with no gradient (docs/METHOD.md)
    pair_tau: float = 0.1
    lambda_margin: float = 0.0
    margin: float = 0.15
    lambda_attr: float = 0.0  # attribute-aware term: each sub-query against its attribute's negative
    # Sub-queries that specialise [ours, docs/METHOD.md]. attribute_probes: k probes per attribute and query
    # (synth: the target re-rendered with one attribute of its edited object changed, cirdata/probes.py):
    # each head's negatives in the attribute term (lambda_attr, listwise over [target, its probes]), the
    # fused query's extra contrastive negatives, and what lambda_invariance keeps the OTHER heads
    # indifferent to. lambda_decorrelation: cos(q_a, q_b)^2. lambda_weight_labels: the weights against
    # what the text edits (synth: edit kinds; other data: the caption lexicon).
    attribute_probes: int = 0
    lambda_invariance: float = 0.0
    lambda_decorrelation: float = 0.0
    lambda_weight_labels: float = 0.0
    # each sub-query retrieves the batch's images that agree with the target on its attribute (synth: scene keys)
    lambda_attr_retrieval: float = 0.0
    reinit_attribute_heads: bool = False  # with init: fresh heads instead of the checkpoint's copies
    # with init: the checkpoint's heads folded into q_base (text_projection = their mean), fresh heads, and the
    # weights started nearly shut, so that the fused query starts where the checkpoint's was (training/model.py)
    fold_attribute_heads: bool = False
    attribute_lr_mult: float = 1.0  # the heads' and weight gate's learning rate, x lr
    attribute_warmup_steps: int = 0  # the first steps train the heads and the weight gate alone
    img_set_negatives: int = 0  # contrastive: this many img_set distractors per query join the negatives
    phrasing_noise: float = 0.0  # synth: per-word chance that a non-attribute word is replaced or dropped
    epochs: int = 10
    batch_size: int = 64  # the global batch: split evenly over the processes of a torchrun job
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    max_minutes: float | None = None
    max_steps: int | None = None
    eval_every: int = 1  # epochs; 0: only at the end
    eval_max_queries: int | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    grad_checkpointing: bool = False  # recompute the Q-Former's activations in the backward pass
    images: str = "memory"  # memory: decode every image once into RAM | disk: decode each batch's images
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.task in ("cir", "caption"), f"task must be 'cir' or 'caption', not {self.task!r}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}"),
            (self.pair_tau > 0, f"pair_tau must be > 0, not {self.pair_tau}"),
            (self.negatives in ("random", "trns"), f"negatives must be 'random' or 'trns', not {self.negatives!r}"),
            (self.epochs >= 1 and self.batch_size >= 2, "epochs must be >= 1 and batch_size >= 2"),
            (self.grad_accum >= 1 and self.lr > 0, "grad_accum must be >= 1 and lr > 0"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}"),
            (self.precision in ("auto", "bf16", "fp32"),
             f"precision must be auto, bf16 or fp32, not {self.precision!r}"),
            (self.trns_pool in TRNS_POOLS, f"trns_pool must be one of {', '.join(TRNS_POOLS)}, not {self.trns_pool!r}"),
            (self.trns_chunk >= 1, "trns_chunk must be >= 1"),
            (self.trns_warmup_epochs is None or self.trns_warmup_epochs >= 0, "trns_warmup_epochs must be >= 0"),
            (self.trns_rebuild_every is None or self.trns_rebuild_every >= 1, "trns_rebuild_every must be >= 1"),
            (self.images in ("memory", "disk"), f"images must be 'memory' or 'disk', not {self.images!r}"),
            (isinstance(self.phrasing_noise, (int, float)) and 0 <= self.phrasing_noise < 1,
             f"phrasing_noise is a probability in [0, 1), not {self.phrasing_noise!r}"),
            (not self.phrasing_noise or (self.data == "synth" and self.task == "cir"),
             f"phrasing_noise needs data 'synth' and task 'cir' (it keeps the synthetic world's attribute "
             f"words, which other data sets have no list of), not data {self.data!r}, task {self.task!r}"),
            (self.attribute_probes >= 0 and self.attribute_warmup_steps >= 0 and self.attribute_lr_mult > 0,
             "attribute_probes and attribute_warmup_steps must be >= 0 and attribute_lr_mult > 0"),
            (not self.lambda_attr_retrieval or self.data == "synth",
             "lambda_attr_retrieval needs data 'synth' (it reads every image's scene)"),
            (not self.attribute_probes or (self.data == "synth" and self.task == "cir"),
             f"attribute_probes needs data 'synth' and task 'cir' (probes are re-rendered synthetic targets), "
             f"not data {self.data!r}, task {self.task!r}; other data sets use the caption lexicon's weak labels"),
            (not self.pretrained or self.model == "blip2",
             f"--pretrained loads a BLIP-2 checkpoint: use --model blip2 (not {self.model!r})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)
        try:
            MidZoneConfig(**self.trns)
        except (TypeError, ValueError) as e:
            raise TrainingError(f"trns: {e}; its keys are {', '.join(MidZoneConfig.__dataclass_fields__)}") from e

    @property
    def contrastive(self) -> bool:
        return self.loss in ("contrastive", "both")

    @property
    def pairwise(self) -> bool:
        return self.loss in ("pairwise", "both")

    @property
    def mines(self) -> bool:
        """TRNS mid-zones are mined: a CIR run whose pairwise negatives come from TRNS."""
        return self.task == "cir" and self.pairwise and self.negatives == "trns"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.json"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe by name (training/recipes/NAME.json) or by path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = RECIPES / f"{name_or_path}.json"
    if named.is_file():
        return named
    raise TrainingError(f"no recipe {str(name_or_path)!r}: not a file, and not one of {', '.join(recipe_names())}")


def load_train_config(path: str | Path | None, settings: dict | None = None, **overrides) -> TrainConfig:
    """The recipe (a name or a JSON file; None: the defaults), then `overrides` (flags: None values are
    ignored), then `settings` (--set KEY=JSON: taken as given, so max_steps=null unsets a recipe's step
    count and lets --max-minutes lay the schedule)."""
    raw = dict(read_json(recipe_path(path))) if path else {}
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw.update(settings or {})
    known = set(TrainConfig.__dataclass_fields__)
    bad = sorted(set(raw) - known)
    if bad:
        raise TrainingError(f"unknown training config keys {bad}; known: {sorted(known)}")
    cfg = TrainConfig(**raw)
    cfg.validate()
    return cfg
