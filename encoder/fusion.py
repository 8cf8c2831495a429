"""Attribute-weight fusion and MaxSim in numpy: the serving side of METHOD.md's formulas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoder.bundle import DEFAULT_ATTRIBUTES
from encoder.errors import EncoderError

__all__ = ["DEFAULT_ATTRIBUTES", "fuse", "l2_normalize", "maxsim", "parse_weights", "pooled", "resolve_weights"]


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def resolve_weights(model_weights: np.ndarray, override: dict | None,
                    attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> np.ndarray:
    """The model's attribute weights per query [B, A] (columns in the order of `attributes`, the
    bundle's names), with the caller's values replacing any named."""
    attributes = list(attributes)
    w = np.array(model_weights, dtype=np.float32, copy=True)
    for name, value in (override or {}).items():
        if name not in attributes:
            raise EncoderError(f"unknown attribute {name!r} in weights; this model's attributes: "
                               f"{', '.join(attributes)}")
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise EncoderError(f"weight for {name!r} must be a number, got {value!r}") from e
        if not np.isfinite(value):
            raise EncoderError(f"weight for {name!r} must be finite, got {value}")
        w[:, attributes.index(name)] = value
    return w


def parse_weights(items: list[str] | None, attributes: Sequence[str] | None = None) -> dict[str, float] | None:
    """Command-line weight overrides (`color=2`, `shape=0.5`) as a dict of finite numbers. With
    `attributes` (the model's names) an unknown name is refused here; without, where the model is
    not loaded yet, resolve_weights refuses it once the model's names are known."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or (attributes is not None and name not in attributes):
            known = f" with ATTR one of this model's attributes ({', '.join(attributes)})" if attributes else ""
            raise EncoderError(f"--weights takes ATTR=NUMBER{known}, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise EncoderError(f"--weights takes ATTR=NUMBER, got {item!r}") from e
    names = list(out) if attributes is None else list(attributes)
    resolve_weights(np.zeros((1, len(names)), dtype=np.float32), out, names)  # finite numbers only
    return out


def fuse(q_base: np.ndarray, q_attrs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """q = normalize(q_base + sum_a w_a q_a), row by row: q_base [B, D], q_attrs [B, A, D], weights [B, A]."""
    return l2_normalize(q_base + np.einsum("ba,bad->bd", weights, q_attrs)).astype(np.float32)


def maxsim(q: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """s[b, n] = max_k <q_b, T_{n,k}> for q [B, D] and tokens [N, K, D]."""
    return np.einsum("bd,nkd->bnk", q, tokens).max(axis=-1)


def pooled(tokens: np.ndarray) -> np.ndarray:
    """The `pooled` vector of an image: the normalised mean of its tokens (HNSW prefetch)."""
    return l2_normalize(tokens.mean(axis=-2)).astype(np.float32)
