"""Small data sets in the real benchmarks' folder layouts, with generated images, and a tiny pretrained
BLIP-2 folder: what the paper-scale path reads, at a size a test can afford.

Annotation records have the real files' shapes (see ../shared/data): FashionIQ's
[{"target", "candidate", "captions": [c0, c1]}] and lists of ids; CIRR rc2's pairid, reference,
target_hard, target_soft, caption, img_set {id, members, reference_rank, target_rank} and name ->
"./train/<n>/<name>.png"; CIRCO's annotations with COCO's image_info file.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 200, 40), (160, 60, 200), (250, 140, 30)]
COLOR_NAMES = ["red", "green", "blue", "yellow", "purple", "orange"]


def draw(path: Path, i: int, size: tuple[int, int] = (48, 40), fmt: str | None = None) -> None:
    """An image that depends on i: a colored shape on a gray ground, not square (targetpad applies)."""
    img = Image.new("RGB", size, (200, 200, 200))
    d = ImageDraw.Draw(img)
    c = COLORS[i % len(COLORS)]
    box = [4 + i % 5, 4 + (i // 5) % 5, size[0] - 6, size[1] - 6]
    (d.ellipse if (i // len(COLORS)) % 2 else d.rectangle)(box, fill=c)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4))


def fashioniq(root: Path, per_category: int = 12, splits=("train", "val")) -> Path:
    """captions/cap.<cat>.<split>.json, image_splits/split.<cat>.<split>.json, images/<id>.png.
    Like the real set, one image id is listed under both shirt and toptee in every split."""
    k = 0
    for split in splits:
        shared = f"B00SHARED{split[0].upper()}"
        for cat in ("dress", "shirt", "toptee"):
            ids = [f"B00{cat[:2].upper()}{split[0].upper()}{i:04d}" for i in range(per_category)]
            if cat in ("shirt", "toptee"):
                ids[-1] = shared
            for i, n in enumerate(ids):
                if not (root / "images" / f"{n}.png").is_file():
                    draw(root / "images" / f"{n}.png", k + i)
            k += per_category
            trip = []
            for i in range(0, per_category - 1, 2):
                rec = {"target": ids[i + 1], "candidate": ids[i],
                       "captions": [f"is {COLOR_NAMES[(k + i + 1) % 6]}.", " has a different shape"]}
                if split == "test":
                    del rec["target"]
                trip.append(rec)
            if cat == "toptee":  # a triplet whose target is the shared image
                trip.append({"target": shared, "candidate": ids[0], "captions": ["is the shared one", "same"]})
            _dump(root / "captions" / f"cap.{cat}.{split}.json", trip)
            _dump(root / "image_splits" / f"split.{cat}.{split}.json", ids)
    return root


def cirr(root: Path, sets: int = 4) -> Path:
    """rc2 files for train, val and test1: img_sets of 6 images, 2 pairs per set."""
    k, pairid = 0, 12000
    for split, folder in (("train", "train"), ("val", "dev"), ("test1", "test1")):
        names, records = {}, []
        for s in range(sets):
            members = [f"{folder}-{s}-{j // 2}-img{j % 2}" for j in range(6)]
            for j, n in enumerate(members):
                rel = f"./{folder}/{s % 3}/{n}.png" if split == "train" else f"./{folder}/{n}.png"
                names[n] = rel
                draw(root / rel, k + j)
            k += 6
            for ref, tgt in ((0, 1), (2, 3)):
                rec = {"pairid": pairid, "reference": members[ref], "target_hard": members[tgt],
                       "target_soft": {members[tgt]: 1.0}, "caption": f"make it {COLOR_NAMES[(k + tgt) % 6]}",
                       "img_set": {"id": s, "members": members, "reference_rank": ref, "target_rank": tgt}}
                if split == "test1":
                    for key in ("target_hard", "target_soft"):
                        del rec[key]
                    del rec["img_set"]["target_rank"]
                records.append(rec)
                pairid += 1
        _dump(root / "captions" / f"cap.rc2.{split}.json", records)
        _dump(root / "image_splits" / f"split.rc2.{split}.json", names)
    return root


def circo(root: Path, real: Path, queries: int = 6, distractors: int = 20) -> Path:
    """CIRCO's annotations (the first records of the real val.json and test.json) and a COCO 2017
    unlabeled folder with the images they name, some distractors and COCO's image_info file."""
    ids: set[int] = set()
    for split in ("val", "test"):
        recs = json.loads((real / "annotations" / f"{split}.json").read_text())[:queries]
        _dump(root / "annotations" / f"{split}.json", recs)
        for r in recs:
            ids |= {r["reference_img_id"], *r.get("gt_img_ids", [])}
    ids |= set(range(1, distractors + 1))
    images = root / "COCO2017_unlabeled" / "unlabeled2017"
    info = []
    for i, image_id in enumerate(sorted(ids)):
        name = f"{image_id:012d}.jpg"
        draw(images / name, i, fmt="JPEG")
        info.append({"id": image_id, "file_name": name})
    _dump(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", {"images": info})
    return root


def tiny_blip2(path: Path, seed: int = 0) -> Path:
    """A Blip2ForImageTextRetrieval of tiny dims, saved with save_pretrained, its tokenizer.json beside
    (a BERT-style WordPiece tokenizer, as the real checkpoint ships)."""
    import torch
    from transformers import Blip2ForImageTextRetrieval

    from cirdata.vocab import build_tokenizer
    from training.model import blip2_config, model_config

    tok = build_tokenizer()
    cfg = model_config("tiny", vocab_size=tok.get_vocab_size())
    torch.manual_seed(seed)
    hf = Blip2ForImageTextRetrieval(blip2_config(cfg)).eval()
    with torch.no_grad():
        hf.query_tokens.normal_(0, 0.02)
    hf.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path
