"""Target Relative Negative Sampling (METHOD.md), as pure functions over score matrices.

Delta_i(c) = s(q_i, t_i) - s(q_i, c). Small or negative Delta: c scores like the target (a likely
false negative); large Delta: an easy negative. The mid-zone keeps low <= Delta <= high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def delta_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """scores [Q, N] of every query against every pool candidate; targets: pool index per query."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores[np.arange(len(scores)), targets][:, None] - scores


def exclusion_mask(n_queries: int, n_pool: int, targets: np.ndarray, extra: list[list[int]] | None = None):
    """True where a candidate may never be a negative: the target itself (and same-scene duplicates)."""
    mask = np.zeros((n_queries, n_pool), dtype=bool)
    mask[np.arange(n_queries), targets] = True
    for i, ex in enumerate(extra or []):
        mask[i, list(ex)] = True
    return mask


def quantile_bounds(delta: np.ndarray, excluded: np.ndarray, q_low: float, q_high: float):
    """Per-query bounds at quantiles of that query's Delta distribution (excluded entries ignored)."""
    d = np.where(excluded, np.nan, delta)
    return np.nanquantile(d, q_low, axis=1), np.nanquantile(d, q_high, axis=1)


@dataclass
class MidZoneConfig:
    bounds: str = "quantile"  # quantile | absolute
    low: float = 0.02  # quantile of Delta, or absolute Delta
    high: float = 0.10
    widen: int = 2  # times to double the window when a mid-zone is empty
    fallback: int = 5  # then: this many nearest-rank candidates below the target


def mid_zone_negatives(delta: np.ndarray, excluded: np.ndarray, cfg: MidZoneConfig) -> list[np.ndarray]:
    """The mid-zone candidate indices of every query (never empty when the pool has a non-excluded item)."""
    n_q = delta.shape[0]
    if cfg.bounds == "quantile":
        low, high = quantile_bounds(delta, excluded, cfg.low, cfg.high)
    elif cfg.bounds == "absolute":
        low, high = np.full(n_q, cfg.low), np.full(n_q, cfg.high)
    else:
        raise ValueError(f"bounds must be 'quantile' or 'absolute', not {cfg.bounds!r}")
    out = []
    for i in range(n_q):
        lo, hi = float(low[i]), float(high[i])
        allowed = ~excluded[i]
        zone = np.flatnonzero(allowed & (delta[i] >= lo) & (delta[i] <= hi))
        for _ in range(cfg.widen):
            if len(zone):
                break
            width = max(hi - lo, 1e-3)
            lo, hi = lo - width / 2, hi + width / 2
            zone = np.flatnonzero(allowed & (delta[i] >= lo) & (delta[i] <= hi))
        if not len(zone):
            zone = nearest_below_target(delta[i], allowed, cfg.fallback)
        out.append(zone)
    return out


def nearest_below_target(delta_row: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """The k allowed candidates that score closest below the target (smallest positive Delta); when
    none scores below, the k with the largest Delta."""
    idx = np.flatnonzero(allowed)
    if not len(idx):
        return idx
    d = delta_row[idx]
    below = idx[d > 0]
    if len(below):
        return below[np.argsort(delta_row[below], kind="stable")[:k]]
    return idx[np.argsort(-d, kind="stable")[:k]]


class NegativeSampler:
    """One negative per query per draw, without replacement from its mid-zone until exhausted
    (then a fresh permutation). All state is numpy, so it pickles into a checkpoint."""

    def __init__(self, zones: list[np.ndarray], seed: int):
        self.zones = zones
        self.rng = np.random.default_rng(seed)
        self.orders = [self.rng.permutation(z) for z in zones]
        self.pos = np.zeros(len(zones), dtype=np.int64)

    def draw(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty(len(queries), dtype=np.int64)
        for j, i in enumerate(queries):
            if self.pos[i] >= len(self.orders[i]):
                self.orders[i] = self.rng.permutation(self.zones[i])
                self.pos[i] = 0
            out[j] = self.orders[i][self.pos[i]]
            self.pos[i] += 1
        return out


def random_negatives(rng: np.random.Generator, targets: np.ndarray, pool_size: int) -> np.ndarray:
    """Uniform negatives from the pool, never the target itself (the warm-up interval)."""
    neg = rng.integers(0, pool_size - 1, size=len(targets))
    return neg + (neg >= targets)


def rebuild_epochs(epochs: int, warmup: int) -> list[int]:
    """Epochs (0-based) at whose start the mid-zones are rebuilt: after `warmup` epochs of random
    negatives, then every max(1, epochs // 6) epochs."""
    every = max(1, epochs // 6)
    return list(range(warmup, epochs, every))
