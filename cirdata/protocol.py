"""The benchmarks' evaluation protocols as ONE function from ranked ids to metrics: `ranked_metrics`.

Torch evaluation ranks a score matrix (`rank_scores`), served evaluation takes CIRSearch's results, the
oracle ranks its own guesses; all three hand ids best first to the same function, so the torch and the
served numbers can only differ where the rankings do.

- CIRR (and the synthetic set): the reference is never in its own ranking; R@1/5/10/50 over the
  gallery, Recall_subset@1/2/3 over the img_set members other than the reference, Avg = (R@5 + Rs@1) / 2.
  A hit is the target or any image that shows the target's scene (the synthetic set knows scenes).
- FashionIQ: each category ranks its own gallery, the reference included (the protocol's rule);
  R@10 / R@50 per category, their means and Avg.
- CIRCO: mAP@5/10/25/50 over the reference-free ranking, every ground-truth target a hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cirdata.datasets import CIRRSplit, scene_keys
from cirdata.errors import DataError
from cirdata.metrics import CIRCO_KS, CIRR_KS, CIRR_SUBSET_KS, FIQ_KS, average_precision_at_k, recall_at_k, top_k
from cirdata.tables import CIRData

PROTOCOLS = ("cirr", "fashioniq", "circo")
PROTOCOL_OF_KIND = {"synth": "cirr", "cirr": "cirr", "fashioniq": "fashioniq", "circo": "circo"}
RANK_DEPTH = 50  # the deepest K of every protocol: a ranking this deep decides every metric


@dataclass(frozen=True)
class Query:
    """What a protocol needs to know of one query, by image id."""

    reference: str
    correct: tuple[str, ...]  # the target first, then every other image that counts as a hit
    members: tuple[str, ...] = ()  # CIRR: the img_set, reference included
    group: str = ""  # FashionIQ: the category


@dataclass
class Rankings:
    """Per query, ids best first: `ranked` over the gallery (CIRR and CIRCO without the reference,
    FashionIQ over the query's category, reference included), at least RANK_DEPTH deep or the whole
    gallery; `subset` (CIRR) over the img_set members other than the reference."""

    ranked: list[list[str]]
    subset: list[list[str]] | None = None


def protocol_of(kind: str) -> str:
    if kind not in PROTOCOL_OF_KIND:
        raise DataError(f"no evaluation protocol for data kind {kind!r}; known: {', '.join(PROTOCOL_OF_KIND)}")
    return PROTOCOL_OF_KIND[kind]


MISS = np.iinfo(np.int64).max  # hit_ranks' value for a query whose ranking holds no hit: a miss at every K


def hit_ranks(queries: Sequence[Query], ranked: Sequence[Sequence[str]]) -> np.ndarray:
    """0-based position of each query's first hit in its ranking; MISS when none is in it, so that a
    ranking shorter than K without the target is a miss at K, never a hit (whatever its length)."""
    out = np.empty(len(queries), dtype=np.int64)
    for i, (q, ids) in enumerate(zip(queries, ranked, strict=True)):
        correct = set(q.correct)
        out[i] = next((j for j, x in enumerate(ids) if x in correct), MISS)
    return out


def short_rankings(queries: Sequence[Query], rankings: Rankings, depth: int = RANK_DEPTH) -> list[int]:
    """The queries whose gallery ranking is shorter than `depth` or whose subset ranking (CIRR) leaves out
    img_set members: scored as misses beyond their end (hit_ranks), and worth a word in a report (a
    failed item, a filter, a gallery smaller than the protocol's depth)."""
    out = []
    for i, q in enumerate(queries):
        short = len(rankings.ranked[i]) < depth
        if rankings.subset is not None and q.members:
            short |= len(rankings.subset[i]) < len([m for m in q.members if m != q.reference])
        if short:
            out.append(i)
    return out


def ranked_metrics(protocol: str, queries: Sequence[Query], rankings: Rankings) -> dict[str, float]:
    """Every metric of `protocol` from ranked ids: the one place the protocols are written."""
    if len(rankings.ranked) != len(queries):
        raise DataError(f"{len(rankings.ranked)} rankings for {len(queries)} queries")
    if protocol == "cirr":
        if rankings.subset is None:
            raise DataError("the CIRR protocol needs the img_set rankings (Rankings.subset) too")
        out = recall_at_k(hit_ranks(queries, rankings.ranked), CIRR_KS)
        out.update(recall_at_k(hit_ranks(queries, rankings.subset), CIRR_SUBSET_KS, prefix="Rs"))
        out["Avg"] = (out["R@5"] + out["Rs@1"]) / 2
        return out
    if protocol == "fashioniq":
        out = {}
        ranks = hit_ranks(queries, rankings.ranked)
        groups = list(dict.fromkeys(q.group for q in queries))
        for g in groups:
            sel = np.array([q.group == g for q in queries])
            out.update({f"{g}/{k}": v for k, v in recall_at_k(ranks[sel], FIQ_KS).items()})
        for k in FIQ_KS:
            out[f"mean/R@{k}"] = float(np.mean([out[f"{g}/R@{k}"] for g in groups])) if groups else 0.0
        out["Avg"] = (out["mean/R@10"] + out["mean/R@50"]) / 2
        return out
    if protocol == "circo":
        return {f"mAP@{k}": float(100.0 * np.mean([average_precision_at_k(r, set(q.correct), k)
                                                    for q, r in zip(queries, rankings.ranked, strict=True)]))
                if len(queries) else 0.0 for k in CIRCO_KS}
    raise DataError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def query_hits(queries: Sequence[Query], rankings: Rankings) -> dict[str, np.ndarray]:
    """Per query, right at R@1 and (CIRR) at Rs@1, bool [Q]: what a paired test of two models compares."""
    out = {"R@1": hit_ranks(queries, rankings.ranked) < 1}
    if rankings.subset is not None:
        out["Rs@1"] = hit_ranks(queries, rankings.subset) < 1
    return out


def queries_of(data: CIRData) -> list[Query]:
    """The protocol's view of a split in memory (targets must be known)."""
    names = data.names
    same = data.same_scene_images()
    out = []
    for i, (r, t) in enumerate(zip(data.ref, data.tgt, strict=True)):
        if data.positives is not None:
            correct = tuple(names[j] for j in data.positives[i])
        else:
            correct = (names[t], *(names[j] for j in (same[t] if same else ()) if j != t))
        members = tuple(names[m] for m in data.members[i]) if data.members else ()
        group = data.group_names[data.query_group[i]] if data.query_group is not None else ""
        out.append(Query(names[r], correct, members, group))
    return out


def cirr_queries(split: CIRRSplit) -> list[Query]:
    """The CIRR protocol's view of a CIRR-layout split on disk (the served path has no image table);
    same-scene images count as hits where the split knows scenes, as in `queries_of`."""
    keys = scene_keys(split)
    by_key: dict[str, list[str]] = {}
    for name, key in (keys or {}).items():
        by_key.setdefault(key, []).append(name)
    out = []
    for q in split.queries:
        if q.target is None:
            raise DataError(f"{split.root}: split {split.split!r} has no targets to score against")
        same = by_key.get(keys[q.target], []) if keys else []
        out.append(Query(q.reference, (q.target, *(n for n in same if n != q.target)), tuple(q.members)))
    return out


def rank_gallery(gallery: Sequence[str], queries: Sequence[Query], scores: np.ndarray, depth: int = RANK_DEPTH,
                 subset: bool = True) -> Rankings:
    """Reference-free rankings (CIRR, CIRCO) from scores [Q, gallery]; ties go to the earlier gallery image
    (a stable sort), so a metric equals the one from sorting each row by hand. subset: also rank each
    query's img_set members other than the reference (CIRR)."""
    index = {n: i for i, n in enumerate(gallery)}
    refs = [index[q.reference] for q in queries]
    ranked = [[gallery[j] for j in row] for row in top_k(scores, depth, refs)]
    if not subset:
        return Rankings(ranked)
    subsets = []
    for q, row in zip(queries, scores, strict=True):
        cand = [m for m in q.members if m != q.reference]
        order = np.argsort(-np.asarray(row, dtype=np.float64)[[index[m] for m in cand]], kind="stable")
        subsets.append([cand[j] for j in order])
    return Rankings(ranked, subsets)


def rank_scores(protocol: str, data: CIRData, scores: np.ndarray, depth: int = RANK_DEPTH,
                queries: Sequence[Query] | None = None) -> Rankings:
    """Rankings of a score matrix [Q, gallery] over `data` by the protocol's rule (FashionIQ: within
    each query's category, reference included; otherwise `rank_gallery`)."""
    scores = np.asarray(scores)
    if protocol != "fashioniq":
        return rank_gallery(data.names, queries or queries_of(data), scores, depth, subset=protocol == "cirr")
    ranked: list[list[str]] = [[] for _ in range(len(scores))]
    for ci in range(len(data.group_names)):
        qs = np.flatnonzero(data.query_group == ci)
        gallery = np.flatnonzero(data.group == ci)
        if len(qs):
            for qi, row in zip(qs, top_k(scores[np.ix_(qs, gallery)], depth), strict=True):
                ranked[qi] = [data.names[gallery[j]] for j in row]
    return Rankings(ranked)


def score_metrics(data: CIRData, scores: np.ndarray) -> dict[str, float]:
    """`ranked_metrics` of a score matrix over `data`'s gallery (torch evaluation, the int8 benchmark)."""
    protocol, queries = protocol_of(data.kind), queries_of(data)
    return ranked_metrics(protocol, queries, rank_scores(protocol, data, scores, queries=queries))
