import json
import math

import numpy as np
import pytest

from cirdata.datasets import load_cirr
from cirdata.errors import DataError
from cirdata.metrics import average_precision_at_k, mcnemar_exact, paired_bootstrap, recall_at_k, top_k
from cirdata.protocol import Query, Rankings, hit_ranks, query_hits, rank_gallery, ranked_metrics, score_metrics
from cirdata.submissions import write_circo_submission, write_cirr_submission
from cirdata.tables import CIRData
from tests.conftest import shared_data


def brute_rank(row, target, exclude=None):
    order = sorted((j for j in range(len(row)) if j != exclude), key=lambda j: (-row[j], j))
    return order.index(target)


def cirr_case(scores, gallery, refs, targets, members):
    queries = [Query(r, (t,), tuple(m)) for r, t, m in zip(refs, targets, members, strict=True)]
    return queries, rank_gallery(gallery, queries, scores)


@pytest.mark.parametrize("seed", range(5))
def test_rankings_match_sorting_by_hand_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(30, 12)).astype(float)  # many ties
    gallery = [f"g{j}" for j in range(12)]
    targets = rng.integers(0, 12, size=30)
    exclude = np.array([(t + 1 + rng.integers(11)) % 12 for t in targets])
    queries, rankings = cirr_case(scores, gallery, [gallery[e] for e in exclude], [gallery[t] for t in targets],
                                  [[gallery[e], gallery[t]] for e, t in zip(exclude, targets, strict=True)])
    ranks = hit_ranks(queries, rankings.ranked)
    assert ranks.tolist() == [brute_rank(scores[i], targets[i], exclude[i]) for i in range(30)]


def test_every_correct_image_counts_and_the_best_one_decides():
    gallery = ["a", "b", "t", "dup"]
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])
    q = Query("a", ("t",), ("a", "t", "dup"))
    assert hit_ranks([q], rank_gallery(gallery, [q], scores).ranked).tolist() == [2]  # a excluded: b, dup, t
    q2 = Query("a", ("t", "dup"), ("a", "t", "dup"))
    rankings = rank_gallery(gallery, [q2], scores)
    assert hit_ranks([q2], rankings.ranked).tolist() == [1]
    assert ranked_metrics("cirr", [q2], rankings)["Rs@1"] == 100.0  # dup beats t in the img_set and counts


def test_recall_hand_made():
    assert recall_at_k(np.array([0, 1, 5, 60]), (1, 5, 10, 50)) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0,
                                                                   "R@50": 75.0}


def test_cirr_metrics_hand_made_case():
    gallery = ["ref", "tgt", "d1", "d2", "d3", "d4", "other"]
    # The reference scores highest but is removed; 'other' beats the target on the full gallery,
    # but it is not in the img_set, so the subset rank is 0.
    scores = np.array([[0.99, 0.8, 0.1, 0.2, 0.3, 0.4, 0.9]])
    queries, rankings = cirr_case(scores, gallery, ["ref"], ["tgt"], [["ref", "tgt", "d1", "d2", "d3", "d4"]])
    m = ranked_metrics("cirr", queries, rankings)
    assert m["R@1"] == 0.0 and m["R@5"] == 100.0 and m["Rs@1"] == 100.0
    assert m["Avg"] == 100.0
    with pytest.raises(DataError, match="img_set rankings"):
        ranked_metrics("cirr", queries, Rankings(rankings.ranked))
    with pytest.raises(DataError, match="unknown protocol 'cir'"):
        ranked_metrics("cir", queries, rankings)


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
    queries, rankings = cirr_case(scores, gallery, refs, tgts, members)
    m = ranked_metrics("cirr", queries, rankings)
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
    hits = query_hits(queries, rankings)  # the per-query hits behind them
    assert hits["R@1"].tolist() == [r == 0 for r in ranks] and hits["Rs@1"].tolist() == [r == 0 for r in sub]


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


def test_fashioniq_metrics_keep_the_reference_and_rank_within_the_category():
    # Two categories of 60 images each; "dress" queries rank only the dress block, reference included.
    names = [f"d{i}" for i in range(60)] + [f"s{i}" for i in range(60)]
    scores = np.zeros((3, 120))
    scores[0, 0] = 0.5  # query 0: its target d0 is also its reference, and it stays in the ranking
    scores[1, 60:] = 1.0  # query 1: shirts score high, but it ranks dresses only; target d59 ties last
    scores[2, :] = 1.0  # query 2 (shirt): every tie goes to the earlier image, target s0 first
    data = CIRData(kind="fashioniq", split="val", names=names, pixels=np.zeros((120, 1, 1, 3), np.uint8),
                   ref=np.array([0, 1, 61]), tgt=np.array([0, 59, 60]), texts=["x"] * 3,
                   group=np.array([0] * 60 + [1] * 60), query_group=np.array([0, 0, 1]), group_names=("dress", "shirt"))
    m = score_metrics(data, scores)
    assert m["dress/R@10"] == 50.0 and m["dress/R@50"] == 50.0
    assert m["shirt/R@10"] == 100.0
    assert m["mean/R@10"] == 75.0 and m["Avg"] == 75.0


def test_circo_map_hand_made():
    # relevant at ranks 1 and 3 of 3 ground truths: AP@5 = (1/1 + 2/3) / 3
    assert average_precision_at_k([7, 1, 8, 2, 3], {7, 8, 9}, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k([1, 2], {9}, 5) == 0.0
    # fewer ground truths than K: divided by |G|
    m = ranked_metrics("circo", [Query("r", ("6",))], Rankings([["5", "6"]]))
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
    queries = [Query(q.reference, (), tuple(q.members)) for q in data.queries]  # test1 hides the targets
    paths = write_cirr_submission(tmp_path, [q.pairid for q in data.queries], rank_gallery(gallery, queries, scores))
    recall, subset = (json.loads(p.read_text()) for p in paths)
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["metric"] == "recall_subset"
    for i, q in enumerate(data.queries):
        top50, top3 = recall[str(q.pairid)], subset[str(q.pairid)]
        assert len(top50) == 50 and len(set(top50)) == 50 and q.reference not in top50
        assert len(top3) == 3 and q.reference not in top3 and set(top3) <= set(q.members)
        best = max((j for j in range(len(gallery)) if gallery[j] != q.reference), key=lambda j: scores[i, j])
        assert top50[0] == gallery[best]
    assert len(recall) == len(data.queries) + 2


def test_circo_submission(tmp_path):
    rankings = Rankings([[str(x) for x in range(60)], [str(x) for x in range(100, 160)]])
    p = write_circo_submission(tmp_path / "circo.json", [0, 1], rankings)
    out = json.loads(p.read_text())
    assert set(out) == {"0", "1"} and len(out["0"]) == 50 and out["1"][0] == 100


def test_torch_and_served_evaluation_see_the_same_queries_duplicates_included(synth_small, tmp_path):
    """queries_of (torch, from the image table) and cirr_queries (served, from the files) must agree,
    also where two images show one scene: then the duplicate counts as a hit on both paths."""
    import shutil

    from cirdata.datasets import load_cirr, scenes_path
    from cirdata.protocol import cirr_queries, queries_of
    from cirdata.tables import load_cir_data

    root = tmp_path / "synth"
    shutil.copytree(synth_small, root, ignore=shutil.ignore_patterns("*.png"))
    split = load_cirr(root, "val")
    scenes = json.loads(scenes_path(split).read_text())
    q0 = split.queries[0]
    dup = next(n for n in split.gallery if n not in (q0.target, q0.reference))
    scenes[dup]["key"] = scenes[q0.target]["key"]  # `dup` now shows the target's scene
    scenes_path(split).write_text(json.dumps(scenes))
    served = cirr_queries(load_cirr(root, "val"))
    torch_side = queries_of(load_cir_data("synth", root, "val", 16, progress=False, lazy=True))
    assert served == torch_side
    assert served[0].correct == (q0.target, dup)


def test_a_short_ranking_without_the_target_is_a_miss_at_every_k():
    """A ranking shorter than K that lacks the target must not score as a hit at K (it did: the miss
    position was the ranking's length, and length < K counted)."""
    from cirdata.protocol import short_rankings

    q = Query("ref", ("t",), ("ref", "t", "a", "b", "c", "d"))
    empty = Rankings([[]], [[]])
    m = ranked_metrics("cirr", [q], empty)
    assert all(v == 0.0 for k, v in m.items() if k != "Avg") and m["Avg"] == 0.0
    two = Rankings([["a", "b"]], [["a", "b"]])  # a 2-long subset ranking without the target
    m = ranked_metrics("cirr", [q], two)
    assert m["Rs@3"] == 0.0 and m["R@50"] == 0.0
    assert short_rankings([q], two) == [0]
    hit = Rankings([["t"]], [["t", "a", "b", "c", "d"]])  # short, but the hit is in it
    assert ranked_metrics("cirr", [q], hit)["R@1"] == 100.0
    assert short_rankings([q], hit) == [0] and short_rankings([q], hit, depth=1) == []

