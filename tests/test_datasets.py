import json
import random

import pytest

from cirdata.datasets import (
    fiq_eval_caption,
    fiq_train_caption,
    load_circo,
    load_cirr,
    load_fashioniq,
)
from cirdata.errors import DataError
from tests.conftest import shared_data


def test_real_cirr_counts():
    root = shared_data("cirr")
    val = load_cirr(root, "val")
    assert val.name == "rc2"
    assert len(val.queries) == 4181 and len(val.images) == 2297
    test1 = load_cirr(root, "test1")
    assert len(test1.queries) == 4148 and len(test1.images) == 2315
    assert all(q.target is None for q in test1.queries)
    q = val.queries[0]
    assert q.target in q.target_soft and len(q.members) == 6 and q.reference in q.members


def test_real_fashioniq_counts():
    root = shared_data("fashioniq")
    val = load_fashioniq(root, "val")
    assert len(val.triplets) == 6016
    assert len(load_fashioniq(root, "train").triplets) == 18000
    assert len(load_fashioniq(root, "test").triplets) == 6118
    assert {t.category for t in val.triplets} == {"dress", "shirt", "toptee"}
    dress = load_fashioniq(root, "val", "dress")
    assert len(dress.triplets) == 2017 and len(dress.gallery["dress"]) == 3817


def test_real_circo_counts():
    root = shared_data("circo")
    val, test = load_circo(root, "val"), load_circo(root, "test")
    assert len(val.queries) == 220 and len(test.queries) == 800
    assert all(q.targets for q in val.queries) and not any(q.targets for q in test.queries)


def test_fashioniq_caption_join():
    assert fiq_eval_caption("is shiny and silver with shorter sleeves", "fit and flare.") == (
        "Is shiny and silver with shorter sleeves and fit and flare"
    )
    joined = fiq_eval_caption(" yello and more flowing?", "short and black")
    assert joined == "Yello and more flowing and short and black"


def test_fashioniq_four_way_training_sampling():
    rng = random.Random(0)
    seen = {fiq_train_caption("is red.", "has long sleeves", rng) for _ in range(400)}
    assert seen == {"Is red and has long sleeves", "Has long sleeves and is red", "Is red", "Has long sleeves"}


def _write_cirr(root, records, images=("a", "b", "c", "d", "e", "f")):
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "image_splits" / "split.x.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in images}))
    (root / "captions" / "cap.x.val.json").write_text(records if isinstance(records, str) else json.dumps(records))


def _record(**over):
    r = {"pairid": 1, "reference": "a", "target_hard": "b", "target_soft": {"b": 1.0}, "caption": "make it red",
         "img_set": {"id": 1, "members": ["a", "b", "c", "d", "e", "f"]}}
    r.update(over)
    return r


def test_malformed_json_names_the_file(tmp_path):
    _write_cirr(tmp_path, "[{not json")
    with pytest.raises(DataError, match=r"cap\.x\.val\.json: malformed JSON"):
        load_cirr(tmp_path, "val")


def test_missing_field_names_file_and_field(tmp_path):
    bad = _record()
    del bad["caption"]
    _write_cirr(tmp_path, [_record(), bad])
    with pytest.raises(DataError, match=r"cap\.x\.val\.json: record 1 has no field 'caption'"):
        load_cirr(tmp_path, "val")
    data = load_cirr(tmp_path, "val", on_error="skip")
    assert len(data.queries) == 1 and data.skipped == 1 and "caption" in data.skip_reasons[0]


def test_unknown_split_and_missing_image(tmp_path):
    _write_cirr(tmp_path, [_record()])
    with pytest.raises(DataError, match="unknown CIRR split 'dev'"):
        load_cirr(tmp_path, "dev")
    with pytest.raises(DataError, match="does not exist"):
        load_cirr(tmp_path, "val", check_images=True)
    with pytest.raises(DataError, match="unknown FashionIQ category 'hat'"):
        load_fashioniq(tmp_path, "val", "hat")


def test_record_naming_an_unknown_image(tmp_path):
    _write_cirr(tmp_path, [_record(target_hard="zzz")])
    with pytest.raises(DataError, match="names image 'zzz'"):
        load_cirr(tmp_path, "val")


def test_real_fashioniq_queries_point_into_their_own_category():
    """121 val images are listed under both shirt and toptee: each category keeps its own copy, and
    every query's target and reference are in its category's gallery block (the protocol needs it)."""
    from cirdata.tables import load_cir_data
    from training.trns import negative_pools

    data = load_cir_data("fashioniq", shared_data("fashioniq"), "val", 224, progress=False, lazy=True)
    assert len(data.ref) == 6016
    assert (data.group[data.tgt] == data.query_group).all()
    assert (data.group[data.ref] == data.query_group).all()
    pools = negative_pools(data)  # METHOD.md: the category's (here val) targets
    for g, pool in enumerate(pools.pools):
        assert (data.group[pool] == g).all() and set(data.tgt[data.query_group == g]) == set(pool.tolist())


def test_circo_loader_takes_the_image_folder_and_the_annotations(tmp_path):
    from cirdata.tables import load_cir_data
    from tests.cir_layouts import circo

    root = circo(tmp_path / "circo", shared_data("circo"), queries=4)
    val = load_cir_data("circo", root, "val", 32)
    assert val.kind == "circo" and len(val.ref) == 4 and val.pixels[[0]].shape == (1, 32, 32, 3)
    first = json.loads((shared_data("circo") / "annotations" / "val.json").read_text())[0]
    assert val.names[val.ref[0]] == str(first["reference_img_id"]) and val.texts[0] == first["relative_caption"]
    assert [val.names[j] for j in val.positives[0]] == [str(x) for x in first["gt_img_ids"]]
    concept = load_cir_data("circo", root, "val", 32, circo_text="concept").texts[0]
    assert concept == f"{first['shared_concept']} that {first['relative_caption']}"
    test = load_cir_data("circo", root, "test", 32)
    assert (test.tgt == -1).all() and test.positives is None
    moved = tmp_path / "elsewhere"
    (root / "COCO2017_unlabeled" / "unlabeled2017").rename(moved)
    assert len(load_cir_data("circo", root, "val", 32, images=moved).names) == len(val.names)  # no image_info: *.jpg
    victim = moved / f"{first['reference_img_id']:012d}.jpg"
    victim.unlink()
    with pytest.raises(DataError, match="not in the gallery"):
        load_cir_data("circo", root, "val", 32, images=moved)
    with pytest.raises(DataError, match="COCO 2017 unlabeled"):
        load_cir_data("circo", root, "val", 32, images=tmp_path / "nothing")
