"""CIRSearch: composed queries (reference image + modification text) against a Qdrant collection.

    from plugin import CIRSearch, open_embedded
    search = CIRSearch(open_embedded("qdrant_data"), collection="catalog", bundle="exports/bundle")
    # or a server: CIRSearch(QdrantClient(url="http://qdrant:6333"), ...)
    hits = search.query("dress.jpg", "make it red", k=10, weights={"color": 2.0})
    hits = search.query("dress.jpg", "make it red", explain=True)   # + per-attribute score breakdown

`explain=True` asks Qdrant for each hit's token vectors (Q x D floats a hit) to split its score into
base / color / shape parts; without it no vectors travel, only ids, scores and payloads.

A long-lived searcher follows its alias: the alias's target is looked up again once `refresh_seconds`
have passed (and at once when a query on the old target fails, e.g. a pruned version). A new target
indexed with the same bundle is simply followed; one indexed with another bundle raises SearchError
naming both fingerprints: results from two embedding spaces are never mixed. Queries go to the
concrete collection that was checked, never to the alias itself.

The request follows the collection's design (plugin/designs.py, read from its metadata): pooled sends the
two-stage request (HNSW prefetch on `pooled`, MaxSim on `tokens`), multivector one HNSW query on `tokens`
with the one-vector multivector [q], token a grouped query on `token` (group by item_id, group size 1: each
item's best token, its MaxSim score). A version switch to another design is followed like any other.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from encoder import ComposeOutput, Encoder, EncoderError
from encoder.fusion import l2_normalize
from encoder.preprocess import load_image
from plugin import designs, store
from plugin.errors import (
    BackendUnavailable,
    BadFilter,
    BadQuery,
    BundleMismatch,
    ItemImageMissing,
    ItemImageUnavailable,
    ItemNotFound,
    SearchError,
    bundle_mismatch,
)
from plugin.fetch import FetchError, fetch_url

# The pooled design's prefetch: k x this many candidates. docs/benchmarks/search-edge.md (Qdrant's engine, the demo
# model's embeddings): at 10k items the smallest oversample with Recall@10 vs exact MaxSim >= 0.99 is 32 (0.9905; 16
# gave 0.984); at 100k no oversample up to 64 reaches it (0.977 at 32, 0.982 at 64), which is why new collections
# are multivector (0.9995 there). The need grows with the catalog.
DEFAULT_OVERSAMPLE = 32
EXACT_BELOW = 2000  # collections smaller than this are searched exactly: it is cheap and has no recall loss
REFRESH_SECONDS = 5.0  # how long a searcher trusts its alias's target before looking it up again
# int8 collections (scalar quantisation): MaxSim on the int8 codes lost recall (Recall@10 0.955 at 100k even for
# exact search, docs/benchmarks/search-edge.md); rescoring the codes' top k x 4 with the fp32 originals gave 1.000.
# Measured on the pooled design only; the multivector and token requests carry the same rescoring, unmeasured.
INT8_RESCORE_OVERSAMPLING = 4.0
GROUP_BY = "item_id"  # token design: the payload field that gathers an item's token points

# A payload field a {field: value} filter may name: plain or nested keys ("brand", "meta.size", "tags[]").
FIELD_NAME = re.compile(r"[A-Za-z0-9_\-]+(\[\])?(\.[A-Za-z0-9_\-]+(\[\])?)*")

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
        raise BadFilter(f"filter must be a qdrant_client Filter or a dict, got {type(spec).__name__}")
    must = []
    for key, value in spec.items():
        if not isinstance(key, str) or not FIELD_NAME.fullmatch(key):
            raise BadFilter(f"filter field {key!r} is not a payload field name (letters, digits, '_' and '-', nested "
                            "with '.'); operators such as '$where' are not supported: a filter is {field: value or "
                            "[values]} (use a qdrant_client Filter for more)")
        if isinstance(value, (list, tuple, set)):
            values = list(value)
            if not values or not (all(isinstance(v, str) for v in values)
                                  or all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
                raise BadFilter(f"filter value for {key!r} must be a non-empty list of strings or of integers")
            match = models.MatchAny(any=values)
        elif isinstance(value, (str, int, bool)):
            match = models.MatchValue(value=value)
        else:
            raise BadFilter(f"filter value for {key!r} must be a string, integer, bool or a list of them; "
                            f"got {type(value).__name__} (use a qdrant_client Filter for ranges)")
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


class CIRSearch:
    def __init__(self, client: QdrantClient, collection: str = "catalog", bundle=None, encoder: Encoder | None = None,
                 oversample: int = DEFAULT_OVERSAMPLE, exact_below: int = EXACT_BELOW, catalog_root=None,
                 allow_http: bool = False, refresh_seconds: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic, hnsw_ef: int | None = None):
        """`collection`: an alias (followed, see above) or a collection name. `allow_http`: an ItemRef whose
        stored uri is http(s) is fetched (public hosts only, see plugin.fetch). `hnsw_ef`: the HNSW beam of
        the searched graph, instead of the one the collection's design records (pooled: the prefetch's)."""
        if encoder is None and bundle is None:
            raise SearchError("pass bundle=PATH (the model bundle the collection was indexed with) or encoder=")
        self.client, self.collection = client, collection
        try:
            self.encoder = encoder or Encoder(bundle)
        except EncoderError as e:  # a missing or damaged bundle: the deployment's problem, not the query's
            raise SearchError(str(e)) from e
        self.oversample, self.exact_below = oversample, exact_below
        self.catalog_root, self.allow_http = catalog_root, allow_http
        self.refresh_seconds, self._clock = refresh_seconds, clock
        if hnsw_ef is not None and (not isinstance(hnsw_ef, int) or hnsw_ef < 1):
            raise SearchError(f"hnsw_ef must be a positive integer or None, got {hnsw_ef!r}")
        self.hnsw_ef = hnsw_ef
        self._state: tuple[str, dict] | None = None  # (target, meta), replaced whole: what a query reads
        self._checked_at = 0.0
        self.follow(force=True)

    # -- the alias --------------------------------------------------------------------------------
    @property
    def target(self) -> str | None:
        """The concrete collection queries go to, as last looked up."""
        return self._state[0] if self._state else None

    @property
    def meta(self) -> dict:
        """That collection's metadata, as last looked up."""
        return self._state[1] if self._state else {}

    def follow(self, force: bool = False) -> str:
        """The collection that `collection` names now (cached for `refresh_seconds`), its fingerprint
        checked against this searcher's bundle whenever it is looked up."""
        return self.current(force)[0]

    def current(self, force: bool = False) -> tuple[str, dict]:
        """(the concrete collection, its metadata) as one snapshot: what a search must use together, even
        while another thread's refresh moves the alias to a collection of another design."""
        state = self._state
        if not force and state is not None and self._clock() - self._checked_at < self.refresh_seconds:
            return state
        try:
            target = store.aliases(self.client).get(self.collection, self.collection)
            meta = store.collection_info(self.client, target)  # CollectionUnusable is a SearchError too
        except SearchError:
            raise
        except Exception as e:  # qdrant-client's own (a server that is down): keep the error tree
            raise BackendUnavailable(f"looking up {self.collection!r} failed: {e}") from e
        if meta["fingerprint"] != self.encoder.fingerprint:
            if self.target is None:
                raise bundle_mismatch(f"{self.collection!r} ({target})", meta["fingerprint"], self.encoder.fingerprint)
            raise BundleMismatch(
                f"alias {self.collection!r} moved from {self.target} (bundle {self.meta['fingerprint']}) to {target}, "
                f"indexed with bundle {meta['fingerprint']}; this searcher's bundle is {self.encoder.fingerprint}, so "
                "it stops rather than mix the two. Create a new CIRSearch with the new bundle (or roll the alias "
                "back: dqe-cir index --rollback)")
        self._state, self._checked_at = (target, meta), self._clock()
        return target, meta

    def _on_target(self, call: Callable[[str, dict], object]):
        """Run `call(target, its metadata)`; when it fails, look the alias up again at once and retry once if
        it moved (the old version may have been pruned since the last look-up)."""
        target, meta = self.current()
        try:
            return call(target, meta)
        except Exception as first:  # qdrant-client raises several types (HTTP, gRPC, ValueError in local mode)
            if isinstance(first, SearchError):
                raise
            moved, meta = self.current(force=True)
            if moved == target:
                raise BackendUnavailable(f"query on {self.collection!r} ({target}) failed: {first}") from first
            try:
                return call(moved, meta)
            except SearchError:
                raise
            except Exception as e:
                raise BackendUnavailable(f"query on {self.collection!r} ({moved}) failed: {e}") from e

    # -- inputs ---------------------------------------------------------------------------------
    def _resolve_image(self, image):
        if not isinstance(image, ItemRef):
            return image, None
        pid = store.point_id(image.item_id)
        points = self._on_target(lambda name, _: self.client.retrieve(name, [pid], with_payload=True))
        if not points:
            raise ItemNotFound(f"catalog item {image.item_id!r} is not in collection {self.collection!r}")
        uri = (points[0].payload or {}).get("uri")
        if not uri:
            raise ItemImageMissing(f"catalog item {image.item_id!r} has no stored uri to read its image from; "
                                   "re-index it with one")
        if uri.startswith(("http://", "https://")):
            if not self.allow_http:
                raise ItemImageUnavailable(f"catalog item {image.item_id!r} is stored at an http(s) uri and fetching "
                                           "http(s) is off: CIRSearch(..., allow_http=True), or DQE_CIR_ALLOW_HTTP=1 "
                                           "for dqe-cir search and dqe-cir serve")
            try:
                return fetch_url(uri), image.item_id
            except FetchError as e:
                raise ItemImageUnavailable(f"catalog item {image.item_id!r}: its image could not be fetched "
                                           f"({type(e).__name__})") from e
        path = Path(uri)
        if not path.is_absolute() and self.catalog_root is not None:
            path = Path(self.catalog_root) / path
        return str(path), image.item_id

    def compose(self, images: Sequence, texts: Sequence[str]) -> tuple[ComposeOutput, list[str | None]]:
        resolved = [self._resolve_image(img) for img in images]
        try:
            parts = self.encoder.compose([r[0] for r in resolved], list(texts))
        except EncoderError as e:  # an unreadable image, an empty text: the caller's, unless a stored one failed
            for src, item_id in resolved:
                if item_id is not None and isinstance(src, str):
                    try:
                        load_image(src)
                    except EncoderError as bad:  # the catalog's fault; the message names no server path
                        raise ItemImageMissing(f"catalog item {item_id!r}: its stored image cannot be read "
                                               "(missing or not an image); re-index the catalog or restore "
                                               "the file") from bad
            raise BadQuery(str(e)) from e
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
            raise BadQuery(f"k must be a positive integer, got {k!r}")
        if len(images) != len(texts):
            raise BadQuery(f"{len(images)} images but {len(texts)} texts")
        base_filter = to_filter(filter)
        parts, refs = self.compose(images, texts)
        try:
            w = parts.weights_used(weights)
        except EncoderError as e:  # a weight name the bundle does not have
            raise BadQuery(str(e)) from e
        q = parts.fused(weights)
        names = parts.attributes
        over = oversample or self.oversample
        found = self._on_target(lambda name, meta: self._search(name, meta, q, refs, base_filter, k, exact, over,
                                                                exclude_reference, explain))
        out = []
        attr = l2_normalize(parts.q_attrs)  # [B, A, D]: each attribute's own score in the breakdown
        for i, hits in enumerate(found):
            row = []
            for payload, score, tokens in hits:
                breakdown = {}
                if explain:
                    breakdown = {"base": float((tokens @ parts.q_base[i]).max()),
                                 **{a: float((tokens @ attr[i, j]).max()) for j, a in enumerate(names)}}
                row.append(Hit(id=payload.get("item_id", ""), score=score, payload=payload, breakdown=breakdown,
                               weights=dict(zip(names, map(float, w[i]), strict=True))))
            out.append(row)
        return out

    def _search(self, name: str, meta: dict, q: np.ndarray, refs: list[str | None], base_filter, k: int,
                exact: bool | None, oversample: int, exclude_reference: bool,
                explain: bool) -> list[list[tuple[dict, float, object]]]:
        """(payload, score, tokens [Q, D] or None) of each query's hits in collection `name`, whose metadata is
        `meta` (read with it in one snapshot: the design, size and storage are that collection's own)."""
        design = store.design_from(meta, name)
        if exact is None:
            exact = meta["items"] < self.exact_below
        int8 = meta.get("storage") == "int8"
        filters = []
        for ref in refs:
            flt = base_filter
            if exclude_reference and ref is not None:
                flt = models.Filter(must=[flt] if flt else None, must_not=[designs.not_this_item(design, ref)])
            filters.append(flt)
        with warnings.catch_warnings():  # local mode searches exactly and says the int8 params do nothing
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            if design.name == designs.TOKEN:
                return self._search_tokens(name, meta, design, q, filters, k, exact, explain, int8)
            requests = [design_request(q[i], k, filters[i], exact, oversample, design, self.hnsw_ef, explain, int8)
                        for i in range(len(q))]
            responses = self.client.query_batch_points(name, requests=requests)
        return [[(store.public_payload(p.payload), float(p.score),
                  np.asarray((p.vector or {}).get(store.TOKENS), dtype=np.float32) if explain else None)
                 for p in resp.points] for resp in responses]

    def _search_tokens(self, name: str, meta: dict, design: designs.Design, q: np.ndarray, filters: list, k: int,
                       exact: bool, explain: bool, int8: bool) -> list[list[tuple[dict, float, object]]]:
        """The token design: one grouped query per composed query (Qdrant has no batch of grouped queries).
        With explain, the hits' token vectors come from a second call (a group's hit is one token only)."""
        params = search_params(design, exact, int8, self.hnsw_ef)
        found = []
        for i in range(len(q)):
            # A server's group_by runs a bounded number of token requests of limit k: with Q tokens an item, as
            # few as ~k/Q new groups each, so it may answer with fewer than k groups. Ask again for the rest,
            # leaving out the items already found, until k or nothing new (local mode groups exactly: one call).
            hits, flt = [], filters[i]
            while len(hits) < k:
                res = self.client.query_points_groups(name, group_by=GROUP_BY, query=q[i].astype(np.float32).tolist(),
                                                      using=designs.TOKEN_VECTOR, query_filter=flt,
                                                      search_params=params, limit=k - len(hits), group_size=1,
                                                      with_payload=True)
                new = [(store.public_payload(g.hits[0].payload), float(g.hits[0].score), None)
                       for g in res.groups if g.hits]
                if not new:
                    break
                hits += new
                got = models.FieldCondition(key=GROUP_BY, match=models.MatchAny(any=[p["item_id"] for p, _, _ in hits]))
                flt = models.Filter(must=[filters[i]] if filters[i] else None, must_not=[got])
            found.append(sorted(hits, key=lambda h: -h[1]))
        if not explain:
            return found
        tokens = self._item_tokens(name, meta, {p["item_id"] for hits in found for p, _, _ in hits})
        return [[(p, score, tokens[p["item_id"]]) for p, score, _ in hits] for hits in found]

    def _item_tokens(self, name: str, meta: dict, item_ids: set[str]) -> dict[str, np.ndarray]:
        """Token design: item id -> its [Q, D] token vectors, read from its Q token points."""
        n = int(meta["num_query_tokens"])
        ids = [designs.token_point_id(i, j) for i in sorted(item_ids) for j in range(n)]
        points = self.client.retrieve(name, ids, with_payload=["item_id", designs.TOKEN_INDEX],
                                      with_vectors=[designs.TOKEN_VECTOR])
        out = {i: np.zeros((n, int(meta["embed_dim"])), np.float32) for i in item_ids}
        for p in points:
            vec = p.vector.get(designs.TOKEN_VECTOR) if isinstance(p.vector, dict) else p.vector
            out[p.payload["item_id"]][p.payload[designs.TOKEN_INDEX]] = vec
        return out


def search_params(design: designs.Design, exact: bool, int8: bool, hnsw_ef: int | None = None) -> models.SearchParams:
    """The params of the query that searches the design's graph (multivector, token): the HNSW beam (`hnsw_ef`, else
    the design's), exact search when asked, and on int8 the codes' top x 4 re-scored with the fp32 originals."""
    quant = models.QuantizationSearchParams(rescore=True, oversampling=INT8_RESCORE_OVERSAMPLING) if int8 else None
    return models.SearchParams(hnsw_ef=hnsw_ef or design.hnsw_ef, exact=exact, quantization=quant)


def design_request(q: np.ndarray, k: int, flt, exact: bool, oversample: int, design: designs.Design | None = None,
                   hnsw_ef: int | None = None, explain: bool = False, int8: bool = False) -> models.QueryRequest:
    """The query of a one-point-per-item design, for every engine (benchmarks/edge_*.py send it too). Multivector:
    [q] on `tokens`' graph (MaxSim of one query vector is our score). Pooled (design None, too): exact MaxSim on
    `tokens`, or the two-stage request (HNSW prefetch of k x oversample on `pooled`, with `hnsw_ef` or the design's,
    MaxSim on `tokens`); on an int8 collection the MaxSim stage takes the top k x 4 by the int8 codes and re-scores
    them with the fp32 originals, and the prefetch re-scores its candidates on `pooled` (originals in RAM):
    without it Qdrant scores on the codes alone."""
    vec = q.astype(np.float32).tolist()
    vectors = [store.TOKENS] if explain else False  # the breakdown needs the hits' token vectors
    if design is not None and design.name == designs.MULTIVECTOR:
        return models.QueryRequest(query=[vec], using=store.TOKENS, filter=flt, limit=k, with_payload=True,
                                   with_vector=vectors, params=search_params(design, exact, int8, hnsw_ef))
    maxsim_params = prefetch_params = None
    if int8:
        maxsim_params = models.SearchParams(quantization=models.QuantizationSearchParams(
            rescore=True, oversampling=INT8_RESCORE_OVERSAMPLING))
        prefetch_params = models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True))
    if exact:
        return models.QueryRequest(query=[vec], using=store.TOKENS, filter=flt, limit=k, with_payload=True,
                                   with_vector=vectors, params=maxsim_params)
    ef = hnsw_ef or (design.hnsw_ef if design is not None else None)
    if ef:
        rescore = prefetch_params.quantization if prefetch_params else None
        prefetch_params = models.SearchParams(hnsw_ef=ef, quantization=rescore)
    prefetch = models.Prefetch(query=vec, using=store.POOLED_VECTOR, filter=flt, limit=k * max(1, oversample),
                               params=prefetch_params)
    return models.QueryRequest(prefetch=prefetch, query=[vec], using=store.TOKENS, limit=k, with_payload=True,
                               with_vector=vectors, params=maxsim_params)
