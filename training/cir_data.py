"""Training/evaluation data in memory: an image table (uint8, preprocessed once with the encoder's
functions) and CIR triplets pointing into it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from encoder.errors import EncoderError
from encoder.preprocess import load_image, normalize, prepare_image
from training import datasets as ds
from training.errors import TrainingError

DATA_KINDS = ("synth", "cirr", "fashioniq")


@dataclass
class CIRData:
    kind: str
    split: str
    names: list[str]  # image table
    pixels: np.ndarray  # uint8 [N, H, W, 3]
    ref: np.ndarray  # [Q] image index of each query's reference
    tgt: np.ndarray  # [Q] image index of the target (-1 when hidden)
    texts: list[str]  # evaluation text of each query
    raw_captions: list[tuple[str, str]] | None = None  # FashionIQ's two captions, for training sampling
    members: list[list[int]] | None = None  # CIRR img_set, image indices
    pairids: list[int] = field(default_factory=list)
    edit_kinds: list[str | None] = field(default_factory=list)
    group: np.ndarray | None = None  # FashionIQ: category id of each gallery image (-1: not in the gallery)
    query_group: np.ndarray | None = None  # FashionIQ: category id of each query
    group_names: tuple[str, ...] = ()
    scene_captions: list[str] | None = None  # synthetic set: a full caption per image (pretraining)
    scene_keys: list[str] | None = None

    def train_text(self, i: int, rng: random.Random) -> str:
        if self.raw_captions is not None:
            return ds.fiq_train_caption(*self.raw_captions[i], rng)
        return self.texts[i]

    def batch_pixels(self, idx: np.ndarray, mean, std) -> np.ndarray:
        return normalize(self.pixels[idx], mean, std)

    def same_scene_images(self) -> list[list[int]] | None:
        """For every image, the indices of the images that show the same scene (itself included);
        None when the data set does not know scenes (only the synthetic set does)."""
        if self.scene_keys is None:
            return None
        by_key: dict[str, list[int]] = {}
        for i, k in enumerate(self.scene_keys):
            by_key.setdefault(k, []).append(i)
        return [by_key[k] for k in self.scene_keys]


def _load_pixels(paths: list[Path], image_size: int, progress: bool) -> np.ndarray:
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="load images", unit="img", disable=not progress, leave=False)):
        try:
            out[i] = prepare_image(load_image(p, draft_size=image_size), image_size)
        except EncoderError as e:
            raise TrainingError(f"{p}: {e}") from e
    return out


def load_cir_data(kind: str, root: str | Path, split: str, image_size: int, progress: bool = True,
                  max_queries: int | None = None) -> CIRData:
    if kind not in DATA_KINDS:
        raise TrainingError(f"unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")
    if kind == "fashioniq":
        return _load_fashioniq(root, split, image_size, progress, max_queries)
    data = ds.load_cirr(root, split)
    queries = data.queries[:max_queries] if max_queries else data.queries
    names = data.gallery
    index = {n: i for i, n in enumerate(names)}
    pixels = _load_pixels([data.images[n] for n in names], image_size, progress)
    scene_captions = scene_keys = None
    scenes_path = Path(root) / "scenes" / f"scenes.{data.name}.{split}.json"
    if scenes_path.is_file():
        scenes = ds.read_json(scenes_path)
        scene_captions = [scenes[n]["caption"] for n in names]
        scene_keys = [scenes[n]["key"] for n in names]
    return CIRData(
        kind=kind, split=split, names=names, pixels=pixels,
        ref=np.array([index[q.reference] for q in queries], dtype=np.int64),
        tgt=np.array([index[q.target] if q.target else -1 for q in queries], dtype=np.int64),
        texts=[q.caption for q in queries],
        members=[[index[m] for m in q.members] for q in queries],
        pairids=[q.pairid for q in queries], edit_kinds=[q.edit_kind for q in queries],
        scene_captions=scene_captions, scene_keys=scene_keys,
    )


def _load_fashioniq(root, split, image_size, progress, max_queries) -> CIRData:
    data = ds.load_fashioniq(root, split)
    names, group = [], []
    for ci, cat in enumerate(data.categories):
        names += data.gallery[cat]
        group += [ci] * len(data.gallery[cat])
    index = {}
    for i, n in enumerate(names):
        index.setdefault(n, i)
    trip = data.triplets[:max_queries] if max_queries else data.triplets
    for t in trip:  # candidates are not always in the split's image list
        if t.candidate not in index:
            index[t.candidate] = len(names)
            names.append(t.candidate)
            group.append(-1)
    pixels = _load_pixels([data.image_path(n) for n in names], image_size, progress)
    return CIRData(
        kind="fashioniq", split=split, names=names, pixels=pixels,
        ref=np.array([index[t.candidate] for t in trip], dtype=np.int64),
        tgt=np.array([index[t.target] if t.target else -1 for t in trip], dtype=np.int64),
        texts=[t.eval_caption for t in trip], raw_captions=[t.captions for t in trip],
        group=np.array(group, dtype=np.int64),
        query_group=np.array([data.categories.index(t.category) for t in trip], dtype=np.int64),
        group_names=data.categories,
    )
