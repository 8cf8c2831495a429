"""Train the shipped demo model, stage by stage, and write its model card.

    python scripts/train_demo_model.py                              # every stage, from scratch
    python scripts/train_demo_model.py --use stage1=CKPT            # stage 1 done elsewhere: the rest from CKPT
    python scripts/train_demo_model.py --use stage1=A --use stage1b=B --use last=C   # ship C, write the card

Stages (each resumes its own run folder under runs/demo-model/ and starts from the previous one's end):
STAGES below. The last stage is training/recipes/demo-finetune.json, which `dqe-cir demo` fine-tunes
with too. Every stage's end is scored on the val split and on 1,000 training queries (against their
own img_set images), as in docs/benchmarks/learning.md; the shipped checkpoint is the last stage's, in fp16.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402
from benchmarks.learning import METRICS, score_splits  # noqa: E402
from training.checkpoint import read_meta  # noqa: E402
from training.synth import ensure_synth  # noqa: E402
from training.train import LAST, load_checkpoint, load_train_config, save_checkpoint, train  # noqa: E402

RUNS = ROOT / "runs" / "demo-model"
OUT = ROOT / "models" / "demo"
DATA = ROOT / "runs" / "demo" / "synth-demo-0"


@dataclass
class Stage:
    name: str
    recipe: str
    what: str
    overrides: dict = field(default_factory=dict)


STAGES = [
    Stage("stage1", "demo", "in-batch contrastive from scratch, 1 img_set hard negative per query"),
    Stage("caption", "demo", "image-caption pretraining (ITC both ways) from stage 1",
          {"task": "caption", "lr": 2e-4, "max_minutes": 5, "eval_every": 0}),
    Stage("stage1b", "demo", "stage 1's objective again after the caption stage, time-budgeted cosine",
          {"lr": 2e-4, "max_minutes": 5, "eval_every": 0}),
    Stage("last", "demo-finetune", "DQE-CIR's objective: pairwise + margin + attribute loss, TRNS negatives"),
]


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.system()}"


def architecture(c) -> str:
    return (f"ViT {c.vision_layers}x{c.vision_width} (patch {c.patch_size}, {c.image_size} px), Q-Former "
            f"{c.qformer_layers}x{c.qformer_width}, {c.num_query_tokens} query tokens, D={c.embed_dim}, "
            f"attribute weights: {c.attribute_weights}")


def run_stage(stage: Stage, init: str | None) -> Path:
    cfg = load_train_config(stage.recipe, root=str(DATA), out=str(RUNS / stage.name), init=init, progress=True,
                            **stage.overrides)
    print(f"[{stage.name}] {stage.what}: recipe {stage.recipe} {stage.overrides or ''} from {init or 'scratch'}")
    train(cfg)
    return RUNS / stage.name / LAST


def scored(path: Path) -> dict:
    """Train and val metrics of a checkpoint, cached beside a run's checkpoint."""
    cache = path.with_name(path.stem + ".scores.json")
    if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
        return json.loads(cache.read_text())
    model, tok, _ = load_checkpoint(path)
    val, train = score_splits(model, tok)
    out = {"val": val, "train": train}
    if (ROOT / "runs") in path.resolve().parents:  # never beside the shipped model in models/
        cache.write_text(json.dumps(out))
    return out


def stage_row(stage: Stage, path: Path) -> str:
    meta = read_meta(path)
    s = scored(path)
    cells = " | ".join(f"{s['train'][m]:.1f} / {s['val'][m]:.1f}" for m in METRICS)
    minutes = f"{meta['elapsed_s'] / 60:.0f}" if "elapsed_s" in meta else "?"
    over = json.dumps(stage.overrides) if stage.overrides else ""
    step = meta.get("step", "?")
    return f"| {stage.name} | {stage.what} | `{stage.recipe}` {over} | {step} | {minutes} | {cells} |"


def write_card(ckpt: Path, runs: dict[str, Path], used: list[str]) -> str:
    model, _, _ = load_checkpoint(ckpt)
    c = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    head = "| stage | what | recipe | steps | train min | " + " | ".join(f"{m} train / val" for m in METRICS) + " |"
    rows = [stage_row(st, runs[st.name]) for st in STAGES if st.name in runs]
    shipped = scored(ckpt)
    return f"""# DQE-CIR demo model

A small DQE-CIR (BLIP-2 modules from transformers, trained from scratch) for the built-in synthetic
benchmark. It is what `make demo` starts from; it knows nothing about real photos.

| | |
|---|---|
| file | `{ckpt.name}` ({ckpt.stat().st_size / 1e6:.1f} MB, fp16 weights, {n_params / 1e6:.2f}M parameters) |
| architecture | {architecture(c)} |
| data | `dqe-cir data synth --size demo --seed 0` (train split, 5,000 pairs) |
| command | `python scripts/train_demo_model.py{''.join(' --use ' + u for u in used)}` |
| machine | {machine()} |
| code | commit {commit.strip() or 'unknown'} |

## Stages

Each stage starts from the previous one's end. Metrics at each stage's end: train = the first
1,000 training queries against the images of their own img_sets ({shipped['train']['gallery']:,}
images, made like the val gallery), val = all 1,000 val queries against the val gallery (4,489
images); CIRR protocol; edit top-1 = the target's scene ranked first, by kind of edit. Train
minutes: that stage's training time (mining included, scoring not).

{head}
|{"---|" * (5 + len(METRICS))}
{chr(10).join(rows)}

Shipped fp16 weights: """ + ", ".join(f"{m} train {shipped['train'][m]:.1f} / val {shipped['val'][m]:.1f}"
                                      for m in METRICS) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--use", action="append", default=[], metavar="STAGE=CKPT",
                    help="take this stage's result from CKPT instead of training it (the next stage starts there)")
    ap.add_argument("--notes", type=Path,
                    help="markdown appended to the card (how the --use checkpoints were made, findings)")
    args = ap.parse_args()
    names = [s.name for s in STAGES]
    used = dict(u.split("=", 1) for u in args.use)
    bad = sorted(set(used) - set(names))
    if bad or any(not Path(p).is_file() for p in used.values()):
        ap.error(f"--use takes STAGE=CKPT with STAGE one of {', '.join(names)} and an existing file: {args.use}")
    ensure_synth(DATA, "demo", 0)
    runs: dict[str, Path] = {}
    init = None
    t0 = time.time()
    for stage in STAGES:
        runs[stage.name] = Path(used[stage.name]) if stage.name in used else run_stage(stage, init)
        init = str(runs[stage.name])
    print(f"[stages] {(time.time() - t0) / 60:.1f} min")
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "dqe-cir-demo.safetensors"
    model, tok, payload = load_checkpoint(runs[STAGES[-1].name])
    keep = {k: payload[k] for k in ("train_config", "step", "epoch", "elapsed_s") if k in payload}
    save_checkpoint(ckpt, model, tok, keep, half=True)
    card = write_card(ckpt, runs, args.use)
    if args.notes:
        card += "\n" + args.notes.read_text()
    (OUT / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
