"""The first stage's designs: how a collection is laid out so that one composed query vector q finds the
items with the highest MaxSim score max_j <q, t_j> over each item's Q token vectors.

  pooled       today's two-stage: HNSW on `pooled` (the normalised mean of the tokens) fetches k x oversample
               candidates, MaxSim on `tokens` (multivector, no graph) re-scores them. Recall falls as the
               catalog grows unless the oversample grows with it (docs/benchmarks/search-edge.md).
  multivector  `tokens` (multivector, MAX_SIM) with an HNSW graph (m > 0), queried with the one-vector
               multivector [q]: Qdrant's MAX_SIM of [q] is exactly our score, so there is no proxy, only
               the graph's own approximation. No `pooled` vector.
  token        every token is a point (vector `token`, HNSW): the item's payload + `token_index`, grouped by
               `item_id` with group size 1 a query returns each item's best token, i.e. its MaxSim score.
               Q points, Q graph nodes and Q payload copies per item.

A collection records its design in its metadata ("design" + "design_params"); a collection without the
key was made before designs existed and is "pooled". Nothing here talks to Qdrant: plugin/store.py writes
and reads, plugin/search.py builds the requests; errors here are ValueErrors that they turn into theirs.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass

import numpy as np
from qdrant_client import models

from encoder.fusion import pooled

POOLED, MULTIVECTOR, TOKEN = "pooled", "multivector", "token"
DESIGNS = (POOLED, MULTIVECTOR, TOKEN)
TOKENS, POOLED_VECTOR, TOKEN_VECTOR = "tokens", "pooled", "token"  # vector names
TOKEN_INDEX = "token_index"  # payload field of a token point: which of its item's Q tokens it is
NAMESPACE = uuid.UUID("6f1c2b1e-2f43-4d8e-9a51-5d0c3c1f7a10")
TOKEN_NAMESPACE = uuid.UUID("0b7d5a52-6c1e-4f0e-8d2b-3e9b6f4a7c21")  # never collides with NAMESPACE's ids
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class Design:
    """A design and its HNSW settings: `m`, `ef_construct` for the searched vector's graph (None: the
    server's defaults, which `pooled` has always used), `hnsw_ef` for queries (None: Qdrant's default,
    ef_construct, never less than the request's limit)."""

    name: str  # no default: say which (store.DEFAULT_DESIGN is what a new alias gets)
    m: int | None = None
    ef_construct: int | None = None
    hnsw_ef: int | None = None

    def to_meta(self) -> dict:
        params = {k: v for k, v in asdict(self).items() if k != "name" and v is not None}
        return {"design": self.name, **({"design_params": params} if params else {})}


# m 16 and ef_construct 100 are Qdrant's defaults; hnsw_ef from docs/benchmarks/search-edge.md at 100,000
# items: multivector needs 256 (Recall@10 0.9795 / 0.9895 / 0.9995 at 64 / 128 / 256), token 0.9995 at 128.
DESIGN_DEFAULTS = {
    POOLED: Design(POOLED),
    MULTIVECTOR: Design(MULTIVECTOR, m=16, ef_construct=100, hnsw_ef=256),
    TOKEN: Design(TOKEN, m=16, ef_construct=100, hnsw_ef=128),
}


def make_design(design: str | Design) -> Design:
    """A checked Design from a name (with that design's defaults) or a Design; ValueError saying what is allowed."""
    if isinstance(design, str):
        if design not in DESIGN_DEFAULTS:
            raise ValueError(f"unknown design {design!r}; use one of {DESIGNS}")
        return DESIGN_DEFAULTS[design]
    if design.name not in DESIGNS:
        raise ValueError(f"unknown design {design.name!r}; use one of {DESIGNS}")
    for field in ("m", "ef_construct", "hnsw_ef"):
        value = getattr(design, field)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"design {design.name!r}: {field} must be a positive integer or None, not {value!r}")
    if design.name != POOLED and design.m is None:
        # m=0 would build no graph, and the first stage would be a full scan of every token
        raise ValueError(f"design {design.name!r} searches an HNSW graph: give m (e.g. 16)")
    return design


def design_from_meta(meta: dict) -> Design:
    """The design a collection's metadata records; "pooled" when it records none (made before designs)."""
    name = meta.get("design") or POOLED
    if name not in DESIGNS:
        raise ValueError(f"the collection uses design {name!r}, which this version of dqe-cir does not know "
                         f"({DESIGNS}); upgrade dqe-cir-search, or re-index the catalog with this version")
    params = meta.get("design_params") or {}
    unknown = sorted(set(params) - {"m", "ef_construct", "hnsw_ef"})
    if unknown:
        raise ValueError(f"the collection's design {name!r} records settings this version of dqe-cir does not know "
                         f"({', '.join(unknown)}); upgrade dqe-cir-search, or re-index the catalog with this version")
    return make_design(Design(name, **params))


# --- schema ------------------------------------------------------------------------------------
def vectors_config(design: Design, dim: int, storage: str, on_disk: bool = False) -> dict[str, models.VectorParams]:
    """The named vectors of a collection of this design. Tokens and queries are unit vectors, so the dot
    product is the cosine; int8 keeps the fp32 originals of the searched tokens on disk (rescoring reads them).
    on_disk: every vector and the searched graph memory-mapped from disk (catalogs above a node's RAM)."""
    dtype = models.Datatype.FLOAT16 if storage == "fp16" else None
    graph_on_disk = True if on_disk else None
    on_disk = on_disk or storage == "int8"
    max_sim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
    graph = models.HnswConfigDiff(m=design.m, ef_construct=design.ef_construct, on_disk=graph_on_disk)
    if design.name == POOLED:  # its graph: the server's defaults unless the Design names m or ef_construct
        return {TOKENS: models.VectorParams(size=dim, distance=models.Distance.DOT, datatype=dtype,
                                            multivector_config=max_sim, hnsw_config=models.HnswConfigDiff(m=0),
                                            on_disk=on_disk),
                POOLED_VECTOR: models.VectorParams(size=dim, distance=models.Distance.COSINE, datatype=dtype,
                                                   on_disk=graph_on_disk,
                                                   hnsw_config=graph if design.m or design.ef_construct or graph_on_disk
                                                   else None)}
    if design.name == MULTIVECTOR:
        return {TOKENS: models.VectorParams(size=dim, distance=models.Distance.DOT, datatype=dtype,
                                            multivector_config=max_sim, hnsw_config=graph, on_disk=on_disk)}
    return {TOKEN_VECTOR: models.VectorParams(size=dim, distance=models.Distance.DOT, datatype=dtype,
                                              hnsw_config=graph, on_disk=on_disk)}


def bookkeeping_indexes(design: Design) -> dict[str, str]:
    """Payload indexes every collection of the design needs: `item_id` (fetch, exclusion, grouping) and, for
    token points, `token_index` (one point per item for counts and scrolls)."""
    return {"item_id": "keyword", **({TOKEN_INDEX: "integer"} if design.name == TOKEN else {})}


# --- points ------------------------------------------------------------------------------------
def point_id(item_id: str) -> str:
    """The item's point (pooled, multivector) or its first token's point (token): a redelivered write
    overwrites instead of duplicating, and a fetch by item id finds the item's payload in every design."""
    return str(uuid.uuid5(NAMESPACE, str(item_id)))


def token_point_id(item_id: str, index: int) -> str:
    return point_id(item_id) if index == 0 else str(uuid.uuid5(TOKEN_NAMESPACE, f"{index}:{item_id}"))


def item_point_ids(design: Design, item_id: str, num_tokens: int) -> list[str]:
    """Every point an item has: one, or one per token (so a delete removes all of them)."""
    if design.name != TOKEN:
        return [point_id(item_id)]
    return [token_point_id(item_id, j) for j in range(num_tokens)]


def item_points(design: Design, item_id: str, tokens: np.ndarray, payload: dict) -> list[models.PointStruct]:
    """The points of one item [Q, D]; `payload` already holds `item_id` and the item's fields."""
    tokens = tokens.astype(np.float32)
    if design.name == POOLED:
        return [models.PointStruct(id=point_id(item_id), payload=payload,
                                   vector={TOKENS: tokens.tolist(), POOLED_VECTOR: pooled(tokens).tolist()})]
    if design.name == MULTIVECTOR:
        return [models.PointStruct(id=point_id(item_id), vector={TOKENS: tokens.tolist()}, payload=payload)]
    # every token point carries the whole payload: a filter on an item field must hold on each of them
    return [models.PointStruct(id=token_point_id(item_id, j), vector={TOKEN_VECTOR: t.tolist()},
                               payload={**payload, TOKEN_INDEX: j}) for j, t in enumerate(tokens)]


def one_point_per_item(design: Design) -> models.Filter | None:
    """A filter that keeps one point of each item (counts, scrolls, samples); None when that is every point."""
    if design.name != TOKEN:
        return None
    return models.Filter(must=[models.FieldCondition(key=TOKEN_INDEX, match=models.MatchValue(value=0))])


def not_this_item(design: Design, item_id: str) -> models.Condition:
    """A must_not condition that leaves an item (all of its points) out of the results."""
    if design.name == TOKEN:
        return models.FieldCondition(key="item_id", match=models.MatchValue(value=item_id))
    return models.HasIdCondition(has_id=[point_id(item_id)])


# --- sizing ------------------------------------------------------------------------------------
def bytes_per_item(num_query_tokens: int, embed_dim: int, storage: str = "fp32", design: str = MULTIVECTOR) -> int:
    """Vector bytes one catalog image takes in RAM: its Q token vectors, + the pooled vector in the pooled
    design. int8 is Qdrant's scalar quantisation: 1 byte a dimension in RAM (the fp32 originals stay on disk)."""
    vectors = num_query_tokens + (1 if make_design(design).name == POOLED else 0)
    return vectors * embed_dim * BYTES_PER_VALUE[storage]


def graph_nodes_per_item(num_query_tokens: int, design: str = MULTIVECTOR) -> int:
    return num_query_tokens if make_design(design).name == TOKEN else 1


def hnsw_bytes_per_item(num_query_tokens: int, design: str = MULTIVECTOR, m: int = 16) -> int:
    """An upper bound on the HNSW links an item adds: per graph node 2m links at level 0 and about m/(m-1)
    above it, 4 bytes each, uncompressed (Qdrant compresses links; search-edge.md measures them)."""
    per_node = 4 * (2 * m + m / max(m - 1, 1))
    return round(graph_nodes_per_item(num_query_tokens, design) * per_node)
