"""Scenes of the synthetic CIR benchmark: objects, keys, captions and modification texts.

Pure data and text, no rendering: the generator (synth.py) samples from here, and the oracle
parses the texts back with the same templates, so the two cannot disagree silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
_POS_CODE = {"top left": "tl", "top right": "tr", "bottom left": "bl", "bottom right": "br"}


@dataclass(frozen=True, order=True)
class Obj:
    pos: str
    size: str
    color: str
    shape: str

    @property
    def code(self) -> str:
        return f"{_POS_CODE[self.pos]}:{self.size}-{self.color}-{self.shape}"

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


Scene = tuple[Obj, ...]  # always sorted by position order, see make_scene


def make_scene(objs) -> Scene:
    order = {p: i for i, p in enumerate(POSITIONS)}
    return tuple(sorted(objs, key=lambda o: order[o.pos]))


def scene_key(scene: Scene) -> str:
    """Canonical label of a scene: equal keys mean the same scene, whatever the rendering."""
    return "|".join(o.code for o in scene)


_POS_FROM_CODE = {v: k for k, v in _POS_CODE.items()}


def key_objects(key: str) -> list[tuple[str, str, str, str]]:
    """A scene key 'tl:large-red-circle|br:small-blue-star' read back as (pos code, size, color, shape)
    tuples, in the key's order (scene_key's inverse, field by field)."""
    out = []
    for part in key.split("|"):
        pos, rest = part.split(":")
        size, color, shape = rest.split("-")
        out.append((pos, size, color, shape))
    return out


def scene_from_key(key: str) -> Scene:
    """The scene a key names (scene_key's inverse)."""
    return make_scene(Obj(_POS_FROM_CODE[p], size, color, shape) for p, size, color, shape in key_objects(key))


def scene_from_dict(objs: list[dict]) -> Scene:
    return make_scene(Obj(**o) for o in objs)


def scene_to_dict(scene: Scene) -> list[dict]:
    return [{"pos": o.pos, "size": o.size, "color": o.color, "shape": o.shape} for o in scene]


def scene_caption(scene: Scene) -> str:
    """Full scene caption, for image-text pretraining: 'a large red circle top left and ...'."""
    parts = [f"a {o.size} {o.color} {o.shape} {o.pos}" for o in scene]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def is_valid(scene: Scene) -> bool:
    """One object per cell, and color+shape unique so 'the red circle' names one object."""
    return (
        1 <= len(scene) <= 3
        and len({o.pos for o in scene}) == len(scene)
        and len({(o.color, o.shape) for o in scene}) == len(scene)
    )


# --- modification templates -------------------------------------------------------------
# {color} {shape}: the object being edited; {new_*}: the edit. Held-out phrasings appear only
# in val/test, so a model that memorised phrasings is caught there.
TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "color": (
        [
            "make the {color} {shape} {new_color}",
            "change the color of the {color} {shape} to {new_color}",
            "paint the {color} {shape} {new_color}",
            "the {color} {shape} should be {new_color}",
        ],
        ["recolor the {color} {shape} {new_color}", "give the {color} {shape} a {new_color} color"],
    ),
    "color_single": (["same but {new_color}", "make it {new_color}"], ["now in {new_color}"]),
    "shape": (
        [
            "turn the {color} {shape} into a {new_shape}",
            "make the {color} {shape} a {new_shape}",
            "change the {color} {shape} to a {new_shape}",
        ],
        ["reshape the {color} {shape} into a {new_shape}", "the {color} {shape} becomes a {new_shape}"],
    ),
    "both": (
        [
            "replace the {color} {shape} with a {new_color} {new_shape}",
            "swap the {color} {shape} for a {new_color} {new_shape}",
        ],
        ["exchange the {color} {shape} for a {new_color} {new_shape}"],
    ),
    "add": (
        ["add a {size} {new_color} {new_shape} {pos}", "put a {size} {new_color} {new_shape} in the {pos}"],
        ["also include a {size} {new_color} {new_shape} {pos}"],
    ),
    "remove": (
        ["remove the {color} {shape}", "take away the {color} {shape}"],
        ["delete the {color} {shape}", "get rid of the {color} {shape}"],
    ),
}
KIND_PROBS = {"color": 0.35, "shape": 0.35, "both": 0.1, "add": 0.1, "remove": 0.1}


def fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def templates_for(kind: str, split: str) -> list[str]:
    seen, held = TEMPLATES[kind]
    return seen if split == "train" else seen + held


@dataclass(frozen=True)
class Edit:
    """One modification: what the text says, independent of its phrasing."""

    kind: str  # color | shape | both | add | remove
    target_obj: Obj | None  # the object edited or removed (None for add)
    new_color: str | None = None
    new_shape: str | None = None
    new_size: str | None = None
    new_pos: str | None = None


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    objs = list(scene)
    if edit.kind == "add":
        objs.append(Obj(edit.new_pos, edit.new_size, edit.new_color, edit.new_shape))
        return make_scene(objs)
    i = objs.index(edit.target_obj)
    if edit.kind == "remove":
        del objs[i]
    else:
        o = objs[i]
        objs[i] = replace(o, color=edit.new_color or o.color, shape=edit.new_shape or o.shape)
    return make_scene(objs)


def edit_text(edit: Edit, template: str) -> str:
    o = edit.target_obj
    fields = {
        "color": o.color if o else "",
        "shape": o.shape if o else "",
        "new_color": edit.new_color or "",
        "new_shape": edit.new_shape or "",
        "size": edit.new_size or "",
        "pos": edit.new_pos or "",
    }
    return fix_articles(template.format(**fields))


# --- parsing (the oracle reads texts back with the same templates) ----------------------
def _template_regex(template: str) -> re.Pattern:
    alts = {
        "color": "|".join(COLORS),
        "new_color": "|".join(COLORS),
        "shape": "|".join(SHAPES),
        "new_shape": "|".join(SHAPES),
        "size": "|".join(SIZES),
        "pos": "|".join(POSITIONS),
    }
    pattern = re.escape(template).replace(r"\ ", " ")
    for field, alt in alts.items():
        pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>{alt})")
    pattern = pattern.replace(" a ", " an? ")
    return re.compile(pattern)


_PARSERS = [  # (kind, template, its regex, held out?)
    (kind, t, _template_regex(t), t in held) for kind, (seen, held) in TEMPLATES.items() for t in seen + held
]


def _clean(text: str) -> str:
    return " ".join(text.lower().strip().split())


def template_of(text: str) -> str | None:
    """The template a modification text was written with (None: no template matches)."""
    clean = _clean(text)
    return next((t for _, t, rx, _ in _PARSERS if rx.fullmatch(clean)), None)


ATTRIBUTE_WORDS = frozenset([*COLORS, *SHAPES, *SIZES, *(w for p in POSITIONS for w in p.split())])


def template_words(held_out: bool) -> frozenset[str]:
    """The plain words (no placeholders) of the training templates, or of the held-out ones."""
    return frozenset(w for seen, held in TEMPLATES.values() for t in (held if held_out else seen)
                     for w in re.sub(r"\{\w+\}", " ", t).split())


HELD_OUT_ONLY_WORDS = template_words(held_out=True) - template_words(held_out=False)


def noisy_phrasing(text: str, rng, p: float, fillers: list[str]) -> str:
    """Training-time phrasing noise: each word that names no attribute (color, shape, size, position)
    is, with probability p, replaced by a random filler word (or, one time in three, dropped). The
    attribute words and their order stay, and in this world they alone say what the edit is; a model
    trained on it learns to read them past wording it has never seen, which is what the held-out
    phrasings of val/test ask. The fillers (vocab.filler_words) include edit verbs ("remove the red
    circle blue" can happen) on purpose: the verb alone must never decide. `rng`: a random.Random
    (the trainer's text RNG, saved for resume)."""
    if p <= 0:
        return text
    out = []
    for w in text.split():
        if w.lower() in ATTRIBUTE_WORDS or rng.random() >= p:
            out.append(w)
        elif rng.random() >= 1 / 3:
            out.append(fillers[rng.randrange(len(fillers))])
    return " ".join(out)


def is_held_out_phrasing(text: str) -> bool:
    """True when a modification text uses none of the training phrasings (a val/test-only template):
    splits val metrics into "new scene, known phrasing" and "new phrasing"."""
    clean = _clean(text)
    return not any(rx.fullmatch(clean) for _, _, rx, held in _PARSERS if not held)


class UnparsableText(ValueError):
    pass


def parse_edit(text: str, reference: Scene) -> Edit:
    """Read a modification text back into an Edit against the reference scene."""
    clean = _clean(text)
    for kind, _, rx, _ in _PARSERS:
        m = rx.fullmatch(clean)
        if not m:
            continue
        g = m.groupdict()
        if kind == "add":
            return Edit("add", None, g["new_color"], g["new_shape"], g["size"], g["pos"])
        if kind == "color_single":
            if len(reference) != 1:
                raise UnparsableText(f"{text!r} needs a single-object reference")
            return Edit("color", reference[0], new_color=g["new_color"])
        matches = [o for o in reference if o.color == g["color"] and o.shape == g["shape"]]
        if len(matches) != 1:
            raise UnparsableText(f"{text!r}: no single '{g['color']} {g['shape']}' in the reference")
        return Edit(kind, matches[0], g.get("new_color"), g.get("new_shape"))
    raise UnparsableText(f"no template matches {text!r}")


# --- sampling ----------------------------------------------------------------------------
def random_obj(rng: np.random.Generator, pos: str) -> Obj:
    return Obj(pos, str(rng.choice(SIZES)), str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    n = n_objects or int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    while True:
        cells = rng.choice(len(POSITIONS), size=n, replace=False)
        scene = make_scene(random_obj(rng, POSITIONS[c]) for c in cells)
        if is_valid(scene):
            return scene


def random_edit(rng: np.random.Generator, scene: Scene) -> Edit:
    """An edit whose result is a different valid scene."""
    kinds = list(KIND_PROBS)
    probs = np.array([KIND_PROBS[k] for k in kinds])
    if len(scene) >= 3:
        probs[kinds.index("add")] = 0
    if len(scene) <= 1:
        probs[kinds.index("remove")] = 0
    probs = probs / probs.sum()
    while True:
        kind = str(rng.choice(kinds, p=probs))
        o = scene[int(rng.integers(len(scene)))]
        if kind == "add":
            free = [p for p in POSITIONS if p not in {x.pos for x in scene}]
            new = random_obj(rng, str(rng.choice(free)))
            edit = Edit("add", None, new.color, new.shape, new.size, new.pos)
        elif kind == "remove":
            edit = Edit("remove", o)
        else:
            nc = str(rng.choice([c for c in COLORS if c != o.color])) if kind in ("color", "both") else None
            ns = str(rng.choice([s for s in SHAPES if s != o.shape])) if kind in ("shape", "both") else None
            edit = Edit(kind, o, nc, ns)
        target = apply_edit(scene, edit)
        if is_valid(target):
            return edit


def _perturb(rng: np.random.Generator, scene: Scene, obj: Obj, attr: str) -> Scene:
    objs = list(scene)
    i = objs.index(obj)
    if attr == "pos":
        free = [p for p in POSITIONS if p not in {x.pos for x in scene}]
        if not free:
            return scene
        objs[i] = replace(obj, pos=str(rng.choice(free)))
    else:
        pool = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES)}[attr]
        objs[i] = replace(obj, **{attr: str(rng.choice([v for v in pool if v != getattr(obj, attr)]))})
    return make_scene(objs)


def hard_distractors(rng: np.random.Generator, reference: Scene, edit: Edit, target: Scene, n: int = 4):
    """Scenes that a model must tell from the target: right color wrong shape, right shape wrong
    color, the wrong object changed, then other near misses. Keys differ from ref, target and each other."""
    taken = {scene_key(reference), scene_key(target)}
    out: list[Scene] = []

    def offer(scene: Scene) -> None:
        if len(out) < n and is_valid(scene) and scene_key(scene) not in taken:
            taken.add(scene_key(scene))
            out.append(scene)

    if edit.kind == "add":
        edited = next(o for o in target if o.pos == edit.new_pos)
    elif edit.kind == "remove":
        edited = edit.target_obj
    else:
        edited = next(o for o in target if o.pos == edit.target_obj.pos)
    base = reference if edit.kind == "remove" else target
    for attr in ("shape", "color"):
        for _ in range(8):
            before = len(out)
            offer(_perturb(rng, base, edited, attr))
            if len(out) > before:
                break
    others = [o for o in reference if edit.target_obj is None or o != edit.target_obj]
    if edit.kind != "add" and others:  # the same edit applied to the wrong object
        wrong = others[int(rng.integers(len(others)))]
        offer(apply_edit(reference, replace(edit, target_obj=wrong)))
    for _ in range(50):
        if len(out) >= n:
            break
        src = target if rng.random() < 0.7 else reference
        obj = src[int(rng.integers(len(src)))]
        offer(_perturb(rng, src, obj, str(rng.choice(["size", "pos", "shape", "color"]))))
    while len(out) < n:
        offer(random_scene(rng))
    return out
