"""Indexing throughput: 2,000 product-size JPEGs (about 800x1000) into the embedded engine (QDRANT_ENGINE, edge by
default; its graph build, store.seal, inside the timed job), in-process and
through one Celery worker (solo pool, real Redis), against the raw encoder on already-decoded
tensors, all in one run. Also the in-process pipeline with JPEG draft decoding off, to show what it
saves, and where the in-process time goes.

    python benchmarks/indexing.py --bundle BUNDLE [--n 2000] [--out docs/benchmarks/indexing.md]
        [--no-worker] [--redis-url redis://127.0.0.1:6379/14] [--profile-items 300]

writes the `indexing-paths` section of the page. The Celery worker row needs Redis at --redis-url
(the script empties that database first).

`--feed`: only the fed encoder (indexer.pipeline) against the sequential path and the raw encoder, at
onnxruntime 1 thread (decoding on the other core) and 2 threads; writes the `indexing-feed` section.

    python benchmarks/indexing.py --feed --bundle BUNDLE [--n 1000] [--rounds 2]

Each run rewrites only its own marked section of the page; the prose around them stays. BUNDLE: any
export of the demo model, e.g. `dqe-cir export models/demo/dqe-cir-demo.safetensors --out
exports/demo-bundle` (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, now, recorded_command, write_section  # noqa: E402
from encoder import Encoder  # noqa: E402
from encoder.preprocess import load_image, prepare_image  # noqa: E402
from indexer.catalog import fetch_bytes, read_catalog  # noqa: E402
from indexer.reindex_inprocess import index_catalog  # noqa: E402
from indexer.settings import load_settings  # noqa: E402
from plugin import store  # noqa: E402


def make_catalog(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    base = np.linspace(0, 1, 1000)[:, None, None] * np.ones((1, 800, 3))
    for i in range(n):
        tint = rng.uniform(150, 250, size=3)
        arr = (base * rng.uniform(-60, 60, size=3) + tint).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = rng.integers(50, 600), rng.integers(50, 800)
            d.ellipse([x, y, x + rng.integers(80, 200), y + rng.integers(80, 200)],
                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(folder / f"p{i:05d}.jpg", quality=88)


def raw_encoder(enc: Encoder, folder: Path) -> tuple[float, float]:
    paths = sorted(folder.glob("*.jpg"))
    t = time.perf_counter()
    arr = np.stack([prepare_image(load_image(p, draft_size=enc.spec.image_size), enc.spec.image_size) for p in paths])
    decode = time.perf_counter() - t
    from encoder.preprocess import normalize

    pixels = normalize(arr, enc.spec.mean, enc.spec.std)
    t = time.perf_counter()
    enc.encode_pixels(pixels)
    return len(paths) / (time.perf_counter() - t), decode


def stage_profile(enc: Encoder, folder: Path, n: int = 300) -> dict:
    """Where the in-process time goes, per stage, on (at most) n items."""
    root, items = read_catalog(folder)
    items = items[:n]
    t0 = time.perf_counter()
    data = [fetch_bytes(it, root) for it in items]
    t1 = time.perf_counter()
    px = enc.preprocess(data)
    t2 = time.perf_counter()
    tokens = enc.encode_pixels(px)
    t3 = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="profile-")
    client = store.open_embedded(folder, ENGINE)
    store.create_collection(client, "p", enc.spec)
    store.upsert(client, "p", [store.Item(it.item_id, tokens[i], {"uri": it.uri}) for i, it in enumerate(items)])
    client.close()
    shutil.rmtree(folder, ignore_errors=True)
    t4 = time.perf_counter()
    total = t4 - t0
    return {k: 100 * v / total for k, v in
            {"read bytes": t1 - t0, "decode + preprocess": t2 - t1, "encode": t3 - t2, "upsert": t4 - t3}.items()}


def via_worker(bundle: Path, folder: Path, tmp: Path, redis_url: str = "redis://127.0.0.1:6379/14") -> float:
    env = {**os.environ, "CELERY_BROKER_URL": redis_url, "QDRANT_PATH": str(tmp / "qw"),
           "DQE_CIR_BUNDLE": str(bundle), "DQE_CIR_QUEUE": "bench"}
    import redis

    redis.Redis.from_url(env["CELERY_BROKER_URL"]).flushdb()
    log = open(tmp / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "indexer", "worker", "--pool", "solo", "-Q",
                               "bench", "--loglevel", "WARNING"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(5)  # worker start-up is not indexing time
        code = ("import sys, time; from indexer.reindex_workers import index_with_workers; "
                "from indexer.settings import load_settings; t=time.perf_counter(); "
                f"r=index_with_workers({str(folder)!r}, 'bench', load_settings(), chunk_size=32, progress=False, "
                "timeout=1800); print(r.indexed / (time.perf_counter() - t))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)


TITLE = "Indexing throughput"
WORKER_ROW = "one Celery worker (solo pool, Redis broker)"
ENGINE = load_settings().qdrant_engine  # the embedded engine every path here writes to (QDRANT_ENGINE)


def feed_rows(bundle: str, folder: Path, tmp: Path, rounds: int = 2) -> list[dict]:
    """Raw encoder, sequential path and fed encoder at 1 and 2 onnxruntime threads; every path runs
    `rounds` times, alternating, and keeps its best rate."""
    rows = []
    for threads, workers in ((1, 1), (2, 1), (2, 2)):
        enc = Encoder(bundle, threads=threads)
        rates: dict[str, float] = {}
        for r in range(rounds):
            rates["raw"] = max(rates.get("raw", 0.0), raw_encoder(enc, folder)[0])
            for name, w in (("sequential", 0), ("fed", workers)):
                client = store.open_embedded(str(tmp / f"feed-{threads}-{workers}-{name}-{r}"), ENGINE)
                rep = index_catalog(client, enc, folder, alias="bench", progress=False, decode_workers=w)
                client.close()
                rates[name] = max(rates.get(name, 0.0), rep.indexed / rep.seconds)
        rows.append({"threads": threads, "workers": workers, **rates})
        print(rows[-1], flush=True)
    return rows


def write_feed_section(path: Path, args, rows: list[dict], started: str, before: str) -> None:
    times = {1: "once", 2: "twice"}.get(args.rounds, f"{args.rounds} times")
    kept = "better" if args.rounds == 2 else "best"
    lines = ["## The fed encoder: decoding in a pool, upserts in the background", "",
             f"Command: `{recorded_command('indexing.py')}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores. {args.n} JPEGs of 800x1000 (quality 88) into "
             f"the {ENGINE} engine, in-process. Started {started} (load averages 1/5/15 min: {before}), finished "
             f"{now()} ({load_averages()}). One run; each path ran {times}, alternating, "
             f"and keeps its {kept} rate. Raw = the encoder alone on already-decoded tensors at the same "
             "onnxruntime threads.", "",
             "| onnxruntime threads | decode workers | raw encoder img/s | sequential img/s | seq / raw "
             "| fed img/s | fed / raw | fed / sequential |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['workers']} | {r['raw']:.1f} | {r['sequential']:.1f} | "
                     f"{r['sequential'] / r['raw']:.2f} | {r['fed']:.1f} | {r['fed'] / r['raw']:.2f} | "
                     f"{r['fed'] / r['sequential']:.2f} |")
    write_section(path, "indexing-feed", lines, title=TITLE)


def write_paths_section(path: Path, args, raw: float, rates: dict, profile: dict, profiled: int) -> None:
    lines = [f"Command: `{recorded_command('indexing.py')}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores, onnxruntime CPU with {args.threads} threads. {args.n} "
             f"JPEGs of 800x1000 (quality 88) into the {ENGINE} engine; measured in one run.", "",
             "| path | images/s | pipeline / raw |", "|---|---|---|",
             f"| raw encoder on decoded tensors | {raw:.1f} | 1.00 |"]
    for name, rate in rates.items():
        if isinstance(rate, str):  # a path that failed: its reason, not a number
            lines.append(f"| {name} | failed: {rate} | - |")
        else:
            lines.append(f"| {name} | {rate:.1f} | {rate / raw:.2f} |")
    lines += ["", f"Where the in-process time goes ({profiled} items, default settings):", "",
              "| stage | share of time |", "|---|---|"]
    lines += [f"| {k} | {v:.0f}% |" for k, v in profile.items()]
    write_section(path, "indexing-paths", lines, title=TITLE)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--feed", action="store_true", help="only the fed-encoder table (see the module docstring)")
    ap.add_argument("--rounds", type=int, default=2, help="--feed: runs of each path, the best kept")
    ap.add_argument("--profile-items", type=int, default=300, help="items of the per-stage time profile")
    ap.add_argument("--no-worker", action="store_true", help="leave out the Celery worker row (no Redis needed)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                    help="the worker row's broker (this database is emptied first)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "indexing.md"))
    args = ap.parse_args()
    if args.feed:
        started, before = now(), load_averages()
        with tempfile.TemporaryDirectory() as tmp_s:
            make_catalog(Path(tmp_s) / "catalog", args.n)
            rows = feed_rows(args.bundle, Path(tmp_s) / "catalog", Path(tmp_s), args.rounds)
        write_feed_section(Path(args.out), args, rows, started, before)
        return
    os.environ["DQE_CIR_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        make_catalog(tmp / "catalog", args.n)
        print(f"made {args.n} JPEGs in {time.perf_counter() - t:.0f}s", flush=True)
        enc = Encoder(args.bundle, threads=args.threads)
        raw, decode_s = raw_encoder(enc, tmp / "catalog")
        print(f"raw encoder {raw:.1f} img/s", flush=True)
        rates: dict[str, float | str] = {}
        for name, draft in (("in-process, full JPEG decode", False), ("in-process (default: JPEG draft decode)", True)):
            e = Encoder(args.bundle, threads=args.threads, jpeg_draft=draft)
            client = store.open_embedded(str(tmp / f"q{int(draft)}"), ENGINE)
            r = index_catalog(client, e, tmp / "catalog", alias="bench", progress=False)
            client.close()
            rates[name] = r.indexed / r.seconds
            print(f"{name}: {rates[name]:.1f} img/s", flush=True)
        profiled = min(args.profile_items, args.n)
        profile = stage_profile(enc, tmp / "catalog", profiled)
        if not args.no_worker:
            try:
                rates[WORKER_ROW] = via_worker(Path(args.bundle), tmp / "catalog", tmp, args.redis_url)
            except Exception as e:  # reported in the table, not hidden
                print(f"worker run failed: {e}")
                rates[WORKER_ROW] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120].replace("|", "/")
    write_paths_section(Path(args.out), args, raw, rates, profile, profiled)


if __name__ == "__main__":
    main()
