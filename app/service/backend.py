"""What one service process holds: the model bundle's encoder, a Qdrant client and a CIRSearch over one
collection (alias). Built at start; when the collection is not there yet (or Qdrant is down) the process
still starts, /readyz says why, and the search is built on the first request that finds it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.service.metrics import TimedEncoder
from app.service.models import ApiError, HitOut, SearchRequest, SearchResponse, invalid
from app.service.settings import ServiceConfig

SERVICE_MAX_PIXELS = 25_000_000  # an uploaded reference is decoded up to this size (about 5000 x 5000)
HIDDEN_PAYLOAD = ("content_hash", "token_index")  # the indexer's bookkeeping, not the item's


@dataclass
class QueryResult:
    response: SearchResponse
    compose_s: float
    search_s: float


def backend_errors() -> tuple[type[Exception], ...]:
    """What a query can raise besides bugs: CIRSearch's errors and the Qdrant client's (a server that
    is down or answers with an error)."""
    from qdrant_client.http.exceptions import ApiException

    from plugin import PluginError

    return PluginError, ApiException, OSError


def search_error(e: Exception) -> ApiError:
    """A failed query as the client's fault (4xx) or the backend's (503), by the error's type (plugin/errors.py):
    ItemNotFound 404, BadFilter 422 (on the `filter` field), any other BadQuery 400; everything else (the
    collection missing or of another bundle, Qdrant down or erring) 503."""
    from plugin import BadFilter, BadQuery, ItemImageMissing, ItemNotFound

    if isinstance(e, ItemImageMissing):
        return ApiError(404, "image_not_found", str(e))
    if isinstance(e, ItemNotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, BadFilter):
        return invalid([{"field": "filter", "message": str(e)}])
    if isinstance(e, BadQuery):
        return ApiError(400, "bad_request", str(e))
    return ApiError(503, "unavailable", f"search backend failed: {e}")


class Backend:
    def __init__(self, config: ServiceConfig, client=None, encoder=None):
        self.config = config
        self.client, self._own_client = client, client is None
        self.encoder = TimedEncoder(encoder) if encoder is not None else None
        self.problem: str | None = None
        self._search = None
        self._lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the bundle and connect; a failure is kept in `problem` (and /readyz) instead of raised."""
        from encoder import Encoder, EncoderError

        if self.encoder is None:
            try:
                self.encoder = TimedEncoder(Encoder(self.config.bundle, max_pixels=SERVICE_MAX_PIXELS))
            except EncoderError as e:
                self.problem = f"bundle: {e}"
                return
        if self.client is None:
            from indexer.settings import qdrant_client

            try:
                self.client = qdrant_client(self.config.settings, serving=True)
            except Exception as e:  # a locked local-mode folder, a bad URL
                self.problem = f"qdrant: {e}"
                return
        try:
            self.search()
        except ApiError as e:
            self.problem = e.message

    def close(self) -> None:
        if self.client is not None and self._own_client:
            self.client.close()

    @property
    def attributes(self) -> tuple[str, ...]:
        """The bundle's attribute names (what `weights` may name); the default pair until it is loaded."""
        from encoder.fusion import DEFAULT_ATTRIBUTES

        return tuple(self.encoder.spec.attributes) if self.encoder is not None else DEFAULT_ATTRIBUTES

    def search(self):
        """The CIRSearch, built on first use; ApiError(503) while it cannot be."""
        if self._search is not None:
            return self._search
        if self.encoder is None or self.client is None:
            raise ApiError(503, "unavailable", f"not ready: {self.problem}")
        from plugin import CIRSearch, SearchError

        with self._lock:
            if self._search is None:
                try:
                    self._search = CIRSearch(self.client, self.config.collection, encoder=self.encoder,
                                             catalog_root=self.config.catalog_root,
                                             allow_http=self.config.settings.allow_http)
                except SearchError as e:
                    raise ApiError(503, "unavailable", f"not ready: {e}") from e
                except Exception as e:  # Qdrant unreachable
                    raise ApiError(503, "unavailable", f"not ready: Qdrant: {e}") from e
                self.problem = None
        return self._search

    def readiness(self) -> dict[str, dict]:
        from plugin import store

        checks: dict[str, dict] = {}
        enc = self.encoder
        checks["bundle"] = ({"ok": True, "detail": f"fingerprint {enc.fingerprint}"} if enc is not None
                            else {"ok": False, "detail": self.problem or "not loaded"})
        if self.client is None:
            checks["qdrant"] = {"ok": False, "detail": self.problem or "no client"}
            return checks
        try:
            self.client.get_collections()
            checks["qdrant"] = {"ok": True, "detail": "reachable"}
        except Exception as e:
            checks["qdrant"] = {"ok": False, "detail": str(e)}
            return checks
        try:
            meta = (store.check_fingerprint(self.client, self.config.collection, enc.fingerprint) if enc
                    else store.collection_info(self.client, self.config.collection))
            checks["collection"] = {"ok": enc is not None, "detail": f"{self.config.collection!r}: "
                                                                     f"{meta['items']} items"}
        except Exception as e:  # StoreError: missing, not ours, other fingerprint
            checks["collection"] = {"ok": False, "detail": str(e)}
        return checks

    # -- requests ------------------------------------------------------------------------------
    def query(self, req: SearchRequest, image: bytes | None) -> QueryResult:
        """Run one composed query (in a worker thread); compose and Qdrant time apart."""
        from encoder.fusion import resolve_weights
        from plugin import ItemRef

        search = self.search()
        names = self.attributes
        unknown = sorted(set(req.weights or {}) - set(names))
        if unknown:
            raise invalid([{"field": "weights", "message": f"unknown attribute {n!r}; this model's attributes: "
                                                           f"{', '.join(names)}"} for n in unknown])
        reference = ItemRef(req.item_id) if req.item_id else image
        started = time.perf_counter()
        try:
            hits = search.query(reference, req.text, k=req.k, filter=req.filter, weights=req.weights,
                                explain=req.explain)
        finally:
            total = time.perf_counter() - started
            compose_s, model_weights = self.encoder.last()
        used = resolve_weights(model_weights, req.weights, names)[0]
        out = [HitOut(id=h.id, score=h.score, payload=_public(h.payload), breakdown=h.breakdown or None)
               for h in hits]
        response = SearchResponse(
            hits=out, weights=dict(zip(names, map(float, used), strict=True)),
            model_weights=dict(zip(names, map(float, model_weights[0]), strict=True)),
            reference=req.item_id, timings_ms={"compose": round(compose_s * 1000, 2),
                                               "search": round((total - compose_s) * 1000, 2)})
        return QueryResult(response, compose_s, total - compose_s)

    def payload(self, item_id: str) -> dict:
        return _public(self._point(item_id))

    def sample(self, n: int) -> list[tuple[str, dict]]:
        from qdrant_client import models

        from plugin import designs, store

        search = self.search()
        try:  # the collection the alias names now, with its own design (token: Q points an item)
            target, meta = search.current()
            one_each = designs.one_point_per_item(store.design_from(meta, target))
            resp = self.client.query_points(target, query=models.SampleQuery(sample=models.Sample.RANDOM),
                                            query_filter=one_each,
                                            limit=n, with_payload=True, with_vectors=False)
        except Exception as e:
            raise ApiError(503, "unavailable", f"sampling {self.config.collection!r} failed: {e}") from e
        return [((p.payload or {}).get("item_id", str(p.id)), _public(p.payload or {})) for p in resp.points]

    def collection_meta(self) -> dict:
        from plugin import store

        search = self.search()
        try:
            return store.collection_info(self.client, search.collection)
        except Exception as e:
            raise ApiError(503, "unavailable", str(e)) from e

    def image_file(self, item_id: str):
        """(path, media type, stat) of an item's image; only files under the catalog root are served."""
        from PIL import Image

        root = self.config.catalog_root
        if not root:
            raise ApiError(404, "no_catalog_root", "this service has no catalog root (--catalog-root or "
                                                   "DQE_CIR_CATALOG_ROOT), so it serves no images")
        uri = str(self._point(item_id).get("uri") or "")
        base = Path(root).resolve()
        path = (base / uri.removeprefix("file://")).resolve()
        if not uri or "://" in uri.removeprefix("file://") or not path.is_relative_to(base) or not path.is_file():
            raise ApiError(404, "image_not_found", f"item {item_id!r} has no image file under the catalog root")
        try:
            with Image.open(path) as img:
                media_type = Image.MIME.get(img.format or "", "")
        except Exception:  # not an image, or a decompression bomb
            media_type = ""
        if not media_type.startswith("image/"):
            raise ApiError(404, "image_not_found", f"item {item_id!r}: its file is not an image")
        return path, media_type, path.stat()

    def _point(self, item_id: str) -> dict:
        from plugin import store

        search = self.search()
        try:
            points = self.client.retrieve(search.collection, [store.point_id(item_id)], with_payload=True)
        except Exception as e:
            raise ApiError(503, "unavailable", f"Qdrant: {e}") from e
        if not points:
            raise ApiError(404, "not_found", f"item {item_id!r} is not in collection {self.config.collection!r}")
        return dict(points[0].payload or {})


def _public(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k not in HIDDEN_PAYLOAD}
