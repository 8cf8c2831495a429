"""The built-in synthetic CIR benchmark, written in the CIRR layout.

    <out>/captions/cap.synth.<split>.json        CIRR query records (+ "edit_kind")
    <out>/image_splits/split.synth.<split>.json  image name -> ./<split>/<name>.png
    <out>/scenes/scenes.synth.<split>.json       image name -> {"key", "objects", "caption"}
    <out>/<split>/<name>.png

Every image is rendered from its own seed (seed, split, index), so the output is byte-identical for
one seed whatever the number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from cirdata.scenes import (
    COLORS,
    POSITIONS,
    Scene,
    apply_edit,
    edit_text,
    hard_distractors,
    random_edit,
    random_scene,
    scene_caption,
    scene_key,
    scene_to_dict,
    templates_for,
)

SPLITS = ("train", "val", "test1")
DATASET_NAME = "synth"


@dataclass(frozen=True)
class SynthSize:
    train: int
    val: int
    test1: int


SIZES = {
    "small": SynthSize(train=600, val=150, test1=150),
    "demo": SynthSize(train=5000, val=1000, test1=1000),
    "large": SynthSize(train=30000, val=3000, test1=3000),
}

_SUPERSAMPLE = 4
_CELL_CENTER = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
                "bottom right": (0.75, 0.75)}
_RADIUS = {"small": 0.14, "large": 0.21}  # fraction of the image side: 9 px and 13 px at 64 px


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = 0.0):
        return [(cx + radius * math.cos(rot + offset + 2 * math.pi * k / n),
                 cy + radius * math.sin(rot + offset + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        return ring(4, r * 1.05, math.pi / 4)
    if shape == "triangle":
        return ring(3, r * 1.15, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        outer, inner = ring(5, r * 1.15, -math.pi / 2), ring(5, r * 0.48, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=False) for p in pair]
    if shape == "cross":
        a, b = r, r * 0.36
        pts = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
               (-b, b), (-b, a)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, image_size: int, seed: list[int]) -> Image.Image:
    """Draw a scene with jitter: position, scale, rotation, color, background texture and noise."""
    rng = np.random.default_rng(seed)
    big = image_size * _SUPERSAMPLE
    # Background: a blotchy gray texture (low-res noise, upsampled) so the model cannot key on a flat color.
    base = rng.uniform(70, 130)
    blotch = rng.normal(0, 14, size=(6, 6, 1)) + base + rng.normal(0, 4, size=(6, 6, 3))
    bg = Image.fromarray(np.clip(blotch, 0, 255).astype(np.uint8)).resize((image_size, image_size), Image.BICUBIC)
    bg = bg.resize((big, big), Image.NEAREST)  # supersampled canvas; BOX-downscaling restores the background
    draw = ImageDraw.Draw(bg)
    for o in scene:
        fx, fy = _CELL_CENTER[o.pos]
        r = _RADIUS[o.size] * big * rng.uniform(0.9, 1.1)
        cx = (fx + rng.uniform(-0.04, 0.04)) * big
        cy = (fy + rng.uniform(-0.04, 0.04)) * big
        rgb = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLORS[o.color])
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r, rng.uniform(-0.35, 0.35)), fill=rgb)
    img = bg.resize((image_size, image_size), Image.BOX)  # box over the supersample = anti-aliased edges
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 5, size=(image_size, image_size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def _render_one(args) -> None:
    scene_objs, size, seed, path = args
    from cirdata.scenes import scene_from_dict

    render_scene(scene_from_dict(scene_objs), size, seed).save(path, format="PNG")


def build_split(rng: np.random.Generator, split: str, n_queries: int):
    """Sample queries for one split. Returns (queries, images) where images maps name -> scene.
    One image per distinct scene within a split, so the target scene has exactly one image."""
    names: dict[str, str] = {}
    scenes: dict[str, Scene] = {}

    def image_for(scene: Scene) -> str:
        key = scene_key(scene)
        if key not in names:
            names[key] = f"{split}-{len(names):06d}"
            scenes[names[key]] = scene
        return names[key]

    queries = []
    for i in range(n_queries):
        ref = random_scene(rng)
        edit = random_edit(rng, ref)
        target = apply_edit(ref, edit)
        kind = edit.kind
        if kind == "color" and len(ref) == 1 and rng.random() < 0.3:
            kind = "color_single"
        pool = templates_for(kind, split)
        text = edit_text(edit, pool[int(rng.integers(len(pool)))])
        distractors = hard_distractors(rng, ref, edit, target)
        ref_name, tgt_name = image_for(ref), image_for(target)
        members = [ref_name, tgt_name] + [image_for(d) for d in distractors]
        order = rng.permutation(len(members))
        members = [members[j] for j in order]
        queries.append({
            "pairid": i,
            "reference": ref_name,
            "target_hard": tgt_name,
            "target_soft": {tgt_name: 1.0},
            "caption": text,
            "img_set": {
                "id": i,
                "members": members,
                "reference_rank": members.index(ref_name),
                "target_rank": members.index(tgt_name),
            },
            "edit_kind": edit.kind,
        })
    return queries, scenes


def generate(out: str | Path, size: str = "demo", seed: int = 0, image_size: int = 64,
             workers: int | None = None, progress: bool = True) -> dict:
    """Write the synthetic benchmark to `out`. Returns a summary of counts per split."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if image_size < 32:
        raise ValueError(f"image_size {image_size} is too small to show shapes; use 32 or more")
    out = Path(out)
    for sub in ("captions", "image_splits", "scenes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = SIZES[size].__dict__
    summary = {}
    jobs = []
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_id])
        queries, scenes = build_split(rng, split, counts[split])
        (out / split).mkdir(exist_ok=True)
        paths = {name: f"./{split}/{name}.png" for name in scenes}
        _write_json(out / "captions" / f"cap.{DATASET_NAME}.{split}.json", queries)
        _write_json(out / "image_splits" / f"split.{DATASET_NAME}.{split}.json", paths)
        _write_json(out / "scenes" / f"scenes.{DATASET_NAME}.{split}.json", {
            name: {"key": scene_key(s), "objects": scene_to_dict(s), "caption": scene_caption(s)}
            for name, s in scenes.items()
        })
        for idx, (name, scene) in enumerate(scenes.items()):
            jobs.append((scene_to_dict(scene), image_size, [seed, split_id, idx], str(out / split / f"{name}.png")))
        summary[split] = {"pairs": len(queries), "images": len(scenes)}
    workers = workers or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="render", unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _render_one(job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_one, jobs, chunksize=64):
                bar.update()
    bar.close()
    _write_json(out / "synth.json", {"name": DATASET_NAME, "size": size, "seed": seed,
                                     "image_size": image_size, "positions": list(POSITIONS),
                                     "splits": summary})
    return summary


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def ensure_synth(out: str | Path, size: str, seed: int, log=print) -> Path:
    """Generate the synthetic set unless the same size and seed already sit in `out`."""
    out = Path(out)
    meta = out / "synth.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("size") == size and m.get("seed") == seed:
            log(f"[data] reusing {out} ({size}, seed {seed})")
            return out
    log(f"[data] generating the {size} synthetic benchmark in {out}")
    generate(out, size=size, seed=seed)
    return out
