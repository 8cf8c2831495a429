"""What can be checked of the deployment files without a Docker engine."""

import importlib
import re
import shutil
from pathlib import Path

import pytest
import tomllib
import yaml

from indexer.settings import ENV_VARS, load_settings
from plugin.store import open_embedded

ROOT = Path(__file__).resolve().parents[1]
OUR_SERVICES = ("worker", "worker-cpu", "flower")
CODE_ENV = set(ENV_VARS)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_compose_services_and_health_checks(compose):
    services = compose["services"]
    assert {"qdrant", "redis", "worker", "worker-cpu", "flower"} <= set(services)
    for name in ("qdrant", "redis", "worker", "worker-cpu"):
        assert "healthcheck" in services[name], name
    assert "noeviction" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY")
    assert any(v.endswith("/qdrant/storage") for v in services["qdrant"]["volumes"])
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("worker", "worker-cpu"):
        assert any(v.endswith(":/models/bundle:ro") for v in services[name]["volumes"]), "bundle mounted read-only"


def test_service_commands_name_real_apps(compose):
    for name in OUR_SERVICES:
        cmd = compose["services"][name]["command"]
        assert cmd[:3] == ["celery", "-A", "indexer"], cmd
        app = importlib.import_module("indexer.celery").app  # what `celery -A indexer` finds
        app.loader.import_default_modules()  # what a worker does at start: imports indexer.tasks
        assert "indexer.index_chunk" in app.tasks or cmd[3] == "flower"
        if "-Q" in cmd:
            assert cmd[cmd.index("-Q") + 1] == load_settings({}).queue  # the default the code sends tasks to


def test_environment_variables_are_the_ones_the_code_reads(compose):
    set_here = set()
    for name in OUR_SERVICES:
        set_here |= set(compose["services"][name].get("environment", {}))
    assert set_here <= CODE_ENV, set_here - CODE_ENV
    readme = (ROOT / "README.md").read_text()
    missing = [v for v in ENV_VARS if v not in readme]
    assert not missing, f"documented in indexer/settings.py but not in the README: {missing}"
    # every variable the code reads through os.environ is listed in ENV_VARS
    read = set()
    for py in list((ROOT / "indexer").glob("*.py")) + list((ROOT / "encoder").glob("*.py")) + \
            list((ROOT / "plugin").glob("*.py")):
        read |= set(re.findall(r"""environ(?:\.get)?\(?\[?["']([A-Z_]+)["']""", py.read_text()))
        read |= set(re.findall(r"""env\.get\(["']([A-Z_]+)["']""", py.read_text()))
    assert read <= CODE_ENV, read - CODE_ENV


def test_dockerfile_install_lines_match_pyproject_extras(compose, extras):
    for dockerfile in ("docker/serve.Dockerfile", "docker/train.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert "pip install" in text
        for group in re.findall(r'pip install (?:-e )?"\.\[([^\]]+)\]"', text):
            for extra in group.split(","):
                extra = extra.strip()
                if extra.startswith("${"):
                    continue
                assert extra in extras, (dockerfile, extra)
    serve_installs = [line for line in (ROOT / "docker/serve.Dockerfile").read_text().splitlines() if "pip" in line]
    assert serve_installs and not any("torch" in line or "train" in line for line in serve_installs)
    for name in OUR_SERVICES:
        build = compose["services"][name]["build"]
        assert (ROOT / build["dockerfile"]).is_file()
        assert build["args"]["EXTRA"] in extras
        assert not any("torch" in dep for dep in extras[build["args"]["EXTRA"]])


# --- dqe-cir doctor ----------------------------------------------------------------------
def _doctor(args, capsys):
    from app.cli import main

    code = main(["doctor", *args])
    return code, capsys.readouterr().out


@pytest.fixture()
def healthy(tiny_bundle, tmp_path, monkeypatch, synth_small):
    from encoder import Encoder
    from indexer.reindex_inprocess import index_catalog

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    client = open_embedded(str(tmp_path / "q"))
    index_catalog(client, Encoder(bundle), sorted((synth_small / "val").glob("*.png"))[0].parent, "catalog",
                  progress=False)
    client.close()
    return ["--bundle", str(bundle), "--qdrant-path", str(tmp_path / "q")], bundle, tmp_path


def test_doctor_healthy(healthy, capsys):
    args, _, _ = healthy
    code, out = _doctor(args, capsys)
    assert code == 0, out
    assert out.count("[ok]") == 6
    assert re.search(r"\[ok\] collections: catalog__\d+ \(alias catalog\): design multivector, complete", out), out


def test_doctor_broken_cases(healthy, capsys, monkeypatch, tmp_path):
    args, bundle, _ = healthy
    code, out = _doctor([*args, "--collection", "nope"], capsys)
    assert code == 1 and "[FAIL] collection" in out and "dqe-cir index" in out
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    code, out = _doctor(args, capsys)
    assert code == 1 and "[FAIL] broker" in out and "fix:" in out
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    (bundle / "tokenizer.json").write_text("{}")
    code, out = _doctor(args, capsys)
    assert code == 1 and "[FAIL] bundle" in out and "fingerprint" in out
    (bundle / "composer.onnx").unlink()
    code, out = _doctor(args, capsys)
    assert code == 1 and "composer.onnx is missing" in out


def test_doctor_wrong_fingerprint(healthy, capsys, tiny_bundle, tmp_path):
    from encoder.bundle import read_bundle, write_bundle_json

    args, _, _ = healthy
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text() + "\n")
    write_bundle_json(other, read_bundle(other, verify=False))  # a valid bundle, but not the indexed one
    code, out = _doctor(["--bundle", str(other), *args[2:]], capsys)
    assert code == 1 and "[ok] bundle" in out and "[FAIL] collection" in out and "re-index" in out


# --- the Qdrant version contract, Flower's exposure (issue #12) -------------------------------
def test_qdrant_server_image_and_client_pins_agree(compose, extras):
    from importlib.metadata import version

    from plugin.store import MIN_QDRANT, TESTED_QDRANT

    major, minor = TESTED_QDRANT
    image = compose["services"]["qdrant"]["image"]
    assert image.startswith(f"qdrant/qdrant:v{major}.{minor}.") and TESTED_QDRANT >= MIN_QDRANT, image
    for extra in ("serve", "gpu"):
        assert f"qdrant-client>={major}.{minor},<{major}.{minor + 1}" in extras[extra], extras[extra]
    assert tuple(int(p) for p in version("qdrant-client").split(".")[:2]) == TESTED_QDRANT  # what the tests ran
    assert image.split(":")[1] in (ROOT / "README.md").read_text()  # the README says which versions are tested


def test_flower_needs_a_password_and_listens_on_localhost_only(compose):
    flower = compose["services"]["flower"]
    assert flower["ports"] and all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert any(a.startswith("--basic-auth=${FLOWER_BASIC_AUTH:?") for a in flower["command"])


def test_doctor_reports_the_qdrant_version_and_refuses_one_too_old(healthy, capsys):
    from indexer.doctor import check_version

    args, _, _ = healthy
    code, out = _doctor(args, capsys)  # the embedded default: the engine and its version, no Qdrant version rule
    assert code == 0 and "the embedded engine, qdrant-edge-py 0.9.0" in out
    local = check_version("local folder q", "1.15.4", server=False)
    assert not local.ok and "Qdrant 1.15.4 is older than 1.16" in local.detail
    assert local.fix.startswith("pip install 'qdrant-client>=")
    assert check_version("local folder q", "1.20.0", server=False).ok
    server = check_version("http://qdrant:6333", "1.15.4", server=True)
    assert not server.ok and "qdrant/qdrant:v" in server.fix
    assert check_version("http://qdrant:6333", "1.16.0", server=True).ok


def test_the_cluster_file_makes_a_three_node_qdrant_cluster_the_services_reach(compose):
    """docker-compose.cluster.yml, laid over the main file: three Qdrant nodes in cluster mode, one starting the
    cluster (--uri) and two joining it (--bootstrap) on the peer port, which is never published; the workers and
    the API keep talking to `qdrant`, which answers for the whole cluster."""
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    assert set(cluster) == {"qdrant", "qdrant-1", "qdrant-2"}
    for name, node in cluster.items():
        env = node["environment"]
        assert env["QDRANT__CLUSTER__ENABLED"] == "true" and env["QDRANT__CLUSTER__P2P__PORT"] == "6335"
        assert env["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY")
        assert node["image"] == compose["services"]["qdrant"]["image"]  # one Qdrant version everywhere
        assert not any("6335" in str(p) for p in node.get("ports", [])), "the peer port accepts writes: never published"
        cmd = node["command"]
        assert cmd[cmd.index("--uri") + 1] == f"http://{name}:6335"
        if name != "qdrant":
            assert cmd[cmd.index("--bootstrap") + 1] == "http://qdrant:6335"
    for name in ("worker", "worker-cpu", "api"):
        assert compose["services"][name]["environment"].get("QDRANT_URL", "http://qdrant:6333") == "http://qdrant:6333"
