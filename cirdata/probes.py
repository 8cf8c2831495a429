"""Attribute probes: a synthetic target re-rendered with one attribute of its edited object changed.

A probe of attribute a for query i is the target's scene with the edited object's a (color, shape,
size or position) set to another value, drawn with the target's own jitter seed, so that the probe
and the target differ in that attribute and in nothing the renderer controls. They are what a
sub-query for attribute a must rank below the target ("sensitivity") and what a sub-query for
another attribute should not care about ("invariance"): the controllability benchmark measures both
with them, and training uses them as each attribute head's negatives (docs/METHOD.md).

Only the synthetic set has probes: it knows every image's scene and how it was rendered.
Pure numpy + PIL: no torch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from cirdata.errors import DataError
from cirdata.scenes import COLORS, POSITIONS, SHAPES, SIZES, Obj, Scene, is_valid, make_scene, scene_from_key
from cirdata.synth import SPLITS, render_scene
from encoder.preprocess import prepare_image

# attribute name (training.attributes.SCENE_FIELDS) -> (Obj field, its values)
PROBE_FIELDS = {"color": ("color", tuple(COLORS)), "shape": ("shape", SHAPES), "size": ("size", SIZES),
                "position": ("pos", POSITIONS)}


def edited_object(reference: Scene, target: Scene) -> Obj | None:
    """The target's one object that the reference does not have (a recolored, reshaped, replaced or
    added object); None when there is not exactly one (a removal)."""
    new = [o for o in target if o not in reference]
    return new[0] if len(new) == 1 else None


def attribute_variants(scene: Scene, obj: Obj, attribute: str) -> list[Scene]:
    """Every valid scene that differs from `scene` only in `obj`'s `attribute`, in the order of that
    attribute's values (a position already taken, or a color+shape another object has, is left out)."""
    if attribute not in PROBE_FIELDS:
        raise DataError(f"no probes for attribute {attribute!r}; the synthetic scenes know {', '.join(PROBE_FIELDS)}")
    field, values = PROBE_FIELDS[attribute]
    rest = [o for o in scene if o != obj]
    out = []
    for v in values:
        if v == getattr(obj, field):
            continue
        variant = make_scene([*rest, replace(obj, **{field: v})])
        if is_valid(variant):
            out.append(variant)
    return out


class ProbeRenderer:
    """Probes for the queries of one split of a synthetic set written by `cirdata.synth.generate`
    (it reads the set's seed from synth.json: the target's jitter seed is (seed, split, index))."""

    def __init__(self, root: str | Path, split: str, image_size: int):
        meta = Path(root) / "synth.json"
        if not meta.is_file():
            raise DataError(f"{meta}: missing; attribute probes need a synthetic set made by `dqe-cir data synth`")
        if split not in SPLITS:
            raise DataError(f"unknown synthetic split {split!r}; choose one of {', '.join(SPLITS)}")
        info = json.loads(meta.read_text())
        self.seed, self.split_id, self.image_size = int(info["seed"]), SPLITS.index(split), image_size
        self.render_size = int(info.get("image_size", image_size))

    def render(self, scene: Scene, target_name: str) -> np.ndarray:
        """uint8 [S, S, 3]: `scene` drawn with the jitter of image `target_name`, preprocessed as the
        image tables are (cirdata.tables)."""
        index = int(target_name.rsplit("-", 1)[1])
        img = render_scene(scene, self.render_size, [self.seed, self.split_id, index])
        return prepare_image(img, self.image_size)

    def probes(self, reference_key: str, target_key: str, target_name: str, attribute: str, n: int,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 [m, S, S, 3], m <= n: the target with its edited object's `attribute` changed, n of the
        valid values (drawn with `rng`; the first n in the attribute's order without one). m is 0 for a
        query that edits no single object (a removal) or has no valid variant."""
        ref, tgt = scene_from_key(reference_key), scene_from_key(target_key)
        obj = edited_object(ref, tgt)
        variants = attribute_variants(tgt, obj, attribute) if obj is not None else []
        if rng is not None and len(variants) > n:
            variants = [variants[i] for i in sorted(rng.choice(len(variants), size=n, replace=False))]
        variants = variants[:n]
        if not variants:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return np.stack([self.render(v, target_name) for v in variants])
