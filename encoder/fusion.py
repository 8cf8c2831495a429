"""Attribute-weight fusion and MaxSim in numpy: the serving side of METHOD.md's formulas."""

from __future__ import annotations

import numpy as np

from encoder.bundle import ATTRIBUTES
from encoder.errors import EncoderError

__all__ = ["ATTRIBUTES", "fuse", "l2_normalize", "maxsim", "parse_weights", "pooled", "resolve_weights"]


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def resolve_weights(model_weights: np.ndarray, override: dict | None) -> np.ndarray:
    """The model's (a_color, a_shape) per query [B, 2], with the caller's values replacing any named."""
    w = np.array(model_weights, dtype=np.float32, copy=True)
    for name, value in (override or {}).items():
        if name not in ATTRIBUTES:
            raise EncoderError(f"unknown attribute {name!r} in weights; known: {', '.join(ATTRIBUTES)}")
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise EncoderError(f"weight for {name!r} must be a number, got {value!r}") from e
        if not np.isfinite(value):
            raise EncoderError(f"weight for {name!r} must be finite, got {value}")
        w[:, ATTRIBUTES.index(name)] = value
    return w


def parse_weights(items: list[str] | None) -> dict[str, float] | None:
    """Command-line weight overrides (`color=2`, `shape=0.5`) as a dict, checked like resolve_weights."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in ATTRIBUTES:
            raise EncoderError(f"--weights takes ATTR=NUMBER with ATTR one of {', '.join(ATTRIBUTES)}, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise EncoderError(f"--weights takes ATTR=NUMBER, got {item!r}") from e
    resolve_weights(np.zeros((1, len(ATTRIBUTES)), dtype=np.float32), out)  # finite numbers only
    return out


def fuse(q_base: np.ndarray, q_color: np.ndarray, q_shape: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """q = normalize(q_base + a_color * q_color + a_shape * q_shape), row by row."""
    return l2_normalize(q_base + weights[:, :1] * q_color + weights[:, 1:2] * q_shape).astype(np.float32)


def maxsim(q: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """s[b, n] = max_k <q_b, T_{n,k}> for q [B, D] and tokens [N, K, D]."""
    return np.einsum("bd,nkd->bnk", q, tokens).max(axis=-1)


def pooled(tokens: np.ndarray) -> np.ndarray:
    """The `pooled` vector of an image: the normalised mean of its tokens (HNSW prefetch)."""
    return l2_normalize(tokens.mean(axis=-2)).astype(np.float32)
