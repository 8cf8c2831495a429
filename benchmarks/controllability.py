"""Do the attribute weights steer the results? A model's controllability on the synthetic val split.

    python benchmarks/controllability.py --checkpoint CKPT --label NAME [--root runs/demo/synth-demo-0]
        [--max-queries N] [--served-queries 200] [--out docs/benchmarks/controllability.md]

By edit kind (color-only, shape-only, other), for each weight setting (the model's, the base query
alone, each attribute alone at weight 3, each attribute at 3x the model's weight): top-1 (reference
left out, the target's scene), R@10, and the share of the top 10 that agrees with the target on each
attribute, position by position. Then the sub-queries: their cosines with each other and with q_base;
each one alone ranking the target first among the target and 3 probes of its own attribute
("sensitivity", cirdata/probes.py: the target re-rendered with the edited object's attribute changed)
and among 3 probes of another attribute ("invariance": it should not care, chance 25%); the mean weights
per edit kind. With --served-queries, the "<first attribute> alone" setting also runs through the served
path (bundle + local-mode Qdrant + CIRSearch) on that many queries, against torch's rankings.

Writes the section `controllability-<label>` of --out (and its numbers to <out stem>-<label>.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, now, recorded_command, write_section  # noqa: E402
from cirdata import controllability as ctl  # noqa: E402
from cirdata.tables import CIRData, load_cir_data  # noqa: E402
from training.controllability import measure  # noqa: E402
from training.model import DQECIR  # noqa: E402


def served_check(model: DQECIR, tok, data: CIRData, root: Path, split: str, result: dict, n: int) -> dict:
    """The '<first attribute> alone' setting through bundle + Qdrant (local mode) + CIRSearch on the first
    n queries: top-1 / top-10 identical to torch's, and the top-10 agreements both ways."""
    from qdrant_client import QdrantClient

    from app.served_eval import write_manifest
    from cirdata.datasets import load_cirr
    from encoder import Encoder
    from indexer.reindex_inprocess import index_catalog
    from plugin.search import CIRSearch, ItemRef
    from training.export import export_bundle

    names = list(model.cfg.attributes)
    label = f"{names[0]} alone"
    weights = {a: (ctl.ALONE_WEIGHT if a == names[0] else 0.0) for a in names}
    split_data = load_cirr(root, split)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(model, tok, bundle, log=lambda *_: None)
        manifest = write_manifest(split_data, Path(root) / f"catalog.{split}.jsonl")  # uris relative to it
        client = QdrantClient(path=str(Path(tmp) / "qdrant"))
        try:
            enc = Encoder(bundle)
            index_catalog(client, enc, manifest, alias="catalog", progress=False)
            search = CIRSearch(client, "catalog", encoder=enc, catalog_root=manifest.parent)
            ranked = []
            for s in range(0, n, 32):
                sel = range(s, min(n, s + 32))
                refs = [ItemRef(data.names[data.ref[i]]) for i in sel]
                hits = search.query_batch(refs, [data.texts[i] for i in sel], k=10, weights=weights, exact=True)
                ranked += [[h.id for h in hh] for hh in hits]
        finally:
            client.close()
    index = {name: i for i, name in enumerate(data.names)}
    served = [[index[x] for x in r] for r in ranked]
    torch_top = result["torch_top10"][label][:n]
    a = names[0] if names[0] in ctl.AGREEMENT_ATTRIBUTES else "color"
    pairs = list(zip(served, [list(t) for t in torch_top], strict=True))

    def agreement(rankings) -> float:
        return float(ctl.top_k_agreement(rankings, data.tgt[:n], data.scene_keys, a).mean())

    return {"setting": label, "queries": n,
            "top-1 identical": 100 * float(np.mean([s[:1] == t[:1] for s, t in pairs])),
            "top-10 identical": 100 * float(np.mean([s == t for s, t in pairs])),
            f"top-10 {a} agreement, served": agreement(served), f"top-10 {a} agreement, torch": agreement(torch_top)}


def paired_against(result: dict, data: CIRData, baseline: str) -> dict:
    """R@1 and Rs@1 of the measured model (its per-query hits in `result`) against the `baseline` checkpoint's
    on the same queries: the difference, its paired bootstrap 95% interval and p, and McNemar's exact p."""
    from cirdata.metrics import mcnemar_exact, paired_bootstrap
    from training.evaluate import compose_queries, encode_gallery, query_hits
    from training.model import maxsim_scores
    from training.train import load_checkpoint

    base_model, base_tok, _ = load_checkpoint(baseline)
    q, _ = compose_queries(base_model, base_tok, data)
    theirs = query_hits(data, maxsim_scores(q, encode_gallery(base_model, data)))
    ours = {k: np.array([c == "1" for c in v]) for k, v in result["hits"].items()}
    out = {"baseline": baseline}
    for metric in ("R@1", "Rs@1"):
        b = paired_bootstrap(theirs[metric].astype(float), ours[metric].astype(float), seed=0)
        out[metric] = {"baseline": 100 * float(theirs[metric].mean()), "this": 100 * float(ours[metric].mean()),
                       "diff": b["diff"], "ci95": b["ci95"], "p": b["p"],
                       "mcnemar_p": mcnemar_exact(theirs[metric], ours[metric])["p"]}
    return out


def _f(x: float) -> str:
    return f"{x:.1f}"


def render(result: dict, meta: dict) -> list[str]:
    names = result["attributes"]
    agree = ctl.agreement_attributes(names)
    lines = [f"`{meta['command']}`", "",
             f"Machine: {meta['cpu']}, {meta['threads']} threads, load {meta['load']}; {meta['when']}; "
             f"checkpoint `{meta['checkpoint']}`; {meta['queries']} val queries, {result['seconds']} s.", ""]
    head = ["setting", "all R@1", "all Rs@1"]
    for g in ctl.EDIT_GROUPS:
        head += [f"{g} top-1", f"{g} R@10"] + [f"{g} top-10 {a}" for a in agree]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in result["settings"].items():
        cells = [label, _f(row["all"]["R@1"]), _f(row["all"]["Rs@1"])]
        for g in ctl.EDIT_GROUPS:
            r = row.get(g)
            cells += ([_f(r["top-1"]), _f(r["R@10"])] + [_f(r[f"top-10 {a} agreement"]) for a in agree]
                      if r else ["-"] * (2 + len(agree)))
        lines.append("| " + " | ".join(cells) + " |")
    s = result["settings"]
    lines += ["", "Steer (top-10 agreement, percentage points):", ""]
    lines += ["| edits | attribute | alone | other alone | steer |", "|---|---|---|---|---|"]
    for j, a in enumerate(names[:2]):
        other = names[1 - j] if len(names) >= 2 else None
        if other is None or a not in ctl.EDIT_GROUPS or a not in agree:
            continue
        x = s[f"{a} alone"][a][f"top-10 {a} agreement"]
        y = s[f"{other} alone"][a][f"top-10 {a} agreement"]
        lines.append(f"| {a}-only | {a} | {_f(x)} | {_f(y)} | {x - y:+.1f} |")
    lines += ["", "Sub-queries:", ""]
    if "cos(q_0, q_1)" in result:
        lines.append(f"- cos(q_{names[0]}, q_{names[1]}) = {result['cos(q_0, q_1)']:.3f}; with q_base: "
                     + ", ".join(f"{n} {v:.3f}" for n, v in result["cos with q_base"].items()))
    lines += ["", "| head | probes of | queries | target first (%) | reads as |", "|---|---|---|---|---|"]
    for key, v in result["probes"].items():
        head, probed = key.split("|")
        what = "sensitivity (want >= 90)" if head == probed else "invariance (want <= 50; chance 25)"
        lines.append(f"| {head} | {probed} | {v['n']} | {_f(v['first'])} | {what} |")
    lines += ["", "| mean weight | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for g, ws in result["weights by edit kind"].items():
        lines.append(f"| {g} edits | " + " | ".join(f"{ws[n]:.3f}" for n in names) + " |")
    if "paired" in result:
        v = result["paired"]
        lines += ["", f"Paired against `{v['baseline']}` (same queries):", "",
                  "| metric | baseline | this model | difference [95% bootstrap] | p (bootstrap) | p (McNemar) |",
                  "|---|---|---|---|---|---|"]
        for metric in ("R@1", "Rs@1"):
            m = v[metric]
            lines.append(f"| {metric} | {_f(m['baseline'])} | {_f(m['this'])} | {m['diff']:+.1f} "
                         f"[{m['ci95'][0]:+.1f}, {m['ci95'][1]:+.1f}] | {m['p']:.3f} | {m['mcnemar_p']:.3f} |")
    if "served" in result:
        v = result["served"]
        lines += ["", f"Served path (bundle + local-mode Qdrant + CIRSearch, exact), setting '{v['setting']}', "
                  f"first {v['queries']} queries:", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {_f(x)} |" for k, x in v.items() if k not in ("setting", "queries")]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--label", required=True, help="names the page's section: controllability-<label>")
    ap.add_argument("--root", default=str(ROOT / "runs" / "demo" / "synth-demo-0"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--served-queries", type=int, default=0)
    ap.add_argument("--baseline", help="another checkpoint: R@1 and Rs@1 paired against it (bootstrap over the "
                                       "queries, McNemar's exact test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "controllability.md"))
    args = ap.parse_args()
    load_before = load_averages()
    torch.set_num_threads(args.threads)
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(args.checkpoint)
    model.eval()
    data = load_cir_data("synth", args.root, args.split, model.cfg.image_size, False, args.max_queries)
    result = measure(model, tok, data, Path(args.root), args.split)
    if args.served_queries:
        result["served"] = served_check(model, tok, data, Path(args.root), args.split, result,
                                        min(args.served_queries, len(data.ref)))
    if args.baseline:
        result["paired"] = paired_against(result, data, args.baseline)
    meta = {"command": recorded_command("controllability.py"), "cpu": cpu_name(), "threads": args.threads,
            "load": f"{load_before} before, {load_averages()} after", "when": now(), "checkpoint": args.checkpoint,
            "queries": len(data.ref)}
    out = Path(args.out)
    dump = {k: v for k, v in result.items() if k not in ("torch_top10", "hits")}
    out.with_name(f"{out.stem}-{args.label}.json").write_text(json.dumps({**meta, **dump}, indent=1) + "\n")
    write_section(out, f"controllability-{args.label}", render(result, meta), title="Controllability")


if __name__ == "__main__":
    main()
