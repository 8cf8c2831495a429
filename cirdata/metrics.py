"""The pieces the protocols (cirdata/protocol.py) are made of, and paired tests between two systems.
Pure numpy, no torch. Ranking convention everywhere: descending score, ties broken by gallery order
(a stable sort), so a ranking made here equals the one from sorting each row by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FIQ_KS = (10, 50)
CIRCO_KS = (5, 10, 25, 50)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int], prefix: str = "R") -> dict[str, float]:
    """Recall@K in percent (the papers' convention)."""
    ranks = np.asarray(ranks)
    return {f"{prefix}@{k}": float(100.0 * np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def top_k(scores: np.ndarray, k: int, exclude: Sequence[int] | None = None, rows: int = 256) -> np.ndarray:
    """Indices of the top k per row, best first, excluding one index per row (the reference); `rows`
    rows at a time, so that a CIRCO-sized gallery (123k) sorts in bounded memory."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1] - (0 if exclude is None else 1))
    out = np.empty((len(scores), k), dtype=np.int64)
    for lo in range(0, len(scores), rows):
        block = np.array(scores[lo: lo + rows], dtype=np.float64)
        if exclude is not None:
            ex = np.asarray(exclude)[lo: lo + rows]
            block[np.arange(len(block))[ex >= 0], ex[ex >= 0]] = -np.inf
        out[lo: lo + rows] = np.argsort(-block, axis=1, kind="stable")[:, :k]
    return out


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """McNemar's exact test of two systems on the same queries (a[i], b[i]: query i right): the
    discordant counts and the two-sided binomial p-value of b-only vs a-only wins."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p": 1.0}
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return {"only_a": only_a, "only_b": only_b, "p": min(1.0, 2 * tail)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap over queries of mean(b) - mean(a), where a[i], b[i] are per-query scores (e.g.
    hit rates averaged over seeds): the difference in points, its 95% interval, and the two-sided
    p-value (twice the share of resamples on the other side of zero)."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    side = (means <= 0).mean() if d.mean() > 0 else (means >= 0).mean()
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"diff": 100 * float(d.mean()), "ci95": [100 * float(lo), 100 * float(hi)],
            "p": float(min(1.0, 2 * side))}


def average_precision_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """CIRCO's AP@K: (1 / min(K, |G|)) * sum_{i<=K} P@i * rel(i)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / min(k, len(relevant))
