import hashlib
import json

import numpy as np
import pytest

from cirdata.datasets import load_cirr
from cirdata.oracle import oracle_metrics
from cirdata.scenes import (
    ATTRIBUTE_WORDS,
    COLORS,
    HELD_OUT_ONLY_WORDS,
    SHAPES,
    TEMPLATES,
    _template_regex,
    apply_edit,
    edit_text,
    hard_distractors,
    noisy_phrasing,
    parse_edit,
    random_edit,
    random_scene,
    scene_key,
    template_of,
    templates_for,
)
from cirdata.synth import generate, render_scene
from cirdata.vocab import filler_words


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, "small", seed=3, progress=False, workers=1)
    generate(b, "small", seed=3, progress=False, workers=2)
    generate(c, "small", seed=4, progress=False, workers=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_cirr_layout_and_img_sets(synth_small):
    for split in ("train", "val", "test1"):
        data = load_cirr(synth_small, split, check_images=True)
        assert data.name == "synth" and data.skipped == 0
        scenes = json.loads((synth_small / "scenes" / f"scenes.synth.{split}.json").read_text())
        keys = [scenes[n]["key"] for n in data.gallery]
        assert len(keys) == len(set(keys)), "one image per scene within a split"
        for q in data.queries:
            assert len(q.members) == 6 and len(set(q.members)) == 6
            assert q.reference in q.members and q.target in q.members
            assert q.reference != q.target
            assert scenes[q.reference]["caption"].startswith("a ")


def test_heldout_phrasings_only_outside_train():
    for kind, (seen, held) in TEMPLATES.items():
        assert set(templates_for(kind, "train")) == set(seen)
        assert set(held) <= set(templates_for(kind, "val"))


def test_phrasing_noise_keeps_the_attribute_words_and_never_uses_a_held_out_word():
    import random

    rng, fillers = random.Random(0), filler_words()
    assert {"delete", "recolor", "exchange"} <= HELD_OUT_ONLY_WORDS and not HELD_OUT_ONLY_WORDS & set(fillers)
    assert not ATTRIBUTE_WORDS & set(fillers) and {"make", "the", "with"} <= set(fillers)
    text = "put a small red circle in the top left"
    assert noisy_phrasing(text, rng, 0.0, fillers) == text
    outs = [noisy_phrasing(text, rng, 0.9, fillers) for _ in range(200)]
    for out in outs:
        assert [w for w in out.split() if w in ATTRIBUTE_WORDS] == ["small", "red", "circle", "top", "left"]
        assert not set(out.split()) & HELD_OUT_ONLY_WORDS
    lengths = {len(o.split()) for o in outs}
    assert len(set(outs)) > 100 and min(lengths) < 9 and 9 in lengths, "words are replaced and dropped"
    # at a small p most words stay: the noise is a perturbation, not a new language
    kept = np.mean([a == b for _ in range(200) for a, b in zip(noisy_phrasing(text, rng, 0.1, fillers).split(),
                                                                 text.split(), strict=False)])
    assert kept > 0.8


def test_template_of_names_the_template_a_text_was_written_with():
    rng = np.random.default_rng(5)
    for kind, (seen, held) in TEMPLATES.items():
        for template in seen + held:
            while True:  # a reference scene the template fits (color_single needs one object)
                ref = random_scene(rng, 1 if kind == "color_single" else None)
                edit = random_edit(rng, ref)
                if edit.kind == kind.replace("_single", ""):
                    break
            assert template_of(edit_text(edit, template)) == template
    assert template_of("make it sparkle") is None


def test_heldout_phrasings_appear_in_val_only(synth_small):
    held = [_template_regex(t) for _, h in TEMPLATES.values() for t in h]

    def uses_held(caption):
        return any(rx.fullmatch(caption) for rx in held)

    assert not any(uses_held(q.caption) for q in load_cirr(synth_small, "train").queries)
    assert sum(uses_held(q.caption) for q in load_cirr(synth_small, "val").queries) > 10


def test_edits_parse_back_to_the_same_target():
    rng = np.random.default_rng(0)
    for _ in range(500):
        ref = random_scene(rng)
        edit = random_edit(rng, ref)
        target = apply_edit(ref, edit)
        assert scene_key(target) != scene_key(ref)
        for t in templates_for(edit.kind, "val"):
            text = edit_text(edit, t)
            assert scene_key(apply_edit(ref, parse_edit(text, ref))) == scene_key(target), text


def test_distractors_are_hard_and_distinct():
    rng = np.random.default_rng(1)
    wrong_shape = wrong_color = 0
    for _ in range(300):
        ref = random_scene(rng)
        edit = random_edit(rng, ref)
        if edit.kind != "color":
            continue
        target = apply_edit(ref, edit)
        ds = hard_distractors(rng, ref, edit, target)
        keys = {scene_key(d) for d in ds} | {scene_key(ref), scene_key(target)}
        assert len(keys) == 6
        new = [o for o in target if o.pos == edit.target_obj.pos][0]
        for d in ds:
            at = [o for o in d if o.pos == new.pos]
            if at and at[0].color == new.color and at[0].shape != new.shape:
                wrong_shape += 1
            if at and at[0].shape == new.shape and at[0].color != new.color:
                wrong_color += 1
    assert wrong_shape > 50 and wrong_color > 50


def test_render_is_jittered_and_shows_colors():
    rng = np.random.default_rng(0)
    scene = random_scene(rng, 1)
    a = np.asarray(render_scene(scene, 64, [0, 0, 1]), dtype=np.int32)
    b = np.asarray(render_scene(scene, 64, [0, 0, 2]), dtype=np.int32)
    assert a.shape == (64, 64, 3)
    assert np.abs(a - b).sum() > 0, "two renderings of one scene are never pixel-identical"
    target = np.array(COLORS[scene[0].color])
    assert (np.abs(a - target).sum(axis=2) < 60).sum() > 40, "the object's color covers many pixels"
    assert len(SHAPES) >= 6 and len(COLORS) >= 8


def test_oracle_scores_100(synth_small):
    m = oracle_metrics(synth_small, "val")
    assert m["R@1"] == 100.0 and m["Rs@1"] == 100.0


def test_unknown_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown size"):
        generate(tmp_path, "huge")


def test_held_out_phrasings_are_only_in_val_and_recognised(synth_small):
    """Every training text uses a training phrasing; val mixes in the held-out ones, and
    is_held_out_phrasing tells them apart (the learning study splits val metrics by it)."""
    from cirdata.scenes import is_held_out_phrasing

    caps = {s: json.loads((synth_small / "captions" / f"cap.synth.{s}.json").read_text()) for s in ("train", "val")}
    assert not any(is_held_out_phrasing(c["caption"]) for c in caps["train"])
    held = [is_held_out_phrasing(c["caption"]) for c in caps["val"]]
    assert 0 < sum(held) < len(held)
    assert is_held_out_phrasing("recolor the red circle blue") and not is_held_out_phrasing("make the red circle blue")
