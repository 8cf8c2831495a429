"""Do the attribute weights steer? The controllability measures, as pure functions over rankings, scene
keys and scores (the benchmark, benchmarks/controllability.py, computes the scores with the model).

- Weight settings: the model's own weights, the base query alone, each attribute alone at a high
  weight, each attribute at 3x the model's weight.
- Top-10 agreement: the share of a query's top 10 (reference left out) whose objects agree with the
  target's on one attribute, position by position (the synthetic scenes label every object).
- Sensitivity / invariance: how often a sub-query alone ranks the target first among the target and
  its probes (cirdata/probes.py) of one attribute.
No torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from cirdata.scenes import key_objects

EDIT_GROUPS = ("color", "shape", "other")
AGREEMENT_ATTRIBUTES = ("color", "shape", "size", "position")  # what the scenes label, object by object
ALONE_WEIGHT = 3.0  # "attribute a alone": w_a = 3, every other weight 0
_FIELD = {"position": 0, "size": 1, "color": 2, "shape": 3}  # index in key_objects' tuples


def edit_group(kind: str | None) -> str:
    """color-only, shape-only, or every other edit (both, add, remove)."""
    return kind if kind in ("color", "shape") else "other"


def agreement_attributes(names: Sequence[str]) -> list[str]:
    """The model's attributes that top-10 agreement can be measured on (color and shape when it has none)."""
    return [n for n in AGREEMENT_ATTRIBUTES if n in names] or ["color", "shape"]


def weight_settings(attributes: Sequence[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Setting name -> a function of the model's weights [Q, A] giving the weights to fuse with."""
    a = len(attributes)
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {"model's": lambda w: w,
                                                          "base only": lambda w: np.zeros_like(w)}
    for j, name in enumerate(attributes):
        onehot = np.eye(a, dtype=np.float32)[j]
        out[f"{name} alone"] = lambda w, v=onehot: np.broadcast_to(ALONE_WEIGHT * v, w.shape).copy()
        out[f"{name} x3"] = lambda w, v=onehot: w * (1 + 2 * v)
    return out


def agrees(image_key: str, target_key: str, attribute: str) -> bool:
    """The image's objects agree with the target's on `attribute`, position by position: the same
    occupied positions, and at each the same value (for position itself: the same positions)."""
    return _by_position(image_key, attribute) == _by_position(target_key, attribute)


@lru_cache(maxsize=1 << 16)
def _by_position(key: str, attribute: str) -> frozenset:
    """(position, value of `attribute`) of each object of a scene key: parsed once per key (training asks
    for every batch column against every query)."""
    f = _FIELD[attribute]
    return frozenset((o[0], o[f]) for o in key_objects(key))


def top_k_agreement(rankings: Sequence[Sequence[int]], targets: Sequence[int], scene_keys: Sequence[str],
                    attribute: str, k: int = 10) -> np.ndarray:
    """[Q] percent of each ranking's first k images that agree with the target on `attribute`. A
    ranking shorter than k counts its missing places as disagreeing (a short list is no better)."""
    out = np.zeros(len(rankings), dtype=np.float64)
    for i, (ranked, t) in enumerate(zip(rankings, targets, strict=True)):
        hits = sum(agrees(scene_keys[j], scene_keys[t], attribute) for j in list(ranked)[:k])
        out[i] = 100.0 * hits / k
    return out


def first_among(s_target: np.ndarray, s_probes: np.ndarray) -> np.ndarray:
    """[Q] bool: the target scores strictly above every probe (s_probes [Q, k], nan where a query has
    fewer probes); rows without any probe are left out by the caller (see has_probes)."""
    probes = np.where(np.isnan(s_probes), -np.inf, s_probes)
    return s_target > probes.max(axis=1)


def has_probes(s_probes: np.ndarray) -> np.ndarray:
    return ~np.isnan(s_probes).all(axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between the rows of a and b."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return float((a * b).sum(-1).mean())
