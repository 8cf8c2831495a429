"""The production images, built and started (issue #30): `make images` builds them once a session (cached
layers make a rebuild seconds), then each one is run the way docker-compose.yml runs it.

- train: `dqe-cir train --dry-run`, a few steps of the tiny model on the small synthetic set and `dqe-cir export`
  inside the container, the bundle written to a mounted folder;
- api: that bundle mounted read-only, a collection indexed beforehand on the host (`dqe-cir index`, in-process)
  into a mounted local-mode folder; the container answers /readyz, searches like in-process `CIRSearch`, serves
  the page, names the bundle, refuses a wrong key and runs as a non-root user;
- worker: `celery -A indexer worker` against the test Redis answers `inspect ping`; `dqe-cir doctor` names the
  Qdrant server it cannot reach;
- docker-compose.yml resolved by the engine's compose with a test .env.

The one part of the stack no test starts is the Qdrant server (its image cannot be pulled here). Skipped only
where no container engine runs (no docker daemon, no podman: `make containers` installs podman as root)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
REDIS = "redis://127.0.0.1:6379/12"  # a db of the test Redis no other test uses
API_KEY = "container-test-key"
QUERY = {"text": "make the red circle blue", "k": 5}

pytestmark = pytest.mark.slow


def _engine() -> list[str]:
    """The engine command docker/build.sh picks (docker with a daemon, else podman with runc); a skip with the
    reason where none can run containers."""
    found = subprocess.run([str(ROOT / "docker/build.sh"), "engine"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"no container engine: {found.stderr.strip()}")
    engine = found.stdout.split()
    info = subprocess.run([*engine, "info"], capture_output=True, text=True)
    if info.returncode != 0:
        pytest.skip(f"`{' '.join(engine)} info` fails, so no container can run here: {info.stderr.strip()[-300:]}")
    return engine


@pytest.fixture(scope="session")
def engine() -> list[str]:
    return _engine()


def run(engine: list[str], *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*engine, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"`{' '.join(engine)} {' '.join(args)}` exited {r.returncode}:\n{r.stdout[-3000:]}\n"
                    f"{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def images(engine) -> dict[str, str]:
    """`make images`: built once a session; unchanged layers come from the engine's cache."""
    started = time.monotonic()
    r = subprocess.run(["make", "-C", str(ROOT), "images"], capture_output=True, text=True, timeout=1500)
    if r.returncode != 0:
        pytest.fail(f"make images exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    print(f"[containers] make images: {time.monotonic() - started:.0f} s")
    return {name: f"dqe-cir-{name}:{VERSION}" for name in ("worker", "api", "train")}


def shared_folder(path: Path) -> Path:
    """A host folder the containers' non-root user (uid 10001) may write: rootful podman maps it to itself."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def readable(path: Path) -> Path:
    """A host folder the containers' non-root user may read (pytest makes its folders 0700)."""
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o555 if p.is_dir() else 0o444))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """A detached container, removed (with its logs kept for the failure message) when the test is done."""

    def __init__(self, engine: list[str], *args: str):
        self.engine = engine
        self.id = run(engine, "run", "-d", *args).stdout.strip()

    def running(self) -> bool:
        r = run(self.engine, "inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return r.stdout.strip() == "true"

    def logs(self) -> str:
        r = run(self.engine, "logs", self.id, check=False)
        return (r.stdout + r.stderr)[-4000:]

    def remove(self) -> None:
        run(self.engine, "rm", "-f", self.id, check=False, timeout=60)


def passed_through_env() -> list[str]:
    """The QDRANT_* settings of this test run (e.g. an embedded engine choice), given to the containers too, so
    the host's indexer and the container open the mounted folder the same way."""
    out = []
    for name, value in sorted(os.environ.items()):
        if name.startswith("QDRANT_") and name not in ("QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY"):
            out += ["-e", f"{name}={value}"]
    return out


# --- train ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def trained_bundle(engine, images, synth_small, tmp_path_factory) -> Path:
    """A few steps of the tiny model and its export, inside the train image; the bundle lands on the host."""
    work = shared_folder(tmp_path_factory.mktemp("train-container"))
    started = time.monotonic()
    common = ["--rm", "--network", "none", "-v", f"{readable(synth_small)}:/data:ro", "-v", f"{work}:/work",
              images["train"]]
    run(engine, "run", *common, "train", "--model", "tiny", "--root", "/data", "--out", "/work/run",
        "--max-steps", "8", "--batch-size", "32", "--eval-every", "0", "--quiet")
    run(engine, "run", *common, "export", "/work/run/last.safetensors", "--out", "/work/bundle")
    print(f"[containers] train + export in the train image: {time.monotonic() - started:.0f} s")
    return work / "bundle"


def test_train_image_plans_trains_and_exports_on_cpu_torch(engine, images, synth_small, trained_bundle):
    from encoder.bundle import read_bundle

    r = run(engine, "run", "--rm", "--network", "none", "-v", f"{synth_small}:/data:ro", images["train"],
            "train", "--recipe", "demo", "--root", "/data", "--dry-run", "--json")
    plan = json.loads(r.stdout[r.stdout.index("{"):])
    assert plan and "error" not in r.stderr.lower(), r.stdout + r.stderr
    torch = run(engine, "run", "--rm", "--network", "none", "--entrypoint", "python", images["train"], "-c",
                "import torch; print(torch.__version__, torch.cuda.is_available())").stdout.split()
    assert torch[0].endswith("+cpu") and torch[1] == "False", torch  # TORCH_SPEC kept the multi-GB CUDA build out
    spec = read_bundle(trained_bundle)  # verifies every file against the bundle's fingerprint
    assert spec.fingerprint and (trained_bundle / "composer.onnx").is_file()


# --- api -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def indexed(trained_bundle, synth_small, tmp_path_factory) -> dict:
    """A catalog of 120 val images indexed on the host by `dqe-cir index` (in-process) into a local-mode folder,
    and what in-process CIRSearch answers on it; the folder is closed before any container opens it."""
    from app.cli import main
    from indexer.settings import load_settings, open_client, with_overrides
    from plugin import CIRSearch, ItemRef

    base = tmp_path_factory.mktemp("api-container")
    catalog = base / "catalog"
    catalog.mkdir()
    for png in sorted((synth_small / "val").glob("*.png"))[:120]:
        shutil.copy(png, catalog / png.name)
    readable(catalog)
    qdrant = shared_folder(base / "qdrant")
    assert main(["index", "--catalog", str(catalog), "--collection", "catalog", "--bundle", str(trained_bundle),
                 "--qdrant-path", str(qdrant), "--workers", "none", "--quiet"]) == 0
    item = sorted(p.name for p in catalog.iterdir())[0]
    settings = with_overrides(load_settings(), str(trained_bundle), str(qdrant))
    with open_client(settings) as client:
        search = CIRSearch(client, "catalog", bundle=str(trained_bundle), catalog_root=str(catalog))
        expected = [(h.id, h.score) for h in search.query(ItemRef(item), QUERY["text"], k=QUERY["k"])]
    for path in qdrant.rglob("*"):  # the service's user writes the folder's lock and files
        path.chmod(0o777 if path.is_dir() else 0o666)
    return {"catalog": catalog, "qdrant": qdrant, "item": item, "expected": expected}


def http(port: int, path: str, body: dict | None = None, key: str | None = API_KEY) -> tuple[int, bytes]:
    headers = {"content-type": "application/json"} if body is not None else {}
    if key:
        headers["X-API-Key"] = key
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="session")
def api(engine, images, trained_bundle, indexed):
    port = free_port()
    started = time.monotonic()
    box = Container(engine, "--network", "host", "-e", "QDRANT_PATH=/data/qdrant",
                    "-e", "DQE_CIR_BUNDLE=/models/bundle", "-e", "DQE_CIR_CATALOG_ROOT=/catalog",
                    "-e", "DQE_CIR_COLLECTION=catalog",
                    "-e", f"DQE_CIR_API_KEY={API_KEY}", "-e", "DQE_CIR_THREADS=1", *passed_through_env(),
                    "-v", f"{indexed['qdrant']}:/data/qdrant", "-v", f"{trained_bundle}:/models/bundle:ro",
                    "-v", f"{indexed['catalog']}:/catalog:ro", images["api"],
                    "dqe-cir", "serve", "--host", "127.0.0.1", "--port", str(port))
    try:
        status = None
        while time.monotonic() - started < 90:
            if not box.running():
                pytest.fail(f"the api container stopped:\n{box.logs()}")
            try:
                status, body = http(port, "/readyz", key=None)
            except OSError:  # not listening yet
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"/readyz never answered 200 (last: {status}):\n{box.logs()}"
        print(f"[containers] api container ready in {time.monotonic() - started:.1f} s")
        yield port, box
    finally:
        box.remove()


def test_api_image_serves_the_indexed_collection_like_in_process_search(api, indexed, trained_bundle):
    from encoder.bundle import read_bundle

    port, box = api
    status, body = http(port, "/v1/search", {"item_id": indexed["item"], **QUERY})
    assert status == 200, body
    got = [(h["id"], h["score"]) for h in json.loads(body)["hits"]]
    assert [i for i, _ in got] == [i for i, _ in indexed["expected"]], (got, indexed["expected"])
    assert [s for _, s in got] == pytest.approx([s for _, s in indexed["expected"]], abs=1e-4)

    status, page = http(port, "/", key=None)
    assert status == 200 and b"<html" in page.lower()
    for asset in re.findall(rb'(?:src|href)="(/[^"]+\.(?:js|css))"', page):
        assert http(port, asset.decode(), key=None)[0] == 200, asset

    status, body = http(port, "/v1/info")
    info = json.loads(body)
    assert status == 200 and info["collection"] == "catalog" and info["api_key_required"]
    assert info["fingerprint"] == read_bundle(trained_bundle).fingerprint and info["items"] == 120
    status, body = http(port, "/v1/search", {"item_id": indexed["item"], **QUERY}, key="wrong")
    assert status == 401, body


def test_api_container_runs_as_a_non_root_user_and_passes_its_compose_health_check(engine, api):
    import yaml

    port, box = api
    uid = run(engine, "exec", box.id, "id", "-u").stdout.strip()
    assert uid != "0" and run(engine, "exec", box.id, "id", "-un").stdout.strip() == "app"
    kind, *test = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["healthcheck"]["test"]
    # the health check docker-compose.yml gives the api, run in this container as the engine would run it (on the
    # port this test serves on: the container shares the host's network here, where compose gives it its own)
    assert all(":8000/" in part for part in test[-1:]), test
    test = [part.replace(":8000/", f":{port}/") for part in test]
    argv = ["/bin/sh", "-c", test[0]] if kind == "CMD-SHELL" else test
    r = run(engine, "exec", box.id, *argv, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# --- worker --------------------------------------------------------------------------------------------
def test_worker_image_answers_ping_and_doctor_names_the_missing_qdrant(engine, images, trained_bundle):
    node = f"celery@dqe-cir-test-{os.getpid()}"
    env = ["--network", "host", "-e", f"CELERY_BROKER_URL={REDIS}", "-e", "DQE_CIR_BUNDLE=/models/bundle",
           "-v", f"{trained_bundle}:/models/bundle:ro"]
    box = Container(engine, *env, images["worker"], "celery", "-A", "indexer", "worker", "--loglevel", "INFO",
                    "--concurrency", "1", "-n", node)
    try:
        started, pong = time.monotonic(), None
        while time.monotonic() - started < 90:
            if not box.running():
                pytest.fail(f"the worker container stopped:\n{box.logs()}")
            pong = run(engine, "exec", box.id, "celery", "-A", "indexer", "inspect", "ping", "-d", node,
                       "--timeout", "5", check=False)
            if pong.returncode == 0:
                break
            time.sleep(1)
        assert pong is not None and pong.returncode == 0 and "pong" in pong.stdout, (pong, box.logs())
        print(f"[containers] worker answered ping after {time.monotonic() - started:.1f} s")
    finally:
        box.remove()

    closed = free_port()  # nothing listens there
    r = run(engine, "run", "--rm", *env, "-e", f"QDRANT_URL=http://127.0.0.1:{closed}", images["worker"],
            "dqe-cir", "doctor", check=False)
    failed = [line for line in r.stdout.splitlines() if line.startswith("[FAIL]")]
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(failed) == 1 and failed[0].startswith(f"[FAIL] qdrant: http://127.0.0.1:{closed}"), r.stdout
    assert "fix: start Qdrant" in r.stdout and "[ok] bundle" in r.stdout and "[ok] broker" in r.stdout, r.stdout


# --- compose -------------------------------------------------------------------------------------------
def compose_command(engine: list[str]) -> tuple[list[str], bool]:
    """The engine's compose and whether it has `config` (Debian 12's podman-compose 1.0.3 has not: its
    `--dry-run up` prints the resolved `podman run` lines instead)."""
    if engine[0] == "docker":
        return ["docker", "compose"], True
    if not shutil.which("podman-compose"):
        pytest.fail("podman-compose is missing: apt-get install podman-compose (make containers does it as root)")
    helptext = subprocess.run(["podman-compose", "--help"], capture_output=True, text=True).stdout
    return ["podman-compose"], bool(re.search(r"\bconfig\b", helptext))


def test_compose_file_resolves_with_a_test_env(engine, tmp_path):
    import yaml

    env = {"QDRANT_API_KEY": "test-qdrant-key", "FLOWER_BASIC_AUTH": "admin:test-password"}
    source = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    project = f"dqecirtest{os.getpid()}"
    # compose reads .env beside the file: a copy of the file in a folder of its own, with the test .env
    (tmp_path / "docker-compose.yml").write_text((ROOT / "docker-compose.yml").read_text())
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    compose, has_config = compose_command(engine)
    clean = {k: v for k, v in os.environ.items() if k not in source_vars(source)}  # only the .env decides
    if has_config:
        r = subprocess.run([*compose, "-p", project, "--profile", "cpu", "--profile", "monitoring", "config"],
                           cwd=tmp_path, capture_output=True, text=True, env=clean, timeout=60)
        assert r.returncode == 0, r.stderr
        resolved = yaml.safe_load(r.stdout)
        assert set(resolved["services"]) == set(source["services"])
        assert set(resolved["volumes"]) == set(source["volumes"])
        environments = {name: {k: str(v) for k, v in (srv.get("environment") or {}).items()}
                        for name, srv in resolved["services"].items()}
        for name, srv in source["services"].items():
            want = (srv.get("healthcheck") or {}).get("test")
            assert resolved["services"][name].get("healthcheck", {}).get("test") == \
                (want and [part.replace("$$", "$") for part in want]), name
        text = r.stdout
    else:
        r = subprocess.run([*compose, "-p", project, "--dry-run", "up", "--no-build", "-d"], cwd=tmp_path,
                           capture_output=True, text=True, env=clean, timeout=120)
        try:
            assert r.returncode == 0, r.stdout + r.stderr
            runs = {m.group(1): m.group(0) for m in re.finditer(rf"^podman run --name={project}_(\S+?)_1 .*$",
                                                                   r.stdout, re.M)}
            assert set(runs) == set(source["services"]), r.stdout  # 1.0.3 ignores profiles: every service
            for volume in source["volumes"]:
                assert f"-v {project}_{volume}:" in r.stdout, volume
            environments = {name: dict(re.findall(r" -e ([A-Z_0-9]+)=(\S*)", line)) for name, line in runs.items()}
            text = "\n".join(runs.values())
            for name, line in runs.items():
                assert_health_check(source["services"][name].get("healthcheck"), line)
        finally:  # its dry run still creates the named volumes and the network
            for volume in source["volumes"]:
                subprocess.run([*engine, "volume", "rm", "-f", f"{project}_{volume}"], capture_output=True)
            subprocess.run([*engine, "network", "rm", "-f", f"{project}_default"], capture_output=True)
    assert "${" not in text, [line for line in text.splitlines() if "${" in line]  # every variable resolved
    for name, srv in source["services"].items():
        assert set(environments[name]) == set(srv.get("environment") or {}), name
    assert environments["qdrant"]["QDRANT__SERVICE__API_KEY"] == env["QDRANT_API_KEY"]
    assert environments["api"]["QDRANT_API_KEY"] == env["QDRANT_API_KEY"]
    assert environments["api"]["DQE_CIR_API_KEY"] == ""  # unset in .env: the API is open (no literal "${...}")
    assert f"--basic-auth={env['FLOWER_BASIC_AUTH']}" in text


def assert_health_check(healthcheck: dict | None, line: str) -> None:
    """podman-compose 1.0.3 hands podman one string, which podman runs with `/bin/sh -c`: the argv that shell
    (and the `/bin/sh -c` inside the string) ends with must be the compose file's test."""
    if not healthcheck:
        return
    kind, *test = healthcheck["test"]
    given = re.search(r" --healthcheck-command (.*?) --healthcheck-", line).group(1)
    words = shlex.split(given)
    assert words[:2] == ["/bin/sh", "-c"] and len(words) == 3, given
    inner = words[2].replace("$$", "$")
    if kind == "CMD-SHELL":
        assert inner == test[0].replace("$$", "$"), (inner, test)
    else:
        assert shlex.split(inner) == test, f"the engine would run {shlex.split(inner)}, not {test}"


def source_vars(compose: dict) -> set[str]:
    """The variables the compose file interpolates."""
    return set(re.findall(r"\$\{([A-Z_0-9]+)", json.dumps(compose)))
