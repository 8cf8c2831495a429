"""Load test of `dqe-cir serve` on 127.0.0.1: a bounded number of composed queries (item id + caption of
the synthetic val split), a fixed number in flight, against a server-less setup (the embedded engine the
workdir was indexed with: QDRANT_ENGINE, edge by default).

    python benchmarks/service_load.py --workdir runs/demo-quick --size small --requests 500 --concurrency 16

--workdir is a `dqe-cir demo [--quick] --workdir DIR` folder (bundle, qdrant with alias synthetic-val,
synth-{size}-0; `--quick` makes the small set). The server runs as its own process (`python -m app
serve`); the load stops after --requests requests or --max-seconds, whichever comes first. Writes only
its marked section (`service-load`, or --section) of --out (docs/benchmarks/service.md).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, load_averages, recorded_command, write_section  # noqa: E402

HOST = "127.0.0.1"  # the only address this script talks to
ENGINE_TEXT = {"edge": "the edge engine (qdrant-edge in-process, the collection's design with HNSW)",
               "local": "exact MaxSim in qdrant-client's local mode"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if get(port, "/readyz", 2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def queries(catalog_root: Path) -> list[dict]:
    """(reference item id, caption) pairs of the val split's captions file."""
    files = sorted((catalog_root / "captions").glob("cap.*val.json"))
    if not files:
        raise SystemExit(f"no captions/cap.*val.json under {catalog_root}")
    return [{"item_id": q["reference"], "text": q["caption"]} for q in json.loads(files[0].read_text())]


def run_load(port: int, bodies: list[dict], n: int, concurrency: int, max_seconds: float) -> dict:
    """n POST /v1/search, `concurrency` in flight (one keep-alive connection each), stopped at max_seconds."""
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter)
            if i >= n:
                break
            body = json.dumps(bodies[i % len(bodies)]).encode()
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/search", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                outcome = None if resp.status == 200 else f"HTTP {resp.status}"
            except (OSError, http.client.HTTPException) as e:
                outcome = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if outcome:
                    errors[outcome] = errors.get(outcome, 0) + 1
                else:
                    latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies or [float("nan")]) * 1000  # every request failed: no latency to report
    done = len(latencies) + sum(errors.values())
    return {"requests": done, "ok": len(latencies), "errors": errors, "seconds": wall,
            "throughput": done / wall, **{f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)},
            "max": float(ms.max()), "mean": float(ms.mean())}


def stage_totals(port: int) -> dict[str, float]:
    """The server's compose and search (Qdrant) histograms: total seconds and count of each."""
    totals = {}
    for line in get(port, "/metrics")[1].decode().splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("dqe_cir_compose_seconds_", "dqe_cir_search_seconds_")):
            totals[name] = float(value)
    return totals


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per query of each stage between two `stage_totals`."""
    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    return {stage: 1000 * delta(f"dqe_cir_{stage}_seconds_sum") / max(1.0, delta(f"dqe_cir_{stage}_seconds_count"))
            for stage in ("compose", "search")}


def busy_note(load_before: str) -> list[str]:
    load = float(load_before.split()[0])
    if load <= (os.cpu_count() or 1):
        return []
    return [f"The machine was shared: a load average of {load:.1f} on {os.cpu_count()} cores before the run "
            "means other jobs held most of the CPU, so read these numbers as a floor."]


def report(args, result: dict, stages: dict, command: str) -> list[str]:
    """The page's section: command, machine, setup, the table and what its columns mean."""
    errors = sum(result["errors"].values())
    setup = "dqe-cir demo --quick" if args.size == "small" else f"dqe-cir demo --size {args.size}"
    cores = os.cpu_count()
    return [
        f"Command: `{command}`",
        f"Machine: {cpu_name()}, {cores} cores; one uvicorn worker process (the embedded engine allows one a "
        "collection),",
        f"server concurrency {args.server_concurrency} (searches at once); load average before the run "
        f"{args.load_before}.",
        f"Setup: `{setup}` (synthetic {args.size} val split, {args.points} items, {ENGINE_TEXT[args.engine]}),",
        f"the {'quick ' if args.size == 'small' else ''}demo's fine-tuned bundle on CPU onnxruntime. Load: "
        f"{result['requests']} `POST /v1/search` requests",
        f"(item id + caption of a val query, k={args.k}, explain={str(args.explain).lower()}), {args.concurrency} in "
        "flight,",
        f"keep-alive connections, client and server on the same {cores}-core machine (the client takes some of the "
        "CPU).",
        "",
        "| requests | errors | wall s | req/s | p50 ms | p95 ms | p99 ms | max ms | server compose ms "
        "| server search ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['requests']} | {errors} | {result['seconds']:.1f} | {result['throughput']:.1f} | "
        f"{result['p50']:.0f} | {result['p95']:.0f} | {result['p99']:.0f} | {result['max']:.0f} | "
        f"{stages['compose']:.1f} | {stages['search']:.1f} |",
        "",
        f"Latency is per request as the client sees it: with {args.concurrency} in flight, most of it is waiting for",
        "a turn; compose and search are the server's mean time per query in each stage (its /metrics histograms).",
        *busy_note(args.load_before),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--size", default="demo", choices=["small", "demo", "large"])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--server-concurrency", type=int, default=4)
    ap.add_argument("-k", dest="k", type=int, default=10)
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "service.md"))
    ap.add_argument("--section", default="service-load", help="the marked section of --out to write (e.g. "
                                                                 "service-load-local for a QDRANT_ENGINE=local run)")
    args = ap.parse_args()
    if not 0 < args.requests <= 100_000 or not 0 < args.concurrency <= 256:
        raise SystemExit("--requests must be in 1..100000 and --concurrency in 1..256")
    work = Path(args.workdir).resolve()  # the server runs from the repository root
    root = work / f"synth-{args.size}-0"
    bodies = [{**q, "k": args.k, "explain": args.explain} for q in queries(root)]
    port = free_port()
    cmd = [sys.executable, "-m", "app", "serve", "--bundle", str(work / "bundle"),
           "--qdrant-path", str(work / "qdrant"), "--collection", "synthetic-val", "--catalog-root", str(root),
           "--host", HOST, "--port", str(port),
           "--concurrency", str(args.server_concurrency), "--log-level", "warning"]
    from indexer.settings import load_settings

    args.engine = load_settings().qdrant_engine  # the server reads the same QDRANT_ENGINE
    args.load_before = load_averages()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_ready(port, proc)
        args.points = json.loads(get(port, "/v1/info")[1])["points"]
        run_load(port, bodies, min(20, args.requests), min(4, args.concurrency), 60)  # warm-up, not reported
        before = stage_totals(port)
        result = run_load(port, bodies, args.requests, args.concurrency, args.max_seconds)
        stages = stage_means(before, stage_totals(port))
    finally:
        proc.terminate()
        proc.wait(30)
    print(json.dumps({**result, "server_ms": stages}, indent=1))
    write_section(args.out, args.section, report(args, result, stages, recorded_command("service_load.py")),
                  title="Search service under load (`dqe-cir serve`)")


if __name__ == "__main__":
    main()
