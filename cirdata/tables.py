"""Training/evaluation data: an image table (uint8, preprocessed with the encoder's functions: in
memory, decoded once, or read from disk per batch) and CIR triplets pointing into it."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cirdata import datasets as ds
from cirdata.errors import DataError
from encoder.errors import EncoderError
from encoder.preprocess import load_image, normalize, prepare_image

DATA_KINDS = ("synth", "cirr", "fashioniq", "circo")
CIRCO_TEXTS = ("caption", "concept")  # the CIRCO query text: the relative caption, or "<shared concept> that <caption>"


def _read(path: Path, image_size: int) -> np.ndarray:
    try:
        return prepare_image(load_image(path, draft_size=image_size), image_size)
    except EncoderError as e:
        raise DataError(f"{path}: {e}") from e


class ImageTable:
    """The image table read from disk when a batch asks for it: uint8 [n, S, S, 3] per access. For
    galleries too large to hold (CIRCO's 123k COCO images) and for training with images="disk"."""

    def __init__(self, paths: list[Path], image_size: int):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:  # what the in-memory table would take
        return len(self.paths) * self.image_size * self.image_size * 3

    def __getitem__(self, idx) -> np.ndarray:
        paths = [self.paths[int(i)] for i in np.atleast_1d(idx)]
        return np.stack(list(_decoder().map(lambda p: _read(p, self.image_size), paths)))


@cache
def _decoder() -> ThreadPoolExecutor:
    """Threads for decoding a batch's images (PIL releases the GIL while it decodes and resizes)."""
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")


@dataclass
class CIRData:
    kind: str
    split: str
    names: list[str]  # image table
    pixels: np.ndarray | ImageTable  # uint8 [N, H, W, 3], in memory or read per batch
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
    positives: list[list[int]] | None = None  # CIRCO: every correct image of each query (the target first)

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

    def never_negatives(self, i: int) -> list[int]:
        """Images that may never be query i's negative: its target, its reference, and the images that
        show the target's scene (synthetic set)."""
        t = int(self.tgt[i])
        return [t, int(self.ref[i])] + [j for j in (self._scenes[t] if self._scenes else ()) if j != t]

    @cached_property
    def _scenes(self) -> list[list[int]] | None:
        return self.same_scene_images()


def _load_pixels(paths: list[Path], image_size: int, progress: bool, lazy: bool = False) -> np.ndarray | ImageTable:
    if lazy:
        return ImageTable(paths, image_size)
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="load images", unit="img", disable=not progress, leave=False)):
        out[i] = _read(p, image_size)
    return out


def load_cir_data(kind: str, root: str | Path, split: str, image_size: int, progress: bool = True,
                  max_queries: int | None = None, lazy: bool = False, images: str | Path | None = None,
                  circo_text: str = "caption") -> CIRData:
    """lazy: read images from disk per batch instead of decoding them all now (CIRCO always does).
    images, circo_text: CIRCO's image folder (default <root>/COCO2017_unlabeled/unlabeled2017) and
    query text form."""
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")
    if kind == "fashioniq":
        return _load_fashioniq(root, split, image_size, progress, max_queries, lazy)
    if kind == "circo":
        return _load_circo(root, split, image_size, max_queries, images, circo_text)
    data = ds.load_cirr(root, split)
    queries = data.queries[:max_queries] if max_queries else data.queries
    names = data.gallery
    index = {n: i for i, n in enumerate(names)}
    pixels = _load_pixels([data.images[n] for n in names], image_size, progress, lazy)
    scene_captions = scene_keys = None
    scenes = ds.read_scenes(data)
    if scenes is not None:
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


def _load_fashioniq(root, split, image_size, progress, max_queries, lazy=False) -> CIRData:
    """Each category's gallery is its own block of the image table: an image listed under two
    categories (1,180 train and 121 val images are) appears once per category, and a triplet's
    images are looked up in its own category's block."""
    data = ds.load_fashioniq(root, split)
    names, group, index = [], [], {}
    for ci, cat in enumerate(data.categories):
        for n in data.gallery[cat]:
            index[(cat, n)] = len(names)
            names.append(n)
            group.append(ci)
    trip = data.triplets[:max_queries] if max_queries else data.triplets
    for t in trip:  # candidates are not always in the split's image list
        if (t.category, t.candidate) not in index:
            index[(t.category, t.candidate)] = len(names)
            names.append(t.candidate)
            group.append(-1)
    pixels = _load_pixels([data.image_path(n, must_exist=not lazy) for n in names], image_size, progress, lazy)
    return CIRData(
        kind="fashioniq", split=split, names=names, pixels=pixels,
        ref=np.array([index[(t.category, t.candidate)] for t in trip], dtype=np.int64),
        tgt=np.array([index[(t.category, t.target)] if t.target else -1 for t in trip], dtype=np.int64),
        texts=[t.eval_caption for t in trip], raw_captions=[t.captions for t in trip],
        group=np.array(group, dtype=np.int64),
        query_group=np.array([data.categories.index(t.category) for t in trip], dtype=np.int64),
        group_names=data.categories,
    )


def circo_query_text(q: ds.CIRCOQuery, form: str = "caption") -> str:
    """The query's text: its relative caption (METHOD.md's query form: reference image + text), or with
    the shared concept in front ("concept")."""
    if form not in CIRCO_TEXTS:
        raise DataError(f"circo_text must be one of {', '.join(CIRCO_TEXTS)}, not {form!r}")
    return q.caption if form == "caption" else f"{q.shared_concept} that {q.caption}"


def _load_circo(root, split, image_size, max_queries, images, text_form) -> CIRData:
    """CIRCO: the gallery is the COCO 2017 unlabeled set (123,403 images), read from disk per batch."""
    data = ds.load_circo(root, split)
    gallery = ds.circo_gallery(root, images)
    queries = data.queries[:max_queries] if max_queries else data.queries
    index = {image_id: i for i, image_id in enumerate(gallery)}
    missing = sorted({x for q in queries for x in [q.reference, *q.targets] if x not in index})
    if missing:
        raise DataError(f"{len(missing)} images that CIRCO's {split}.json names are not in the gallery at "
                            f"{ds.circo_images_dir(root, images)} (first: {missing[0]}); is it the whole COCO 2017 "
                            "unlabeled set?")
    return CIRData(
        kind="circo", split=split, names=[str(i) for i in gallery],
        pixels=ImageTable(list(gallery.values()), image_size),
        ref=np.array([index[q.reference] for q in queries], dtype=np.int64),
        tgt=np.array([index[q.targets[0]] if q.targets else -1 for q in queries], dtype=np.int64),
        texts=[circo_query_text(q, text_form) for q in queries], pairids=[q.id for q in queries],
        positives=[[index[t] for t in q.targets] for q in queries] if split == "val" else None,
    )
