"""The HTTP service through the real app (FastAPI's in-process test client) on an indexed collection:
results equal CIRSearch called directly, and bad input gets a clear 4xx JSON error, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from qdrant_client import QdrantClient

from app.service.routes import create_app
from app.service.settings import SERVICE_ENV_VARS, ServiceConfig, config_from_env
from encoder import Encoder
from indexer.reindex_inprocess import index_catalog
from indexer.settings import ENV_VARS, load_settings
from plugin import CIRSearch, ItemRef, store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def indexed(tiny_bundle, synth_small):
    client = QdrantClient(":memory:")
    enc = Encoder(tiny_bundle)
    index_catalog(client, enc, synth_small / "val", alias="catalog", progress=False)
    return client, enc, synth_small / "val"


@pytest.fixture(scope="module")
def config(indexed) -> ServiceConfig:
    return ServiceConfig(settings=load_settings({}), collection="catalog", catalog_root=str(indexed[2]))


def make_client(indexed, config, **kw) -> TestClient:
    client, enc, _ = indexed
    return TestClient(create_app(config, client=client, encoder=enc), **kw)


@pytest.fixture(scope="module")
def api(indexed, config):
    with make_client(indexed, config) as c:
        yield c


@pytest.fixture(scope="module")
def direct(indexed):
    client, enc, catalog = indexed
    return CIRSearch(client, "catalog", encoder=enc, catalog_root=catalog)


def item_ids(catalog: Path, n: int = 3) -> list[str]:
    return sorted(p.name for p in catalog.glob("*.png"))[:n]


def error_of(r) -> dict:
    body = r.json()
    assert "Traceback" not in r.text and set(body) == {"error"}, r.text
    return body["error"]


def test_search_by_item_id_equals_cirsearch(api, direct, indexed):
    first = item_ids(indexed[2])[0]
    r = api.post("/v1/search", json={"item_id": first, "text": "make the red circle blue", "k": 7, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = direct.query(ItemRef(first), "make the red circle blue", k=7, explain=True)
    assert [h["id"] for h in body["hits"]] == [h.id for h in want] and first not in [h["id"] for h in body["hits"]]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in want], abs=1e-6)
    assert body["hits"][0]["breakdown"] == pytest.approx(want[0].breakdown, abs=1e-6)
    assert body["weights"] == pytest.approx(want[0].weights) and body["model_weights"] == body["weights"]
    assert body["reference"] == first and "content_hash" not in body["hits"][0]["payload"]
    assert set(body["timings_ms"]) == {"compose", "search", "total"}


def test_search_by_upload_with_weights_and_filter(api, direct, indexed):
    catalog = indexed[2]
    first, second, third = item_ids(catalog)
    data = (catalog / first).read_bytes()
    form = {"text": "same but green", "k": "2", "weights": json.dumps({"color": 2.5}),
            "filter": json.dumps({"item_id": [first, second, third]})}
    r = api.post("/v1/search", data=form, files={"image": ("ref.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    want = direct.query(data, "same but green", k=2, weights={"color": 2.5}, filter={"item_id": [first, second, third]})
    assert [h["id"] for h in body["hits"]] == [h.id for h in want] and len(want) == 2
    assert body["weights"]["color"] == 2.5 and body["weights"]["shape"] == body["model_weights"]["shape"]
    assert "breakdown" not in body["hits"][0] and body.get("reference") is None


@pytest.mark.parametrize("payload, field, words", [
    ({"item_id": "x", "text": "   "}, "text", "must not be empty"),
    ({"item_id": "x", "text": "red", "k": 0}, "k", "greater than or equal to 1"),
    ({"item_id": "x", "text": "red", "k": 101}, "k", "less than or equal to 100"),
    ({"item_id": "x", "text": "red", "weights": {"texture": 1}}, "weights", "unknown attribute 'texture'"),
    ({"item_id": "x", "text": "red", "weights": {"color": -1}}, "weights", "between 0 and 10"),
    ({"item_id": "x", "text": "red", "filter": {"price": 1.5}}, "filter", "must be a string, integer, bool"),
    ({"item_id": "x", "text": "red", "filter": {"$where": "1"}}, "filter", "operators such as '$where'"),
    ({"item_id": "x", "text": "red", "filter": {"split": ["val", 3]}}, "filter", "list of strings or of integers"),
    ({"item_id": "x", "text": "red", "colour": 1}, "colour", "Extra inputs are not permitted"),
    ({"text": "red"}, "image", "exactly one reference"),
])
def test_bad_json_requests_are_clear_422s(api, payload, field, words):
    r = api.post("/v1/search", json=payload)
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "invalid_request" and words in error["message"]
    assert field in [f["field"] for f in error["fields"]]


def test_status_codes_follow_the_error_types_not_their_messages():
    from app.service.backend import search_error
    from plugin import errors as e

    misleading = "query on 'x' failed: is not in collection, indexed with bundle, does not exist"
    cases = [(e.ItemNotFound, 404), (e.BadFilter, 422), (e.BadQuery, 400), (e.CollectionUnusable, 503),
             (e.BundleMismatch, 503), (e.BackendUnavailable, 503), (e.SearchError, 503), (e.StoreError, 503),
             (OSError, 503)]
    for kind, status in cases:
        assert search_error(kind(misleading)).status == status, kind
    assert search_error(e.BadFilter("bad")).body()["error"]["fields"] == [{"field": "filter", "message": "bad"}]


def test_a_failing_qdrant_call_is_a_503(indexed, config, monkeypatch):
    with make_client(indexed, config) as c:
        item = item_ids(indexed[2])[0]
        assert c.post("/v1/search", json={"item_id": item, "text": "red"}).status_code == 200

        def down(*args, **kwargs):
            raise ConnectionError("connection refused")

        monkeypatch.setattr(indexed[0], "query_points", down)
        monkeypatch.setattr(indexed[0], "query_batch_points", down)
        r = c.post("/v1/search", json={"item_id": item, "text": "red"})
        assert r.status_code == 503 and "connection refused" in error_of(r)["message"], r.text


def test_other_bad_requests(api, indexed, config):
    catalog = indexed[2]
    cases = [
        (api.post("/v1/search", json={"item_id": "no-such-item", "text": "red"}), 404, "not in collection"),
        (api.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        (api.post("/v1/search", content=b"item_id=x", headers={"content-type": "text/plain"}), 415, "multipart"),
        (api.post("/v1/search", data={"text": "red"}, files={"image": ("x.png", b"garbage", "image/png")}), 400,
         "not a readable image"),
        (api.post("/v1/search", data={"text": "red", "weights": "{color: 2"},
                  files={"image": ("x.png", (catalog / item_ids(catalog)[0]).read_bytes())}), 422, "JSON object"),
        (api.post("/v1/search", data={"text": "red", "item_id": item_ids(catalog)[0]},
                  files={"image": ("x.png", (catalog / item_ids(catalog)[0]).read_bytes())}), 422, "exactly one"),
        (api.get("/v1/items/sample?n=0"), 422, "greater than or equal to 1"),
        (api.get("/v1/nothing-here"), 404, "Not Found"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (status, r.text)
        assert words in error_of(r)["message"], r.text


def test_oversized_upload_is_413(indexed, config):
    small = replace(config, max_upload_bytes=50_000)
    big = io.BytesIO()
    Image.effect_noise((400, 400), 64).convert("RGB").save(big, format="PNG")  # noise: does not compress
    assert len(big.getvalue()) > 100_000
    with make_client(indexed, small) as c:
        r = c.post("/v1/search", data={"text": "red"}, files={"image": ("big.png", big.getvalue(), "image/png")})
        assert r.status_code == 413 and error_of(r)["code"] == "too_large"

        def chunks():  # no Content-Length: the cap applies while the body streams in
            yield b"x" * 40_000
            yield b"x" * 40_000
            yield b"x" * 40_000

        r = c.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and error_of(r)["code"] == "too_large"
        assert 'dqe_cir_http_errors_total{code="too_large"' in c.get("/metrics").text


def test_item_image_payload_and_sample(api, indexed):
    client, _, catalog = indexed
    first = item_ids(catalog)[0]
    r = api.get(f"/v1/items/{first}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (catalog / first).read_bytes()
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    again = api.get(f"/v1/items/{first}/image", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert api.head(f"/v1/items/{first}/image").status_code == 200
    assert api.get(f"/v1/items/{first}").json() == {"id": first, "payload": {"item_id": first, "uri": first}}
    assert api.get("/v1/items/nope/image").status_code == 404
    store.upsert(client, "catalog", [store.Item("escape", store_tokens(client), {"uri": "../../../../etc/passwd"}),
                                     store.Item("absolute", store_tokens(client), {"uri": "/etc/hostname"})])
    try:
        for bad in ("escape", "absolute"):
            r = api.get(f"/v1/items/{bad}/image")
            assert r.status_code == 404 and "under the catalog root" in error_of(r)["message"]
    finally:
        store.delete(client, "catalog", ["escape", "absolute"])
    items = api.get("/v1/items/sample?n=5").json()["items"]
    assert len({i["id"] for i in items}) == 5 and all((catalog / i["id"]).is_file() for i in items)


def store_tokens(client):
    import numpy as np

    meta = store.collection_info(client, "catalog")
    t = np.zeros((meta["num_query_tokens"], meta["embed_dim"]), dtype=np.float32)
    t[:, 0] = 1.0
    return t


def test_health_readiness_info_metrics_openapi(api, indexed, config):
    client, enc, _ = indexed
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["checks"]) == {"bundle", "qdrant", "collection"}
    info = api.get("/v1/info").json()
    assert info["fingerprint"] == enc.fingerprint and info["points"] == store.count(client, "catalog")
    api.post("/v1/search", json={"item_id": item_ids(indexed[2])[0], "text": "make it red"})
    text = api.get("/metrics").text
    for line in ("dqe_cir_compose_seconds_count", "dqe_cir_search_seconds_count",
                 'dqe_cir_http_requests_total{method="POST",route="/v1/search",status="200"}',
                 'dqe_cir_http_request_duration_seconds_bucket{le="0.005",route="/v1/search"}',
                 'dqe_cir_http_errors_total{code="invalid_request",route="/v1/search"}'):
        assert line in text, line
    schema = api.get("/openapi.json").json()
    body = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "X-API-Key" in json.dumps(schema["components"]["securitySchemes"])
    assert api.get("/docs").status_code == 200


def test_not_ready_without_the_collection_and_with_another_bundle(indexed, config):
    with make_client(indexed, replace(config, collection="missing")) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and not r.json()["checks"]["collection"]["ok"]
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/search", json={"item_id": "x", "text": "red"})
        assert r.status_code == 503 and "does not exist" in error_of(r)["message"]
    other = SimpleNamespace(fingerprint="0" * 32)  # a bundle the collection was not indexed with
    with TestClient(create_app(config, client=indexed[0], encoder=other)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "indexed with bundle" in r.json()["checks"]["collection"]["detail"]
        assert "indexed with bundle" in error_of(c.get("/v1/items/sample"))["message"]
        r = c.post("/v1/search", json={"item_id": "x", "text": "red"})
        assert r.status_code == 503 and "indexed with bundle" in error_of(r)["message"]


def test_api_key_and_cors(indexed, config):
    with make_client(indexed, replace(config, api_key="s3cret")) as c:
        assert c.get("/v1/info").status_code == 401
        assert c.get("/v1/info", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    origin = {"Origin": "http://127.0.0.1:9999"}
    with make_client(indexed, config) as c:
        assert "access-control-allow-origin" not in c.get("/v1/info", headers=origin).headers
    with make_client(indexed, replace(config, cors_origins=("http://127.0.0.1:9999",))) as c:
        assert c.get("/v1/info", headers=origin).headers["access-control-allow-origin"] == origin["Origin"]


def test_an_unexpected_error_is_a_500_without_traceback(indexed, config, monkeypatch):
    with make_client(indexed, config, raise_server_exceptions=False) as c:
        monkeypatch.setattr(c.app.state.backend, "sample", lambda n: 1 / 0)
        r = c.get("/v1/items/sample")
        assert r.status_code == 500 and error_of(r)["code"] == "internal" and "ZeroDivision" not in r.text


def test_page_and_static_files_need_no_cdn(api):
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = api.get(asset)
        assert r.status_code == 200, asset
    for path in (ROOT / "app" / "service" / "static").iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_config_from_env_and_flags():
    env = {"DQE_CIR_BUNDLE": "b", "QDRANT_PATH": "q", "DQE_CIR_COLLECTION": "shop", "DQE_CIR_API_KEY": "k",
           "DQE_CIR_MAX_UPLOAD_MB": "2", "DQE_CIR_CORS_ORIGINS": "http://a, http://b", "DQE_CIR_CATALOG_ROOT": "/c"}
    c = config_from_env(env)
    assert (c.bundle, c.collection, c.api_key, c.max_upload_bytes) == ("b", "shop", "k", 2_000_000)
    assert c.cors_origins == ("http://a", "http://b") and c.catalog_root == "/c" and c.local_mode
    c = config_from_env(env, bundle="b2", collection="other", max_upload_mb=1, catalog_root="/d")
    assert (c.bundle, c.collection, c.max_upload_bytes, c.catalog_root) == ("b2", "other", 1_000_000, "/d")
    back = config_from_env(c.env())  # what `serve --workers N` hands its worker processes
    fields = ("bundle", "collection", "catalog_root", "max_upload_bytes", "cors_origins", "concurrency")
    assert [getattr(back, f) for f in fields] == [getattr(c, f) for f in fields] and back.settings.qdrant_path == "q"


def test_serve_command_help_is_light_and_local_mode_refuses_workers(tiny_bundle, tmp_path):
    code = ("import sys\nfrom app.cli import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'onnxruntime', 'qdrant_client', 'numpy', 'torch')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "--catalog-root" in r.stdout and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "app", "serve", "--bundle", str(tiny_bundle), "--qdrant-path",
                        str(tmp_path / "q"), "--workers", "2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Qdrant server" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "app", "serve", "--bundle", str(tmp_path / "none")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_compose_api_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["command"][:2] == ["dqe-cir", "serve"] and "0.0.0.0" in api["command"]
    assert api["build"]["dockerfile"] == "docker/serve.Dockerfile"
    extras = api["build"]["args"]["EXTRA"].split(",")
    assert "api" in extras and "train" not in extras
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert set(api["environment"]) <= set(ENV_VARS) | set(SERVICE_ENV_VARS)
    assert any(v.endswith(":/models/bundle:ro") for v in api["volumes"])
    readme = (ROOT / "README.md").read_text()
    assert all(v in readme for v in SERVICE_ENV_VARS) and "docs/images/service.png" in readme


def test_demo_prints_a_serve_command_the_cli_accepts(tmp_path):
    import shlex

    from app.cli import build_parser
    from app.commands.demo import serve_command

    line = serve_command(tmp_path / "demo", tmp_path / "demo" / "synth-demo-0")
    argv = shlex.split(line.split("   (")[0])
    args = build_parser()[0].parse_args(argv[1:])
    assert argv[0].endswith("dqe-cir") and args.command == "serve" and args.open
    assert (args.collection, args.bundle) == ("synthetic-val", str(tmp_path / "demo" / "bundle"))
    assert "http://127.0.0.1:8000/" in line
