import numpy as np
import pytest
import torch

from training.trns import (
    MidZoneConfig,
    NegativeSampler,
    delta_scores,
    exclusion_mask,
    mid_zone_negatives,
    random_negatives,
    rebuild_epochs,
)


def brute_mid_zones(scores, targets, excluded, cfg):
    out = []
    for i in range(len(scores)):
        delta = [scores[i][targets[i]] - scores[i][c] for c in range(scores.shape[1])]
        allowed = [c for c in range(scores.shape[1]) if not excluded[i][c]]
        if cfg.bounds == "quantile":
            vals = [delta[c] for c in allowed]
            lo, hi = np.quantile(vals, cfg.low), np.quantile(vals, cfg.high)
        else:
            lo, hi = cfg.low, cfg.high
        zone = [c for c in allowed if lo <= delta[c] <= hi]
        for _ in range(cfg.widen):
            if zone:
                break
            w = max(hi - lo, 1e-3)
            lo, hi = lo - w / 2, hi + w / 2
            zone = [c for c in allowed if lo <= delta[c] <= hi]
        if not zone:
            below = sorted((c for c in allowed if delta[c] > 0), key=lambda c: (delta[c], c))
            zone = below[: cfg.fallback] if below else sorted(allowed, key=lambda c: (-delta[c], c))[: cfg.fallback]
        out.append(sorted(zone))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bounds,low,high", [("quantile", 0.1, 0.4), ("absolute", 0.05, 0.3), ("absolute", 5, 6)])
def test_mid_zone_matches_brute_force(seed, bounds, low, high):
    rng = np.random.default_rng(seed)
    q, n = 12, 30
    scores = np.round(rng.random((q, n)), 1)  # rounding makes many ties
    targets = rng.integers(0, n, q)
    excluded = exclusion_mask(q, n, targets, [[int(rng.integers(n))] for _ in range(q)])
    cfg = MidZoneConfig(bounds=bounds, low=low, high=high)
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


def test_sampler_draws_without_replacement_until_exhausted():
    zones = [np.array([1, 2, 3]), np.array([7])]
    s = NegativeSampler(zones, seed=0)
    first = [int(s.draw(np.array([0]))[0]) for _ in range(3)]
    assert sorted(first) == [1, 2, 3]
    assert set(int(s.draw(np.array([0]))[0]) for _ in range(3)) == {1, 2, 3}
    assert s.draw(np.array([1, 1])).tolist() == [7, 7]


def test_random_negatives_never_the_target():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 2000)
    neg = random_negatives(rng, targets, 5)
    assert (neg != targets).all() and set(neg.tolist()) == {0, 1, 2, 3, 4}


def test_rebuild_schedule():
    assert rebuild_epochs(30, 1) == [1, 6, 11, 16, 21, 26]
    assert rebuild_epochs(4, 1) == [1, 2, 3]


def test_maxsim_scores_chunked_equals_full():
    from training.model import maxsim_scores

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(103, 4, 8), dim=-1)
    full = torch.einsum("qd,nkd->qnk", q, pool).amax(-1).numpy()
    assert np.allclose(maxsim_scores(q, pool, chunk=10), full, atol=1e-6)
