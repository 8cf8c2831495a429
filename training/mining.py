"""TRNS mining with the current model: every training query scored against its negative pool, the
mid-zones cut a chunk of queries at a time (trns.mine_mid_zones), the work split over the ranks.

1. the images of every pool are encoded once, each rank a share, and gathered: every rank holds the
   pool's tokens (CIRR: 16,939 x 32 x 256 float32 = 555 MB, on the GPU when there is one);
2. each rank composes its share of the queries and mines their mid-zones, pool by pool;
3. the zones are gathered, so that every rank draws the same negatives for the global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from cirdata.tables import CIRData
from encoder.text import TextTokenizer
from training.ddp import Dist
from training.errors import TrainingError
from training.evaluate import compose_queries, encode_gallery
from training.model import DQECIR, maxsim_scores
from training.trns import MidZoneConfig, NegativePools, mine_mid_zones


@torch.no_grad()
def mine_negatives(model: DQECIR, tok: TextTokenizer, data: CIRData, pools: NegativePools, cfg: MidZoneConfig,
                   chunk: int = 1024, dist: Dist | None = None) -> list[np.ndarray]:
    """Each query's mid-zone (image indices), the same list on every rank."""
    dist = dist or Dist()
    model.eval()
    images = np.unique(np.concatenate(pools.pools))
    tokens = dist.gather_rows(encode_gallery(model, data, idx=images[dist.mine(len(images))], keep_on_device=True))
    queries = np.arange(len(data.ref))[dist.mine(len(data.ref))]
    q, _ = compose_queries(model, tok, data, idx=queries)
    q = q.to(tokens.device)
    zones: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(queries)
    for p, pool in enumerate(pools.pools):
        sel = np.flatnonzero(pools.of_query[queries] == p)
        if not len(sel):
            continue
        rows = np.searchsorted(images, pool)
        pool_tokens = tokens if len(pool) == len(images) else tokens[torch.from_numpy(rows).to(tokens.device)]
        mine = queries[sel]
        targets = np.searchsorted(pool, data.tgt[mine])
        if (pool[np.minimum(targets, len(pool) - 1)] != data.tgt[mine]).any():
            raise TrainingError("a query's target is not in its negative pool; the pools must hold the targets")
        excluded = [_positions(pool, data.never_negatives(int(i))) for i in mine]
        found = mine_mid_zones(_scorer(q[torch.from_numpy(sel).to(q.device)], pool_tokens), targets, excluded,
                               cfg, chunk)
        for j, z in zip(sel, found, strict=True):
            zones[j] = pool[z]
    return dist.gather_arrays(zones)


def _scorer(queries: torch.Tensor, pool_tokens: torch.Tensor):
    """score_block for mine_mid_zones: float32 MaxSim of queries lo..hi-1 against the pool."""
    return lambda lo, hi: maxsim_scores(queries[lo:hi], pool_tokens)


def _positions(pool: np.ndarray, images: list[int]) -> list[int]:
    """Positions in the sorted `pool` of those of `images` that it holds."""
    pos = np.searchsorted(pool, images)
    return [int(p) for p, x in zip(pos, images, strict=True) if p < len(pool) and pool[p] == x]
