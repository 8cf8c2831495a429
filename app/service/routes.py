"""The HTTP service (`dqe-cir serve`): FastAPI over CIRSearch, one bundle and one collection (alias) per
process, and the web page at / that tries composed retrieval in a browser.

    POST /v1/search                  reference (item_id, or an uploaded image) + text -> hits
    GET  /v1/items/sample?n=12       random catalog items (the page's "pick a reference")
    GET  /v1/items/{item_id}         an item's payload
    GET  /v1/items/{item_id}/image   its image, from under the catalog root
    GET  /v1/info                    collection, bundle fingerprint, limits
    GET  /healthz, /readyz, /metrics, /docs, /openapi.json, /  (the page)

`create_app(config)` builds everything from the config in the app's lifespan; tests pass `client=` and
`encoder=` to run it on an in-memory collection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import partial
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.service.backend import Backend, backend_errors, search_error
from app.service.guard import BodyTooLarge, Guard
from app.service.metrics import CONTENT_TYPE, ServiceMetrics
from app.service.models import (
    FORM_FIELDS,
    ApiError,
    ItemOut,
    ItemsOut,
    SearchRequest,
    SearchResponse,
    ServiceInfo,
    form_to_dict,
    invalid,
    parse_search,
    validation_fields,
)
from app.service.settings import MAX_K, ServiceConfig

log = logging.getLogger("dqe_cir.service")
STATIC = Path(__file__).resolve().parent / "static"
API_KEY_HEADER = "X-API-Key"
IMAGE_CACHE = "public, max-age=3600"
SEARCH_BODY = {  # OpenAPI: the two request forms of POST /v1/search
    "required": True,
    "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["text"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "reference image (or item_id)"},
                "item_id": {"type": "string"}, "text": {"type": "string"},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                "weights": {"type": "string", "description": 'JSON object, e.g. {"color": 2}'},
                "filter": {"type": "string", "description": 'JSON object, e.g. {"split": "val"}'},
                "explain": {"type": "boolean", "default": False}}}},
    },
}


def create_app(config: ServiceConfig, *, client=None, encoder=None) -> FastAPI:
    """The service app. `client` / `encoder`, when given, are used instead of the ones the config names
    (the caller then owns the client)."""
    backend = Backend(config, client=client, encoder=encoder)
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(backend.start)
        if backend.problem:
            log.warning("not ready yet: %s", backend.problem)
        app.state.limiter = anyio.CapacityLimiter(config.concurrency)
        try:
            yield
        finally:
            backend.close()

    app = FastAPI(title="DQE-CIR search", version="1", lifespan=lifespan,
                  description="Composed image retrieval: a reference image and a modification text.")
    app.state.backend, app.state.metrics = backend, metrics
    _install_error_handlers(app, metrics)

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when DQE_CIR_API_KEY is set")

    def require_key(key: str | None = Depends(key_header)) -> None:
        if config.api_key and not _same(key, config.api_key):
            raise ApiError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER} header")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             openapi_extra={"requestBody": SEARCH_BODY},
             summary="Composed query: a reference (item_id or uploaded image) and a modification text")
    async def search(request: Request) -> SearchResponse:
        req, image = await _read_search(request, config.max_upload_bytes)
        started = time.perf_counter()
        try:
            result = await anyio.to_thread.run_sync(partial(backend.query, req, image),
                                                    limiter=request.app.state.limiter)
        except backend_errors() as e:
            raise search_error(e) from e
        metrics.compose.observe(result.compose_s)
        metrics.search.observe(result.search_s)
        result.response.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 2)
        return result.response

    @v1.get("/items/sample", response_model=ItemsOut, summary="Random catalog items")
    def sample(n: int = Query(12, ge=1, le=50)) -> ItemsOut:
        return ItemsOut(items=[ItemOut(id=i, payload=p) for i, p in backend.sample(n)])

    # ids may hold slashes (a folder catalog's ids are relative paths): the image route goes first
    @v1.get("/items/{item_id:path}/image", summary="A catalog item's image", response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}}, 304: {"description": "not modified"}})
    @v1.head("/items/{item_id:path}/image", include_in_schema=False)
    def item_image(item_id: str, request: Request) -> Response:
        path, media_type, stat = backend.image_file(item_id)
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        headers = {"Cache-Control": IMAGE_CACHE, "ETag": etag, "X-Content-Type-Options": "nosniff"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=stat)

    @v1.get("/items/{item_id:path}", response_model=ItemOut, summary="A catalog item's payload")
    def item(item_id: str) -> ItemOut:
        return ItemOut(id=item_id, payload=backend.payload(item_id))

    @v1.get("/info", response_model=ServiceInfo, summary="What this process serves, and its limits")
    def info() -> ServiceInfo:
        meta = backend.collection_meta()
        return ServiceInfo(collection=config.collection, points=meta["points"], items=meta["items"],
                           fingerprint=meta["fingerprint"], attributes=list(backend.attributes), max_k=MAX_K,
                           max_upload_bytes=config.max_upload_bytes, api_key_required=bool(config.api_key))

    app.include_router(v1)

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Bundle loaded, Qdrant reachable, collection fingerprint matches")
    def readyz() -> JSONResponse:
        checks = backend.readiness()
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", API_KEY_HEADER])
    app.add_middleware(Guard, metrics=metrics, max_body=config.max_upload_bytes + 64_000)
    return app


def app_from_env() -> FastAPI:
    """The app for uvicorn worker processes (`--factory app.service.routes:app_from_env`): config from the
    environment, which `dqe-cir serve` sets from its flags."""
    from app.service.settings import config_from_env

    return create_app(config_from_env())


async def _read_search(request: Request, max_upload: int) -> tuple[SearchRequest, bytes | None]:
    """A search request from a JSON body or a multipart form (with the image file)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise invalid([{"field": "body", "message": "must be a JSON object"}])
        if "image" in data:
            raise invalid([{"field": "image", "message": "upload an image as multipart/form-data, "
                                                        "or give item_id in JSON"}])
        image = None
    elif kind == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
        except BodyTooLarge:
            raise
        except Exception as e:  # starlette's MultiPartException: malformed body, too many parts
            raise ApiError(400, "bad_form", f"malformed multipart body: {e}") from None
        data = form_to_dict(form)
        upload = form.get("image")
        image = None
        if upload is not None and not isinstance(upload, str):
            image = await upload.read(max_upload + 1)
            if len(image) > max_upload:
                raise ApiError(413, "too_large", f"the image is over the {max_upload:,}-byte upload limit")
            if not image:
                raise invalid([{"field": "image", "message": "the uploaded file is empty"}])
    else:
        raise ApiError(415, "unsupported_media_type",
                       "send application/json (with item_id) or multipart/form-data (with an image file)")
    req = parse_search(data)
    if (image is None) == (req.item_id is None):
        raise invalid([{"field": "image", "message": "give exactly one reference: item_id or an image file"}])
    return req, image


def _same(given: str | None, expected: str) -> bool:
    import hmac

    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def reply(request: Request, error: ApiError) -> JSONResponse:
        metrics.errors.labels(_route(request), error.code).inc()
        headers = {"WWW-Authenticate": API_KEY_HEADER} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return reply(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(request, invalid(validation_fields(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return reply(request, ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        metrics.errors.labels(_route(request), "internal").inc()
        return JSONResponse(ApiError(500, "internal", "internal error; the server log has the details").body(),
                            status_code=500)
