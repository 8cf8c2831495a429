"""Loaders for CIRR (and the synthetic set, which uses its layout), FashionIQ and CIRCO.

Annotation parsing only, no pixels and no torch: each loader returns plain dataclasses with image
names and absolute paths. A malformed file is a DataError naming the file and the field; with
on_error="skip" a bad record is dropped and counted in `skipped` instead.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from cirdata.errors import DataError

FIQ_CATEGORIES = ("dress", "shirt", "toptee")


def read_json(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from e


def _field(record: dict, name: str, path: Path, index: int, kind=None):
    if not isinstance(record, dict):
        raise DataError(f"{path}: record {index} is a {type(record).__name__}, expected an object")
    if name not in record:
        raise DataError(f"{path}: record {index} has no field {name!r}")
    value = record[name]
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{path}: record {index} field {name!r} should be {kind}, got {type(value).__name__}")
    return value


class _Skipper:
    """Raise, or count and drop, one bad record at a time."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error, self.count, self.reasons = on_error, 0, []

    def __call__(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.count += 1
        if len(self.reasons) < 20:
            self.reasons.append(str(error))


# --- CIRR and the synthetic set ---------------------------------------------------------
CIRR_SPLITS = ("train", "val", "test1")


@dataclass
class CIRRQuery:
    pairid: int
    reference: str
    caption: str
    target: str | None  # None on the test split
    target_soft: dict[str, float]
    members: list[str]
    edit_kind: str | None = None  # synthetic set only


@dataclass
class CIRRSplit:
    name: str  # "rc2" for CIRR, "synth" for the synthetic set
    split: str
    root: Path
    queries: list[CIRRQuery]
    images: dict[str, Path]  # image name -> absolute path
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)

    @property
    def gallery(self) -> list[str]:
        return list(self.images)


def cirr_dataset_name(root: Path) -> str:
    """'rc2' or 'synth' (or any other release name) from the files under captions/."""
    names = sorted({p.name.split(".")[1] for p in (root / "captions").glob("cap.*.*.json")})
    if not names:
        raise DataError(f"{root / 'captions'}: no cap.<name>.<split>.json files; is {root} a CIRR-layout root?")
    if len(names) > 1:
        raise DataError(f"{root}: several releases ({', '.join(names)}); pass name=...")
    return names[0]


def scenes_path(split: CIRRSplit) -> Path:
    """Where a synthetic split keeps each image's ground-truth scene (no other data set has the file)."""
    return split.root / "scenes" / f"scenes.{split.name}.{split.split}.json"


def read_scenes(split: CIRRSplit) -> dict[str, dict] | None:
    """image name -> {"key", "objects", "caption"} of a synthetic split; None where the split knows no scenes."""
    path = scenes_path(split)
    return read_json(path) if path.is_file() else None


def scene_keys(split: CIRRSplit) -> dict[str, str] | None:
    """image name -> scene key (images with one key show the same scene); None where scenes are unknown."""
    scenes = read_scenes(split)
    return None if scenes is None else {n: s["key"] for n, s in scenes.items()}


def load_cirr(root: str | Path, split: str, name: str | None = None, check_images: bool = False,
              on_error: str = "raise") -> CIRRSplit:
    root = Path(root).resolve()
    if split not in CIRR_SPLITS:
        raise DataError(f"unknown CIRR split {split!r}; choose one of {', '.join(CIRR_SPLITS)}")
    name = name or cirr_dataset_name(root)
    split_path = root / "image_splits" / f"split.{name}.{split}.json"
    raw_split = read_json(split_path)
    if not isinstance(raw_split, dict):
        raise DataError(f"{split_path}: expected an object of image name -> relative path")
    images = {n: (root / p).resolve() for n, p in raw_split.items()}
    skip = _Skipper(on_error)
    if check_images:
        for n, p in list(images.items()):
            if not p.is_file():
                skip(DataError(f"{split_path}: image {n!r} -> {p} does not exist"))
                images.pop(n, None)
    cap_path = root / "captions" / f"cap.{name}.{split}.json"
    raw = read_json(cap_path)
    if not isinstance(raw, list):
        raise DataError(f"{cap_path}: expected a list of query records")
    queries = []
    # CIRR's test1 hides its targets; the synthetic set's test1 keeps them.
    has_target = split != "test1" or (bool(raw) and isinstance(raw[0], dict) and "target_hard" in raw[0])
    for i, r in enumerate(raw):
        try:
            reference = _field(r, "reference", cap_path, i, str)
            target = _field(r, "target_hard", cap_path, i, str) if has_target else None
            img_set = _field(r, "img_set", cap_path, i, dict)
            members = _field(img_set, "members", cap_path, i, list)
            q = CIRRQuery(
                pairid=_field(r, "pairid", cap_path, i, int),
                reference=reference,
                caption=_field(r, "caption", cap_path, i, str),
                target=target,
                target_soft=r.get("target_soft", {target: 1.0} if target else {}),
                members=members,
                edit_kind=r.get("edit_kind"),
            )
            for img in [q.reference] + ([q.target] if q.target else []) + q.members:
                if img not in images:
                    raise DataError(f"{cap_path}: record {i} names image {img!r}, which {split_path} lacks")
        except DataError as e:
            skip(e)
            continue
        queries.append(q)
    return CIRRSplit(name, split, root, queries, images, skip.count, skip.reasons)


# --- FashionIQ ---------------------------------------------------------------------------
FIQ_SPLITS = ("train", "val", "test")


def fiq_eval_caption(c0: str, c1: str) -> str:
    """The validation/test caption join used by CLIP4Cir, SPRC and QuRe."""
    return f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"


def fiq_train_caption(c0: str, c1: str, rng: random.Random) -> str:
    """Training: one of 'c0 and c1', 'c1 and c0', 'c0', 'c1', each with probability 1/4."""
    a, b = c0.strip(".?, "), c1.strip(".?, ")
    u = rng.random()
    if u < 0.25:
        return f"{a.capitalize()} and {b}"
    if u < 0.5:
        return f"{b.capitalize()} and {a}"
    if u < 0.75:
        return a.capitalize()
    return b.capitalize()


@dataclass
class FIQTriplet:
    category: str
    candidate: str
    target: str | None  # None on the test split
    captions: tuple[str, str]

    @property
    def eval_caption(self) -> str:
        return fiq_eval_caption(*self.captions)


@dataclass
class FIQSplit:
    split: str
    root: Path
    categories: tuple[str, ...]
    triplets: list[FIQTriplet]
    gallery: dict[str, list[str]]  # category -> image ids of that split
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)

    def image_path(self, image_id: str, must_exist: bool = True) -> Path:
        for ext in (".png", ".jpg"):
            p = self.root / "images" / f"{image_id}{ext}"
            if p.is_file():
                return p
        if not must_exist:  # read later (or never, in a dry run): a missing file is reported then
            return self.root / "images" / f"{image_id}.png"
        raise DataError(f"FashionIQ image {image_id!r} not found under {self.root / 'images'} (.png or .jpg)")


def load_fashioniq(root: str | Path, split: str, categories=FIQ_CATEGORIES, check_images: bool = False,
                   on_error: str = "raise") -> FIQSplit:
    root = Path(root).resolve()
    if split not in FIQ_SPLITS:
        raise DataError(f"unknown FashionIQ split {split!r}; choose one of {', '.join(FIQ_SPLITS)}")
    categories = (categories,) if isinstance(categories, str) else tuple(categories)
    for c in categories:
        if c not in FIQ_CATEGORIES:
            raise DataError(f"unknown FashionIQ category {c!r}; choose from {', '.join(FIQ_CATEGORIES)}")
    skip = _Skipper(on_error)
    out = FIQSplit(split, root, categories, [], {})
    for cat in categories:
        split_path = root / "image_splits" / f"split.{cat}.{split}.json"
        ids = read_json(split_path)
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise DataError(f"{split_path}: expected a list of image ids")
        known = set(ids)
        cap_path = root / "captions" / f"cap.{cat}.{split}.json"
        raw = read_json(cap_path)
        if not isinstance(raw, list):
            raise DataError(f"{cap_path}: expected a list of triplets")
        for i, r in enumerate(raw):
            try:
                caps = _field(r, "captions", cap_path, i, list)
                if len(caps) != 2 or not all(isinstance(c, str) for c in caps):
                    raise DataError(f"{cap_path}: record {i} field 'captions' must hold two strings")
                t = FIQTriplet(cat, _field(r, "candidate", cap_path, i, str),
                               _field(r, "target", cap_path, i, str) if split != "test" else r.get("target"),
                               (caps[0], caps[1]))
                if split != "test" and t.target not in known:
                    raise DataError(f"{cap_path}: record {i} target {t.target!r} is not in {split_path}")
                if check_images:
                    for img in (t.candidate, t.target):
                        if img is not None:
                            out.image_path(img)
            except DataError as e:
                skip(e)
                continue
            out.triplets.append(t)
        out.gallery[cat] = ids
    out.skipped, out.skip_reasons = skip.count, skip.reasons
    return out


# --- CIRCO -------------------------------------------------------------------------------
CIRCO_SPLITS = ("val", "test")


@dataclass
class CIRCOQuery:
    id: int
    reference: int
    caption: str
    shared_concept: str
    targets: list[int]  # every correct image id; empty on test


@dataclass
class CIRCOSplit:
    split: str
    root: Path
    queries: list[CIRCOQuery]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)

    def image_path(self, image_id: int) -> Path:
        return circo_images_dir(self.root) / f"{image_id:012d}.jpg"


def circo_images_dir(root: str | Path, images: str | Path | None = None) -> Path:
    """The COCO 2017 unlabeled images: `images`, or where CIRCO's README puts them."""
    return Path(images) if images else Path(root).resolve() / "COCO2017_unlabeled" / "unlabeled2017"


def circo_gallery(root: str | Path, images: str | Path | None = None) -> dict[int, Path]:
    """CIRCO's gallery, image id -> path: the images that COCO's image_info_unlabeled2017.json lists
    (in <images>/../annotations/, as the COCO download unpacks) or, without it, every <id>.jpg there."""
    folder = circo_images_dir(root, images)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; CIRCO's gallery is the COCO 2017 unlabeled set "
                            "(unlabeled2017.zip from cocodataset.org): unpack it there or pass its folder")
    info = folder.parent / "annotations" / "image_info_unlabeled2017.json"
    if info.is_file():
        raw = read_json(info)
        try:
            return {int(r["id"]): folder / r["file_name"] for r in raw["images"]}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{info}: expected COCO image info ({{'images': [{{'id', 'file_name'}}]}}): {e}") from e
    out = {}
    for p in sorted(folder.glob("*.jpg")):
        if p.stem.isdigit():
            out[int(p.stem)] = p
    if not out:
        raise DataError(f"{folder}: no <id>.jpg images (COCO names them like 000000123456.jpg)")
    return out


def load_circo(root: str | Path, split: str, on_error: str = "raise") -> CIRCOSplit:
    root = Path(root).resolve()
    if split not in CIRCO_SPLITS:
        raise DataError(f"unknown CIRCO split {split!r}; choose one of {', '.join(CIRCO_SPLITS)}")
    path = root / "annotations" / f"{split}.json"
    raw = read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of queries")
    skip = _Skipper(on_error)
    queries = []
    for i, r in enumerate(raw):
        try:
            queries.append(CIRCOQuery(
                id=_field(r, "id", path, i, int),
                reference=_field(r, "reference_img_id", path, i, int),
                caption=_field(r, "relative_caption", path, i, str),
                shared_concept=_field(r, "shared_concept", path, i, str),
                targets=list(_field(r, "gt_img_ids", path, i, list)) if split == "val" else [],
            ))
        except DataError as e:
            skip(e)
    return CIRCOSplit(split, root, queries, skip.count, skip.reasons)


def split_stats(kind: str, root: str | Path) -> dict:
    """Pairs and images per split of a benchmark folder (what `dqe-cir data stats` prints)."""
    root_path = Path(root)
    out: dict = {"kind": kind, "root": str(root_path)}
    if kind == "cirr":
        name = cirr_dataset_name(root_path)
        out["name"] = name
        for split in CIRR_SPLITS:
            if not (root_path / "image_splits" / f"split.{name}.{split}.json").is_file():
                continue
            images = read_json(root_path / "image_splits" / f"split.{name}.{split}.json")
            entry = {"images": len(images)}
            if (root_path / "captions" / f"cap.{name}.{split}.json").is_file():
                entry["pairs"] = len(load_cirr(root_path, split, name).queries)
            out[split] = entry
    elif kind == "fashioniq":
        for split in FIQ_SPLITS:
            data = load_fashioniq(root_path, split)
            entry = {"pairs": len(data.triplets),
                     "images": sum(len(v) for v in data.gallery.values()), "categories": {}}
            for cat in data.categories:
                entry["categories"][cat] = {"pairs": sum(t.category == cat for t in data.triplets),
                                            "images": len(data.gallery[cat])}
            out[split] = entry
    elif kind == "circo":
        for split in CIRCO_SPLITS:
            data = load_circo(root_path, split)
            referenced = {q.reference for q in data.queries} | {t for q in data.queries for t in q.targets}
            out[split] = {"pairs": len(data.queries), "images": len(referenced)}
    else:
        raise DataError(f"unknown benchmark kind {kind!r}; choose cirr, fashioniq or circo")
    return out
