import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirdata.tables import load_cir_data
from training.evaluate import evaluate
from training.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=ROOT)


def test_eval_json_and_cirr_submission(tiny_trained, synth_small, tmp_path):
    r = run_cli("eval", str(tiny_trained), "--root", str(synth_small), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for key in ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"):
        assert 0 <= m[key] <= 100
    model, tok, _ = load_checkpoint(tiny_trained)
    direct = evaluate(model, tok, load_cir_data("synth", synth_small, "val", model.cfg.image_size, False)).metrics
    assert direct["R@10"] == m["R@10"] and direct["Rs@1"] == m["Rs@1"]
    r = run_cli("eval", str(tiny_trained), "--root", str(synth_small), "--split", "test1", "--submission",
                str(tmp_path / "sub"), "--json")
    assert r.returncode == 0, r.stderr
    recall = json.loads((tmp_path / "sub" / "cirr_recall_submission.json").read_text())
    assert recall["version"] == "rc2" and len(recall) == 150 + 2


def test_eval_table_and_errors(tiny_trained, synth_small, tmp_path):
    r = run_cli("eval", str(tiny_trained), "--root", str(synth_small), "--weights", "color=2")
    assert r.returncode == 0 and "Rs@1" in r.stdout and "errors of the top-1" in r.stdout
    r = run_cli("eval", str(tmp_path / "nope.pt"), "--root", str(synth_small))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    r = run_cli("eval", str(tiny_trained), "--root", str(synth_small), "--weights", "texture=1")
    assert r.returncode == 2
    assert "unknown attribute 'texture' in weights; this model's attributes: color, shape" in r.stderr


def _fashioniq_root(tmp_path: Path) -> Path:
    """A FashionIQ-layout set with generated images: per category, targets differ from candidates in color."""
    root = tmp_path / "fiq"
    for sub in ("captions", "image_splits", "images"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for cat in ("dress", "shirt", "toptee"):
        ids = [f"{cat}{i:03d}" for i in range(12)]
        for i, n in enumerate(ids):
            color = (rng.integers(0, 255), rng.integers(0, 255), i * 20)
            Image.new("RGB", (40, 50), tuple(int(c) for c in color)).save(root / "images" / f"{n}.png")
        trip = [{"candidate": ids[i], "target": ids[i + 1], "captions": ["is more blue.", "has a darker tone"]}
                for i in range(0, 10, 2)]
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(trip))
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
    return root


def test_eval_fashioniq_protocol(tiny_trained, tmp_path):
    root = _fashioniq_root(tmp_path)
    r = run_cli("eval", str(tiny_trained), "--data", "fashioniq", "--root", str(root), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for cat in ("dress", "shirt", "toptee"):
        assert m[f"{cat}/R@10"] >= 0 and m[f"{cat}/R@50"] == 100.0  # 12 images per gallery
    assert m["mean/R@50"] == 100.0 and "Avg" in m


def test_eval_circo_val_map_and_test_submission(tiny_trained, tmp_path, capsys):
    """`dqe-cir eval --data circo`: mAP@5/10/25/50 on val (checked against a hand computation), the
    server's JSON on test; the gallery is a COCO-style folder, the annotations CIRCO's own records."""
    from app.cli import main
    from tests.cir_layouts import circo
    from tests.conftest import shared_data

    root = circo(tmp_path / "circo", shared_data("circo"), queries=5)
    assert main(["eval", str(tiny_trained), "--data", "circo", "--root", str(root), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m) == {"mAP@5", "mAP@10", "mAP@25", "mAP@50"}
    model, tok, _ = load_checkpoint(tiny_trained)
    data = load_cir_data("circo", root, "val", model.cfg.image_size)
    scores = evaluate(model, tok, data).scores
    for k in (5, 10, 25, 50):
        aps = []
        for i in range(len(data.ref)):
            order = [j for j in np.argsort(-scores[i], kind="stable") if j != data.ref[i]][:k]
            gt = set(data.positives[i])
            hits = np.cumsum([j in gt for j in order])
            aps.append(sum(hits[r] / (r + 1) for r, j in enumerate(order) if j in gt) / min(k, len(gt)))
        assert m[f"mAP@{k}"] == pytest.approx(100 * np.mean(aps))
    assert main(["eval", str(tiny_trained), "--data", "circo", "--root", str(root), "--split", "test",
                 "--submission", str(tmp_path / "sub")]) == 0
    sub = json.loads((tmp_path / "sub" / "circo_test_submission.json").read_text())
    test = json.loads((root / "annotations" / "test.json").read_text())
    n_gallery = len(json.loads((root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json")
                               .read_text())["images"])
    assert list(sub) == [str(q["id"]) for q in test]
    for q in test:
        ids = sub[str(q["id"])]
        assert len(ids) == min(50, n_gallery - 1) and q["reference_img_id"] not in ids and len(set(ids)) == len(ids)
