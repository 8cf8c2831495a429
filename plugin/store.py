"""All Qdrant access: the collection schema, writes, queries, aliases and the fingerprint check.

The indexer and the search plugin both go through here, so another engine can slot in behind the
same functions. Schema (ARCHITECTURE.md):
  vectors  tokens: multivector [Q x D], MAX_SIM over dot products (tokens and queries are unit vectors),
                   no HNSW graph (it is only re-scored, never searched on its own)
           pooled: [D], cosine, HNSW: the prefetch stage
  payload  the item's payload + "item_id" + "uri" (+ "content_hash" for incremental re-index)
  metadata {"dqe_cir": {"fingerprint", "embed_dim", "num_query_tokens", "format_version"}}
  point id uuid5(NAMESPACE, item_id): a redelivered task overwrites instead of duplicating.
"""

from __future__ import annotations

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


class StoreError(Exception):
    """A Qdrant-side problem: missing collection, schema or fingerprint mismatch."""


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
                             "num_query_tokens": spec.num_query_tokens, "format_version": spec.format_version}},
    )
    for field, kind in {"item_id": "keyword", **(payload_indexes or {})}.items():
        if kind not in PAYLOAD_TYPES:
            raise StoreError(f"unknown payload index type {kind!r} for {field!r}; use one of {sorted(PAYLOAD_TYPES)}")
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
    return {**meta, "points": info.points_count or 0}


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


def versions(client: QdrantClient, alias: str) -> list[str]:
    """The versioned collections `<alias>__<version>`, oldest first."""
    prefix = f"{alias}__"
    return sorted(c.name for c in client.get_collections().collections if c.name.startswith(prefix))
