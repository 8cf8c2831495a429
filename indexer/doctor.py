"""`dqe-cir doctor`: check a deployment and say what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.settings import Settings, load_settings, qdrant_client


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

    where = settings.qdrant_url or f"{settings.qdrant_engine} folder {settings.qdrant_path}"
    unreachable = "start Qdrant (docker compose up -d qdrant) and check QDRANT_URL / QDRANT_API_KEY, or QDRANT_PATH"
    try:
        client = qdrant_client(settings)
    except Exception as e:  # a locked or unreadable local folder
        return [Check("qdrant", False, f"{where}: {e}", unreachable)]
    try:
        try:
            client.get_collections()
            version = store.server_version(client)
        except Exception as e:  # connection refused, bad API key...
            return [Check("qdrant", False, f"{where}: {e}", unreachable)]
        if store.engine(client) == store.EDGE:  # no Qdrant version to check: metadata lives in a sidecar file
            version_check = Check("qdrant", True, f"{where} answers: the embedded engine, qdrant-edge-py {version} "
                                                  "(QDRANT_ENGINE=edge; one process a collection)")
        else:
            version_check = check_version(where, version, server=bool(settings.qdrant_url))
        checks = [version_check]
        if not version_check.ok:
            return checks
        try:
            meta = store.collection_info(client, collection)
        except store.ShardBusy:  # the service holds it (edge: one process a collection): the metadata still reads
            meta = {**store.recorded_meta(client, collection), "items": "? (counts unavailable: another process, "
                    "e.g. the service, holds the collection)", "points": None}
        except store.StoreError as e:
            checks.append(Check("collection", False, str(e), f"dqe-cir index --catalog SRC --collection {collection}"))
            return checks
        target = store.alias_target(client, collection)
        points = f" ({meta['points']} points)" if meta["points"] not in (None, meta["items"]) else ""
        detail = (f"{collection!r}{f' -> {target}' if target else ''}: {meta['items']} items{points}, fingerprint "
                  f"{meta['fingerprint']}, build state {meta.get('state') or 'none (made before build states)'}, "
                  f"{design_detail(meta)}, {placement_detail(meta)}")
        if spec is not None and meta["fingerprint"] != spec.fingerprint:
            checks.append(Check("collection", False, detail + f" but the bundle is {spec.fingerprint}",
                                "re-index with this bundle (dqe-cir index), or point DQE_CIR_BUNDLE at the bundle "
                                "the collection was built with"))
        else:
            checks.append(Check("collection", True, detail))
        checks.append(Check("collections", True, every_collection(client)))
    finally:
        client.close()  # a local-mode folder is locked while open
    return checks


def every_collection(client) -> str:
    """Each collection of the folder or server with its aliases, design and build state (metadata only)."""
    from plugin import store

    aliases: dict[str, list[str]] = {}
    for alias, target in store.aliases(client).items():
        aliases.setdefault(target, []).append(alias)
    parts = []
    for name in store.collections(client):
        try:
            meta = store.recorded_meta(client, name)
            what = f"design {store.design_from(meta, name).name}, {meta.get('state') or 'no build state'}"
        except store.StoreError as e:
            what = f"not usable ({e})"
        named = f" (alias {', '.join(sorted(aliases[name]))})" if name in aliases else ""
        parts.append(f"{name}{named}: {what}")
    return "; ".join(parts) or "none"


def placement_detail(meta: dict) -> str:
    """Shards, replicas, write consistency and on-disk storage the collection was made with."""
    from plugin.placement import describe, placement_from_meta

    try:
        return describe(placement_from_meta(meta))
    except (TypeError, ValueError) as e:
        return f"placement: unreadable ({e})"


def design_detail(meta: dict) -> str:
    """Which first-stage design the collection uses, its HNSW settings, and whether a re-index would change it
    (a re-index keeps it; `--design` moves it, indexer/versions.py)."""
    from plugin import store

    design = store.design_from(meta)
    params = ", ".join(f"{k} {v}" for k, v in design.to_meta().get("design_params", {}).items())
    text = f"design {design.name}{f' ({params})' if params else ''}"
    if design.name != store.DEFAULT_DESIGN:
        text += (f"; the default for new aliases is {store.DEFAULT_DESIGN}: a full re-index with --design "
                 f"{store.DEFAULT_DESIGN} moves it there (a re-index keeps it otherwise)")
    return text


def check_version(where: str, version: str, server: bool) -> Check:
    """Qdrant too old for collection metadata fails, with the fix; a client more than one minor version
    away from the server (Qdrant's compatibility rule) is said in the detail."""
    from importlib.metadata import version as installed

    from plugin import store

    tested = ".".join(map(str, store.TESTED_QDRANT))
    client_version = installed("qdrant-client")
    detail = f"{where} answers: Qdrant {version}" + (f", qdrant-client {client_version}" if server else
                                                      " (local mode: qdrant-client's own engine)")
    problem = store.version_problem(version)
    if problem:
        fix = (f"upgrade the server to qdrant/qdrant:v{tested}.x (the image docker-compose.yml pins)" if server else
               f"pip install 'qdrant-client>={tested},<{store.TESTED_QDRANT[0]}.{store.TESTED_QDRANT[1] + 1}'")
        return Check("qdrant", False, f"{detail}: {problem}", fix)
    if server and abs(store.parse_version(version)[1] - store.parse_version(client_version)[1]) > 1:
        detail += f"; client and server are more than one minor version apart (tested: {tested})"
    return Check("qdrant", True, detail)


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
