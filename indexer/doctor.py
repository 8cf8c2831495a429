"""`dqe-cir doctor`: check a deployment and say what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.settings import Settings, load_settings, qdrant_client, release_client


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_bundle(settings: Settings) -> tuple[Check, object | None]:
    from encoder.bundle import read_bundle
    from encoder.errors import EncoderError

    try:
        spec = read_bundle(settings.bundle)
    except EncoderError as e:
        return Check("bundle", False, str(e), "export one with `dqe-cir export CKPT --out DIR` and set "
                                              "DQE_CIR_BUNDLE to that folder"), None
    return Check("bundle", True, f"{settings.bundle}: format {spec.format_version}, fingerprint {spec.fingerprint}, "
                                 f"{spec.precision}, D={spec.embed_dim}, {spec.num_query_tokens} tokens"), spec


def check_providers() -> Check:
    try:
        import onnxruntime as ort
    except ImportError:
        return Check("onnxruntime", False, "not installed", "pip install 'dqe-cir-search[serve]' (or [gpu])")
    available = ort.get_available_providers()
    from encoder.runtime import choose_providers

    chosen = choose_providers()
    gpu = [p for p in chosen if p != "CPUExecutionProvider"]
    detail = f"{ort.__version__}; will use {chosen} (available: {available})"
    if not gpu:
        detail += "; CPU only"
    return Check("onnxruntime", True, detail)


def check_qdrant(settings: Settings, collection: str, spec) -> list[Check]:
    from plugin import store

    where = settings.qdrant_url or f"local folder {settings.qdrant_path}"
    try:
        client = qdrant_client(settings)
        client.get_collections()
    except Exception as e:  # connection refused, bad API key, a locked local folder...
        return [Check("qdrant", False, f"{where}: {e}", "start Qdrant (docker compose up -d qdrant) and check "
                                                         "QDRANT_URL / QDRANT_API_KEY, or QDRANT_PATH")]
    checks = [Check("qdrant", True, f"{where} answers")]
    try:
        try:
            meta = store.collection_info(client, collection)
        except store.StoreError as e:
            checks.append(Check("collection", False, str(e), f"dqe-cir index --catalog SRC --collection {collection}"))
            return checks
        detail = f"{collection!r}: {meta['points']} points, fingerprint {meta['fingerprint']}"
        if spec is not None and meta["fingerprint"] != spec.fingerprint:
            checks.append(Check("collection", False, detail + f" but the bundle is {spec.fingerprint}",
                                "re-index with this bundle (dqe-cir index), or point DQE_CIR_BUNDLE at the bundle "
                                "the collection was built with"))
        else:
            checks.append(Check("collection", True, detail))
    finally:
        release_client(settings, client)
    return checks


def check_broker(settings: Settings) -> Check:
    import redis

    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=3).ping()
    except Exception as e:
        return Check("broker", False, f"{settings.broker_url}: {e}",
                     "start Redis (docker compose up -d redis) or set CELERY_BROKER_URL; without a broker, "
                     "`dqe-cir index --workers none` indexes in-process")
    return Check("broker", True, f"{settings.broker_url} answers")


def run_checks(collection: str = "catalog", settings: Settings | None = None, broker: bool = True) -> list[Check]:
    settings = settings or load_settings()
    bundle_check, spec = check_bundle(settings)
    checks = [bundle_check, check_providers(), *check_qdrant(settings, collection, spec)]
    if broker:
        checks.append(check_broker(settings))
    return checks
