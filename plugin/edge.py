"""The embedded engine: qdrant-edge (Qdrant's own engine, in-process) behind the part of QdrantClient's API
that plugin/store.py, plugin/search.py, the indexer and the service use. Nothing else imports qdrant_edge.

Requests and answers are qdrant-client's models, so the store and the searcher build one request for every
engine; this module converts them (a filter it cannot convert is a BadFilter, never silently dropped).
What Edge lacks is kept here, in the folder (QDRANT_PATH):

    dqe-cir-edge.json              marks the folder as the edge engine's (engine, format, qdrant-edge version)
    aliases.json                   alias -> collection; replaced whole (write, fsync, rename) under aliases.lock
    collections/NAME/shard/        one EdgeShard per collection (its WAL, segments)
    collections/NAME/collection.json  the collection's schema (qdrant-client VectorParams), payload indexes and
                                   metadata, replaced whole like aliases.json; a collection exists once it is there

One process at a time opens a shard (Edge locks its WAL): a second process gets ShardBusy after waiting
`busy_timeout` seconds, a transient error the indexer retries. Different collections open in different
processes, so a full re-index builds the next version while the service reads the current one.
Acknowledged writes (wait=True) are flushed before they return. `optimize()` (building the HNSW graphs) is
for indexing processes (store.seal); a client made with allow_optimize=False (the service's) refuses it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import qdrant_edge as qe
from qdrant_client import models

from plugin.errors import BadFilter, ShardBusy, StoreError

MARKER, ALIASES, COLLECTIONS = "dqe-cir-edge.json", "aliases.json", "collections"
SCHEMA, SHARD = "collection.json", "shard"
FORMAT = 1
GROUP_FETCH = 4  # a grouped query reads k x this many token points per request (search.py asks again when short)


def edge_version() -> str:
    from importlib.metadata import version

    return version("qdrant-edge-py")


def write_json(path: Path, data: dict) -> None:
    """Replace `path` whole: readers see the old file or the new one, never half of one (and a crash keeps one)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power loss once the folder is synced
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class EdgeClient:
    """A QdrantClient look-alike over a folder of edge shards (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, busy_timeout: float = 10.0, allow_optimize: bool = True):
        self.root = Path(path)
        self.busy_timeout, self.allow_optimize = busy_timeout, allow_optimize
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.RLock()  # the shard table; Edge serialises the calls themselves
        self._opening: dict[str, threading.Lock] = {}  # one per collection being opened: a busy wait blocks no other
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / COLLECTIONS).mkdir(exist_ok=True)
        for trash in (self.root / COLLECTIONS).glob(".deleted-*"):  # a delete interrupted after its rename
            shutil.rmtree(trash, ignore_errors=True)
        marker = self.root / MARKER
        if not marker.exists():
            write_json(marker, {"engine": "edge", "format": FORMAT, "qdrant_edge": edge_version()})
        elif json.loads(marker.read_text()).get("format", FORMAT) > FORMAT:
            raise StoreError(f"{self.root} was written by a newer dqe-cir (edge folder format "
                             f"{json.loads(marker.read_text())['format']}); upgrade dqe-cir-search")

    # -- shards ---------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"{name!r} is not a collection name (no '/', not starting with '.')")
        return self.root / COLLECTIONS / name

    def _is_collection(self, name: str) -> bool:
        """A collection by its own name (its schema file is what makes it one), never an alias."""
        return (self._dir(name) / SCHEMA).is_file()

    def _resolve(self, name: str) -> str:
        """A collection's own name, or the one an alias points at (reads and writes follow aliases, as on a
        server)."""
        if self._is_collection(name):
            return name
        return self._read_aliases().get(name, name)

    def _write_schema(self, name: str, schema: dict) -> None:
        write_json(self._dir(name) / SCHEMA, schema)

    def _schema(self, name: str) -> dict:
        try:
            return json.loads((self._dir(name) / SCHEMA).read_text())
        except FileNotFoundError:
            raise ValueError(f"Collection {name} not found") from None

    def _shard(self, name: str) -> qe.EdgeShard:
        name = self._resolve(name)
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:  # threads wanting other collections go on while this one waits for a busy shard
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            self._schema(name)  # not found: the same ValueError as qdrant-client's local mode
            path = self._dir(name) / SHARD
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    shard = qe.EdgeShard.load(str(path))
                    break
                except Exception as e:  # Edge raises plain Exception; a held WAL says WouldBlock
                    if "WouldBlock" not in str(e):
                        raise StoreError(f"collection {name!r} cannot be opened: {e}") from e
                    if time.monotonic() > deadline:
                        raise ShardBusy(f"collection {name!r} is open in another process (edge engine: one process a "
                                        f"collection); waited {self.busy_timeout:.0f}s. Stop that process or index "
                                        "into a new version (a full re-index) while it serves") from e
                    time.sleep(0.2)
            # an optimise killed half-way leaves its builder folder behind; the shard never reads it
            for leftover in (path / "temp_segments").glob("segment_builder_*"):
                shutil.rmtree(leftover, ignore_errors=True)
            with self._lock:
                # a long-lived reader (the service) lets go of versions another process pruned since: their
                # files stay on disk while they are open
                for gone in [n for n in self._shards if not self._is_collection(n)]:
                    self._release(gone)
                self._shards[name] = shard
            return shard

    def _release(self, name: str) -> None:
        with self._lock:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()

    def close(self) -> None:
        with self._lock:
            for name in list(self._shards):
                self._release(name)

    # -- collections ----------------------------------------------------------------------------
    def collection_exists(self, name: str) -> bool:
        return self._is_collection(self._resolve(name))

    def get_collections(self):
        names = sorted(p.parent.name for p in (self.root / COLLECTIONS).glob(f"*/{SCHEMA}")
                       if not p.parent.name.startswith("."))  # not a delete's leftover
        return SimpleNamespace(collections=[SimpleNamespace(name=n) for n in names])

    def create_collection(self, collection_name: str, vectors_config: dict, quantization_config=None,
                          metadata: dict | None = None, **cluster) -> bool:
        """`cluster` (shards, replicas, write consistency) has no meaning here; store.create_collection warns."""
        if self._is_collection(collection_name):
            raise ValueError(f"Collection {collection_name} already exists")
        folder = self._dir(collection_name)
        shutil.rmtree(folder, ignore_errors=True)  # a create killed before its schema was written
        folder.mkdir(parents=True)
        params = {n: v if isinstance(v, models.VectorParams) else models.VectorParams.model_validate(v)
                  for n, v in vectors_config.items()}
        config = qe.EdgeConfig(vectors={n: vector_params(p) for n, p in params.items()},
                               quantization_config=scalar_quantization(quantization_config))
        qe.EdgeShard.create(str(folder / SHARD), config).close()
        self._write_schema(collection_name, {
            "vectors": {n: p.model_dump(mode="json", exclude_none=True) for n, p in params.items()},
            "quantization": quantization_config.model_dump(mode="json") if quantization_config is not None else None,
            "payload_indexes": {}, "metadata": metadata or {}})
        return True

    def get_collection(self, collection_name: str):
        collection_name = self._resolve(collection_name)
        schema = self._schema(collection_name)
        vectors = {n: models.VectorParams.model_validate(p) for n, p in schema["vectors"].items()}
        quant = schema.get("quantization")
        config = SimpleNamespace(metadata=schema["metadata"], params=SimpleNamespace(vectors=vectors),
                                 quantization_config=models.ScalarQuantization.model_validate(quant) if quant else None)
        return CollectionInfo(self, collection_name, config, schema["payload_indexes"])

    def update_collection(self, collection_name: str, metadata: dict | None = None, **_) -> bool:
        """Metadata keys given replace those keys (as on a server); the rest stays."""
        collection_name = self._resolve(collection_name)
        schema = self._schema(collection_name)
        schema["metadata"] = {**schema["metadata"], **(metadata or {})}
        self._write_schema(collection_name, schema)
        return True

    def delete_collection(self, collection_name: str, **_) -> bool:
        if not self._is_collection(collection_name):  # a collection's own name, never an alias
            return False
        self._release(collection_name)
        with self._aliases_locked() as table:  # as on a server: a deleted collection's aliases go with it
            for alias in [a for a, c in table.items() if c == collection_name]:
                del table[alias]
        folder = self._dir(collection_name)
        trash = folder.with_name(f".deleted-{collection_name}-{uuid.uuid4().hex[:8]}")
        os.replace(folder, trash)  # gone at once for every reader; a process still reading keeps its open files
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def create_payload_index(self, collection_name: str, field_name: str, field_schema, wait: bool = True, **_):
        kind = models.PayloadSchemaType(field_schema).value
        collection_name = self._resolve(collection_name)
        self._shard(collection_name).update(qe.UpdateOperation.create_field_index(field_name, payload_type(kind)))
        schema = self._schema(collection_name)
        schema["payload_indexes"][field_name] = kind
        self._write_schema(collection_name, schema)
        self._flush(collection_name, wait)

    def optimize(self, collection_name: str) -> bool:
        """Build the HNSW graphs and merge segments (blocking; the bindings hold the GIL meanwhile)."""
        if not self.allow_optimize:
            raise StoreError("this client serves searches: optimize() runs in indexing processes only")
        shard = self._shard(collection_name)
        done = shard.optimize()
        shard.flush()
        return done

    # -- aliases --------------------------------------------------------------------------------
    def _read_aliases(self) -> dict[str, str]:
        try:
            return json.loads((self.root / ALIASES).read_text())
        except FileNotFoundError:
            return {}

    @contextmanager
    def _aliases_locked(self) -> Iterator[dict[str, str]]:
        """The alias table to change under the folder's lock; written once at the end, not at all when the
        caller's block raises (the exception leaves at the yield)."""
        with open(self.root / "aliases.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held for the read-modify-write only: milliseconds
            table = self._read_aliases()
            before = dict(table)
            yield table
            if table != before:
                write_json(self.root / ALIASES, table)

    def get_aliases(self):
        return SimpleNamespace(aliases=[SimpleNamespace(alias_name=a, collection_name=c)
                                        for a, c in sorted(self._read_aliases().items())])

    def update_collection_aliases(self, change_aliases_operations: Sequence, **_) -> bool:
        """All the operations apply together, or none (the alias file is replaced once)."""
        with self._aliases_locked() as table:  # an operation that raises leaves the file as it was
            for op in change_aliases_operations:
                if isinstance(op, models.CreateAliasOperation):
                    target = op.create_alias.collection_name
                    if not self._is_collection(target):
                        raise ValueError(f"Collection {target} not found")
                    table[op.create_alias.alias_name] = target
                elif isinstance(op, models.DeleteAliasOperation):
                    table.pop(op.delete_alias.alias_name, None)
                elif isinstance(op, models.RenameAliasOperation):
                    if op.rename_alias.old_alias_name not in table:
                        raise ValueError(f"Alias {op.rename_alias.old_alias_name} not found")
                    table[op.rename_alias.new_alias_name] = table.pop(op.rename_alias.old_alias_name)
                else:
                    raise StoreError(f"alias operation {type(op).__name__} is not supported by the edge engine")
        return True

    # -- points ---------------------------------------------------------------------------------
    def _flush(self, name: str, wait: bool) -> None:
        if wait:  # acknowledged: on disk before we say so
            self._shard(name).flush()

    def upsert(self, collection_name: str, points: Sequence[models.PointStruct], wait: bool = True, **_):
        edge_points = [qe.Point(str(p.id), p.vector, p.payload) for p in points]
        self._shard(collection_name).update(qe.UpdateOperation.upsert_points(edge_points))
        self._flush(collection_name, wait)

    def set_payload(self, collection_name: str, payload: dict, points: Sequence, key: str | None = None,
                    wait: bool = True, **_):
        """Merge `payload` into the points' payloads (ids only: a filter selector is not taken here)."""
        ids = [str(i) for i in points]
        self._shard(collection_name).update(qe.UpdateOperation.set_payload(ids, payload, key=key))
        self._flush(collection_name, wait)

    def delete(self, collection_name: str, points_selector, wait: bool = True, **_):
        shard = self._shard(collection_name)
        if isinstance(points_selector, models.PointIdsList):
            shard.update(qe.UpdateOperation.delete_points([str(i) for i in points_selector.points]))
        elif isinstance(points_selector, models.FilterSelector):
            shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter(points_selector.filter)))
        else:
            raise StoreError(f"delete by {type(points_selector).__name__} is not supported by the edge engine")
        self._flush(collection_name, wait)

    def retrieve(self, collection_name: str, ids: Sequence, with_payload=True, with_vectors=False, **_) -> list:
        records = self._shard(collection_name).retrieve([str(i) for i in ids], with_payload=with_payload,
                                                        with_vector=with_vectors)
        return [record(r) for r in records]

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True, **_):
        n = self._shard(collection_name).count(qe.CountRequest(exact=exact, filter=edge_filter(count_filter)))
        return models.CountResult(count=n)

    def scroll(self, collection_name: str, scroll_filter: models.Filter | None = None, limit: int = 10,
               offset=None, with_payload=True, with_vectors=False, **_) -> tuple[list, str | None]:
        records, nxt = self._shard(collection_name).scroll(qe.ScrollRequest(
            offset=str(offset) if offset is not None else None, limit=limit, filter=edge_filter(scroll_filter),
            with_payload=with_payload, with_vector=with_vectors))
        return [record(r) for r in records], (str(nxt) if nxt is not None else None)

    # -- queries --------------------------------------------------------------------------------
    def _query(self, name: str, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        answers = self._shard(name).query_batch(qe.QueryBatchRequest([query_request(r) for r in requests]))
        return [[scored(p) for p in points] for points in answers]

    def query_batch_points(self, collection_name: str, requests: Sequence[models.QueryRequest], **_) -> list:
        return [SimpleNamespace(points=points) for points in self._query(collection_name, requests)]  # QueryResponse

    def query_points(self, collection_name: str, query=None, using: str | None = None, query_filter=None,
                     search_params=None, limit: int = 10, with_payload=True, with_vectors=False, **_):
        request = models.QueryRequest(query=query, using=using, filter=query_filter, params=search_params,
                                      limit=limit, with_payload=with_payload, with_vector=with_vectors)
        return SimpleNamespace(points=self._query(collection_name, [request])[0])

    def query_points_groups(self, collection_name: str, group_by: str, query, using: str | None = None,
                            query_filter=None, search_params=None, limit: int = 10, group_size: int = 1,
                            with_payload=True, **_):
        """Qdrant's group-by, group size 1 (what the token design asks): the best point of each of the `limit`
        best groups among the top limit x GROUP_FETCH points (fewer groups may come back: the caller asks
        again leaving out those found, as it must on a server too)."""
        if group_size != 1:
            raise StoreError("the edge engine groups with group_size 1 only")
        payload = with_payload if with_payload is True else [group_by, *(with_payload or [])]
        request = models.QueryRequest(query=query, using=using, filter=query_filter, params=search_params,
                                      limit=limit * GROUP_FETCH, with_payload=payload)
        best: dict = {}
        for p in self._query(collection_name, [request])[0]:
            key = (p.payload or {}).get(group_by)
            if key is not None and key not in best:  # points come best first: the first is the group's best
                best[key] = p
        groups = [models.PointGroup(id=key, hits=[p]) for key, p in list(best.items())[:limit]]
        return models.GroupsResult(groups=groups)

    def info(self):
        return SimpleNamespace(version=edge_version())


class CollectionInfo:
    """get_collection's answer: the schema and metadata from the sidecar, the counts read from the shard only
    when asked (so reading a collection's metadata never waits for a process that holds its shard)."""

    def __init__(self, client: EdgeClient, name: str, config, payload_schema: dict):
        self._client, self._name = client, name
        self.config, self.payload_schema = config, payload_schema

    @property
    def points_count(self) -> int:
        return self._client._shard(self._name).count(qe.CountRequest(exact=True))

    @property
    def indexed_vectors_count(self) -> int:
        return self._client._shard(self._name).info().indexed_vectors_count


# --- conversions: qdrant-client models -> qdrant_edge ------------------------------------------------
def payload_type(kind: str):
    return {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer,
            "float": qe.PayloadSchemaType.Float, "bool": qe.PayloadSchemaType.Bool, "text": qe.PayloadSchemaType.Text,
            "datetime": qe.PayloadSchemaType.Datetime, "geo": qe.PayloadSchemaType.Geo,
            "uuid": qe.PayloadSchemaType.Uuid}[kind]


def vector_params(p: models.VectorParams):
    hnsw = p.hnsw_config
    return qe.EdgeVectorParams(
        size=p.size, distance={"Dot": qe.Distance.Dot, "Cosine": qe.Distance.Cosine, "Euclid": qe.Distance.Euclid,
                               "Manhattan": qe.Distance.Manhattan}[models.Distance(p.distance).value],
        on_disk=p.on_disk,
        datatype=qe.VectorStorageDatatype.Float16 if p.datatype == models.Datatype.FLOAT16 else None,
        multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim) if p.multivector_config else None,
        # Qdrant's defaults where the design leaves a setting out (m 16, ef_construct 100, 10,000 KB full scan)
        hnsw_config=qe.HnswIndexConfig(m=16 if hnsw.m is None else hnsw.m, ef_construct=hnsw.ef_construct or 100,
                                       full_scan_threshold=hnsw.full_scan_threshold or 10000, on_disk=hnsw.on_disk)
        if hnsw else None)


def scalar_quantization(q: models.ScalarQuantization | None):
    """qdrant-client's int8 scalar quantisation (store.quantization_config) as edge's; None stays None."""
    if q is None:
        return None
    return qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=q.scalar.quantile,
                                       always_ram=q.scalar.always_ram)


def search_params(p: models.SearchParams | None):
    if p is None:
        return None
    if p.indexed_only or p.acorn is not None:
        raise StoreError("SearchParams indexed_only / acorn are not supported by the edge engine")
    q = p.quantization
    quant = qe.QuantizationSearchParams(ignore=bool(q.ignore), rescore=q.rescore, oversampling=q.oversampling) \
        if q is not None else None
    return qe.SearchParams(hnsw_ef=p.hnsw_ef, exact=bool(p.exact), quantization=quant)


def scoring_query(query, using: str | None):
    if query is None:
        return None
    if isinstance(query, models.SampleQuery):
        return qe.Sample.Random
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    if hasattr(query, "tolist"):
        query = query.tolist()
    if not isinstance(query, list):
        raise StoreError(f"query {type(query).__name__} is not supported by the edge engine (a vector or a "
                         "multivector, or a random sample)")
    return qe.Query.Nearest(query, using=using)


def prefetch(p: models.Prefetch):
    inner = p.prefetch if isinstance(p.prefetch, list) else [p.prefetch] if p.prefetch else None
    return qe.Prefetch(limit=p.limit or 10, query=scoring_query(p.query, p.using),
                       prefetches=[prefetch(x) for x in inner] if inner else None, params=search_params(p.params),
                       filter=edge_filter(p.filter), score_threshold=p.score_threshold)


def query_request(r: models.QueryRequest):
    stages = r.prefetch if isinstance(r.prefetch, list) else [r.prefetch] if r.prefetch else None
    return qe.QueryRequest(limit=r.limit or 10, offset=r.offset, query=scoring_query(r.query, r.using),
                           prefetches=[prefetch(p) for p in stages] if stages else None,
                           with_vector=r.with_vector if r.with_vector is not None else False,
                           with_payload=r.with_payload if r.with_payload is not None else False,
                           filter=edge_filter(r.filter), score_threshold=r.score_threshold,
                           params=search_params(r.params))


def _vector(v):
    return {k: (x.tolist() if hasattr(x, "tolist") else x) for k, x in v.items()} if isinstance(v, dict) else v


def scored(p) -> models.ScoredPoint:
    return models.ScoredPoint(id=str(p.id), version=p.version, score=p.score, payload=p.payload,
                              vector=_vector(p.vector))


def record(r) -> models.Record:
    return models.Record(id=str(r.id), payload=r.payload, vector=_vector(r.vector))


def _conditions(items) -> list | None:
    if items is None:
        return None
    return [condition(c) for c in (items if isinstance(items, list) else [items])]


def edge_filter(f: models.Filter | None):
    """A qdrant-client Filter converted whole; BadFilter for a part Edge cannot express."""
    if f is None:
        return None
    if not isinstance(f, models.Filter):
        raise BadFilter(f"a filter must be a qdrant_client Filter, got {type(f).__name__}")
    try:
        return _filter(f)
    except (TypeError, ValueError) as e:  # a value the engine's types refuse: the filter's fault, not the engine's
        raise BadFilter(f"filter not accepted by the edge engine: {e}") from e


def _filter(f: models.Filter):
    min_should = qe.MinShould(_conditions(f.min_should.conditions), f.min_should.min_count) if f.min_should else None
    return qe.Filter(must=_conditions(f.must), should=_conditions(f.should), must_not=_conditions(f.must_not),
                     min_should=min_should)


def condition(c):
    if isinstance(c, models.Filter):
        return edge_filter(c)
    if isinstance(c, models.FieldCondition):
        if all(getattr(c, f) is None for f in type(c).model_fields if f != "key"):
            raise BadFilter(f"filter condition on {c.key!r} says nothing about it (give match, range, ...)")
        return qe.FieldCondition(c.key, match=match(c.match), range=value_range(c.range),
                                 values_count=qe.ValuesCount(lt=c.values_count.lt, gt=c.values_count.gt,
                                                             lte=c.values_count.lte, gte=c.values_count.gte)
                                 if c.values_count else None,
                                 geo_bounding_box=geo_box(c.geo_bounding_box), geo_radius=geo_radius(c.geo_radius),
                                 geo_polygon=geo_polygon(c.geo_polygon), is_empty=c.is_empty, is_null=c.is_null)
    if isinstance(c, models.IsEmptyCondition):
        return qe.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return qe.IsNullCondition(c.is_null.key)
    if isinstance(c, models.HasIdCondition):
        return qe.HasIdCondition({str(i) for i in c.has_id})
    if isinstance(c, models.HasVectorCondition):
        return qe.HasVectorCondition(c.has_vector)
    if isinstance(c, models.NestedCondition):
        return qe.NestedCondition(c.nested.key, edge_filter(c.nested.filter))
    raise BadFilter(f"filter condition {type(c).__name__} is not supported by the edge engine")


def match(m):
    if m is None:
        return None
    if isinstance(m, models.MatchValue):
        return qe.MatchValue(m.value)
    if isinstance(m, models.MatchAny):
        return qe.MatchAny(list(m.any))
    if isinstance(m, models.MatchExcept):
        return qe.MatchExcept(list(m.except_))
    if isinstance(m, models.MatchText):
        return qe.MatchText(m.text)
    if isinstance(m, models.MatchTextAny):
        return qe.MatchTextAny(m.text_any)
    if isinstance(m, models.MatchPhrase):
        return qe.MatchPhrase(m.phrase)
    if isinstance(m, models.MatchPrefix):
        return qe.MatchPrefix(m.prefix)
    if isinstance(m, models.MatchSubstring):
        return qe.MatchSubstring(m.substring)
    raise BadFilter(f"match {type(m).__name__} is not supported by the edge engine")


def value_range(r):
    if r is None:
        return None
    if isinstance(r, models.DatetimeRange):
        iso = {k: (v.isoformat() if isinstance(v, (datetime, date)) else v) for k, v in
               (("gt", r.gt), ("gte", r.gte), ("lt", r.lt), ("lte", r.lte))}
        return qe.RangeDateTime(**iso)
    return qe.RangeFloat(gt=r.gt, gte=r.gte, lt=r.lt, lte=r.lte)


def _geo(p):
    return qe.GeoPoint(lon=p.lon, lat=p.lat)


def geo_box(b):
    return qe.GeoBoundingBox(_geo(b.top_left), _geo(b.bottom_right)) if b else None


def geo_radius(r):
    return qe.GeoRadius(_geo(r.center), r.radius) if r else None


def geo_polygon(p):
    if p is None:
        return None
    interiors = [[_geo(x) for x in ring.points] for ring in p.interiors] if p.interiors else None
    return qe.GeoPolygon([_geo(x) for x in p.exterior.points], interiors)
