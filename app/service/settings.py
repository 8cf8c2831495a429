"""Configuration of the HTTP service (`dqe-cir serve`): the indexer's environment (indexer/settings.py:
QDRANT_URL / QDRANT_PATH, DQE_CIR_BUNDLE, DQE_CIR_CATALOG_ROOT, DQE_CIR_PROVIDERS, DQE_CIR_THREADS) plus
the service's own variables below; command-line flags override both.

DQE_CIR_COLLECTION       catalog   the collection (alias) this process serves
DQE_CIR_API_KEY          (unset)   when set, /v1/* requires the header `X-API-Key: <key>`
DQE_CIR_MAX_UPLOAD_MB    10        largest request body (an uploaded reference image) in MB
DQE_CIR_CORS_ORIGINS     (unset)   comma-separated origins allowed to call the API from a browser; CORS is off
                                   when unset (the page at / is same-origin and needs none)
DQE_CIR_SERVE_CONCURRENCY  4       searches one process runs at once (more wait their turn)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from indexer.settings import Settings, load_settings

SERVICE_ENV_VARS = ("DQE_CIR_COLLECTION", "DQE_CIR_API_KEY", "DQE_CIR_MAX_UPLOAD_MB", "DQE_CIR_CORS_ORIGINS",
                    "DQE_CIR_SERVE_CONCURRENCY")
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_K = 100


@dataclass(frozen=True)
class ServiceConfig:
    """Everything one service process needs: which bundle, which Qdrant, which collection."""

    settings: Settings
    collection: str = "catalog"
    catalog_root: str | None = None  # the folder the indexed uris are relative to (images are served from it)
    api_key: str | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1_000_000)
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    concurrency: int = 4  # searches running at once in this process; more wait their turn

    @property
    def bundle(self) -> str:
        return self.settings.bundle

    @property
    def local_mode(self) -> bool:
        return not self.settings.qdrant_url

    def env(self) -> dict[str, str]:
        """The environment that makes `config_from_env()` in another process return this config
        (how `dqe-cir serve --workers N` hands flags to its worker processes)."""
        s = self.settings
        out = {"DQE_CIR_BUNDLE": s.bundle, "DQE_CIR_COLLECTION": self.collection,
               "DQE_CIR_MAX_UPLOAD_MB": str(self.max_upload_bytes / 1_000_000),
               "DQE_CIR_CORS_ORIGINS": ",".join(self.cors_origins), "DQE_CIR_SERVE_CONCURRENCY": str(self.concurrency)}
        if s.qdrant_url:
            out["QDRANT_URL"] = s.qdrant_url
        else:
            out["QDRANT_PATH"] = s.qdrant_path
        if self.catalog_root:
            out["DQE_CIR_CATALOG_ROOT"] = self.catalog_root
        return out


class ConfigError(ValueError):
    """A setting that cannot be used: the message says which and why."""


def _upload_bytes(value: str | float | None) -> int:
    try:
        mb = float(DEFAULT_MAX_UPLOAD_MB if value in (None, "") else value)
    except ValueError as e:
        raise ConfigError(f"DQE_CIR_MAX_UPLOAD_MB must be a number of megabytes, got {value!r}") from e
    if not 0 < mb <= 200:
        raise ConfigError(f"the upload cap must be between 0 and 200 MB, got {mb}")
    return int(mb * 1_000_000)


def config_from_env(env: dict | None = None, *, bundle: str | None = None, qdrant_path: str | None = None,
                    collection: str | None = None, catalog_root: str | None = None,
                    max_upload_mb: float | None = None, cors_origins: list[str] | None = None,
                    concurrency: int | None = None) -> ServiceConfig:
    """The service config from the environment, with the command line's flags (when given) on top."""
    from indexer.settings import with_overrides

    env = os.environ if env is None else env
    settings = with_overrides(load_settings(env), bundle, qdrant_path)
    origins = cors_origins if cors_origins is not None else (env.get("DQE_CIR_CORS_ORIGINS") or "").split(",")
    if concurrency is None:
        raw = env.get("DQE_CIR_SERVE_CONCURRENCY") or "4"
        try:
            concurrency = int(raw)
        except ValueError as e:
            raise ConfigError(f"DQE_CIR_SERVE_CONCURRENCY must be a whole number, got {raw!r}") from e
    if concurrency < 1:
        raise ConfigError(f"the search concurrency must be at least 1, got {concurrency}")
    return ServiceConfig(
        settings=settings,
        collection=collection or env.get("DQE_CIR_COLLECTION") or "catalog",
        catalog_root=catalog_root or settings.catalog_root,
        api_key=env.get("DQE_CIR_API_KEY") or None,
        max_upload_bytes=_upload_bytes(max_upload_mb if max_upload_mb is not None
                                       else env.get("DQE_CIR_MAX_UPLOAD_MB")),
        cors_origins=tuple(o.strip() for o in origins if o.strip()),
        concurrency=concurrency,
    )

