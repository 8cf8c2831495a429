"""The package dependency rule, read from the imports of every module, and each install's commands
with the other side made unimportable."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"app", "cirdata", "training", "encoder", "plugin", "indexer"}
# What each package may import of ours, and third-party packages it must never import.
ALLOWED = {
    "encoder": (set(), {"torch", "transformers"}),
    "cirdata": ({"encoder"}, {"torch", "transformers"}),
    "training": ({"encoder", "cirdata"}, set()),
    "plugin": ({"encoder"}, {"torch", "transformers"}),
    "indexer": ({"encoder", "plugin"}, {"torch", "transformers"}),
    "app": (OURS, set()),
}


def imported_top_levels(source: str, own: str) -> set[str]:
    """Top-level names of every import in a module, wherever it sits (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(own if node.level else (node.module or "").split(".")[0])
    return out


def rule_violations(root: Path) -> list[str]:
    problems = []
    for package, (may_import, forbidden) in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            names = imported_top_levels(path.read_text(), package)
            for name in sorted((names & OURS) - may_import - {package}):
                problems.append(f"{path.relative_to(root)} imports {name}")
            for name in sorted(names & forbidden):
                problems.append(f"{path.relative_to(root)} imports {name}")
    return problems


def test_every_module_keeps_the_dependency_rule():
    assert rule_violations(ROOT) == []


def test_only_plugin_edge_imports_qdrant_edge():
    """The embedded engine is a beta (renames between releases): one module of the product owns it."""
    owners = sorted(str(p.relative_to(ROOT)) for package in OURS for p in (ROOT / package).rglob("*.py")
                    if "qdrant_edge" in imported_top_levels(p.read_text(), package))
    assert owners == ["plugin/edge.py"]


def test_the_rule_check_catches_a_violation(tmp_path):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "training" / "bad.py").write_text("def f():\n    from plugin.search import CIRSearch\n")
    (tmp_path / "encoder" / "worse.py").write_text("import torch\nfrom .x import y\n")
    (tmp_path / "plugin" / "ok.py").write_text("from encoder import Encoder\nfrom . import store\n")
    (tmp_path / "cirdata" / "metrics.py").write_text("def f():\n    import torch\n")
    assert rule_violations(tmp_path) == ["encoder/worse.py imports torch", "cirdata/metrics.py imports torch",
                                         "training/bad.py imports plugin"]


# --- one install, its own commands ---------------------------------------------------------
BLOCKED_RUNNER = """
import importlib.abc, sys
BLOCK = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)", name=name)
        return None
sys.meta_path.insert(0, Block())
from app.cli import main
sys.exit(main(sys.argv[2:]))
"""
TRAIN_ONLY = "qdrant_client,celery,redis,kombu"  # what a `train`-only install lacks
SERVE_ONLY = "torch,transformers,onnx,onnxscript,training,cirdata"  # what the serving image lacks


def run_with(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUNNER, blocked, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys\nfrom app.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['index', '--help'], ['eval', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'qdrant_client', 'onnxruntime', 'celery', 'numpy')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr


@pytest.mark.slow
def test_train_only_install_runs_the_training_commands(synth_small, tmp_path):
    r = run_with(TRAIN_ONLY, "data", "oracle", "--root", synth_small, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["R@1"] == 100.0, r.stderr
    run = tmp_path / "run"
    r = run_with(TRAIN_ONLY, "train", "--model", "tiny", "--root", synth_small, "--out", run, "--max-steps", "2",
                 "--batch-size", "8", "--eval-every", "0", "--set", "eval_max_queries=10", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2
    r = run_with(TRAIN_ONLY, "eval", run / "last.safetensors", "--root", synth_small, "--max-queries", "20", "--json")
    assert r.returncode == 0 and "R@10" in json.loads(r.stdout), r.stderr
    r = run_with(TRAIN_ONLY, "export", run / "last.safetensors", "--out", tmp_path / "bundle")
    assert r.returncode == 0 and (tmp_path / "bundle" / "bundle.json").is_file(), r.stderr
    for argv in (["index", "--catalog", synth_small / "val"], ["search", "--text", "red", "--item", "x"],
                 ["doctor"], ["eval", run / "last.safetensors", "--root", synth_small, "--served"]):
        r = run_with(TRAIN_ONLY, *argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert "extra" in r.stderr and "pip install 'dqe-cir-search[" in r.stderr and "serve" in r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_serve_only_install_runs_the_serving_commands(tiny_bundle, synth_small, tmp_path):
    qdrant = tmp_path / "qdrant"
    common = ["--bundle", tiny_bundle, "--qdrant-path", qdrant]
    r = run_with(SERVE_ONLY, "index", "--catalog", synth_small / "val", "--collection", "shop", "--workers", "none",
                 "--json", "--quiet", *common)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["indexed"] > 0 and not report["failed"]
    item = sorted(p.name for p in (synth_small / "val").iterdir())[0]
    r = run_with(SERVE_ONLY, "search", "--item", item, "--text", "make it red", "-k", "3", "--collection", "shop",
                 "--catalog-root", synth_small / "val", "--json", *common)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and item not in [h["id"] for h in hits]
    r = run_with(SERVE_ONLY, "search", "--item", "no-such-item", "--text", "red", "--collection", "shop", *common)
    assert r.returncode == 2 and "not in collection" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_with(SERVE_ONLY, "doctor", "--collection", "shop", "--no-broker", "--json", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {c["name"] for c in json.loads(r.stdout) if c["ok"]} >= {"bundle", "qdrant", "collection"}
    for argv in (["train", "--model", "tiny", "--root", synth_small], ["export", "x.pt", "--out", tmp_path / "b"],
                 ["eval", "x.pt"], ["pretrain"], ["demo"]):
        r = run_with(SERVE_ONLY, *argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert "pip install 'dqe-cir-search[" in r.stderr and "train" in r.stderr and "Traceback" not in r.stderr
