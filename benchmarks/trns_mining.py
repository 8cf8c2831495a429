"""TRNS mining at CIRR scale in bounded memory: time and peak RSS of the miner's two steps (float32
MaxSim of a chunk of queries against the pool, then the chunk's mid-zones) over random unit
embeddings of the real dims.

    python benchmarks/trns_mining.py [--queries 28225] [--pool 16939] [--chunk 1024] [--out FILE.md]

The same functions as training/mining.py (training.model.maxsim_scores, training.trns.mine_mid_zones),
on CPU. Peak RSS is the process's high-water mark (getrusage), torch and the pool's tokens included.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402
from training.model import maxsim_scores  # noqa: E402
from training.trns import MidZoneConfig, mine_mid_zones  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=28225, help="CIRR train pairs")
    ap.add_argument("--pool", type=int, default=16939, help="CIRR train images")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the markdown report here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(args.pool, args.tokens, args.dim, generator=g)
    pool /= pool.norm(dim=-1, keepdim=True)  # in place: one copy of the pool's tokens, as in training
    queries = torch.randn(args.queries, args.dim, generator=g)
    queries /= queries.norm(dim=-1, keepdim=True)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, args.pool, args.queries)
    refs = rng.integers(0, args.pool, args.queries)
    excluded = [[int(r)] for r in refs]  # the reference, as in training
    rss_before = peak_rss_gib()
    timings = {"scoring": 0.0}

    def block(lo: int, hi: int) -> np.ndarray:
        t = time.perf_counter()
        out = maxsim_scores(queries[lo:hi], pool)
        timings["scoring"] += time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    zones = mine_mid_zones(block, targets, excluded, MidZoneConfig(bounds="quantile", low=0.02, high=0.10),
                           chunk=args.chunk)
    total = time.perf_counter() - t0
    sizes = np.array([len(z) for z in zones])
    peak = peak_rss_gib()
    old = args.queries * args.pool * (4 + 3 * 8 + 1) / 1024**3
    command = "python benchmarks/trns_mining.py " + " ".join(sys.argv[1:])
    machine = (f"{cpu_name()}, {torch.get_num_threads()} torch threads, {platform.system()}, torch {torch.__version__},"
               f" numpy {np.__version__}")
    rows = [("queries x pool", f"{args.queries:,} x {args.pool:,} (D={args.dim}, {args.tokens} tokens per image)"),
            ("chunk", f"{args.chunk:,} queries"),
            ("time", f"{total:.1f} s (MaxSim scoring {timings['scoring']:.1f} s, mid-zones "
                     f"{total - timings['scoring']:.1f} s)"),
            ("peak RSS", f"{peak:.2f} GiB (before mining: {rss_before:.2f} GiB: Python, torch, the pool's "
                         f"{pool.numel() * 4 / 1024**3:.2f} GiB of tokens)"),
            ("mid-zone size", f"mean {sizes.mean():.0f}, min {sizes.min()}, max {sizes.max()}"),
            ("the old code's matrices", f"{old:.1f} GiB (float32 scores + float64 delta, NaN copy and quantile "
                                         "sort + bool mask, queries x pool; estimated, not run)")]
    for k, v in rows:
        print(f"{k:>24}  {v}")
    if args.out:
        text = ["# TRNS mining in bounded memory (CIRR scale)", "",
                f"Command: `nice -n 10 {command}`  ", f"Machine: {machine}.", "",
                "Random unit embeddings of the real dims stand in for a model's: the miner's cost does not depend "
                "on their values. Same functions as training (training.model.maxsim_scores, "
                "training.trns.mine_mid_zones), quantile mid-zone 2%-10%, the reference excluded.", "",
                "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
                "**The machine was shared** (2 cores, niced, with a learning-study job and other engineers' tests "
                "running): the time is an upper bound; memory does not depend on it.", ""]
        Path(args.out).write_text("\n".join(text))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
