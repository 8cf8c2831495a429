"""DQE-CIR's last stage against today's, from the shipped model, on the synthetic demo set.

    python benchmarks/ablation.py --start models/demo/dqe-cir-demo.safetensors [--steps 200]
                                  [--seeds 0 1 2] [--variants A B C B0] [--replace]
                                  [--out docs/benchmarks/ablation.md]
    python benchmarks/ablation.py --rewrite     # the page's section again from its .json, no training

The training set is the demo set (`dqe-cir data synth --out runs/demo/synth-demo-0 --size demo --seed 0`),
val its 1,000 val queries (CIRR protocol). Every variant starts from the same checkpoint at the same
constant lr (after a 10-step warm-up), batch, phrasing noise and seeds:
(A)  today's last stage: in-batch contrastive + all 4 img_set distractors of each query (the shipped recipe);
(A') the same objective with the sub-queries normalised: (B), (C), (B0) start there, so that (A') vs
     them compares objectives alone, and (A) vs them what shipping them would change;
(B)  DQE-CIR's last stage with the issue's fixes: sub-queries normalised, TRNS anchored at the target over
     every training image (so img_set twins are reachable), pairwise KL at its own temperature + margin
     + the attribute-aware term with attribute-specific (img_set twin) negatives;
(C)  [ours] (A) with the TRNS negative as one more contrastive column, plus (B)'s pairwise and attribute terms;
(B0) the pairwise KL alone (TRNS negative, sub-queries normalised, no margin, no attribute term).

Budgets. Equal steps: every variant after --steps steps. Equal wall time: T = (A)'s training time for
--steps steps (same seed); a variant that mines is charged its mining (mined once from the start and
reused across seeds and variants, each run charged the measured time) and scored where mining +
training reaches T, before or after --steps. Paired tests against (A): per query, the hit rate over the
seeds, paired bootstrap over the 1,000 queries (and McNemar's exact test for seed 0).

Writes only the `ablation` section of --out (and every row, with the per-query hits, to the .json
beside it); the page's reading of the numbers is its own prose, outside the markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, recorded_command, write_section  # noqa: E402
from cirdata.metrics import mcnemar_exact, paired_bootstrap  # noqa: E402
from cirdata.protocol import score_metrics  # noqa: E402
from cirdata.tables import load_cir_data  # noqa: E402
from training.evaluate import (  # noqa: E402,E501
    compose_queries,
    edit_accuracy,
    encode_gallery,
    error_breakdown,
    query_hits,
)
from training.model import maxsim_scores  # noqa: E402
from training.train import TrainConfig, Trainer, build_model, load_checkpoint  # noqa: E402
from training.trns import NegativeSampler  # noqa: E402

MIDZONE = {"bounds": "quantile", "low": 0.0, "high": 0.005, "guard": 0.01}
TODAY = dict(loss="contrastive", img_set_negatives=4)
DQE_PARTS = dict(negatives="trns", trns=MIDZONE, trns_pool="all", lambda_margin=0.5, margin=0.15, lambda_attr=0.2,
                 model_overrides={"subquery_norm": True})
VARIANTS = {
    "A": ("(A) today: contrastive + 4 img_set negatives", TODAY),
    "An": ("(A') today's objective, sub-queries normalised", dict(TODAY, model_overrides={"subquery_norm": True})),
    "B": ("(B) DQE-CIR: pairwise + margin + attribute term, TRNS", dict(DQE_PARTS, loss="pairwise")),
    "C": ("(C) ours: (A) + TRNS column + pairwise + attribute terms",
          dict(DQE_PARTS, loss="both", img_set_negatives=4)),
    "B0": ("(B0) pairwise KL alone, TRNS", dict(DQE_PARTS, loss="pairwise", lambda_margin=0.0, lambda_attr=0.0)),
}
KEYS = ("R@1", "R@10", "Rs@1", "color-edit top-1", "shape-edit top-1", "other-edit top-1")


def score(model, tok, val) -> dict:
    """Val metrics, top-1 by edit kind, top-1 errors, per-query hits (for the paired tests) and the
    attribute diagnostics: the sub-queries' cosines, each sub-query alone on color-only / shape-only
    edits, and the mean weights on those edits."""
    q, parts = compose_queries(model, tok, val)
    tokens = encode_gallery(model, val)
    scores = maxsim_scores(q, tokens)
    hits = query_hits(val, scores)
    out = {**score_metrics(val, scores), **edit_accuracy(val, scores), "errors": error_breakdown(val, scores),
           "hits": {k: "".join("1" if h else "0" for h in v) for k, v in hits.items()}}
    out["attributes"] = attribute_diagnostics(model, val, parts, tokens)
    return out


def attribute_diagnostics(model, val, parts: dict, tokens: torch.Tensor) -> dict:
    names = list(model.cfg.attributes)
    qa = torch.nn.functional.normalize(torch.from_numpy(parts["q_attrs"]), dim=-1)
    qb = torch.from_numpy(parts["q_base"])
    kinds = np.array([k or "" for k in val.edit_kinds])
    out: dict = {"cos with q_base": {n: float((qa[:, j] * qb).sum(-1).mean()) for j, n in enumerate(names)}}
    if len(names) >= 2:
        out["cos(q_0, q_1)"] = float((qa[:, 0] * qa[:, 1]).sum(-1).mean())
    for kind in ("color", "shape"):
        sel = np.flatnonzero(kinds == kind)
        if not len(sel):
            continue
        out[f"weights on {kind} edits"] = {n: float(parts["weights"][sel, j].mean()) for j, n in enumerate(names)}
        alone = {}
        for j, n in enumerate(names):
            s = maxsim_scores(qa[sel, j], tokens)
            s[np.arange(len(sel)), val.ref[sel]] = -np.inf
            keys = [val.scene_keys[t] for t in s.argmax(1)]
            alone[n] = 100.0 * float(np.mean([k == val.scene_keys[val.tgt[i]] for k, i in zip(keys, sel, strict=True)]))
        out[f"sub-query alone, top-1 on {kind} edits"] = alone
    return out


class ZoneCache:
    """Mid-zones mined once from the start per model form (subquery_norm), with their mining time."""

    def __init__(self):
        self.zones: dict = {}

    def get(self, trainer: Trainer) -> tuple[list, float]:
        key = (trainer.model.cfg.subquery_norm, json.dumps(trainer.cfg.trns, sort_keys=True), trainer.cfg.trns_pool)
        if key not in self.zones:
            t = time.time()
            trainer.rebuild_mid_zones()
            self.zones[key] = (trainer.sampler.zones, time.time() - t)
        return self.zones[key]


def run(key: str, seed: int, args, train, val, cache: ZoneCache, wall_s: float | None) -> list[dict]:
    """One variant, one seed: rows at --steps and (wall_s) where mining + training reaches wall_s."""
    name, variant = VARIANTS[key]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(root=args.root, out=tmp, init=args.start, epochs=1, batch_size=args.batch_size, lr=args.lr,
                          warmup_steps=10, min_lr_ratio=1.0, max_steps=args.steps * 20, eval_every=0, seed=seed,
                          progress=False, trns_warmup_epochs=10**6, threads=args.threads,
                          phrasing_noise=args.phrasing_noise, pair_tau=args.pair_tau, **variant)
        model, tok = build_model(cfg)
        trainer = Trainer(cfg, train, None, model, tok)
        mining = 0.0
        if cfg.mines:
            zones, mining = cache.get(trainer)
            trainer.sampler = NegativeSampler(zones, seed)
        base = {"variant": key, "name": name, "seed": seed, "mining_s": round(mining, 1)}
        rows = []

        def row(budget: str) -> dict:
            r = {**base, "budget": budget, "steps": trainer.step, "train_s": round(trainer.elapsed_s, 1),
                 "loss_terms": _loss_terms(trainer), **score(model, tok, val)}
            print(json.dumps({k: v for k, v in r.items() if k not in ("errors", "hits")}), flush=True)
            return r

        train_budget = None if wall_s is None else wall_s - mining
        if train_budget is not None and train_budget <= 0:
            rows.append(row("equal wall time"))  # mining alone took the whole budget: the start, scored
        early = train_budget is not None and train_budget > 0
        if early:  # stops at --steps or when its training time reaches the budget, whichever first
            cfg.max_minutes = train_budget / 60
            trainer.run(stop_after=args.steps)
            if trainer.step < args.steps:
                rows.append(row("equal wall time"))
            cfg.max_minutes = None
        if trainer.step < args.steps:
            trainer.run(stop_after=args.steps)
        rows.append(row("equal steps"))
        if early and trainer.elapsed_s < train_budget:
            cfg.max_minutes = train_budget / 60
            trainer.run()
            rows.append(row("equal wall time"))
    return rows


def _loss_terms(trainer: Trainer) -> dict:
    """The logged loss terms (pairwise KL, margin, attribute) averaged over the first and the last 20 steps."""
    steps = [h for h in trainer.history if h.get("event") == "step"]
    out = {}
    for label, part in (("first", steps[:20]), ("last", steps[-20:])):
        for k in ("loss", "kl", "margin", "attr", "delta"):
            vals = [h[k] for h in part if k in h]
            if vals:
                out[f"{k} {label}"] = round(float(np.mean(vals)), 4)
    return out


def references(args, val) -> list[dict]:
    model, tok, _ = load_checkpoint(args.start)
    out = [{"variant": "start", "name": "the shipped model (start of every run)", **score(model, tok, val)}]
    model.cfg.subquery_norm = True
    out.append({"variant": "start-norm", "name": "the shipped model, sub-queries normalised (start of B, C, B0)",
                **score(model, tok, val)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default=str(ROOT / "models" / "demo" / "dqe-cir-demo.safetensors"))
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--pair-tau", type=float, default=0.1)
    ap.add_argument("--phrasing-noise", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "ablation.md"))
    ap.add_argument("--rewrite", action="store_true", help="rewrite the page from its .json (no training)")
    ap.add_argument("--replace", action="store_true",
                    help="run only --variants again and replace their rows in the page's .json, keeping the others "
                         "(equal wall time from the saved (A) rows of each seed)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.rewrite:
        saved = json.loads(out.with_suffix(".json").read_text())
        write(out, saved["rows"], saved["references"], saved["meta"])
        return
    torch.set_num_threads(args.threads)
    model, _, _ = load_checkpoint(args.start)
    size = model.cfg.image_size
    train = load_cir_data("synth", args.root, "train", size, progress=False)
    val = load_cir_data("synth", args.root, "val", size, progress=False)
    load0, t0 = load_averages(), time.time()
    rows, cache, saved = [], ZoneCache(), None
    if args.replace:
        saved = json.loads(out.with_suffix(".json").read_text())
        rows = [r for r in saved["rows"] if r["variant"] not in args.variants]
        refs = saved["references"]
    else:
        refs = references(args, val)
    for seed in args.seeds:
        wall = next((r["train_s"] for r in rows if r["variant"] == "A" and r["seed"] == seed), None)
        if "A" in args.variants:
            a = run("A", seed, args, train, val, cache, None)
            rows += a
            wall = a[-1]["train_s"]
        for key in args.variants:
            if key != "A":
                rows += run(key, seed, args, train, val, cache, wall)
        command = recorded_command("ablation.py")
        meta = {"command": command if saved is None else f"{saved['meta']['command']}, then {command}",
                "minutes": (time.time() - t0) / 60 + (saved["meta"]["minutes"] if saved else 0),
                "load_before": load0, "load_after": load_averages(),
                "machine": f"{cpu_name()}, {args.threads} torch threads, torch {torch.__version__}",
                "settings": {k: getattr(args, k) for k in ("start", "root", "steps", "batch_size", "lr", "pair_tau",
                                                           "phrasing_noise", "seeds")},
                "midzone": MIDZONE, "train": f"{len(train.ref):,} training queries, {len(train.names):,} images",
                "val": f"all {len(val.ref):,} val queries against the {len(val.names):,}-image val gallery"}
        write(out, rows, refs, meta)  # after every seed: a partial page beats none


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _hit_rates(rs: list[dict], metric: str) -> np.ndarray:
    """Per query, the share of these runs (seeds) that got it right."""
    return np.mean([[c == "1" for c in r["hits"][metric]] for r in rs], axis=0)


def _paired(rs: list[dict], base: list[dict], metric: str) -> str:
    if not rs or not base or rs is base:
        return "-"
    b = paired_bootstrap(_hit_rates(base, metric), _hit_rates(rs, metric))
    return f"{b['diff']:+.1f} [{b['ci95'][0]:+.1f}, {b['ci95'][1]:+.1f}] p={b['p']:.3f}"


def _mcnemar(r: dict | None, a: dict | None, metric: str) -> str:
    if r is None or a is None or r is a:
        return "-"
    m = mcnemar_exact([c == "1" for c in a["hits"][metric]], [c == "1" for c in r["hits"][metric]])
    return f"{m['only_b']}/{m['only_a']} p={m['p']:.3f}"


def _attr(rs: list[dict], key: str) -> str:
    vals = [r["attributes"].get(key) for r in rs if r["attributes"].get(key) is not None]
    if not vals:
        return "-"
    if isinstance(vals[0], dict):
        return " / ".join(f"{n} {statistics.mean(v[n] for v in vals):.2f}" for n in vals[0])
    return f"{statistics.mean(vals):.2f}"


def table(rows: list[dict], budget: str) -> list[str]:
    lines = ["| variant | seeds | steps | train s + mining s | " + " | ".join(KEYS)
             + " | R@1 vs (A): diff [95% CI] p | Rs@1 vs (A) | seed 0 McNemar R@1 (wins/losses) | Rs@1 |",
             "|---" * (8 + len(KEYS)) + "|"]
    base = [r for r in rows if r["variant"] == "A" and r["budget"] == "equal steps"]
    for key, (name, _) in VARIANTS.items():
        rs = [r for r in rows if r["variant"] == key and r["budget"] == budget]
        if key == "A":
            rs = base
        if not rs:
            continue
        seeds_a = {r["seed"]: r for r in base}
        pair = [r for r in rs if r["seed"] in seeds_a]
        ref = [seeds_a[r["seed"]] for r in pair]
        r0, a0 = next((r for r in rs if r["seed"] == 0), None), seeds_a.get(0)
        tests = ["-"] * 4 if key == "A" else [_paired(pair, ref, "R@1"), _paired(pair, ref, "Rs@1"),
                                              _mcnemar(r0, a0, "R@1"), _mcnemar(r0, a0, "Rs@1")]
        lines.append(f"| {name} | {len(rs)} | {_mean_sd([r['steps'] for r in rs])} | "
                     f"{_mean_sd([r['train_s'] for r in rs])} + {_mean_sd([r['mining_s'] for r in rs])} | "
                     + " | ".join([*(_mean_sd([r.get(k) for r in rs]) for k in KEYS), *tests]) + " |")
    return lines


def attribute_table(rows: list[dict], refs: list[dict]) -> list[str]:
    keys = ["cos(q_0, q_1)", "cos with q_base", "weights on color edits", "weights on shape edits",
            "sub-query alone, top-1 on color edits", "sub-query alone, top-1 on shape edits"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
    for r in refs:
        lines.append(f"| {r['name']} | " + " | ".join(_attr([r], k) for k in keys) + " |")
    for key, (name, _) in VARIANTS.items():
        rs = [r for r in rows if r["variant"] == key and r["budget"] == "equal steps"]
        if rs:
            lines.append(f"| {name}, after the equal-steps run | " + " | ".join(_attr(rs, k) for k in keys) + " |")
    return lines


def loss_table(rows: list[dict]) -> list[str]:
    keys = ["loss first", "loss last", "kl first", "kl last", "margin first", "margin last", "attr first", "attr last",
            "delta first", "delta last"]
    lines = ["| variant | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
    for key, (name, _) in VARIANTS.items():
        rs = [r for r in rows if r["variant"] == key and r["budget"] == "equal steps"]
        if rs:
            lines.append(f"| {name} | " + " | ".join(_fmt4([r["loss_terms"].get(k) for r in rs]) for k in keys) + " |")
    return lines


def _fmt4(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.4f}" if values else "-"


def write(path: Path, rows: list[dict], refs: list[dict], meta: dict) -> None:
    """The page's generated section (between the markers) from the rows; prose outside the markers stays."""
    st = meta["settings"]
    gen = [f"Command: `{meta['command']}`  ",
           f"Machine: {meta['machine']}; load average before {meta['load_before']}, after {meta['load_after']}; "
           f"{meta['minutes']:.0f} min in all.  ",
           f"Start: `{Path(st['start']).name}`; train: {meta['train']}; batch {st['batch_size']}, constant lr "
           f"{st['lr']:g} after a 10-step warm-up, phrasing noise {st['phrasing_noise']}; pairwise temperature "
           f"{st['pair_tau']} (fixed); TRNS mid-zone {json.dumps(meta['midzone'])} over every training image, "
           "mined once from the start.  ",
           f"Val = {meta['val']}. Mean ± standard deviation over the seeds; paired tests against (A) at equal steps "
           "(bootstrap over queries of the per-query hit rate over seeds; McNemar on seed 0).", "",
           "### Equal steps", "", *table(rows, "equal steps"), "",
           "### Equal wall time (mining charged)", "", *table(rows, "equal wall time"), "",
           "### The attribute sub-queries", "", *attribute_table(rows, refs), "",
           "### Loss terms (mean over the first and the last 20 steps)", "", *loss_table(rows), "",
           "### Starting points", "",
           "| model | " + " | ".join(KEYS) + " |", "|---" * (1 + len(KEYS)) + "|",
           *[f"| {r['name']} | " + " | ".join(f"{r.get(k, float('nan')):.1f}" for k in KEYS) + " |" for r in refs]]
    write_section(path, "ablation", gen, title="DQE-CIR's last stage against today's (synthetic demo set)")
    path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "references": refs}))


if __name__ == "__main__":
    main()
