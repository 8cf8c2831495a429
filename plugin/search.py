"""CIRSearch: composed queries (reference image + modification text) against a Qdrant collection.

    from plugin import CIRSearch
    search = CIRSearch(QdrantClient(path="qdrant"), collection="catalog", bundle="exports/bundle")
    hits = search.query("dress.jpg", "make it red", k=10, weights={"color": 2.0})
    hits = search.query("dress.jpg", "make it red", explain=True)   # + per-attribute score breakdown

`explain=True` asks Qdrant for each hit's token vectors (Q x D floats a hit) to split its score into
base / color / shape parts; without it no vectors travel, only ids, scores and payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from qdrant_client import QdrantClient, models

from encoder import ComposeOutput, Encoder, EncoderError
from encoder.fusion import ATTRIBUTES, l2_normalize, resolve_weights
from plugin import store

DEFAULT_OVERSAMPLE = 8  # docs/benchmarks/search.md: Recall@10 vs exact 0.888 at 2, 0.989 at 4, 1.000 at 8
EXACT_BELOW = 2000  # collections smaller than this are searched exactly: it is cheap and has no recall loss


class SearchError(Exception):
    """Bad query input or a collection that cannot be searched with this bundle."""


@dataclass(frozen=True)
class ItemRef:
    """A catalog item used as the reference image: its stored uri is read, and it is left out of its
    own results."""

    item_id: str


@dataclass
class Hit:
    id: str
    score: float
    payload: dict
    breakdown: dict = field(default_factory=dict)  # base / color / shape MaxSim scores
    weights: dict = field(default_factory=dict)  # the attribute weights used for this query


def to_filter(spec) -> models.Filter | None:
    """A Qdrant Filter as is, or {field: value} / {field: [values]} as 'every field matches'."""
    if spec is None or isinstance(spec, models.Filter):
        return spec
    if not isinstance(spec, dict):
        raise SearchError(f"filter must be a qdrant_client Filter or a dict, got {type(spec).__name__}")
    must = []
    for key, value in spec.items():
        if isinstance(value, (list, tuple, set)):
            match = models.MatchAny(any=list(value))
        elif isinstance(value, (str, int, bool)):
            match = models.MatchValue(value=value)
        else:
            raise SearchError(f"filter value for {key!r} must be a string, integer, bool or a list of them; "
                              f"got {type(value).__name__} (use a qdrant_client Filter for ranges)")
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


class CIRSearch:
    def __init__(self, client: QdrantClient, collection: str = "catalog", bundle=None, encoder: Encoder | None = None,
                 oversample: int = DEFAULT_OVERSAMPLE, exact_below: int = EXACT_BELOW, catalog_root=None):
        if encoder is None and bundle is None:
            raise SearchError("pass bundle=PATH (the model bundle the collection was indexed with) or encoder=")
        self.client, self.collection = client, collection
        try:
            self.encoder = encoder or Encoder(bundle)
        except EncoderError as e:
            raise SearchError(str(e)) from e
        try:
            self.meta = store.check_fingerprint(client, collection, self.encoder.fingerprint)
        except store.StoreError as e:
            raise SearchError(str(e)) from e
        self.oversample, self.exact_below = oversample, exact_below
        self.catalog_root = catalog_root

    # -- inputs ---------------------------------------------------------------------------------
    def _resolve_image(self, image):
        if isinstance(image, ItemRef):
            points = self.client.retrieve(self.collection, [store.point_id(image.item_id)], with_payload=True)
            if not points:
                raise SearchError(f"catalog item {image.item_id!r} is not in collection {self.collection!r}")
            uri = (points[0].payload or {}).get("uri")
            if not uri:
                raise SearchError(f"catalog item {image.item_id!r} has no stored uri to read the image from")
            from pathlib import Path

            path = Path(uri)
            if not path.is_absolute() and self.catalog_root is not None:
                path = Path(self.catalog_root) / path
            return str(path), image.item_id
        return image, None

    def compose(self, images: Sequence, texts: Sequence[str]) -> tuple[ComposeOutput, list[str | None]]:
        resolved = [self._resolve_image(img) for img in images]
        try:
            parts = self.encoder.compose([r[0] for r in resolved], list(texts))
        except EncoderError as e:
            raise SearchError(str(e)) from e
        return parts, [r[1] for r in resolved]

    # -- queries --------------------------------------------------------------------------------
    def query(self, image, text: str, k: int = 10, filter=None, weights: dict | None = None,
              exact: bool | None = None, oversample: int | None = None, exclude_reference: bool = True,
              explain: bool = False) -> list[Hit]:
        return self.query_batch([image], [text], k, filter, weights, exact, oversample, exclude_reference,
                                explain)[0]

    def query_batch(self, images: Sequence, texts: Sequence[str], k: int = 10, filter=None,
                    weights: dict | None = None, exact: bool | None = None, oversample: int | None = None,
                    exclude_reference: bool = True, explain: bool = False) -> list[list[Hit]]:
        if not isinstance(k, int) or k <= 0:
            raise SearchError(f"k must be a positive integer, got {k!r}")
        if len(images) != len(texts):
            raise SearchError(f"{len(images)} images but {len(texts)} texts")
        base_filter = to_filter(filter)
        parts, refs = self.compose(images, texts)
        try:
            w = resolve_weights(parts.weights, weights)
        except EncoderError as e:
            raise SearchError(str(e)) from e
        q = parts.fused(weights)
        over = oversample or self.oversample
        if exact is None:
            exact = self.meta["points"] < self.exact_below
        requests = []
        for i in range(len(texts)):
            flt = base_filter
            if exclude_reference and refs[i] is not None:
                flt = models.Filter(must=[flt] if flt else None,
                                    must_not=[models.HasIdCondition(has_id=[store.point_id(refs[i])])])
            requests.append(self._request(q[i], k, flt, exact, over, explain))
        try:
            responses = self.client.query_batch_points(self.collection, requests=requests)
        except Exception as e:  # qdrant-client raises several types (HTTP, gRPC, ValueError in local mode)
            raise SearchError(f"query on {self.collection!r} failed: {e}") from e
        out = []
        attr = {"color": l2_normalize(parts.q_color), "shape": l2_normalize(parts.q_shape)}
        for i, resp in enumerate(responses):
            hits = []
            for p in resp.points:
                breakdown = {}
                if explain:
                    tokens = np.asarray((p.vector or {}).get(store.TOKENS), dtype=np.float32)
                    breakdown = {"base": float((tokens @ parts.q_base[i]).max()),
                                 **{a: float((tokens @ attr[a][i]).max()) for a in ATTRIBUTES}}
                payload = dict(p.payload or {})
                hits.append(Hit(id=payload.get("item_id", str(p.id)), score=float(p.score), payload=payload,
                                breakdown=breakdown, weights=dict(zip(ATTRIBUTES, map(float, w[i]), strict=True))))
            out.append(hits)
        return out

    def _request(self, q: np.ndarray, k: int, flt, exact: bool, oversample: int,
                 explain: bool = False) -> models.QueryRequest:
        vec = q.astype(np.float32).tolist()
        vectors = [store.TOKENS] if explain else False  # the breakdown needs the hits' token vectors
        if exact:
            return models.QueryRequest(query=[vec], using=store.TOKENS, filter=flt, limit=k, with_payload=True,
                                       with_vector=vectors)
        prefetch = models.Prefetch(query=vec, using=store.POOLED, filter=flt, limit=k * max(1, oversample))
        return models.QueryRequest(prefetch=prefetch, query=[vec], using=store.TOKENS, limit=k, with_payload=True,
                                   with_vector=vectors)
