"""All Qdrant access: the collection schema, writes, queries, aliases and the fingerprint check.

The indexer and the search plugin both go through here, whatever the engine: a Qdrant server (QDRANT_URL),
or on one machine a folder (QDRANT_PATH) served in-process by qdrant-edge (plugin/edge.py, the default) or by
qdrant-client's local mode (open_embedded). Schema (ARCHITECTURE.md), by the collection's design (plugin/designs.py):
  pooled       tokens: multivector [Q x D], MAX_SIM over dot products, no HNSW graph (only re-scored);
               pooled: [D], cosine, HNSW: the prefetch stage. One point per item.
  multivector  tokens: multivector [Q x D], MAX_SIM, HNSW (m > 0): searched directly. One point per item.
  token        token: [D], dot product, HNSW; one point per token, payload + "token_index".
  payload  the item's payload + "item_id" + "uri" (+ "content_hash" for incremental re-index)
  metadata {"dqe_cir": {"fingerprint", "embed_dim", "num_query_tokens", "format_version", "storage", "state",
                       "created", "design", "design_params"}}
           storage: fp32 | fp16 | int8 (what searches need to know: int8 asks for rescoring); collections
           made before it was recorded have it read from the collection config (storage_of)
           state: building (being filled), complete (count checked; the only state an alias moves to or
           rolls back to), failed (a refused build kept with --keep-failed); none on collections made
           before states existed
           design: pooled | multivector | token, design_params: {"m", "ef_construct", "hnsw_ef"} (those
           set); no "design" = pooled (collections made before designs existed keep working)
  point id uuid5(NAMESPACE, item_id): a redelivered task overwrites instead of duplicating. Token design:
           token 0 has that id (so a fetch by item id finds the payload), token j > 0 uuid5(TOKEN_NAMESPACE).

Item-level operations (delete, count, content hashes, scroll) address items, whatever the design.
Collection metadata arrived in Qdrant 1.16 (server, client and local mode): MIN_QDRANT is the oldest
version that works, TESTED_QDRANT the minor version the extras and docker-compose.yml pin.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from qdrant_client import QdrantClient, models

from encoder.bundle import BundleSpec
from plugin import designs
from plugin.designs import (  # noqa: F401  NAMESPACE, bytes_per_item, point_id: callers keep using store.X
    NAMESPACE,
    TOKEN_INDEX,
    TOKENS,
    Design,
    bytes_per_item,
    point_id,
)
from plugin.errors import CollectionUnusable, ShardBusy, StoreError, bundle_mismatch
from plugin.placement import Placement, describe

POOLED_VECTOR = designs.POOLED_VECTOR  # the vector's name (the design of that name is designs.POOLED)
META_KEY = "dqe_cir"
# The design a new alias gets (a re-index keeps an alias's own design unless told otherwise, indexer/versions.py).
# From docs/benchmarks/search-edge.md (qdrant-edge, the demo model's embeddings, 100,000 items): multivector at
# hnsw_ef 256 keeps Recall@10 0.9995 against exact MaxSim at a p50 of 1.50 ms, where pooled two-stage at its
# default oversample 32 gives 0.977 at 3.21 ms, with fewer bytes per item; it also searches faster than
# pooled in local mode. The token design holds recall best (1.000 at ef 128) but builds 6x slower and is
# unusable in local mode (one grouped query scans every token point there): an option, not the default.
DEFAULT_DESIGN = designs.MULTIVECTOR
PAYLOAD_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "text": models.PayloadSchemaType.TEXT,
    "datetime": models.PayloadSchemaType.DATETIME,
}


EDGE, LOCAL, SERVER = "edge", "local", "server"
EMBEDDED_ENGINES = (EDGE, LOCAL)  # QDRANT_ENGINE: what a folder (QDRANT_PATH) is served by; edge by default
MIN_QDRANT = (1, 16)
TESTED_QDRANT = (1, 20)
BUILDING, COMPLETE, FAILED = "building", "complete", "failed"


@dataclass
class Item:
    item_id: str
    tokens: np.ndarray  # [Q, D]
    payload: dict


STORAGE = ("fp32", "fp16", "int8")


def create_collection(client: QdrantClient, name: str, spec: BundleSpec,
                      payload_indexes: dict[str, str] | None = None, storage: str = "fp32",
                      design: str | Design | None = None, placement: Placement | None = None) -> None:
    """A new collection for this bundle; `payload_indexes` maps payload field -> type for filtering;
    `storage`: fp32, fp16 (half the RAM) or int8 (scalar quantisation, originals on disk); `design`: a name
    (with its defaults) or a Design, None for DEFAULT_DESIGN (read now, so a re-index follows a new default);
    `placement`: shards, replicas, write consistency and on-disk vectors on a cluster (plugin/placement.py;
    local mode ignores it, with a warning)."""
    placement = placement or Placement()
    if storage not in STORAGE:
        raise StoreError(f"storage must be one of {STORAGE}, not {storage!r}")
    chosen = checked_design(DEFAULT_DESIGN if design is None else design)
    own = designs.bookkeeping_indexes(chosen)
    taken = sorted(set(own) & set(payload_indexes or {}))
    if taken:  # a user's index there would replace the one grouping and reference exclusion rely on
        own_types = ", ".join(f"{f}={own[f]}" for f in taken)
        raise StoreError(f"payload index {', '.join(taken)} is dqe-cir's own ({own_types}), made for every "
                         "collection; drop it from --payload-index")
    indexes = {**own, **(payload_indexes or {})}
    for field, kind in indexes.items():  # before anything exists: a bad type leaves no orphan behind
        if kind not in PAYLOAD_TYPES:
            raise StoreError(f"unknown payload index type {kind!r} for {field!r}; use one of {sorted(PAYLOAD_TYPES)}")
    if client.collection_exists(name):
        raise StoreError(f"collection {name!r} already exists")
    d = spec.embed_dim
    if not placement.is_default and engine(client) != SERVER:
        warnings.warn(f"the embedded engine ({engine(client)}) has no cluster: {describe(placement)} is recorded but "
                      "ignored (it applies on a Qdrant server, QDRANT_URL)", stacklevel=2)
    client.create_collection(
        name,
        vectors_config=designs.vectors_config(chosen, d, storage, on_disk=placement.on_disk),
        quantization_config=quantization_config(storage),
        metadata={META_KEY: {"fingerprint": spec.fingerprint, "embed_dim": d,
                             "num_query_tokens": spec.num_query_tokens, "format_version": spec.format_version,
                             "storage": storage, "state": BUILDING, **chosen.to_meta(),
                             **({"placement": placement.to_meta()} if not placement.is_default else {}),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
        **placement.create_kwargs(),
    )
    for field, kind in indexes.items():
        with warnings.catch_warnings():
            # local mode ignores payload indexes and says so; a server uses them
            warnings.filterwarnings("ignore", message="Payload indexes have no effect in the local Qdrant")
            client.create_payload_index(name, field, field_schema=PAYLOAD_TYPES[kind], wait=True)


def quantization_config(storage: str) -> models.ScalarQuantization | None:
    """int8: scalar quantisation, the codes in RAM (the fp32 originals on disk, designs.vectors_config)."""
    if storage != "int8":
        return None
    return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8,
                                                                            always_ram=True))


def checked_design(design: str | Design) -> Design:
    try:
        return designs.make_design(design)
    except ValueError as e:
        raise StoreError(str(e)) from e


def _metadata(client: QdrantClient, name: str) -> tuple[dict, models.CollectionInfo]:
    """The collection's own DQE-CIR metadata (nothing derived) and its info; StoreError when missing or not ours."""
    if not client.collection_exists(name):
        raise CollectionUnusable(f"collection {name!r} does not exist; index a catalog into it first (dqe-cir index)")
    info = client.get_collection(name)
    meta = (info.config.metadata or {}).get(META_KEY)
    if not meta:
        raise CollectionUnusable(f"collection {name!r} has no {META_KEY!r} metadata: it was not created by dqe-cir")
    return meta, info


def collection_info(client: QdrantClient, name: str) -> dict:
    """The collection's DQE-CIR metadata, with `storage` and `design` filled in for collections made before
    they were recorded, `points` (Qdrant's count, approximate on a server) and `items` (catalog images:
    points / Q in the token design); a StoreError when it is missing or was not made by us."""
    meta, info = _metadata(client, name)
    design = design_from(meta, name)
    points = info.points_count or 0
    items = points // max(1, int(meta.get("num_query_tokens") or 1)) if design.name == designs.TOKEN else points
    return {**meta, **design.to_meta(), "storage": meta.get("storage") or storage_of(info), "points": points,
            "items": items}


def recorded_meta(client: QdrantClient, name: str) -> dict:
    """The collection's DQE-CIR metadata alone, no counts (on the edge engine, reading it never waits for a
    process that holds the collection); CollectionUnusable when missing or not ours."""
    return _metadata(client, name)[0]


def build_state(client: QdrantClient, name: str) -> str | None:
    """building, complete or failed; None for a collection without a build state."""
    return recorded_meta(client, name).get("state")


def design_from(meta: dict, name: str = "") -> Design:
    """The Design a collection's metadata (or collection_info's answer) records."""
    try:
        return designs.design_from_meta(meta)
    except ValueError as e:
        raise CollectionUnusable(f"collection {name!r}: {e}" if name else str(e)) from e


def design_of(client: QdrantClient, name: str) -> tuple[Design, int]:
    """The collection's design and its tokens per item (Q)."""
    meta, _ = _metadata(client, name)
    return design_from(meta, name), int(meta["num_query_tokens"])


def storage_of(info: models.CollectionInfo) -> str:
    """fp32, fp16 or int8, read from a collection's config (for collections made before the metadata
    recorded it; local mode keeps no quantization config, so there it reads fp32 or fp16)."""
    if info.config.quantization_config is not None:
        return "int8"
    vectors = info.config.params.vectors
    params = (vectors.get(TOKENS) or vectors.get(designs.TOKEN_VECTOR)) if isinstance(vectors, dict) else None
    return "fp16" if params is not None and params.datatype == models.Datatype.FLOAT16 else "fp32"


def set_state(client: QdrantClient, name: str, state: str, reason: str = "") -> None:
    """Record a collection's build state (and why, for a failed one) in its metadata."""
    meta, _ = _metadata(client, name)
    client.update_collection(name, metadata={META_KEY: {**meta, "state": state, "reason": reason}})


def drop_collection(client: QdrantClient, name: str) -> None:
    client.delete_collection(name)


RESERVED_INDEXES = frozenset({"item_id", designs.TOKEN_INDEX})  # bookkeeping_indexes' fields, in any design


def parse_payload_indexes(specs: Sequence[str] | None) -> dict[str, str]:
    """`["brand=keyword", ...]` -> {"brand": "keyword"}, with a message for a malformed one."""
    out = {}
    for spec in specs or []:
        field, sep, kind = spec.partition("=")
        if not sep or not field.strip() or kind.strip() not in PAYLOAD_TYPES:
            raise StoreError(f"--payload-index {spec!r}: expected FIELD=TYPE with TYPE one of {sorted(PAYLOAD_TYPES)}, "
                             "e.g. brand=keyword")
        out[field.strip()] = kind.strip()
    reserved = sorted(set(out) & RESERVED_INDEXES)
    if reserved:
        raise StoreError(f"--payload-index {', '.join(reserved)}: dqe-cir indexes that field itself (grouping, "
                         "reference exclusion, counts); drop it")
    return out


def check_fingerprint(client: QdrantClient, name: str, fingerprint: str) -> dict:
    meta = collection_info(client, name)
    if meta["fingerprint"] != fingerprint:
        raise bundle_mismatch(repr(name), meta["fingerprint"], fingerprint)
    return meta


def upsert(client: QdrantClient, name: str, items: Sequence[Item]) -> None:
    """Write items (wait=True: a task is only done once Qdrant has them), as the collection's design lays
    them out; an item written again replaces all of its points (their ids are derived from the item id)."""
    if not items:
        return
    design, q = design_of(client, name)
    for it in items:
        if it.tokens.ndim != 2 or it.tokens.shape[0] != q:
            raise StoreError(f"item {it.item_id!r} has tokens of shape {tuple(it.tokens.shape)}, but collection "
                             f"{name!r} holds {q} tokens an item: was it embedded with another bundle?")
    points = [p for it in items
              for p in designs.item_points(design, it.item_id, it.tokens, {**it.payload, "item_id": it.item_id})]
    client.upsert(name, points=points, wait=True)


def delete(client: QdrantClient, name: str, item_ids: Iterable[str]) -> None:
    """Delete items: every point of each (one, or Q in the token design)."""
    item_ids = list(item_ids)
    if not item_ids:
        return
    design, q = design_of(client, name)
    ids = [pid for i in item_ids for pid in designs.item_point_ids(design, i, q)]
    client.delete(name, points_selector=models.PointIdsList(points=ids), wait=True)


def content_hashes(client: QdrantClient, name: str, item_ids: Sequence[str]) -> dict[str, str]:
    """item id -> the stored content hash, for the items of `item_ids` that are in the collection (point_id is
    the item's point, or its first token's, in every design)."""
    points = client.retrieve(name, [point_id(i) for i in item_ids], with_payload=["item_id", "content_hash"],
                             with_vectors=False)
    return {p.payload["item_id"]: p.payload.get("content_hash") for p in points if p.payload}


def item_payload(client: QdrantClient, name: str, item_id: str) -> dict | None:
    """An item's stored payload (item_id, uri, fields), None when the collection does not hold it."""
    points = client.retrieve(name, [point_id(item_id)], with_payload=True, with_vectors=False)
    return public_payload(points[0].payload) if points else None


def public_payload(payload: dict | None) -> dict:
    """A point's payload as the item's: without the token design's bookkeeping field."""
    return {k: v for k, v in (payload or {}).items() if k != TOKEN_INDEX}


def count(client: QdrantClient, name: str) -> int:
    """Items in the collection, exactly (points / Q would be approximate on a server)."""
    design, _ = design_of(client, name)
    return client.count(name, count_filter=designs.one_point_per_item(design), exact=True).count


def scroll_payloads(client: QdrantClient, name: str, fields: Sequence[str] | bool = True,
                    batch: int = 1000) -> Iterable[dict]:
    """Every item's payload, once per item (for incremental re-index and checks)."""
    design, _ = design_of(client, name)
    one_each = designs.one_point_per_item(design)
    offset = None
    while True:
        points, offset = client.scroll(name, scroll_filter=one_each, limit=batch, offset=offset, with_payload=fields,
                                       with_vectors=False)
        for p in points:
            yield public_payload(p.payload)
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


def is_local(client: QdrantClient) -> bool:
    """qdrant-client's local mode (a folder or :memory:), not a server."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    return isinstance(getattr(client, "_client", None), QdrantLocal)


def engine(client) -> str:
    """Which engine answers: EDGE (qdrant-edge in this process), LOCAL (qdrant-client's local mode) or SERVER."""
    from plugin.edge import EdgeClient

    if isinstance(client, EdgeClient):
        return EDGE
    return LOCAL if is_local(client) else SERVER


def seal(client, name: str) -> None:
    """After a build or an update, before the alias moves: the edge engine builds its HNSW graphs now (in the
    indexing process; a server optimises in the background and local mode searches exactly)."""
    if engine(client) == EDGE:
        client.optimize(name)


def open_embedded(path: str, engine_name: str = EDGE, serving: bool = False):
    """A client for a folder (QDRANT_PATH) on the embedded engine `engine_name` (EDGE or LOCAL). A folder holds
    one engine's collections: the other engine's are refused with the command that moves them. `serving`: a
    service's client, which never optimises (store.seal runs in indexing processes)."""
    from pathlib import Path

    from plugin.edge import MARKER, EdgeClient

    folder = Path(path)
    edge_marker = (folder / MARKER).exists()
    local_names = sorted(p.name for p in (folder / "collection").glob("*") if p.is_dir())  # local mode's layout
    if engine_name == EDGE:
        if local_names and not edge_marker:
            raise StoreError(f"{folder} holds collections made by qdrant-client's local mode "
                             f"({', '.join(local_names)}), not the edge engine's. Keep them with "
                             "QDRANT_ENGINE=local, or re-index into a new "
                             "folder on the edge engine: dqe-cir index --catalog SRC --collection ALIAS "
                             "--qdrant-path NEW_FOLDER")
        return EdgeClient(folder, allow_optimize=not serving)
    if engine_name == LOCAL:
        if edge_marker:
            raise StoreError(f"{folder} is an edge-engine folder: open it with QDRANT_ENGINE=edge (the default), or "
                             "re-index into a new folder for local mode (QDRANT_ENGINE=local dqe-cir index ... "
                             "--qdrant-path NEW_FOLDER)")
        return QdrantClient(path=str(folder))
    raise StoreError(f"unknown embedded engine {engine_name!r}; use one of {EMBEDDED_ENGINES}")


def collections(client: QdrantClient) -> list[str]:
    return [c.name for c in client.get_collections().collections]


# --- versions of Qdrant ----------------------------------------------------------------
def server_version(client: QdrantClient) -> str:
    """The Qdrant version that serves `client`: the server's, in local mode qdrant-client's own, on the edge
    engine qdrant-edge-py's (which has collection metadata through its sidecar file, whatever its number)."""
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
    RESOURCE_EXHAUSTED), a local-mode folder or an edge collection held by another process."""
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
        if isinstance(e, ShardBusy) or _grpc_busy(e) or _folder_locked(e):
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
