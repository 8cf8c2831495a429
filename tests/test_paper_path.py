"""The paper-scale path end to end, at test size: a pretrained BLIP-2 folder (tiny dims, saved with
save_pretrained, its tokenizer beside), FashionIQ and CIRR in their real folder layouts with generated
images, then for each: two steps of the recipe's code path (pairwise loss, TRNS mined from the pool,
attribute weights; only sizes overridden), eval, export, index (in-process, local-mode Qdrant) and a
composed search."""

import json

import pytest

from app.cli import main
from tests.cir_layouts import cirr, fashioniq, tiny_blip2
from training.checkpoint import LAST, read_meta
from training.config import load_train_config
from training.train import train

SMALL = dict(max_steps=2, batch_size=4, eval_every=0, trns_warmup_epochs=0, threads=1, progress=False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_blip2(tmp_path_factory.mktemp("blip2") / "blip2-itm-tiny")


def _train_eval_export_index(recipe, root, pretrained, tmp_path, capsys, data, catalog, query):
    cfg = load_train_config(recipe, root=str(root), out=str(tmp_path / "run"), pretrained=str(pretrained), **SMALL)
    assert (cfg.loss, cfg.negatives, cfg.batch_size, cfg.model) == ("pairwise", "trns", 4, "blip2")
    result = train(cfg)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["trns_rebuild", "step", "step", "eval"] and result["steps"] == 2
    ckpt = tmp_path / "run" / LAST
    assert read_meta(ckpt)["model_config"]["blip2_config"]["num_query_tokens"] == 4

    assert main(["eval", str(ckpt), "--data", data, "--root", str(root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["Avg"] == pytest.approx(result["Avg"])
    bundle, qdrant = tmp_path / "bundle", tmp_path / "qdrant"
    assert main(["export", str(ckpt), "--out", str(bundle)]) == 0
    capsys.readouterr()
    assert main(["index", "--catalog", str(catalog), "--collection", data, "--workers", "none", "--json", "--quiet",
                 "--bundle", str(bundle), "--qdrant-path", str(qdrant)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["indexed"] == len(list(catalog.glob("*.png"))) and not report["failed"]

    from plugin import CIRSearch, ItemRef
    from plugin.store import open_embedded

    client = open_embedded(str(qdrant))
    try:
        hits = CIRSearch(client, data, bundle=bundle, catalog_root=catalog).query(ItemRef(query[0]), query[1], k=3)
    finally:
        client.close()
    assert len(hits) == 3 and query[0] not in [h.id for h in hits]
    return metrics


def test_fashioniq_layout_recipe_to_search(pretrained, tmp_path, capsys):
    root = fashioniq(tmp_path / "fashioniq")
    cap = json.loads((root / "captions" / "cap.dress.val.json").read_text())[0]
    metrics = _train_eval_export_index("fashioniq-blip2", root, pretrained, tmp_path, capsys, "fashioniq",
                                       root / "images", (f"{cap['candidate']}.png", "is red and has a different shape"))
    assert {"dress/R@10", "shirt/R@50", "toptee/R@10", "mean/R@10", "mean/R@50"} <= set(metrics)


def test_cirr_layout_recipe_to_search_and_test_submission(pretrained, tmp_path, capsys):
    root = cirr(tmp_path / "cirr")
    metrics = _train_eval_export_index("cirr-blip2", root, pretrained, tmp_path, capsys, "cirr", root / "dev",
                                       ("dev-0-0-img0.png", "make it green"))
    assert {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"} <= set(metrics)
    assert main(["eval", str(tmp_path / "run" / LAST), "--data", "cirr", "--root", str(root), "--split", "test1",
                 "--submission", str(tmp_path / "sub")]) == 0
    recall = json.loads((tmp_path / "sub" / "cirr_recall_subset_submission.json").read_text())
    test = json.loads((root / "captions" / "cap.rc2.test1.json").read_text())
    assert recall["metric"] == "recall_subset" and len(recall) == len(test) + 2
