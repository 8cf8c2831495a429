"""TRNS mining, two measurements, each writing its own marked section of docs/benchmarks/trns-mining.md
(`trns-scale`, `trns-model`); the page's prose outside the markers stays as it is.

    python benchmarks/trns_mining.py scale [--queries 28225] [--pool 16939] [--chunk 1024] [--out FILE.md]
    python benchmarks/trns_mining.py model [--start CKPT] [--root DATA] [--out FILE.md]

DATA: a synthetic set, `dqe-cir data synth --out runs/demo/synth-demo-0 --size demo --seed 0` (the default).

scale: CIRR-sized mining in bounded memory: time and peak RSS of the miner's two steps (float32 MaxSim
of a chunk of queries against the pool, then the chunk's mid-zones) over random unit embeddings of the
real dims, with the mid-zone of training/recipes/cirr-blip2.json. The same functions as
training/mining.py (training.model.maxsim_scores, training.trns.mine_mid_zones), on CPU. Peak RSS is the
process's high-water mark (getrusage), torch and the pool's tokens included.

model: what the zones hold on a trained model (default: the shipped demo model on the demo set, pool =
every training image), for the old rule (quantile bounds over the whole pool, no anchor: the
demo-dqe recipe's 0.1%-1% before this change) and the anchored rule (benchmarks/ablation.py's zone):
zone size, share of zone members that score above their target, share of queries whose zone holds one
of its img_set twins (the near-identical images Rs@1 ranks against).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, recorded_command, shown, write_section  # noqa: E402
from training.model import maxsim_scores  # noqa: E402
from training.trns import MidZoneConfig, delta_scores, exclusion_mask, mid_zone_negatives, mine_mid_zones  # noqa: E402

PAGE = ROOT / "docs" / "benchmarks" / "trns-mining.md"
TITLE = "TRNS mining"
OLD_RULE = {"low": 0.001, "high": 0.01}  # demo-dqe.json before the anchor: quantiles of Delta over the whole pool


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def machine() -> str:
    return (f"{cpu_name()}, {torch.get_num_threads()} torch threads, {platform.system()}, torch {torch.__version__}, "
            f"numpy {np.__version__}")


def cmd_scale(args) -> None:
    recipe = json.loads((ROOT / "training" / "recipes" / "cirr-blip2.json").read_text())["trns"]
    cfg = MidZoneConfig(**recipe)
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
    zones = mine_mid_zones(block, targets, excluded, cfg, chunk=args.chunk)
    total = time.perf_counter() - t0
    sizes = np.array([len(z) for z in zones])
    peak = peak_rss_gib()
    check = min(args.chunk, args.queries)  # re-score one chunk: no member may score above its target
    s = maxsim_scores(queries[:check], pool)
    above = sum(int((s[i, z] >= s[i, targets[i]]).sum()) for i, z in enumerate(zones[:check]))
    rows = [("queries x pool", f"{args.queries:,} x {args.pool:,} (D={args.dim}, {args.tokens} tokens per image)"),
            ("mid-zone", f"{json.dumps(recipe)} (training/recipes/cirr-blip2.json)"),
            ("chunk", f"{args.chunk:,} queries"),
            ("time", f"{total:.1f} s (MaxSim scoring {timings['scoring']:.1f} s, mid-zones "
                     f"{total - timings['scoring']:.1f} s)"),
            ("peak RSS", f"{peak:.2f} GiB (before mining: {rss_before:.2f} GiB: Python, torch, the pool's "
                         f"{pool.numel() * 4 / 1024**3:.2f} GiB of tokens)"),
            ("mid-zone size", f"mean {sizes.mean():.0f}, min {sizes.min()}, max {sizes.max()} (random targets: "
                              "uniform ranks, so the zone shrinks with the target's rank)"),
            ("members scoring above their target", f"{above} (the first {check:,} queries re-scored)")]
    for k, v in rows:
        print(f"{k:>36}  {v}")
    write_section(Path(args.out), "trns-scale", [
        "## CIRR scale, bounded memory", "", f"Command: `{recorded_command('trns_mining.py')}`  ",
        f"Machine: {machine()}.", "",
        "Random unit embeddings of the real dims stand in for a model's: the miner's cost does not depend on "
        "their values. Same functions as training (training.model.maxsim_scores, training.trns.mine_mid_zones), "
        "the reference excluded.", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]], title=TITLE)


def old_rule_zones(delta: np.ndarray, excluded: np.ndarray, low: float, high: float) -> list[np.ndarray]:
    """The rule before the anchor: quantile bounds over every allowed candidate, above the target or not."""
    d = np.where(excluded, np.nan, delta)
    lo, hi = np.nanquantile(d, low, axis=1), np.nanquantile(d, high, axis=1)
    return [np.flatnonzero(~excluded[i] & (delta[i] >= lo[i]) & (delta[i] <= hi[i])) for i in range(len(delta))]


def cmd_model(args) -> None:
    from benchmarks.ablation import MIDZONE
    from cirdata.tables import load_cir_data
    from training.evaluate import compose_queries, encode_gallery
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(args.start)
    model.cfg.subquery_norm = True  # as the DQE-CIR variants of ablation.py mine
    data = load_cir_data("synth", args.root, "train", model.cfg.image_size, progress=False)
    t0 = time.perf_counter()
    tokens = encode_gallery(model, data)
    q, _ = compose_queries(model, tok, data)
    rules = {"old: quantiles 0.1%-1% of the whole pool": None,
             f"anchored: {json.dumps(MIDZONE)}": MidZoneConfig(**MIDZONE)}
    stats = {k: {"size": [], "above": 0, "members": 0, "twin": 0} for k in rules}
    for lo in range(0, len(q), 512):
        hi = min(len(q), lo + 512)
        scores = maxsim_scores(q[lo:hi], tokens)
        tgt = data.tgt[lo:hi]
        excl = exclusion_mask(hi - lo, scores.shape[1], tgt, [data.never_negatives(i) for i in range(lo, hi)])
        delta = delta_scores(scores, tgt, dtype=np.float32)
        for name, cfg in rules.items():
            zones = (old_rule_zones(delta, excl, OLD_RULE["low"], OLD_RULE["high"]) if cfg is None
                     else mid_zone_negatives(delta, excl, cfg))
            st = stats[name]
            for j, z in enumerate(zones):
                st["size"].append(len(z))
                st["members"] += len(z)
                st["above"] += int((delta[j, z] <= 0).sum())
                twins = set(data.members[lo + j]) - {int(data.ref[lo + j]), int(tgt[j])}
                st["twin"] += bool(twins & set(z.tolist()))
    seconds = time.perf_counter() - t0
    n = len(q)
    lines = ["| rule | mean zone size | zone members scoring at or above their target | queries with an img_set "
             "twin in their zone |", "|---|---|---|---|"]
    for name, st in stats.items():
        lines.append(f"| {name} | {np.mean(st['size']):.0f} | {100 * st['above'] / max(1, st['members']):.1f}% | "
                     f"{100 * st['twin'] / n:.1f}% |")
    print("\n".join(lines))
    write_section(Path(args.out), "trns-model", [
        "## What the zones hold on a trained model", "", f"Command: `{recorded_command('trns_mining.py')}`  ",
        f"Machine: {machine()}; {seconds:.0f} s.  ",
        f"Model: `{Path(args.start).name}` (sub-queries normalised); {n:,} training queries of `{shown(args.root)}` "
        f"against every one of its {len(data.names):,} training images (the target, the reference and the "
        "target's scene never count).", "", *lines], title=TITLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--queries", type=int, default=28225, help="CIRR train pairs")
    s.add_argument("--pool", type=int, default=16939, help="CIRR train images")
    s.add_argument("--dim", type=int, default=256)
    s.add_argument("--tokens", type=int, default=32)
    s.add_argument("--chunk", type=int, default=1024)
    m = sub.add_parser("model")
    m.add_argument("--start", default=str(ROOT / "models" / "demo" / "dqe-cir-demo.safetensors"))
    m.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"),
                   help="a synthetic set (dqe-cir data synth --out runs/demo/synth-demo-0 --size demo --seed 0)")
    for p in (s, m):
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--out", default=str(PAGE), help="the page whose section this writes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"scale": cmd_scale, "model": cmd_model}[args.cmd](args)


if __name__ == "__main__":
    main()
