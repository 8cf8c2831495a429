import json
import math

import numpy as np
import pytest

from tests.conftest import shared_data
from training.datasets import load_cirr
from training.metrics import (
    average_precision_at_k,
    circo_map,
    cirr_metrics,
    cirr_ranks,
    fashioniq_metrics,
    mcnemar_exact,
    paired_bootstrap,
    recall_at_k,
    target_ranks,
    top_k,
    write_circo_submission,
    write_cirr_submission,
)


def brute_rank(row, target, exclude=None):
    order = sorted((j for j in range(len(row)) if j != exclude), key=lambda j: (-row[j], j))
    return order.index(target)


@pytest.mark.parametrize("seed", range(5))
def test_target_ranks_match_sorting_by_hand_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(30, 12)).astype(float)  # many ties
    targets = rng.integers(0, 12, size=30)
    exclude = np.array([(t + 1 + rng.integers(11)) % 12 for t in targets])
    ranks = target_ranks(scores, targets, exclude)
    for i in range(30):
        assert ranks[i] == brute_rank(scores[i], targets[i], exclude[i])
    assert list(target_ranks(scores, targets)) == [brute_rank(scores[i], targets[i]) for i in range(30)]


def test_extra_positives_take_the_best_rank():
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    assert target_ranks(scores, [2])[0] == 3
    assert target_ranks(scores, [2], positives=[[3]])[0] == 2
    assert target_ranks(scores, [2], exclude=[0], positives=[[3]])[0] == 1


def test_recall_hand_made():
    assert recall_at_k(np.array([0, 1, 5, 60]), (1, 5, 10, 50)) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0,
                                                                   "R@50": 75.0}


def test_cirr_metrics_hand_made_case():
    gallery = ["ref", "tgt", "d1", "d2", "d3", "d4", "other"]
    # The reference scores highest but is removed; 'other' beats the target on the full gallery,
    # but it is not in the img_set, so the subset rank is 0.
    scores = np.array([[0.99, 0.8, 0.1, 0.2, 0.3, 0.4, 0.9]])
    m = cirr_metrics(scores, gallery, ["ref"], ["tgt"], [["ref", "tgt", "d1", "d2", "d3", "d4"]])
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0 and m["Rs@1"] == 100.0
    assert m["Avg"] == 100.0


def test_cirr_metrics_against_brute_force():
    rng = np.random.default_rng(7)
    g, q = 40, 25
    gallery = [f"img{i}" for i in range(g)]
    scores = rng.normal(size=(q, g))
    refs, tgts, members = [], [], []
    for _ in range(q):
        mem = list(rng.choice(g, 6, replace=False))
        refs.append(gallery[mem[0]])
        tgts.append(gallery[mem[1]])
        members.append([gallery[m] for m in mem])
    m = cirr_metrics(scores, gallery, refs, tgts, members)
    ranks, sub = [], []
    for i in range(q):
        r = gallery.index(refs[i])
        ranks.append(brute_rank(scores[i], gallery.index(tgts[i]), r))
        cand = [gallery.index(x) for x in members[i] if x != refs[i]]
        order = sorted(cand, key=lambda j: -scores[i, j])
        sub.append(order.index(gallery.index(tgts[i])))
    for k in (1, 5, 10, 50):
        assert m[f"R@{k}"] == pytest.approx(100 * np.mean(np.array(ranks) < k))
    for k in (1, 2, 3):
        assert m[f"Rs@{k}"] == pytest.approx(100 * np.mean(np.array(sub) < k))
    got_ranks, got_sub = cirr_ranks(scores, gallery, refs, tgts, members)  # the per-query ranks behind them
    assert got_ranks.tolist() == ranks and got_sub.tolist() == sub


def test_mcnemar_exact_against_the_binomial_by_hand():
    a = np.array([True] * 10 + [False] * 5)
    assert mcnemar_exact(a, a) == {"only_a": 0, "only_b": 0, "p": 1.0}
    b = np.array([False] * 10 + [True] * 5)  # a wins 10, b wins 5: p = 2 * P(X <= 5), X ~ Bin(15, 1/2)
    m = mcnemar_exact(a, b)
    want = 2 * sum(math.comb(15, i) for i in range(6)) / 2**15
    assert (m["only_a"], m["only_b"]) == (10, 5) and m["p"] == pytest.approx(want)
    assert mcnemar_exact(b, a)["p"] == pytest.approx(want)  # symmetric
    assert mcnemar_exact(np.zeros(10, bool), np.ones(10, bool))["p"] == pytest.approx(2 / 2**10)


def test_paired_bootstrap_sees_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = rng.random(1000) < 0.5
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0
    better = a | (rng.random(1000) < 0.2)  # b also gets ~10% more of the queries right
    out = paired_bootstrap(a, better)
    assert out["diff"] == pytest.approx(100 * (better.mean() - a.mean())) and out["p"] < 0.001
    assert out["ci95"][0] > 0
    noise = np.where(rng.random(1000) < 0.02, ~a, a)  # a few flips either way
    assert paired_bootstrap(a, noise)["p"] > 0.05


def test_fashioniq_metrics_keep_the_reference_and_average():
    scores = np.array([[0.5] + [0.0] * 59, [1.0] * 60])
    m = fashioniq_metrics({"dress": (scores, [0, 59]), "shirt": (scores, [0, 0])})
    assert m["dress/R@10"] == 50.0 and m["dress/R@50"] == 50.0
    assert m["shirt/R@10"] == 100.0
    assert m["mean/R@10"] == 75.0 and m["Avg"] == 75.0


def test_circo_map_hand_made():
    # relevant at ranks 1 and 3 of 3 ground truths: AP@5 = (1/1 + 2/3) / 3
    assert average_precision_at_k([7, 1, 8, 2, 3], {7, 8, 9}, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k([1, 2], {9}, 5) == 0.0
    # fewer ground truths than K: divided by |G|
    m = circo_map([[5, 6]], [[6]], ks=(5,))
    assert m["mAP@5"] == pytest.approx(50.0)


def test_top_k_excludes_and_is_stable():
    scores = np.array([[1.0, 1.0, 0.5, 1.0]])
    assert top_k(scores, 2, [0]).tolist() == [[1, 3]]


def test_cirr_submission_on_real_test1(tmp_path):
    data = load_cirr(shared_data("cirr"), "test1")
    rng = np.random.default_rng(0)
    gallery = data.gallery
    scores = rng.random((len(data.queries), len(gallery))).astype(np.float32)
    # Make the reference the top scorer so that its exclusion is really tested.
    for i, q in enumerate(data.queries):
        scores[i, gallery.index(q.reference)] = 2.0
    paths = write_cirr_submission(tmp_path, [q.pairid for q in data.queries], scores, gallery,
                                  [q.reference for q in data.queries], [q.members for q in data.queries])
    recall, subset = (json.loads(p.read_text()) for p in paths)
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["metric"] == "recall_subset"
    for q in data.queries:
        top50, top3 = recall[str(q.pairid)], subset[str(q.pairid)]
        assert len(top50) == 50 and len(set(top50)) == 50 and q.reference not in top50
        assert len(top3) == 3 and q.reference not in top3 and set(top3) <= set(q.members)
    assert len(recall) == len(data.queries) + 2


def test_circo_submission(tmp_path):
    p = write_circo_submission(tmp_path / "circo.json", [0, 1], [list(range(60)), list(range(100, 160))])
    out = json.loads(p.read_text())
    assert set(out) == {"0", "1"} and len(out["0"]) == 50 and out["1"][0] == 100
