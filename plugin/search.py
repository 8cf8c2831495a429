"""CIRSearch: composed queries (reference image + modification text) against a Qdrant collection.

    from plugin import CIRSearch
    search = CIRSearch(QdrantClient(path="qdrant"), collection="catalog", bundle="exports/bundle")
    hits = search.query("dress.jpg", "make it red", k=10, weights={"color": 2.0})
    hits = search.query("dress.jpg", "make it red", explain=True)   # + per-attribute score breakdown

`explain=True` asks Qdrant for each hit's token vectors (Q x D floats a hit) to split its score into
base / color / shape parts; without it no vectors travel, only ids, scores and payloads.

A long-lived searcher follows its alias: the alias's target is looked up again once `refresh_seconds`
have passed (and at once when a query on the old target fails, e.g. a pruned version). A new target
indexed with the same bundle is simply followed; one indexed with another bundle raises SearchError
naming both fingerprints: results from two embedding spaces are never mixed. Queries go to the
concrete collection that was checked, never to the alias itself.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from encoder import ComposeOutput, Encoder, EncoderError
from encoder.fusion import l2_normalize
from plugin import store
from plugin.errors import SearchError
from plugin.fetch import FetchError, fetch_url

# docs/benchmarks/search-edge.md (Qdrant's engine, 100k items): the smallest oversample with Recall@10 vs exact
# MaxSim >= 0.99 is 32 (0.997; 16 gave 0.968, 8 gave 0.873). 8 sufficed at 10k: the need grows with the catalog.
DEFAULT_OVERSAMPLE = 32
EXACT_BELOW = 2000  # collections smaller than this are searched exactly: it is cheap and has no recall loss
REFRESH_SECONDS = 5.0  # how long a searcher trusts its alias's target before looking it up again
# int8 collections (scalar quantisation): MaxSim on the int8 codes lost recall (Recall@10 0.865 at 100k even for
# exact search, docs/benchmarks/search-edge.md); rescoring the codes' top k x 4 with the fp32 originals gave 1.000.
INT8_RESCORE_OVERSAMPLING = 4.0


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
                 oversample: int = DEFAULT_OVERSAMPLE, exact_below: int = EXACT_BELOW, catalog_root=None,
                 allow_http: bool = False, refresh_seconds: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        """`collection`: an alias (followed, see above) or a collection name. `allow_http`: an ItemRef whose
        stored uri is http(s) is fetched (public hosts only, see plugin.fetch)."""
        if encoder is None and bundle is None:
            raise SearchError("pass bundle=PATH (the model bundle the collection was indexed with) or encoder=")
        self.client, self.collection = client, collection
        try:
            self.encoder = encoder or Encoder(bundle)
        except EncoderError as e:
            raise SearchError(str(e)) from e
        self.oversample, self.exact_below = oversample, exact_below
        self.catalog_root, self.allow_http = catalog_root, allow_http
        self.refresh_seconds, self._clock = refresh_seconds, clock
        self.target: str | None = None  # the concrete collection queries go to
        self.meta: dict = {}
        self._checked_at = 0.0
        self.follow(force=True)

    # -- the alias --------------------------------------------------------------------------------
    def follow(self, force: bool = False) -> str:
        """The collection that `collection` names now (cached for `refresh_seconds`), its fingerprint
        checked against this searcher's bundle whenever it is looked up."""
        if not force and self.target is not None and self._clock() - self._checked_at < self.refresh_seconds:
            return self.target
        target = store.aliases(self.client).get(self.collection, self.collection)
        try:
            meta = store.collection_info(self.client, target)
        except store.StoreError as e:
            raise SearchError(str(e)) from e
        if meta["fingerprint"] != self.encoder.fingerprint:
            if self.target is None:
                raise SearchError(f"collection {self.collection!r} ({target}) was indexed with bundle "
                                  f"{meta['fingerprint']}, but this bundle is {self.encoder.fingerprint}: embeddings "
                                  "would not be comparable. Re-index with this bundle, or load the bundle the "
                                  "collection was built with")
            raise SearchError(f"alias {self.collection!r} moved from {self.target} (bundle {self.meta['fingerprint']}) "
                              f"to {target}, indexed with bundle {meta['fingerprint']}; this searcher's bundle is "
                              f"{self.encoder.fingerprint}, so it stops rather than mix the two. Create a new "
                              "CIRSearch with the new bundle (or roll the alias back: dqe-cir index --rollback)")
        self.target, self.meta, self._checked_at = target, meta, self._clock()
        return target

    def _on_target(self, call: Callable[[str], object]):
        """Run `call(target)`; when it fails, look the alias up again at once and retry once if it moved
        (the old version may have been pruned since the last look-up)."""
        target = self.follow()
        try:
            return call(target)
        except Exception as first:  # qdrant-client raises several types (HTTP, gRPC, ValueError in local mode)
            if self.follow(force=True) == target:
                raise SearchError(f"query on {self.collection!r} ({target}) failed: {first}") from first
            try:
                return call(self.target)
            except Exception as e:
                raise SearchError(f"query on {self.collection!r} ({self.target}) failed: {e}") from e

    # -- inputs ---------------------------------------------------------------------------------
    def _resolve_image(self, image):
        if not isinstance(image, ItemRef):
            return image, None
        pid = store.point_id(image.item_id)
        points = self._on_target(lambda name: self.client.retrieve(name, [pid], with_payload=True))
        if not points:
            raise SearchError(f"catalog item {image.item_id!r} is not in collection {self.collection!r}")
        uri = (points[0].payload or {}).get("uri")
        if not uri:
            raise SearchError(f"catalog item {image.item_id!r} has no stored uri to read the image from")
        if uri.startswith(("http://", "https://")):
            if not self.allow_http:
                raise SearchError(f"catalog item {image.item_id!r} is at {uri}; fetching http(s) is off: pass "
                                  "CIRSearch(..., allow_http=True) (DQE_CIR_ALLOW_HTTP=1 for dqe-cir search)")
            try:
                return fetch_url(uri), image.item_id
            except FetchError as e:
                raise SearchError(f"catalog item {image.item_id!r}: {e}") from e
        path = Path(uri)
        if not path.is_absolute() and self.catalog_root is not None:
            path = Path(self.catalog_root) / path
        return str(path), image.item_id

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
            w = parts.weights_used(weights)
        except EncoderError as e:
            raise SearchError(str(e)) from e
        q = parts.fused(weights)
        names = parts.attributes
        over = oversample or self.oversample
        self.follow()
        if exact is None:
            exact = self.meta["points"] < self.exact_below
        int8 = self.meta.get("storage") == "int8"
        requests = []
        for i in range(len(texts)):
            flt = base_filter
            if exclude_reference and refs[i] is not None:
                flt = models.Filter(must=[flt] if flt else None,
                                    must_not=[models.HasIdCondition(has_id=[store.point_id(refs[i])])])
            requests.append(self._request(q[i], k, flt, exact, over, explain, int8))
        with warnings.catch_warnings():  # local mode searches exactly and says the int8 params do nothing
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            responses = self._on_target(lambda name: self.client.query_batch_points(name, requests=requests))
        out = []
        attr = l2_normalize(parts.q_attrs)  # [B, A, D]: each attribute's own score in the breakdown
        for i, resp in enumerate(responses):
            hits = []
            for p in resp.points:
                breakdown = {}
                if explain:
                    tokens = np.asarray((p.vector or {}).get(store.TOKENS), dtype=np.float32)
                    breakdown = {"base": float((tokens @ parts.q_base[i]).max()),
                                 **{a: float((tokens @ attr[i, j]).max()) for j, a in enumerate(names)}}
                payload = dict(p.payload or {})
                hits.append(Hit(id=payload.get("item_id", str(p.id)), score=float(p.score), payload=payload,
                                breakdown=breakdown, weights=dict(zip(names, map(float, w[i]), strict=True))))
            out.append(hits)
        return out

    def _request(self, q: np.ndarray, k: int, flt, exact: bool, oversample: int,
                 explain: bool = False, int8: bool = False) -> models.QueryRequest:
        """Exact MaxSim on `tokens`, or the two-stage request (HNSW prefetch of k x oversample on `pooled`,
        MaxSim on `tokens`). On an int8 collection the MaxSim stage takes the top k x 4 by the int8 codes
        and re-scores them with the fp32 originals, and the prefetch re-scores its candidates on `pooled`
        (originals in RAM): without it Qdrant scores on the codes alone."""
        vec = q.astype(np.float32).tolist()
        vectors = [store.TOKENS] if explain else False  # the breakdown needs the hits' token vectors
        maxsim_params = prefetch_params = None
        if int8:
            maxsim_params = models.SearchParams(quantization=models.QuantizationSearchParams(
                rescore=True, oversampling=INT8_RESCORE_OVERSAMPLING))
            prefetch_params = models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True))
        if exact:
            return models.QueryRequest(query=[vec], using=store.TOKENS, filter=flt, limit=k, with_payload=True,
                                       with_vector=vectors, params=maxsim_params)
        prefetch = models.Prefetch(query=vec, using=store.POOLED, filter=flt, limit=k * max(1, oversample),
                                   params=prefetch_params)
        return models.QueryRequest(prefetch=prefetch, query=[vec], using=store.TOKENS, limit=k, with_payload=True,
                                   with_vector=vectors, params=maxsim_params)
