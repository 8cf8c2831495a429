"""The oracle for the synthetic set: parse each modification text, apply it to the reference's
ground-truth scene and retrieve the image with the resulting key. It scores 100 only if the
generator, the loader and the metric code agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.datasets import CIRRSplit, load_cirr, read_json
from training.errors import TrainingError
from training.metrics import cirr_metrics
from training.scenes import apply_edit, parse_edit, scene_from_dict, scene_key


def load_scenes(split: CIRRSplit) -> dict[str, dict]:
    path = split.root / "scenes" / f"scenes.{split.name}.{split.split}.json"
    if not path.is_file():
        raise TrainingError(f"{path}: no ground-truth scenes; the oracle runs on the synthetic set only")
    return read_json(path)


def oracle_scores(split: CIRRSplit) -> np.ndarray:
    scenes = load_scenes(split)
    gallery = split.gallery
    by_key = {scenes[n]["key"]: i for i, n in enumerate(gallery)}
    scores = np.zeros((len(split.queries), len(gallery)), dtype=np.float32)
    for qi, q in enumerate(split.queries):
        ref = scene_from_dict(scenes[q.reference]["objects"])
        predicted = scene_key(apply_edit(ref, parse_edit(q.caption, ref)))
        if predicted in by_key:
            scores[qi, by_key[predicted]] = 1.0
    return scores


def oracle_metrics(root: str | Path, split: str = "val") -> dict:
    data = load_cirr(root, split)
    if any(q.target is None for q in data.queries):
        raise TrainingError(f"{root}: split {split!r} has no targets to score against")
    scores = oracle_scores(data)
    return cirr_metrics(scores, data.gallery, [q.reference for q in data.queries],
                        [q.target for q in data.queries], [q.members for q in data.queries])
