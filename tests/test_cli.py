import json
import subprocess
import sys

import pytest

from app.cli import main
from tests.conftest import shared_data


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True)


def test_data_stats_json_real_cirr():
    r = run_cli("data", "stats", "--kind", "cirr", "--root", str(shared_data("cirr")), "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["val"] == {"images": 2297, "pairs": 4181}
    assert stats["test1"]["pairs"] == 4148


def test_data_stats_fashioniq_per_category(capsys):
    assert main(["data", "stats", "--kind", "fashioniq", "--root", str(shared_data("fashioniq")), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["val"]["pairs"] == 6016
    assert sum(c["pairs"] for c in stats["val"]["categories"].values()) == 6016


def test_data_oracle_json(synth_small, capsys):
    assert main(["data", "oracle", "--root", str(synth_small), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["R@1"] == 100.0 and m["Rs@1"] == 100.0


def test_bad_root_is_a_clear_error(tmp_path):
    r = run_cli("data", "oracle", "--root", str(tmp_path))
    assert r.returncode == 2
    assert "error:" in r.stderr and "captions" in r.stderr and "Traceback" not in r.stderr


def test_train_is_one_process_and_says_how_to_use_several(monkeypatch, capsys, tmp_path):
    """Under torchrun, `dqe-cir train` would run N unrelated copies: it points at `-m training` instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--model", "tiny", "--out", str(tmp_path / "run")]) == 2
    assert "torchrun --nproc-per-node N -m training train" in capsys.readouterr().err


def test_python_m_training_help_lists_the_train_flags():
    r = subprocess.run([sys.executable, "-m", "training", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--recipe" in r.stdout and "--pretrained" in r.stdout and "--stop-after" in r.stdout


def test_an_unknown_flag_is_still_an_error_where_the_extra_is_installed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["index", "--catalog", "x", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_torchrun_entry_reports_a_data_error_without_a_traceback(tmp_path):
    """`python -m training train` with a --root that holds no data set: one `error:` line, exit 2 (it
    printed a DataError traceback, on every rank under torchrun)."""
    r = subprocess.run([sys.executable, "-m", "training", "train", "--recipe", "demo", "--root", str(tmp_path / "none"),
                        "--out", str(tmp_path / "out"), "--set", "max_steps=1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr
