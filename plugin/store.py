"""All Qdrant access: the collection schema, writes, queries, aliases and the fingerprint check.

The indexer and the search plugin both go through here, so another engine can slot in behind the
same functions. Schema (ARCHITECTURE.md):
  vectors  tokens: multivector [Q x D], MAX_SIM over dot products (tokens and queries are unit vectors),
                   no HNSW graph (it is only re-scored, never searched on its own)
           pooled: [D], cosine, HNSW: the prefetch stage
  payload  the item's payload + "item_id" + "uri" (+ "content_hash" for incremental re-index)
  metadata {"dqe_cir": {"fingerprint", "embed_dim", "num_query_tokens", "format_version", "storage", "state",
                       "created"}}
           storage: fp32 | fp16 | int8 (what searches need to know: int8 asks for rescoring); collections
           made before it was recorded have it read from the collection config (storage_of)
           state: building (being filled), complete (count checked; the only state an alias moves to or
           rolls back to), failed (a refused build kept with --keep-failed); none on collections made
           before states existed
  point id uuid5(NAMESPACE, item_id): a redelivered task overwrites instead of duplicating.

Collection metadata arrived in Qdrant 1.16 (server, client and local mode): MIN_QDRANT is the oldest
version that works, TESTED_QDRANT the minor version the extras and docker-compose.yml pin.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_client import QdrantClient, models

from encoder.bundle import BundleSpec
from encoder.fusion import pooled

NAMESPACE = uuid.UUID("6f1c2b1e-2f43-4d8e-9a51-5d0c3c1f7a10")
TOKENS, POOLED = "tokens", "pooled"
META_KEY = "dqe_cir"
PAYLOAD_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "text": models.PayloadSchemaType.TEXT,
    "datetime": models.PayloadSchemaType.DATETIME,
}


MIN_QDRANT = (1, 16)
TESTED_QDRANT = (1, 20)
BUILDING, COMPLETE, FAILED = "building", "complete", "failed"


class StoreError(Exception):
    """A Qdrant-side problem: missing collection, schema or fingerprint mismatch, an old Qdrant."""


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, str(item_id)))


@dataclass
class Item:
    item_id: str
    tokens: np.ndarray  # [Q, D]
    payload: dict


STORAGE = ("fp32", "fp16", "int8")


def bytes_per_item(num_query_tokens: int, embed_dim: int, storage: str = "fp32") -> int:
    """Vector bytes one catalog image takes in RAM: Q token vectors + the pooled vector. int8 is
    Qdrant's scalar quantisation: 1 byte a dimension in RAM (the fp32 originals stay on disk)."""
    per_value = {"fp32": 4, "fp16": 2, "int8": 1}[storage]
    return (num_query_tokens + 1) * embed_dim * per_value


def create_collection(client: QdrantClient, name: str, spec: BundleSpec,
                      payload_indexes: dict[str, str] | None = None, storage: str = "fp32") -> None:
    """A new collection for this bundle; `payload_indexes` maps payload field -> type for filtering;
    `storage`: fp32, fp16 (half the RAM) or int8 (scalar quantisation, originals on disk)."""
    if storage not in STORAGE:
        raise StoreError(f"storage must be one of {STORAGE}, not {storage!r}")
    indexes = {"item_id": "keyword", **(payload_indexes or {})}
    for field, kind in indexes.items():  # before anything exists: a bad type leaves no orphan behind
        if kind not in PAYLOAD_TYPES:
            raise StoreError(f"unknown payload index type {kind!r} for {field!r}; use one of {sorted(PAYLOAD_TYPES)}")
    if client.collection_exists(name):
        raise StoreError(f"collection {name!r} already exists")
    d = spec.embed_dim
    dtype = models.Datatype.FLOAT16 if storage == "fp16" else None
    quant = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
        type=models.ScalarType.INT8, always_ram=True)) if storage == "int8" else None
    client.create_collection(
        name,
        vectors_config={
            TOKENS: models.VectorParams(size=d, distance=models.Distance.DOT, datatype=dtype,
                                        multivector_config=models.MultiVectorConfig(
                                            comparator=models.MultiVectorComparator.MAX_SIM),
                                        hnsw_config=models.HnswConfigDiff(m=0), on_disk=storage == "int8"),
            POOLED: models.VectorParams(size=d, distance=models.Distance.COSINE, datatype=dtype),
        },
        quantization_config=quant,
        metadata={META_KEY: {"fingerprint": spec.fingerprint, "embed_dim": d,
                             "num_query_tokens": spec.num_query_tokens, "format_version": spec.format_version,
                             "storage": storage, "state": BUILDING,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
    )
    for field, kind in indexes.items():
        with warnings.catch_warnings():
            # local mode ignores payload indexes and says so; a server uses them
            warnings.filterwarnings("ignore", message="Payload indexes have no effect in the local Qdrant")
            client.create_payload_index(name, field, field_schema=PAYLOAD_TYPES[kind], wait=True)


def collection_info(client: QdrantClient, name: str) -> dict:
    """The collection's DQE-CIR metadata; a StoreError when it is missing or was not made by us."""
    if not client.collection_exists(name):
        raise StoreError(f"collection {name!r} does not exist; index a catalog into it first (dqe-cir index)")
    info = client.get_collection(name)
    meta = (info.config.metadata or {}).get(META_KEY)
    if not meta:
        raise StoreError(f"collection {name!r} has no {META_KEY!r} metadata: it was not created by dqe-cir")
    return {**meta, "storage": meta.get("storage") or storage_of(info), "points": info.points_count or 0}


def storage_of(info: models.CollectionInfo) -> str:
    """fp32, fp16 or int8, read from a collection's config (for collections made before the metadata
    recorded it; local mode keeps no quantization config, so there it reads fp32 or fp16)."""
    if info.config.quantization_config is not None:
        return "int8"
    vectors = info.config.params.vectors
    params = vectors.get(TOKENS) if isinstance(vectors, dict) else None
    return "fp16" if params is not None and params.datatype == models.Datatype.FLOAT16 else "fp32"


def set_state(client: QdrantClient, name: str, state: str, reason: str = "") -> None:
    """Record a collection's build state (and why, for a failed one) in its metadata."""
    meta = {k: v for k, v in collection_info(client, name).items() if k != "points"}
    client.update_collection(name, metadata={META_KEY: {**meta, "state": state, "reason": reason}})


def drop_collection(client: QdrantClient, name: str) -> None:
    client.delete_collection(name)


def parse_payload_indexes(specs: Sequence[str] | None) -> dict[str, str]:
    """`["brand=keyword", ...]` -> {"brand": "keyword"}, with a message for a malformed one."""
    out = {}
    for spec in specs or []:
        field, sep, kind = spec.partition("=")
        if not sep or not field.strip() or kind.strip() not in PAYLOAD_TYPES:
            raise StoreError(f"--payload-index {spec!r}: expected FIELD=TYPE with TYPE one of {sorted(PAYLOAD_TYPES)}, "
                             "e.g. brand=keyword")
        out[field.strip()] = kind.strip()
    return out


def check_fingerprint(client: QdrantClient, name: str, fingerprint: str) -> dict:
    meta = collection_info(client, name)
    if meta["fingerprint"] != fingerprint:
        raise StoreError(f"collection {name!r} was indexed with bundle {meta['fingerprint']}, but this bundle is "
                         f"{fingerprint}: embeddings would not be comparable. Re-index with this bundle, or "
                         "load the bundle the collection was built with")
    return meta


def upsert(client: QdrantClient, name: str, items: Sequence[Item]) -> None:
    """Write items (wait=True: a task is only done once Qdrant has them)."""
    if not items:
        return
    points = [
        models.PointStruct(
            id=point_id(it.item_id),
            vector={TOKENS: it.tokens.astype(np.float32).tolist(), POOLED: pooled(it.tokens).tolist()},
            payload={**it.payload, "item_id": it.item_id},
        )
        for it in items
    ]
    client.upsert(name, points=points, wait=True)


def delete(client: QdrantClient, name: str, item_ids: Iterable[str]) -> None:
    ids = [point_id(i) for i in item_ids]
    if ids:
        client.delete(name, points_selector=models.PointIdsList(points=ids), wait=True)


def content_hashes(client: QdrantClient, name: str, item_ids: Sequence[str]) -> dict[str, str]:
    """item id -> the stored content hash, for the items of `item_ids` that are in the collection."""
    points = client.retrieve(name, [point_id(i) for i in item_ids], with_payload=["item_id", "content_hash"],
                             with_vectors=False)
    return {p.payload["item_id"]: p.payload.get("content_hash") for p in points if p.payload}


def count(client: QdrantClient, name: str) -> int:
    return client.count(name, exact=True).count


def scroll_payloads(client: QdrantClient, name: str, fields: Sequence[str] | bool = True,
                    batch: int = 1000) -> Iterable[dict]:
    """Every point's payload (for incremental re-index and checks)."""
    offset = None
    while True:
        points, offset = client.scroll(name, limit=batch, offset=offset, with_payload=fields, with_vectors=False)
        for p in points:
            yield p.payload or {}
        if offset is None:
            return


# --- aliases -----------------------------------------------------------------------------
def alias_target(client: QdrantClient, alias: str) -> str | None:
    for a in client.get_aliases().aliases:
        if a.alias_name == alias:
            return a.collection_name
    return None


def switch_alias(client: QdrantClient, alias: str, collection: str) -> str | None:
    """Point `alias` at `collection` in one atomic operation; returns the previous target."""
    previous = alias_target(client, alias)
    ops = []
    if previous is not None:
        ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection,
                                                                           alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=ops)
    return previous


def aliases(client: QdrantClient) -> dict[str, str]:
    """Every alias -> the collection it points at."""
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


def collections(client: QdrantClient) -> list[str]:
    return [c.name for c in client.get_collections().collections]


# --- versions of Qdrant ----------------------------------------------------------------
def server_version(client: QdrantClient) -> str:
    """The Qdrant version that serves `client`: the server's, or in local mode qdrant-client's own."""
    return client.info().version


def parse_version(text: str) -> tuple[int, ...]:
    core = text.strip().lstrip("v").split("-")[0].split("+")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError as e:
        raise StoreError(f"cannot read the Qdrant version {text!r}") from e


def version_problem(version: str) -> str | None:
    """Why this Qdrant version cannot serve dqe-cir collections, or None when it can."""
    if parse_version(version)[:2] < MIN_QDRANT:
        floor = ".".join(map(str, MIN_QDRANT))
        return (f"Qdrant {version} is older than {floor}, the first version with collection metadata (where the "
                "bundle fingerprint and the build state are kept)")
    return None


# --- which errors are worth a retry ------------------------------------------------------
RETRY_STATUS = {429, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """A hiccup worth retrying, judged by the exception's type (and its causes): a refused or timed-out
    connection, a busy server (HTTP 429/502/503/504, gRPC UNAVAILABLE / DEADLINE_EXCEEDED /
    RESOURCE_EXHAUSTED), or a local-mode folder held by another process."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError, httpx.TransportError, ResponseHandlingException)):
            return True
        if isinstance(e, UnexpectedResponse) and e.status_code in RETRY_STATUS:
            return True
        if _grpc_busy(e) or _folder_locked(e):
            return True
        e = getattr(e, "source", None) or e.__cause__ or e.__context__
    return False


def _grpc_busy(e: BaseException) -> bool:
    try:
        import grpc
    except ImportError:
        return False
    busy = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    return isinstance(e, grpc.RpcError) and hasattr(e, "code") and e.code() in busy


def _folder_locked(e: BaseException) -> bool:
    """Local mode raises RuntimeError while handling portalocker's LockException: the cause chain has it."""
    try:
        from portalocker.exceptions import LockException
    except ImportError:
        return False
    return isinstance(e, LockException)
