"""Attribute-specific negatives for the attribute-aware loss: which image should each attribute
sub-query rank below the target (docs/METHOD.md, "Attribute-aware auxiliary loss").

- Synthetic set [ours, exact]: an img_set twin whose scene differs from the target's only in one
  attribute (the right shape in the wrong color is the color head's negative). The scene keys say it.
- CIRR / FashionIQ [ours, weak]: no scene labels, so a caption lexicon decides which attributes a
  query edits; for those, the query's pairwise (TRNS) negative is that head's negative, and the heads
  of attributes its caption does not name get no term for it.
Pure functions over names, keys and texts: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from cirdata.probes import PROBE_FIELDS
from cirdata.scenes import key_objects as scene_objects  # the key's parser lives beside its writer

# The fields of a synthetic object code "pos:size-color-shape", by attribute name.
SCENE_FIELDS = ("position", "size", "color", "shape")

# Weak labels for real captions: a word of the list in the caption means the query edits that attribute.
LEXICON: dict[str, frozenset[str]] = {
    "color": frozenset(
        "red blue green yellow black white gray grey pink purple orange brown beige navy teal cyan "
        "maroon violet gold golden silver tan khaki cream ivory turquoise magenta burgundy olive "
        "colour color colored coloured colorful colourful darker lighter brighter pastel neon".split()),
    "shape": frozenset(
        "shape shaped round circle circular square rectangular triangle triangular star hexagon cross "
        "oval curved straight pointed long short longer shorter sleeve sleeves sleeveless neckline collar "
        "v-neck strapless fitted loose tight flared".split()),
    "size": frozenset("size small smaller large larger big bigger tiny huge little wider narrower".split()),
    "material": frozenset(
        "material fabric leather denim cotton silk wool lace satin velvet linen knit knitted "
        "sheer metallic shiny matte".split()),
}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def twin_attribute(key: str, target_key: str) -> str | None:
    """The one attribute (a SCENE_FIELDS name) in which scene `key` differs from the target's, object
    by object; None when they are the same scene, differ in object count, or differ in more than one
    attribute."""
    a, b = scene_objects(key), scene_objects(target_key)
    if len(a) != len(b) or a == b:
        return None
    differ = {SCENE_FIELDS[f] for x, y in zip(a, b, strict=True) for f in range(4) if x[f] != y[f]}
    return differ.pop() if len(differ) == 1 else None


def twin_negatives(scene_keys: Sequence[str], targets: np.ndarray, members: Sequence[Sequence[int]],
                   names: Sequence[str]) -> np.ndarray:
    """[Q, A] image index of each query's img_set member that differs from its target only in attribute
    names[a] (the first such member), -1 where it has none."""
    col = {n: j for j, n in enumerate(names)}
    out = np.full((len(targets), len(names)), -1, dtype=np.int64)
    for i, (t, mem) in enumerate(zip(targets, members, strict=True)):
        for m in mem:
            j = col.get(twin_attribute(scene_keys[m], scene_keys[t]) or "")
            if j is not None and out[i, j] < 0:
                out[i, j] = m
    return out


def caption_attributes(text: str, names: Sequence[str]) -> np.ndarray:
    """[A] bool: does the caption name attribute names[a] (LEXICON; an unknown attribute: its own name)?"""
    words = set(_WORD.findall(text.lower()))
    return np.array([bool(words & LEXICON.get(n, frozenset({n}))) for n in names], dtype=bool)


def unknown_scene_attributes(names: Sequence[str]) -> list[str]:
    """The names that the synthetic scenes cannot label (they know SCENE_FIELDS only)."""
    return [n for n in names if n not in SCENE_FIELDS]


# What each synthetic edit kind changes of the edited object; add and remove are left unlabelled
# (an added object has every attribute, a removed one none).
EDIT_KIND_ATTRIBUTES = {"color": {"color"}, "color_single": {"color"}, "shape": {"shape"},
                        "both": {"color", "shape"}}


def edit_labels(edit_kinds: Sequence[str | None], texts: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """[Q, A] float: 1 where query q's edit changes attribute names[a], 0 where it does not, nan where
    unknown. Synthetic set (edit kinds known): exact for color / shape / both edits, nan for add and
    remove. Other data: the caption lexicon's weak labels (caption_attributes)."""
    out = np.full((len(texts), len(names)), np.nan, dtype=np.float32)
    for i, text in enumerate(texts):
        kind = edit_kinds[i] if i < len(edit_kinds) else None
        if kind is None:
            out[i] = caption_attributes(text, names)
        elif kind in EDIT_KIND_ATTRIBUTES:
            out[i] = [n in EDIT_KIND_ATTRIBUTES[kind] for n in names]
    return out


def probe_batch(renderer, scene_keys: Sequence[str], names_of_images: Sequence[str], refs: np.ndarray,
                tgts: np.ndarray, attributes: Sequence[str], k: int, rng: np.random.Generator):
    """The attribute probes of a batch of queries (cirdata.probes): (uint8 pixels [m, S, S, 3], at [n, A, k]
    each probe's row in the pixels or -1). Attributes the scenes cannot vary get none."""
    at = np.full((len(tgts), len(attributes), k), -1, dtype=np.int64)
    images = []
    for i, (r, t) in enumerate(zip(refs, tgts, strict=True)):
        for a, name in enumerate(attributes):
            if name not in PROBE_FIELDS:
                continue
            px = renderer.probes(scene_keys[r], scene_keys[t], names_of_images[t], name, k, rng)
            at[i, a, : len(px)] = np.arange(len(images), len(images) + len(px))
            images.extend(px)
    s = renderer.image_size
    pixels = np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8)
    return pixels, at
