"""Retrieval metrics and benchmark submission files. Pure numpy, no torch.

Ranking convention everywhere: descending score, ties broken by gallery order (a stable sort), so a
metric computed here equals the one from sorting each row by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FIQ_KS = (10, 50)
CIRCO_KS = (5, 10, 25, 50)


def target_ranks(scores: np.ndarray, targets: Sequence[int], exclude: Sequence[int] | None = None,
                 positives: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """0-based rank of each query's target in its row of `scores` [Q, G].

    exclude: one gallery index per query (or -1) removed from that ranking, e.g. the reference.
    positives: extra gallery indices per query that count as the target (duplicates of the target
    scene); the rank is then the best rank among them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    q, g = scores.shape
    targets = np.asarray(targets, dtype=np.int64)
    cols = np.arange(g)

    def rank_of(t: np.ndarray) -> np.ndarray:
        st = scores[np.arange(q), t][:, None]
        ahead = (scores > st) | ((scores == st) & (cols[None, :] < t[:, None]))
        if exclude is not None:
            ex = np.asarray(exclude, dtype=np.int64)
            ahead[np.arange(q)[ex >= 0], ex[ex >= 0]] = False
        return ahead.sum(axis=1)

    ranks = rank_of(targets)
    if positives is not None:
        for i, extra in enumerate(positives):
            for p in extra:
                if exclude is not None and p == exclude[i]:
                    continue
                ranks[i] = min(ranks[i], rank_of_single(scores[i], p, None if exclude is None else exclude[i]))
    return ranks


def rank_of_single(row: np.ndarray, t: int, exclude: int | None) -> int:
    cols = np.arange(len(row))
    ahead = (row > row[t]) | ((row == row[t]) & (cols < t))
    if exclude is not None and exclude >= 0:
        ahead[exclude] = False
    return int(ahead.sum())


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


def cirr_ranks(scores: np.ndarray, gallery: Sequence[str], references: Sequence[str], targets: Sequence[str],
               members: Sequence[Sequence[str]], positives: Sequence[Sequence[str]] | None = None):
    """Per query, CIRR's two 0-based target ranks: over the gallery without the reference, and over the
    img_set members without the reference (the subset)."""
    index = {n: i for i, n in enumerate(gallery)}
    ref_idx = [index[r] for r in references]
    tgt_idx = [index[t] for t in targets]
    pos_idx = None if positives is None else [[index[p] for p in ps if p in index] for ps in positives]
    ranks = target_ranks(scores, tgt_idx, ref_idx, pos_idx)
    sub_ranks = []
    for i, mem in enumerate(members):
        cand = [index[m] for m in mem if m != references[i]]
        row = np.asarray(scores[i])[cand]
        sub_ranks.append(rank_of_single(row, cand.index(tgt_idx[i]), None))
    return ranks, np.array(sub_ranks, dtype=np.int64)


def cirr_metrics(scores: np.ndarray, gallery: Sequence[str], references: Sequence[str], targets: Sequence[str],
                 members: Sequence[Sequence[str]], positives: Sequence[Sequence[str]] | None = None) -> dict:
    """CIRR protocol: the reference is removed from every ranking; R@1/5/10/50 over the gallery,
    Recall_subset@1/2/3 over the img_set members minus the reference; Avg = (R@5 + Rs@1) / 2."""
    ranks, sub_ranks = cirr_ranks(scores, gallery, references, targets, members, positives)
    out = recall_at_k(ranks, CIRR_KS)
    out.update(recall_at_k(sub_ranks, CIRR_SUBSET_KS, prefix="Rs"))
    out["Avg"] = (out["R@5"] + out["Rs@1"]) / 2
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


def fashioniq_metrics(per_category: dict[str, tuple[np.ndarray, Sequence[int]]]) -> dict:
    """per_category: name -> (scores [Q, G_cat], target index per query). The reference stays in
    the gallery (FashionIQ's protocol). Returns per-category R@10/R@50 and their means."""
    out: dict[str, float] = {}
    for cat, (scores, targets) in per_category.items():
        for k, v in recall_at_k(target_ranks(scores, targets), FIQ_KS).items():
            out[f"{cat}/{k}"] = v
    cats = list(per_category)
    for k in FIQ_KS:
        out[f"mean/R@{k}"] = float(np.mean([out[f"{c}/R@{k}"] for c in cats]))
    out["Avg"] = (out["mean/R@10"] + out["mean/R@50"]) / 2
    return out


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


def circo_map(rankings: Sequence[Sequence], ground_truth: Sequence[Sequence], ks=CIRCO_KS) -> dict:
    """mAP@K in percent over queries with several correct targets each."""
    return {
        f"mAP@{k}": float(100.0 * np.mean([average_precision_at_k(r, set(g), k)
                                            for r, g in zip(rankings, ground_truth, strict=False)]))
        for k in ks
    }


def write_cirr_submission(out_dir: str | Path, pairids: Sequence[int], scores: np.ndarray,
                          gallery: Sequence[str], references: Sequence[str],
                          members: Sequence[Sequence[str]], prefix: str = "cirr") -> tuple[Path, Path]:
    """The two files of the CIRR test server: top 50 names (reference excluded) and top 3 img_set
    members (reference excluded)."""
    index = {n: i for i, n in enumerate(gallery)}
    ref_idx = [index[r] for r in references]
    top = top_k(scores, 50, ref_idx)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for i, pid in enumerate(pairids):
        recall[str(pid)] = [gallery[j] for j in top[i]]
        cand = [m for m in members[i] if m != references[i]]
        row = np.asarray(scores[i])[[index[m] for m in cand]]
        subset[str(pid)] = [cand[j] for j in np.argsort(-row, kind="stable")[:3]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{prefix}_recall_submission.json", out_dir / f"{prefix}_recall_subset_submission.json")
    paths[0].write_text(json.dumps(recall))
    paths[1].write_text(json.dumps(subset))
    return paths


def write_circo_submission(path: str | Path, query_ids: Sequence[int], rankings: Sequence[Sequence[int]]) -> Path:
    """{"<query id>": [top 50 image ids]} for the CIRCO test server."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(q): [int(x) for x in r[:50]] for q, r in zip(query_ids, rankings, strict=False)}))
    return path
