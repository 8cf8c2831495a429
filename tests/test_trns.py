import numpy as np
import pytest
import torch

from training.trns import (
    MidZoneConfig,
    NegativeSampler,
    delta_scores,
    exclusion_mask,
    mid_zone_negatives,
    mine_mid_zones,
    random_negatives,
    rebuild_epochs,
)


def brute_mid_zones(scores, targets, excluded, cfg):
    out = []
    for i in range(len(scores)):
        delta = [scores[i][targets[i]] - scores[i][c] for c in range(scores.shape[1])]
        allowed = [c for c in range(scores.shape[1]) if not excluded[i][c]]
        below = [c for c in allowed if delta[c] > cfg.guard]
        zone = []
        if below:
            if cfg.bounds == "quantile":
                vals = [delta[c] for c in below]
                lo, hi = np.quantile(vals, cfg.low), np.quantile(vals, cfg.high)
            else:
                lo, hi = cfg.low, cfg.high
            zone = [c for c in below if lo <= delta[c] <= hi]
            for _ in range(cfg.widen):
                if zone:
                    break
                w = max(hi - lo, 1e-3)
                lo, hi = lo - w / 2, hi + w / 2
                zone = [c for c in below if lo <= delta[c] <= hi]
        if not zone:
            past_guard = sorted(below, key=lambda c: (delta[c], c))
            under = sorted((c for c in allowed if delta[c] > 0), key=lambda c: (delta[c], c))
            lowest = sorted(allowed, key=lambda c: (-delta[c], c))
            zone = (past_guard or under or lowest)[: cfg.fallback]
        out.append(sorted(zone))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("guard", [0.0, 0.15])
@pytest.mark.parametrize("bounds,low,high", [("quantile", 0.1, 0.4), ("absolute", 0.05, 0.3), ("absolute", 5, 6)])
def test_mid_zone_matches_brute_force(seed, guard, bounds, low, high):
    rng = np.random.default_rng(seed)
    q, n = 12, 30
    scores = np.round(rng.random((q, n)), 1)  # rounding makes many ties
    targets = rng.integers(0, n, q)
    excluded = exclusion_mask(q, n, targets, [[int(rng.integers(n))] for _ in range(q)])
    cfg = MidZoneConfig(bounds=bounds, low=low, high=high, guard=guard)
    got = mid_zone_negatives(delta_scores(scores, targets), excluded, cfg)
    want = brute_mid_zones(scores, targets, excluded, cfg)
    assert [sorted(z.tolist()) for z in got] == want
    for i, z in enumerate(got):
        assert len(z) and targets[i] not in z and not excluded[i][z].any()


def test_empty_mid_zone_falls_back_to_nearest_below_target():
    scores = np.array([[0.9, 0.1, 0.5, 0.85, 0.95]])  # target 0 at 0.9
    excluded = exclusion_mask(1, 5, np.array([0]))
    zone = mid_zone_negatives(delta_scores(scores, np.array([0])), excluded,
                              MidZoneConfig(bounds="absolute", low=10, high=11, widen=0, fallback=2))
    assert zone[0].tolist() == [3, 2]  # closest below the target first; 4 scores above it


@pytest.mark.parametrize("target_rank", [0, 3, 49, 500, 998])
@pytest.mark.parametrize("bounds,low,high", [("quantile", 0.02, 0.10), ("quantile", 0.001, 0.01),
                                             ("quantile", 0.0, 1.0), ("absolute", -1.0, 2.0)])
def test_no_zone_member_ever_scores_above_the_target(target_rank, bounds, low, high):
    """The issue's case: with the target ranked 50th of 1,000, fixed rank bands (quantiles of Delta over
    the whole pool) held images above the target; anchored at the target, none ever does, and the
    guard band just below it is left out too."""
    rng = np.random.default_rng(target_rank)
    n, q = 1000, 8
    scores = rng.normal(size=(q, n))
    order = np.argsort(-scores, axis=1)
    targets = order[:, target_rank]  # each query's target at that rank
    excluded = exclusion_mask(q, n, targets)
    cfg = MidZoneConfig(bounds=bounds, low=low, high=high, guard=0.05)
    delta = delta_scores(scores, targets)
    for i, zone in enumerate(mid_zone_negatives(delta, excluded, cfg)):
        assert len(zone)
        if target_rank < n - 1:
            assert (scores[i, zone] < scores[i, targets[i]]).all()
            if (delta[i] > cfg.guard).any():
                assert (delta[i, zone] > cfg.guard).all()


def test_a_target_ranked_last_still_gets_a_negative():
    scores = np.array([[0.1, 0.5, 0.9, 0.7]])  # the target (0) scores lowest of all
    zone = mid_zone_negatives(delta_scores(scores, np.array([0])), exclusion_mask(1, 4, np.array([0])),
                              MidZoneConfig(fallback=2))[0]
    assert zone.tolist() == [1, 3]  # the lowest-scoring ones: there is nothing below the target


def test_mid_zone_config_rejects_bad_bounds():
    with pytest.raises(ValueError, match="quantile bounds"):
        MidZoneConfig(bounds="quantile", low=0.5, high=0.1)
    with pytest.raises(ValueError, match="guard"):
        MidZoneConfig(guard=-0.1)


def test_sampler_draws_without_replacement_until_exhausted():
    zones = [np.array([1, 2, 3]), np.array([7])]
    s = NegativeSampler(zones, seed=0)
    first = [int(s.draw(np.array([0]))[0]) for _ in range(3)]
    assert sorted(first) == [1, 2, 3]
    assert set(int(s.draw(np.array([0]))[0]) for _ in range(3)) == {1, 2, 3}
    assert s.draw(np.array([1, 1])).tolist() == [7, 7]


@pytest.mark.parametrize("chunk", [1, 5, 12, 100])
@pytest.mark.parametrize("bounds,low,high", [("quantile", 0.1, 0.4), ("absolute", 0.05, 0.3), ("absolute", 5, 6)])
def test_chunked_float32_mining_gives_the_same_negatives_as_the_full_matrix(chunk, bounds, low, high):
    """The bounded-memory miner against today's code (one float64 queries x pool matrix) and brute force.
    Scores are multiples of 1/64 (exact in float32), with many ties."""
    rng = np.random.default_rng(chunk)
    q, n = 12, 40
    scores = rng.integers(-64, 65, (q, n)) / 64
    targets = rng.integers(0, n, q)
    extra = [[int(rng.integers(n)), int(rng.integers(n))] for _ in range(q)]
    cfg = MidZoneConfig(bounds=bounds, low=low, high=high)
    today = mid_zone_negatives(delta_scores(scores, targets), exclusion_mask(q, n, targets, extra), cfg)
    asked = []

    def block(lo, hi):
        asked.append(hi - lo)
        return scores[lo:hi].astype(np.float32)

    got = mine_mid_zones(block, targets, extra, cfg, chunk=chunk)
    assert [z.tolist() for z in got] == [z.tolist() for z in today]
    assert max(asked) == min(chunk, q) and sum(asked) == q
    assert [sorted(z.tolist()) for z in got] == brute_mid_zones(scores, targets, exclusion_mask(q, n, targets, extra),
                                                                cfg)


def test_random_negatives_never_target_reference_or_duplicate():
    rng = np.random.default_rng(0)
    pools = [np.arange(10), np.arange(10, 16)]
    excluded = [[2, 3, 7], [10, 11, 12, 13, 14]]  # target, reference, a same-scene duplicate; a nearly spent pool
    picks = [random_negatives(rng, [pools[j % 2] for j in range(40)], [excluded[j % 2] for j in range(40)])
             for _ in range(50)]
    first, second = np.concatenate([p[0::2] for p in picks]), np.concatenate([p[1::2] for p in picks])
    assert set(first.tolist()) == set(range(10)) - {2, 3, 7} and set(second.tolist()) == {15}
    again = random_negatives(np.random.default_rng(0), [pools[j % 2] for j in range(40)],
                             [excluded[j % 2] for j in range(40)])
    assert again.tolist() == picks[0].tolist()  # deterministic for a seed
    with pytest.raises(ValueError, match="every image of its negative pool is excluded"):
        random_negatives(rng, [np.array([4, 5])], [[4, 5]])


def test_rebuild_schedule_warms_up_for_the_first_interval():
    assert rebuild_epochs(30) == [5, 10, 15, 20, 25]  # FashionIQ: random negatives for epochs 0-4
    assert rebuild_epochs(50) == [8, 16, 24, 32, 40, 48]  # CIRR
    assert rebuild_epochs(4) == [1, 2, 3]
    assert rebuild_epochs(30, warmup=1) == [1, 6, 11, 16, 21, 26]  # an explicit warm-up (ablation)
    assert rebuild_epochs(3, warmup=0) == [0, 1, 2]
    assert rebuild_epochs(12, warmup=0, every=100) == [0]  # mined once, at the start (the demo's last stage)
    assert rebuild_epochs(12, every=4) == [4, 8]


def test_sampler_state_round_trip():
    s = NegativeSampler([np.array([5, 6, 7]), np.array([1])], seed=3)
    s.draw(np.array([0, 1]))
    t = NegativeSampler.from_state_dict(s.state_dict())
    q = np.array([0, 0, 0, 1, 0])
    assert t.draw(q).tolist() == s.draw(q).tolist()


def test_maxsim_scores_chunked_equals_full():
    from training.model import maxsim_scores

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(103, 4, 8), dim=-1)
    full = torch.einsum("qd,nkd->qnk", q, pool).amax(-1).numpy()
    assert np.allclose(maxsim_scores(q, pool, chunk=10), full, atol=1e-6)


def test_never_negatives_are_target_reference_and_the_targets_scene():
    """With duplicated scenes (images 1 and 3 show one scene), the warm-up's excluded images hold the
    target's duplicates; the pools of the CIRR layout are every image."""
    from cirdata.tables import CIRData
    from training.trns import negative_pools

    data = CIRData(kind="synth", split="train", names=list("abcde"), pixels=np.zeros((5, 2, 2, 3), np.uint8),
                   ref=np.array([0, 2]), tgt=np.array([1, 4]), texts=["x", "y"],
                   scene_keys=["s0", "s1", "s2", "s1", "s4"])
    assert sorted(data.never_negatives(0)) == [0, 1, 3] and sorted(data.never_negatives(1)) == [2, 4]
    pools = negative_pools(data)
    assert [p.tolist() for p in pools.pools] == [[0, 1, 2, 3, 4]] and pools.of_query.tolist() == [0, 0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        neg = random_negatives(rng, [pools.pools[0]] * 2, [data.never_negatives(0), data.never_negatives(1)])
        assert neg[0] in (2, 4) and neg[1] in (0, 1, 3)


def test_targets_pool_is_the_training_targets_for_every_query():
    """trns_pool=targets: one pool of the distinct training targets (a fixed subset of the gallery), so
    mining scores far fewer images; an unknown mode names the choices."""
    from cirdata.tables import CIRData
    from training.errors import TrainingError
    from training.trns import negative_pools

    data = CIRData(kind="synth", split="train", names=list("abcdef"), pixels=np.zeros((6, 2, 2, 3), np.uint8),
                   ref=np.array([0, 2, 5]), tgt=np.array([4, 1, 4]), texts=["x", "y", "z"])
    pools = negative_pools(data, "targets")
    assert [p.tolist() for p in pools.pools] == [[1, 4]] and pools.of_query.tolist() == [0, 0, 0]
    with pytest.raises(TrainingError, match="auto, all, targets"):
        negative_pools(data, "most")
