"""The benchmark scripts and their pages: every script run end to end on a tiny input (the small
synthetic set, the tests' tiny model) so that none can rot, writing into a page that already has
prose around its section; the prose must come through untouched and the section must hold the
numbers. And the pages in docs/benchmarks/ themselves: each script's section present exactly once,
its recorded command writing that very page, a "Reproduce" part outside the markers.

Timings are never asserted: only that each script runs and writes what it should."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import markers, read_section, recorded_command, write_section

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
STALE = "stale numbers of an older run"
ABOVE = "Prose above every section, written by hand: it must survive a run."
BELOW = "Prose below every section, written by hand: it must survive a run too."

# page -> {section: script}
PAGES = {
    "search-edge.md": {"edge-designs": "edge_search.py", "edge-local": "edge_search.py",
                       "embedded-edge": "edge_search.py", "edge-results": "edge_search.py"},
    "ablation.md": {"ablation": "ablation.py"},
    "controllability.md": {"heads": "heads.py", "controllability-shipped": "controllability.py"},
    "encoder.md": {"encoder-throughput": "encoder_throughput.py"},
    "encoder-demo-idle.md": {"encoder-throughput": "encoder_throughput.py"},
    "encoder-int8.md": {"encoder-int8": "encoder_int8.py"},
    "indexing.md": {"indexing-paths": "indexing.py", "indexing-feed": "indexing.py"},
    "learning.md": {"learning-runs": "learning.py"},
    "learning-phrasings.md": {"learning-phrasings": "learning.py"},
    "search.md": {"search-latency": "search_latency.py"},
    "service.md": {"service-load": "service_load.py", "service-load-local": "service_load.py"},
    "trns-mining.md": {"trns-model": "trns_mining.py", "trns-scale": "trns_mining.py"},
}
# the page a recorded command writes when it names no --out (learning.py: per subcommand)
DEFAULT_PAGE = {"ablation.py": "ablation.md", "controllability.py": "controllability.md", "heads.py":
                "controllability.md", "encoder_throughput.py": "encoder.md", "encoder_int8.py":
                "encoder-int8.md", "indexing.py": "indexing.md", "learning.py report": "learning.md",
                "learning.py phrasings": "learning-phrasings.md", "search_latency.py": "search.md",
                "service_load.py": "service.md", "trns_mining.py": "trns-mining.md", "edge_search.py": "search-edge.md"}


# --- the helper ---------------------------------------------------------------------------------
def test_write_section_creates_appends_and_replaces_only_its_section(tmp_path):
    page = tmp_path / "sub" / "page.md"
    write_section(page, "one", ["| a | b |", "|---|---|", "| 1 | 2 |"], title="A page")
    assert page.read_text().startswith("# A page\n\n<!-- one:start -->\n\n| a | b |")
    page.write_text(page.read_text() + "\nHand-written reading of the table.\n")
    write_section(page, "two", ["second"])  # absent: appended, the rest kept
    text = page.read_text()
    assert text.index("Hand-written reading") < text.index("<!-- two:start -->")
    write_section(page, "one", ["| a | b |", "|---|---|", "| 3 | 4 |"])
    text = page.read_text()
    assert "| 3 | 4 |" in text and "| 1 | 2 |" not in text
    assert "Hand-written reading of the table." in text and read_section(page, "two") == "second"
    before = page.read_text()
    write_section(page, "one", read_section(page, "one").splitlines())  # idempotent
    assert page.read_text() == before


@pytest.mark.parametrize("broken", ["<!-- s:start -->\nx\n", "<!-- s:end -->\nx\n<!-- s:start -->\n",
                                    "<!-- s:start -->\n<!-- s:end -->\n<!-- s:start -->\n<!-- s:end -->\n"])
def test_write_section_refuses_broken_markers(tmp_path, broken):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n" + broken)
    with pytest.raises(ValueError, match="mend the page"):
        write_section(page, "s", ["new"])
    assert page.read_text() == "# t\n\n" + broken


def test_recorded_command_shows_repository_paths_relative():
    cmd = recorded_command("x.py", ["--out", str(ROOT / "docs" / "p.md"), f"a={ROOT / 'm.safetensors'}",
                                    "--set", 'trns={"low": 0}', "/elsewhere/b"])
    assert cmd == ("python benchmarks/x.py --out docs/p.md a=m.safetensors --set 'trns={\"low\": 0}' "
                   "/elsewhere/b")


# --- the pages ----------------------------------------------------------------------------------
def outside(text: str, sections) -> str:
    """The page with every section's content taken out (markers kept)."""
    for name in sections:
        start, end = markers(name)
        if start in text and end in text:
            text = text[: text.index(start) + len(start)] + text[text.index(end):]
    return text


def recorded_commands(section: str) -> list[list[str]]:
    cmds = []
    for quoted in re.findall(r"`(python benchmarks/[^`]+)`", section):
        for cmd in quoted.split(", then "):
            cmds.append(shlex.split(cmd))
    return cmds


def test_every_page_is_regenerable():
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages == set(PAGES), "a page without a script (or a script without a page): update PAGES"
    for page, sections in PAGES.items():
        text = (DOCS / page).read_text()
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # a shell comment in a code block is no title
        assert len(re.findall(r"^# ", prose, re.M)) == 1, f"{page}: one title"
        for name, script in sections.items():
            start, end = markers(name)
            assert text.count(start) == 1 and text.count(end) == 1, f"{page}: section {name}"
            cmds = recorded_commands(read_section(DOCS / page, name))
            assert cmds, f"{page}: section {name} records no command"
            for cmd in cmds:
                assert cmd[1] == f"benchmarks/{script}", f"{page}: {cmd}"
                key = script if script != "learning.py" else f"{script} {cmd[2]}"
                if key == "learning.py run":  # appends a row to learning-runs.jsonl; `report` writes the page
                    continue
                out = cmd[cmd.index("--out") + 1] if "--out" in cmd else f"docs/benchmarks/{DEFAULT_PAGE[key]}"
                assert out == f"docs/benchmarks/{page}", f"{page}: `{shlex.join(cmd)}` writes {out}"
        rest = outside(text, sections)
        assert "\n## Reproduce\n" in rest, f"{page}: no Reproduce part outside the markers"
        assert "--intro" not in text


# --- the scripts, end to end on tiny inputs -----------------------------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DQE_CIR_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def seeded_page(tmp_path: Path, name: str, sections) -> Path:
    """A page as a human left it: a title, prose, each section holding an older run, prose between and after."""
    lines = [f"# {name}", "", ABOVE, ""]
    for s in sections:
        start, end = markers(s)
        lines += [start, "", STALE, "", end, "", f"Reading of {s}, by hand.", ""]
    lines += [BELOW, ""]
    page = tmp_path / f"{name}.md"
    page.write_text("\n".join(lines))
    return page


def run(script: str, *args, timeout: float = 600) -> str:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{shlex.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def check_page(page: Path, original: str, sections, script: str) -> dict[str, str]:
    """Outside the markers nothing moved; each section was rewritten with a command that writes this
    page and a table with numbers."""
    text = page.read_text()
    assert outside(text, sections) == outside(original, sections)
    assert ABOVE in text and BELOW in text
    bodies = {}
    for name in sections:
        body = read_section(page, name)
        assert body and STALE not in body, name
        assert f"python benchmarks/{script}" in body
        assert f"--out {page}" in body, "the recorded command must write this page"
        assert re.search(r"^\|[^\n]*\d[^\n]*\|$", body, re.M), f"{name}: no table row with a number"
        bodies[name] = body
    return bodies


def test_encoder_throughput(tmp_path, tiny_trained):
    page = seeded_page(tmp_path, "encoder", ["encoder-throughput"])
    original = page.read_text()
    run("encoder_throughput.py", "--checkpoint", tiny_trained, "--skip-prod", "--batches", 1, "--reps", 1,
        "--threads", 1, "--out", page)
    body = check_page(page, original, ["encoder-throughput"], "encoder_throughput.py")["encoder-throughput"]
    assert "| demo | 1 | all |" in body


def test_encoder_int8(tmp_path, tiny_trained, synth_small):
    page = seeded_page(tmp_path, "encoder-int8", ["encoder-int8"])
    original = page.read_text()
    run("encoder_int8.py", "--checkpoint", tiny_trained, "--root", synth_small, "--size", "small",
        "--threads", 1, "--batches", 1, "--reps", 1, "--out", page)
    body = check_page(page, original, ["encoder-int8"], "encoder_int8.py")["encoder-int8"]
    assert "| int8 - fp32 |" in body and "- int8: parity" in body


def redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/13", socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.mark.slow
def test_indexing_both_sections(tmp_path, tiny_bundle):
    sections = ["indexing-paths", "indexing-feed"]
    page = seeded_page(tmp_path, "indexing", sections)
    original = page.read_text()
    worker = redis_up()
    run("indexing.py", "--bundle", tiny_bundle, "--n", 6, "--threads", 1, "--profile-items", 6,
        *(["--redis-url", "redis://127.0.0.1:6379/13"] if worker else ["--no-worker"]), "--out", page)
    run("indexing.py", "--feed", "--bundle", tiny_bundle, "--n", 6, "--rounds", 1, "--out", page)
    bodies = check_page(page, original, sections, "indexing.py")
    assert "| in-process (default: JPEG draft decode) |" in bodies["indexing-paths"]
    if worker:
        assert re.search(r"^\| one Celery worker \(solo pool, Redis broker\) \| [\d.]+ \|", bodies["indexing-paths"],
                         re.M), bodies["indexing-paths"]
    assert "--feed" in bodies["indexing-feed"] and "--feed" not in bodies["indexing-paths"]


def test_search_latency(tmp_path, tiny_bundle, synth_small):
    page = seeded_page(tmp_path, "search", ["search-latency"])
    original = page.read_text()
    run("search_latency.py", "--bundle", tiny_bundle, "--root", synth_small, "--sizes", 40, 60, "--queries", 3,
        "--oversample", 2, 4, "--threads", 1, "--out", page)
    body = check_page(page, original, ["search-latency"], "search_latency.py")["search-latency"]
    assert "| 60 |" in body and "oversample 4" in body


@pytest.mark.slow
def test_service_load(tmp_path, tiny_bundle, synth_small):
    from app.served_eval import write_manifest
    from cirdata.datasets import load_cirr
    from encoder import Encoder
    from indexer.reindex_inprocess import index_catalog
    from plugin.store import open_embedded

    work = tmp_path / "work"  # what `dqe-cir demo --quick --workdir work` leaves, from the tiny parts
    shutil.copytree(tiny_bundle, work / "bundle")
    root = work / "synth-small-0"
    shutil.copytree(synth_small, root)
    manifest = write_manifest(load_cirr(root, "val"), root / "catalog.val.jsonl")
    client = open_embedded(str(work / "qdrant"))
    try:
        index_catalog(client, Encoder(work / "bundle", threads=1), manifest, alias="synthetic-val", progress=False)
    finally:
        client.close()
    page = seeded_page(tmp_path, "service", ["service-load"])
    original = page.read_text()
    run("service_load.py", "--workdir", work, "--size", "small", "--requests", 6, "--concurrency", 2,
        "--server-concurrency", 1, "--max-seconds", 60, "--out", page)
    body = check_page(page, original, ["service-load"], "service_load.py")["service-load"]
    assert re.search(r"^\| 6 \| 0 \|", body, re.M), body  # every request answered


@pytest.mark.slow
def test_learning_run_report_phrasings(tmp_path, tiny_trained, synth_small):
    results, runs = tmp_path / "runs.jsonl", tmp_path / "runs"
    run("learning.py", "run", "tiny", "--init", tiny_trained, "--root", synth_small, "--val-root", synth_small,
        "--minutes", 5, "--set", "max_steps=2", "--set", "batch_size=16", "--train-queries", 50, "--threads", 1,
        "--results", results, "--runs-dir", runs, "--quiet", "--note", "a tiny run")
    assert (runs / "tiny" / "last.safetensors").is_file() and len(results.read_text().splitlines()) == 1
    page = seeded_page(tmp_path, "learning", ["learning-runs"])
    original = page.read_text()
    run("learning.py", "report", "--results", results, "--out", page)
    body = check_page(page, original, ["learning-runs"], "learning.py")["learning-runs"]
    assert "| tiny | a tiny run | " in body and str(results) in body
    page = seeded_page(tmp_path, "learning-phrasings", ["learning-phrasings"])
    original = page.read_text()
    run("learning.py", "phrasings", f"tiny={runs / 'tiny' / 'last.safetensors'}", "--val-root", synth_small,
        "--out", page)
    body = check_page(page, original, ["learning-phrasings"], "learning.py")["learning-phrasings"]
    assert "| held-out |" in body


@pytest.mark.slow
def test_controllability_heads_and_rewrite(tmp_path, tiny_trained, synth_small):
    page = seeded_page(tmp_path, "controllability", ["controllability-tiny", "heads"])
    original = page.read_text()
    run("controllability.py", "--checkpoint", tiny_trained, "--label", "tiny", "--root", synth_small,
        "--max-queries", 30, "--served-queries", 6, "--baseline", tiny_trained, "--threads", 1, "--out", page)
    body = check_page(page, original, ["controllability-tiny"], "controllability.py")["controllability-tiny"]
    assert "| color alone |" in body and "sensitivity" in body and "top-1 identical | 100.0" in body
    assert "| R@1 |" in body and "+0.0 [+0.0, +0.0]" in body  # paired against itself
    assert json.loads(page.with_name("controllability-tiny.json").read_text())["settings"]["base only"]
    original = page.read_text()
    run("heads.py", "--start", tiny_trained, "--root", synth_small, "--steps", 1, "--seeds", 0, "--candidates", "S0",
        "S1", "--max-queries", 30, "--threads", 1, "--out", page)
    body = check_page(page, original, ["heads"], "heads.py")["heads"]
    assert "| S1 S0 + invariance" in body and "p=" in body
    run("heads.py", "--rewrite", "--out", page)
    assert read_section(page, "heads") == body


def test_ablation_and_rewrite(tmp_path, tiny_trained, synth_small):
    page = seeded_page(tmp_path, "ablation", ["ablation"])
    original = page.read_text()
    run("ablation.py", "--start", tiny_trained, "--root", synth_small, "--steps", 2, "--seeds", 0,
        "--variants", "A", "B", "--batch-size", 8, "--threads", 1, "--out", page)
    body = check_page(page, original, ["ablation"], "ablation.py")["ablation"]
    assert "### Equal steps" in body and "| (B) DQE-CIR" in body
    assert page.with_suffix(".json").is_file()
    run("ablation.py", "--rewrite", "--out", page)  # from the .json alone: the same section, prose kept
    assert read_section(page, "ablation") == body
    assert outside(page.read_text(), ["ablation"]) == outside(original, ["ablation"])


@pytest.mark.slow
def test_trns_mining_both_sections(tmp_path, tiny_trained, synth_small):
    sections = ["trns-model", "trns-scale"]
    page = seeded_page(tmp_path, "trns-mining", sections)
    original = page.read_text()
    run("trns_mining.py", "scale", "--queries", 64, "--pool", 40, "--dim", 16, "--tokens", 4, "--chunk", 16,
        "--threads", 1, "--out", page)
    run("trns_mining.py", "model", "--start", tiny_trained, "--root", synth_small, "--threads", 1, "--out", page)
    bodies = check_page(page, original, sections, "trns_mining.py")
    assert "trns_mining.py scale" in bodies["trns-scale"] and "trns_mining.py model" in bodies["trns-model"]


@pytest.mark.slow
def test_edge_search_embed_designs_storage_and_report(tmp_path, tiny_bundle, synth_small):
    """benchmarks/edge_search.py on qdrant-edge (the `bench` extra): embed a few hundred images, the three
    designs side by side at two sizes, the storage study, and the designs section rewritten from its JSON."""
    pytest.importorskip("qdrant_edge")  # installed by `make install` (the bench extra)
    sections = ["edge-designs", "edge-local", "embedded-edge", "edge-results"]
    page = seeded_page(tmp_path, "search-edge", sections)
    original = page.read_text()
    cache, work = tmp_path / "emb", tmp_path / "work"
    run("edge_search.py", "embed", "--bundle", tiny_bundle, "--root", synth_small, "--items", 300, "--queries", 12,
        "--threads", 1, "--cache", cache)
    run("edge_search.py", "run", "--cache", cache, "--workdir", work, "--sizes", 150, 300, "--mv-ef", 16,
        "--token-ef", 16, "--exact-queries", 3, "--out", page)
    run("edge_search.py", "storage", "--cache", cache, "--workdir", work, "--sizes", 300, "--oversample", 1, 4,
        "--storage-oversample", 4, "--explain-oversample", 4, "--local-queries", 4, "--out", page)
    run("edge_search.py", "local", "--cache", cache, "--items", 120, "--queries", 3, "--out", page)
    run("edge_search.py", "embedded", "--cache", cache, "--workdir", work, "--items", 120, "--queries", 3,
        "--out", page)
    bodies = check_page(page, original, sections, "edge_search.py")
    assert "the edge engine" in bodies["embedded-edge"] and "qdrant-client's local mode" in bodies["edge-local"]
    for design in ("pooled", "multivector", "token"):
        assert f"| {design} |" in bodies["edge-designs"]
    run("edge_search.py", "report", "--results", work / "designs-results.json", "--out", page)
    assert read_section(page, "edge-designs") == bodies["edge-designs"]
