"""Target Relative Negative Sampling (METHOD.md), as pure functions over score matrices.

Delta_i(c) = s(q_i, t_i) - s(q_i, c). Small or negative Delta: c scores like the target (a likely
false negative); large Delta: an easy negative. The mid-zone keeps the candidates below the target
(Delta > guard) with low <= Delta <= high, quantile bounds taken over those candidates only.
mine_mid_zones applies the same rule a chunk of queries at a time, in float32, so that mining a
CIRR-sized problem (28,225 queries x 16,939 images) holds O(chunk x pool) scores, not the whole matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from cirdata.tables import CIRData
from training.errors import TrainingError


@dataclass
class NegativePools:
    pools: list[np.ndarray]  # image indices of each candidate pool, sorted
    of_query: np.ndarray  # the pool of every query


TRNS_POOLS = ("auto", "all", "targets")


def negative_pools(data: CIRData, mode: str = "auto") -> NegativePools:
    """Where TRNS (and the warm-up's random negatives) take negatives from. auto, METHOD.md's [QuRe]:
    FashionIQ: the training targets of the query's category; CIRR and the synthetic set: every
    training image. all: every training image for every query. targets: the training targets only, for
    every query (a fixed subset of the gallery: on the synthetic set under a fifth of it, so mining is ~5x cheaper)."""
    if mode not in TRNS_POOLS:
        raise TrainingError(f"trns_pool must be one of {', '.join(TRNS_POOLS)}, not {mode!r}")
    if mode == "targets":
        return NegativePools([np.unique(data.tgt)], np.zeros(len(data.ref), dtype=np.int64))
    if mode == "all" or data.query_group is None:
        return NegativePools([np.arange(len(data.names))], np.zeros(len(data.ref), dtype=np.int64))
    pools = [np.unique(data.tgt[data.query_group == g]) for g in range(len(data.group_names))]
    return NegativePools(pools, data.query_group.copy())



def delta_scores(scores: np.ndarray, targets: np.ndarray, dtype=np.float64) -> np.ndarray:
    """scores [Q, N] of every query against every pool candidate; targets: pool index per query."""
    scores = np.asarray(scores, dtype=dtype)
    return scores[np.arange(len(scores)), targets][:, None] - scores


def exclusion_mask(n_queries: int, n_pool: int, targets: np.ndarray, extra: Sequence[Sequence[int]] | None = None):
    """True where a candidate may never be a negative: the target itself (and same-scene duplicates)."""
    mask = np.zeros((n_queries, n_pool), dtype=bool)
    mask[np.arange(n_queries), targets] = True
    for i, ex in enumerate(extra or []):
        mask[i, list(ex)] = True
    return mask


def quantile_bounds(delta: np.ndarray, candidates: np.ndarray, q_low: float, q_high: float):
    """Per-query bounds at quantiles of that query's Delta over its candidates (a bool mask [Q, N];
    rows without a candidate get NaN bounds)."""
    d = np.where(candidates, delta, np.nan)
    lo, hi = np.full(len(d), np.nan), np.full(len(d), np.nan)
    rows = candidates.any(axis=1)
    if rows.any():
        lo[rows], hi[rows] = np.nanquantile(d[rows], q_low, axis=1), np.nanquantile(d[rows], q_high, axis=1)
    return lo, hi


@dataclass
class MidZoneConfig:
    """The mid-zone is anchored at the target: only candidates that score below it (Delta > guard)
    can be in it, and quantile bounds are quantiles of Delta over those candidates alone, so a query
    whose target ranks 50th never gets one of the 49 images above it as a negative, however the
    bounds are set. guard: the band just below the target left out as likely false negatives
    (unlabelled true matches score like the target), in Delta units."""

    bounds: str = "quantile"  # quantile (of Delta over the candidates below the target) | absolute
    low: float = 0.02  # quantile of Delta, or absolute Delta
    high: float = 0.10
    guard: float = 0.01  # [ours] Delta <= guard: too close below the target to be a safe negative
    widen: int = 2  # times to double the window when a mid-zone is empty
    fallback: int = 5  # then: this many nearest-rank candidates below the guard band (or below the target)

    def __post_init__(self):
        if self.bounds not in ("quantile", "absolute"):
            raise ValueError(f"bounds must be 'quantile' or 'absolute', not {self.bounds!r}")
        if self.bounds == "quantile" and not 0 <= self.low <= self.high <= 1:
            raise ValueError(f"quantile bounds need 0 <= low <= high <= 1, got {self.low}, {self.high}")
        if self.guard < 0:
            raise ValueError(f"guard is a Delta margin below the target, >= 0, not {self.guard}")


def mid_zone_negatives(delta: np.ndarray, excluded: np.ndarray, cfg: MidZoneConfig) -> list[np.ndarray]:
    """The mid-zone candidate indices of every query (never empty when the pool has a non-excluded
    item). Members score below the target by more than cfg.guard whenever any candidate does; else
    they are the nearest below the target; only a query with nothing below its target gets the
    lowest-scoring candidates (above it)."""
    n_q = delta.shape[0]
    below = ~excluded & (delta > cfg.guard)
    if cfg.bounds == "quantile":
        low, high = quantile_bounds(delta, below, cfg.low, cfg.high)
    else:
        low, high = np.full(n_q, cfg.low), np.full(n_q, cfg.high)
    out = []
    for i in range(n_q):
        lo, hi = float(low[i]), float(high[i])
        zone = np.flatnonzero(below[i] & (delta[i] >= lo) & (delta[i] <= hi)) if below[i].any() else np.zeros(0, int)
        for _ in range(cfg.widen):
            if len(zone) or not below[i].any():
                break
            width = max(hi - lo, 1e-3)
            lo, hi = lo - width / 2, hi + width / 2
            zone = np.flatnonzero(below[i] & (delta[i] >= lo) & (delta[i] <= hi))
        if not len(zone):
            zone = nearest_below_target(delta[i], ~excluded[i], cfg.fallback, cfg.guard)
        out.append(zone)
    return out


def nearest_below_target(delta_row: np.ndarray, allowed: np.ndarray, k: int, guard: float = 0.0) -> np.ndarray:
    """The k allowed candidates closest below the guard band (smallest Delta > guard); when none is
    there, the k closest below the target (Delta > 0); when none scores below, the k lowest-scoring."""
    idx = np.flatnonzero(allowed)
    if not len(idx):
        return idx
    d = delta_row[idx]
    for floor in (guard, 0.0):
        below = idx[d > floor]
        if len(below):
            return below[np.argsort(delta_row[below], kind="stable")[:k]]
    return idx[np.argsort(-d, kind="stable")[:k]]


def mine_mid_zones(score_block: Callable[[int, int], np.ndarray], targets: np.ndarray,
                   excluded: Sequence[Sequence[int]], cfg: MidZoneConfig, chunk: int = 1024) -> list[np.ndarray]:
    """The mid-zones of queries that share one candidate pool, `chunk` queries at a time, in float32.

    score_block(lo, hi): scores [hi - lo, pool] of queries lo..hi-1 against the pool; targets: the pool
    position of each query's target; excluded: per query, other pool positions that may never be its
    negative (the reference, duplicates of the target). Peak memory: a few chunk x pool arrays.
    Returns pool positions, as mid_zone_negatives over the whole matrix would."""
    targets = np.asarray(targets)
    zones: list[np.ndarray] = []
    for lo in range(0, len(targets), chunk):
        hi = min(len(targets), lo + chunk)
        scores = np.asarray(score_block(lo, hi), dtype=np.float32)
        delta = delta_scores(scores, targets[lo:hi], dtype=np.float32)
        excl = exclusion_mask(hi - lo, scores.shape[1], targets[lo:hi], excluded[lo:hi])
        zones += mid_zone_negatives(delta, excl, cfg)
    return zones


class NegativeSampler:
    """One negative per query per draw, without replacement from its mid-zone until exhausted
    (then a fresh permutation). state_dict() is numpy arrays and numbers, for the checkpoint."""

    def __init__(self, zones: list[np.ndarray], seed: int):
        self.zones = zones
        self.rng = np.random.default_rng(seed)
        self.orders = [self.rng.permutation(z) for z in zones]
        self.pos = np.zeros(len(zones), dtype=np.int64)

    def state_dict(self) -> dict:
        lengths = np.array([len(z) for z in self.zones], dtype=np.int64)
        return {"lengths": lengths, "zones": _flat(self.zones), "orders": _flat(self.orders), "pos": self.pos.copy(),
                "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state_dict(cls, state: dict) -> NegativeSampler:
        cuts = np.cumsum(np.asarray(state["lengths"]))[:-1]
        out = cls.__new__(cls)
        out.zones = [z.astype(np.int64) for z in np.split(np.asarray(state["zones"]), cuts)]
        out.orders = [o.astype(np.int64) for o in np.split(np.asarray(state["orders"]), cuts)]
        out.pos = np.asarray(state["pos"], dtype=np.int64).copy()
        out.rng = np.random.default_rng()
        out.rng.bit_generator.state = state["rng"]
        return out

    def draw(self, queries: np.ndarray) -> np.ndarray:
        out = np.empty(len(queries), dtype=np.int64)
        for j, i in enumerate(queries):
            if self.pos[i] >= len(self.orders[i]):
                self.orders[i] = self.rng.permutation(self.zones[i])
                self.pos[i] = 0
            out[j] = self.orders[i][self.pos[i]]
            self.pos[i] += 1
        return out


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int32) if len(arrays) else np.zeros(0, dtype=np.int32)


def random_negatives(rng: np.random.Generator, pools: Sequence[np.ndarray],
                     excluded: Sequence[Collection[int]]) -> np.ndarray:
    """One uniform negative per query from its pool, never one of its excluded images (its target, its
    reference, duplicates of its target): the warm-up interval's negatives."""
    out = np.empty(len(pools), dtype=np.int64)
    for j, (pool, ex) in enumerate(zip(pools, excluded, strict=True)):
        ex = {int(x) for x in ex}
        for _ in range(64):  # rejection: the excluded images are a handful out of thousands
            c = int(pool[rng.integers(len(pool))])
            if c not in ex:
                break
        else:
            allowed = np.setdiff1d(pool, np.fromiter(ex, dtype=np.int64))
            if not len(allowed):
                raise ValueError(f"query {j}: every image of its negative pool is excluded ({sorted(ex)})")
            c = int(allowed[rng.integers(len(allowed))])
        out[j] = c
    return out


def rebuild_epochs(epochs: int, warmup: int | None = None, every: int | None = None) -> list[int]:
    """Epochs (0-based) at whose start the mid-zones are rebuilt: every max(1, epochs // 6) epochs
    (METHOD.md) unless `every` says otherwise, after a warm-up of random negatives that lasts the first
    such interval unless `warmup` says how many epochs."""
    every = every or max(1, epochs // 6)
    return list(range(every if warmup is None else warmup, epochs, every))
