"""The learning study: does a training recipe fit the synthetic demo set, and does it generalise?

    python benchmarks/learning.py run NAME --minutes 12 [--init CKPT] [--root DATA] [--set KEY=JSON ...]
    python benchmarks/learning.py report [--out docs/benchmarks/learning.md]
    python benchmarks/learning.py phrasings NAME=CKPT ... [--out docs/benchmarks/learning-phrasings.md]

`run` trains one variant with a time-budgeted schedule (warm-up and cosine end with the budget),
then scores the result on the val split (1,000 queries, 4,489 images) AND on the first 1,000 train
queries against the images of their own img_sets (a gallery made like val's, own_gallery), so
underfitting (train as bad as val) and poor generalisation (train far above val) are both visible;
val is also split by phrasing (training phrasings vs held-out ones).
Each run appends one JSON line to docs/benchmarks/learning-runs.jsonl (--results)
with its config, steps, wall time and the machine's load; `report` turns those lines into the table,
the `learning-runs` section of docs/benchmarks/learning.md; `phrasings` writes the
`learning-phrasings` section of docs/benchmarks/learning-phrasings.md. Each rewrites only its marked
section: the findings are the page's own prose, outside the markers.

Scoring is on the demo set (runs/demo/synth-demo-0, made by `run` when missing); --val-root scores on
another synthetic set instead (the tests' tiny runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, recorded_command, write_section  # noqa: E402

RESULTS = ROOT / "docs" / "benchmarks" / "learning-runs.jsonl"  # committed: the raw rows behind the doc
DATA = ROOT / "runs" / "demo" / "synth-demo-0"
TRAIN_QUERIES = 1000
METRICS = ("R@1", "R@10", "Rs@1", "color-edit top-1", "shape-edit top-1", "other-edit top-1")


def own_gallery(data):
    """The split cut down to the images of its queries' img_sets (references, targets, distractors),
    re-indexed: the first 1,000 training queries then face a gallery of the same make and about the
    same size as the val split's (4,489 images for its 1,000 queries), so train and val recalls compare."""
    from dataclasses import replace

    import numpy as np

    keep = np.unique(np.concatenate([data.ref, data.tgt, *[np.asarray(m) for m in data.members or []]]))
    new = {int(old): i for i, old in enumerate(keep)}

    def pick(xs):
        return [xs[i] for i in keep]

    return replace(data, names=pick(data.names), pixels=data.pixels[keep],
                   ref=np.array([new[int(i)] for i in data.ref]), tgt=np.array([new[int(i)] for i in data.tgt]),
                   members=[[new[int(i)] for i in m] for m in data.members] if data.members else None,
                   scene_captions=pick(data.scene_captions) if data.scene_captions else None,
                   scene_keys=pick(data.scene_keys) if data.scene_keys else None)


def score_splits(model, tok, train_root: Path = DATA, also_seen: tuple[Path, ...] = (), val_root: Path = DATA,
                 train_queries: int = TRAIN_QUERIES) -> tuple[dict, dict]:
    """(val, train) scores: all demo val queries on the val gallery (and on the subsets by phrasing and
    by novelty); the first 1,000 training queries of `train_root` (the set the model trained on) on
    their own img_set images (own_gallery). `also_seen`: other sets the model trained on before (their
    pairs are not novel either). `val_root`: the set whose val split is scored (the demo set)."""
    val, trn = study_splits(model.cfg.image_size, str(train_root), str(val_root), train_queries)
    return (score(model, tok, val, (Path(train_root), *also_seen)),
            {**score(model, tok, trn), "gallery": len(trn.names)})


@cache
def demo_val(size: int, root: str = str(DATA)):
    """The demo val split (or `root`'s), decoded once per process."""
    from cirdata.tables import load_cir_data

    return load_cir_data("synth", root, "val", size, progress=False)


@cache
def study_splits(size: int, train_root: str, val_root: str = str(DATA), train_queries: int = TRAIN_QUERIES):
    """The demo val split and the first 1,000 training queries of `train_root` on their own gallery,
    decoded once per process."""
    from cirdata.tables import load_cir_data

    trn = load_cir_data("synth", train_root, "train", size, progress=False, max_queries=train_queries)
    return demo_val(size, val_root), own_gallery(trn)


def score(model, tok, data, train_roots: tuple[Path, ...] = ()) -> dict:
    """R@1, R@10, Rs@1 and edit accuracies; with `train_roots` (val), also by phrasing and by novelty."""
    from training.evaluate import edit_accuracy, evaluate

    result = evaluate(model, tok, data)
    out = {k: result.metrics[k] for k in ("R@1", "R@10", "Rs@1")}
    out.update(edit_accuracy(data, result.scores))
    if train_roots:
        out.update(by_phrasing(data, result.scores))
        out.update(by_novelty(data, result.scores, train_roots))
    return out


def subset_metrics(data, scores, rows) -> dict:
    """CIRR-protocol metrics of the queries `rows` only (same gallery)."""
    from dataclasses import replace

    from cirdata.protocol import score_metrics

    sub = replace(data, ref=data.ref[rows], tgt=data.tgt[rows], texts=[data.texts[i] for i in rows],
                  members=[data.members[i] for i in rows] if data.members else None,
                  pairids=[data.pairids[i] for i in rows] if data.pairids else [],
                  edit_kinds=[data.edit_kinds[i] for i in rows] if data.edit_kinds else [])
    return score_metrics(sub, scores[rows])


def by_phrasing(data, scores) -> dict:
    """R@10 and Rs@1 of the queries whose text uses a training phrasing and of those that use a
    held-out one (val only: training texts all use training phrasings)."""
    import numpy as np

    from cirdata.scenes import is_held_out_phrasing

    held = np.array([is_held_out_phrasing(t) for t in data.texts])
    if not held.any():
        return {}
    out = {}
    for name, rows in (("seen phrasing", np.flatnonzero(~held)), ("held-out phrasing", np.flatnonzero(held))):
        metrics = subset_metrics(data, scores, rows)
        out[f"R@10 {name}"], out[f"Rs@1 {name}"] = metrics["R@10"], metrics["Rs@1"]
    return out


@cache
def training_pairs(train_root: Path) -> frozenset:
    """(reference scene, target scene) of every query of the training split: the scene space is small
    enough that a val query can repeat a training one up to the wording (190 of the demo val queries
    do in the large set, 55 in the demo train split)."""
    from cirdata.datasets import load_cirr
    from cirdata.oracle import load_scenes

    split = load_cirr(train_root, "train")
    scenes = load_scenes(split)
    return frozenset((scenes[q.reference]["key"], scenes[q.target]["key"]) for q in split.queries)


def by_novelty(data, scores, train_roots: tuple[Path, ...]) -> dict:
    """R@1, R@10 and Rs@1 of the val queries whose (reference, target) scene pair is in no training
    query of the `train_roots`: what the model does on edits it has never seen done."""
    import numpy as np

    seen = frozenset().union(*(training_pairs(Path(r)) for r in train_roots))
    keys = data.scene_keys
    novel = np.array([(keys[r], keys[t]) not in seen for r, t in zip(data.ref, data.tgt, strict=True)])
    metrics = subset_metrics(data, scores, np.flatnonzero(novel))
    return {"novel pairs": int(novel.sum()), **{f"{m} novel pairs": metrics[m] for m in ("R@1", "R@10", "Rs@1")}}


def cmd_run(args) -> int:
    import torch

    from cirdata.synth import ensure_synth
    from training.cli import parse_settings
    from training.train import LAST, load_checkpoint, load_train_config, train

    val_root = Path(args.val_root).resolve() if args.val_root else DATA
    if val_root == DATA:
        ensure_synth(DATA, "demo", 0)
    root = Path(args.root).resolve() if args.root else val_root  # training data; scoring is on the val set's
    for path in (root, val_root, *map(Path, args.also_seen or ())):  # checked now, not after the run
        if not (path / "captions").is_dir():
            raise SystemExit(f"{path}: no CIRR-layout data set there "
                             f"(make one: dqe-cir data synth --size large --seed 1 --out {path})")
    over = parse_settings(args.set)
    out = Path(args.runs_dir) / args.name
    cfg = load_train_config(args.config, root=str(root), out=str(out), init=args.init, max_minutes=args.minutes,
                            eval_every=0, progress=not args.quiet, threads=args.threads, settings=over)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    result = train(cfg, resume=False)
    minutes = (time.time() - t0) / 60
    model, tok, _ = load_checkpoint(out / LAST)
    also = tuple(Path(r).resolve() for r in args.also_seen or ())
    val, trn = score_splits(model, tok, root, also, val_root, args.train_queries)
    row = {"name": args.name, "note": args.note, "init": args.init, "root": shown(root), "overrides": over,
           **({"also_seen": [shown(p) for p in also]} if also else {}),
           **({"val_root": shown(val_root)} if val_root != DATA else {}),
           "config": args.config,
           "minutes_budget": args.minutes, "minutes": round(minutes, 1), "steps": result["steps"],
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "val": val, "train": trn, "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
           "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


def shown(path: Path) -> str:
    """A path as a row records it: relative to the repository when it is inside."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def read_rows(results: Path = RESULTS) -> list[dict]:
    return [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]


def cmd_rescore(args) -> int:
    """Score runs again with today's scoring (their rows keep everything else)."""
    from training.train import LAST, load_checkpoint

    rows = read_rows(args.results)
    for r in rows:
        if r["name"] not in args.names:
            continue
        path = Path(args.checkpoint) if args.checkpoint else Path(args.runs_dir) / r["name"] / LAST
        model, tok, _ = load_checkpoint(path)
        also = tuple(ROOT / a for a in r.get("also_seen", ()))
        r["val"], r["train"] = score_splits(model, tok, ROOT / r.get("root", DATA), also,
                                            ROOT / r.get("val_root", DATA))
        r.pop("reconstructed", None)
        r["rescored"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(json.dumps(r))
    Path(args.results).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def cmd_phrasings(args) -> int:
    """Val R@10 and Rs@1 per modification template (the training ones, then the held-out ones), for
    one or more checkpoints side by side: which wordings a model cannot read."""
    import numpy as np

    from cirdata.scenes import TEMPLATES, template_of
    from training.evaluate import evaluate
    from training.train import load_checkpoint

    models = dict(spec.split("=", 1) for spec in args.checkpoints if "=" in spec)
    if len(models) != len(args.checkpoints):
        raise SystemExit(f"phrasings takes distinct NAME=CHECKPOINT pairs, not {args.checkpoints}")
    columns = {}
    val_root = Path(args.val_root).resolve() if args.val_root else DATA
    for name, path in models.items():
        model, tok, _ = load_checkpoint(path)
        val = demo_val(model.cfg.image_size, str(val_root))  # the val split alone: no training split to decode
        scores = evaluate(model, tok, val).scores
        used = np.array([template_of(t) or "?" for t in val.texts])
        columns[name] = {t: subset_metrics(val, scores, np.flatnonzero(used == t)) | {"n": int((used == t).sum())}
                         for t in set(used)}
    rows = [(kind, t, i >= len(seen)) for kind, (seen, held) in TEMPLATES.items() for i, t in enumerate(seen + held)]
    lines = ["| edit | template | phrasing | queries | " + " | ".join(f"{n} R@10 / Rs@1" for n in models) + " |",
             "|" + "---|" * (4 + len(models))]
    for kind, t, held in sorted(rows, key=lambda r: (r[0], r[2])):
        first = columns[next(iter(models))].get(t)
        if first is None:
            continue
        cells = " | ".join(f"{c[t]['R@10']:.1f} / {c[t]['Rs@1']:.1f}" for c in columns.values())
        lines.append(f"| {kind} | `{t}` | {'held-out' if held else 'training'} | {first['n']} | {cells} |")
    unmatched = columns[next(iter(models))].get("?", {}).get("n", 0)
    if unmatched:
        lines.append(f"| ? | no template matches | - | {unmatched} | " + " | ".join("-" for _ in models) + " |")
    which = "demo val queries" if val_root == DATA else f"val queries of `{shown(val_root)}`"
    write_section(args.out, "learning-phrasings", [
        f"`{recorded_command('learning.py')}` (machine: {cpu_name()}).", "",
        f"The {len(val.ref):,} {which} split by the template their text was written with; held-out templates never "
        f"occur in training. CIRR protocol on the whole val gallery ({len(val.names):,} images); Rs@1 = the target "
        "first among its img_set's other images.", "", *lines], title="Val recall by phrasing")
    return 0


def cells_of(metrics: dict, *keys: str) -> str:
    """"a / b / ..." of those metrics, or "-" for a row scored before they existed."""
    return " / ".join(f"{metrics[k]:.1f}" for k in keys) if keys[0] in metrics else "-"


def cmd_report(args) -> int:
    rows = read_rows(args.results)
    head = ("| run | what changed | trained on | steps | min | train gallery | "
            + " | ".join(f"{m} train / val" for m in METRICS)
            + " | val R@10 seen / held-out phrasing | val Rs@1 seen / held-out | val R@1 / R@10 / Rs@1 novel pairs |")
    lines = [head, "|" + "---|" * (9 + len(METRICS))]
    for r in rows:
        changed = r["note"] or ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "baseline"
        cells = " | ".join(f"{r['train'].get(m, float('nan')):.1f} / {r['val'].get(m, float('nan')):.1f}"
                           for m in METRICS)
        gallery = f"{r['train']['gallery']:,}" if "gallery" in r["train"] else "20,213 (whole split)"
        v = r["val"]
        phr = cells_of(v, "R@10 seen phrasing", "R@10 held-out phrasing")
        phr_s = cells_of(v, "Rs@1 seen phrasing", "Rs@1 held-out phrasing")
        novel = cells_of(v, "R@1 novel pairs", "R@10 novel pairs", "Rs@1 novel pairs")
        novel += f" ({v['novel pairs']})" if "novel pairs" in v else ""
        trained_on = Path(r.get("root", DATA)).name
        lines.append(f"| {r['name']} | {changed} | {trained_on} | {r['steps']} | {r['minutes']} | {gallery} | {cells} "
                     f"| {phr} | {phr_s} | {novel} |")
    machines = sorted({r["machine"] for r in rows})
    loads = ", ".join(f"{r['name']} {r['load_before']}->{r['load_after']}" for r in rows)
    results = shown(Path(args.results).resolve())
    intro = (f"Each row: `python benchmarks/learning.py run NAME --minutes M [--init CKPT] [--root DATA] --set ...` "
             f"(the exact overrides are in {results}), then `{recorded_command('learning.py')}`.\n"
             f"Machine: {'; '.join(machines)}. Load average before -> after each run: {loads}.\n\n"
             "train = the first 1,000 train queries against the images of their own img_sets (the val split's "
           "gallery is built the same way: 4,489 images for its 1,000 queries), so train and val recalls "
           "compare; rows marked 20,213 were scored against the whole training gallery, 4.5x larger, which "
           "lowers every recall but Rs@1; rows trained on the large set score the first 1,000 of its training "
           "queries the same way. val = all 1,000 demo val queries against the val gallery, whatever the "
           "training set; novel pairs = the val queries whose (reference scene, target scene) pair is in no "
           "query of the training set (nor of the sets named in the row's also_seen in learning-runs.jsonl; "
           "their count in brackets). CIRR protocol; "
             "edit top-1 = the target's scene ranked first, by kind of edit.")
    write_section(args.out, "learning-runs", [intro, "", *lines], title="Learning study on the synthetic demo set")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--minutes", type=float, default=12.0)
    r.add_argument("--config", help="a TrainConfig JSON (e.g. training/recipes/demo.json)")
    r.add_argument("--init", help="start from this checkpoint")
    r.add_argument("--root", help="train on this synthetic set (default: the demo set, runs/demo/synth-demo-0)")
    r.add_argument("--set", action="append", metavar="KEY=JSON")
    r.add_argument("--also-seen", action="append", metavar="DATA",
                   help="another set the start checkpoint trained on: its pairs do not count as novel either")
    r.add_argument("--note", default="")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--runs-dir", default=str(ROOT / "runs" / "learning"), help="the run goes to RUNS_DIR/NAME")
    r.add_argument("--train-queries", type=int, default=TRAIN_QUERIES,
                   help="training queries scored against their own img_set images")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("rescore", help="score existing runs again (their checkpoints in runs/learning/NAME/)")
    rs.add_argument("names", nargs="+")
    rs.add_argument("--checkpoint", help="score this checkpoint instead (one name)")
    rs.add_argument("--runs-dir", default=str(ROOT / "runs" / "learning"))
    rs.set_defaults(func=cmd_rescore)
    ph = sub.add_parser("phrasings", help="val R@10 / Rs@1 per modification template, checkpoints side by side")
    ph.add_argument("checkpoints", nargs="+", metavar="NAME=CHECKPOINT")
    ph.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "learning-phrasings.md"),
                    help="the page whose `learning-phrasings` section this writes")
    ph.set_defaults(func=cmd_phrasings)
    p = sub.add_parser("report", help="the table of every run (--results), the `learning-runs` section of --out")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "learning.md"))
    p.set_defaults(func=cmd_report)
    for q in (r, ph):
        q.add_argument("--val-root", help="score on this synthetic set's val split instead of the demo set's")
    for q in (r, rs, p):
        q.add_argument("--results", default=str(RESULTS), help="the runs' JSON lines")
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
