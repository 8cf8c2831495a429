"""The oracle for the synthetic set: parse each modification text, apply it to the reference's
ground-truth scene and retrieve the image with the resulting key. It scores 100 only if the
generator, the loader and the metric code agree."""

from __future__ import annotations

from pathlib import Path

from cirdata.datasets import CIRRSplit, load_cirr, read_scenes, scenes_path
from cirdata.errors import DataError
from cirdata.protocol import RANK_DEPTH, Rankings, cirr_queries, ranked_metrics
from cirdata.scenes import apply_edit, parse_edit, scene_from_dict, scene_key


def load_scenes(split: CIRRSplit) -> dict[str, dict]:
    scenes = read_scenes(split)
    if scenes is None:
        raise DataError(f"{scenes_path(split)}: no ground-truth scenes; the oracle runs on the synthetic set only")
    return scenes


def oracle_rankings(split: CIRRSplit) -> Rankings:
    """Each query's ranking: the image with the predicted scene first (when there is one), then the rest
    in gallery order; the reference is never ranked."""
    scenes = load_scenes(split)
    gallery = split.gallery
    by_key = {scenes[n]["key"]: n for n in gallery}
    ranked, subset = [], []
    for q in split.queries:
        ref = scene_from_dict(scenes[q.reference]["objects"])
        guess = by_key.get(scene_key(apply_edit(ref, parse_edit(q.caption, ref))))
        first = [guess] if guess and guess != q.reference else []
        rest = (n for n in gallery if n != q.reference and n not in first)
        ranked.append(first + [n for _, n in zip(range(RANK_DEPTH - len(first)), rest, strict=False)])
        members = [m for m in q.members if m != q.reference]
        subset.append([m for m in first if m in members] + [m for m in members if m not in first])
    return Rankings(ranked, subset)


def oracle_metrics(root: str | Path, split: str = "val") -> dict:
    data = load_cirr(root, split)
    return ranked_metrics("cirr", cirr_queries(data), oracle_rankings(data))
