"""Where a collection's data lives on a Qdrant cluster: shards, replicas, write consistency, and whether
vectors and their HNSW graph stay on disk. Qdrant does the distribution itself (nothing home-made);
these are the knobs `create_collection` passes it, recorded in the collection's metadata so that
`dqe-cir doctor` can say what a version was made with. Local mode has one process and no cluster:
it ignores them (plugin/store.py warns). Pure: no Qdrant calls.

What Qdrant promises (docs of its distributed deployment):
- shards: a collection's points are split over `shards` shards, spread over the nodes; a search fans out
  to every shard. More shards than nodes lets a cluster grow by moving shards.
- replication_factor: each shard is kept on that many nodes; with 2 or more, searches keep working
  while a node is down (they are served by a live replica).
- write_consistency_factor: a write is acknowledged once that many replicas of its shard applied it;
  with it equal to replication_factor no acknowledged write is lost when a node fails, but no write
  succeeds while a replica of its shard is down (a re-index job's chunks then fail and are retried).
- on_disk: vectors and the HNSW graph are memory-mapped from disk instead of held in RAM, for catalogs
  larger than a node's memory (page cache serves the hot part; searches are slower when it misses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Placement:
    shards: int | None = None  # None: the server's default (1, or its configured default)
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk: bool = False

    def __post_init__(self):
        for field in ("shards", "replication_factor", "write_consistency_factor"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{field} must be a positive integer, not {value!r}")
        w, r = self.write_consistency_factor, self.replication_factor
        if w is not None and w > (r or 1):
            raise ValueError(f"write_consistency_factor {w} is more than the replicas a shard has ({r or 1}): no "
                             "write could ever be acknowledged; raise --replication-factor or lower it")

    @property
    def is_default(self) -> bool:
        return self == Placement()

    def to_meta(self) -> dict:
        """What the collection's metadata records (only what was set)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}

    def create_kwargs(self) -> dict:
        """The keyword arguments of QdrantClient.create_collection that carry it (the vectors' own on_disk
        is plugin/designs.vectors_config's)."""
        out = {"shard_number": self.shards, "replication_factor": self.replication_factor,
               "write_consistency_factor": self.write_consistency_factor}
        if self.on_disk:
            out["on_disk_payload"] = True
        return {k: v for k, v in out.items() if v is not None}


def placement_from_meta(meta: dict) -> Placement:
    """The placement a collection's metadata records (the defaults when it records none)."""
    return Placement(**(meta.get("placement") or {}))


def describe(placement: Placement) -> str:
    if placement.is_default:
        return "placement: the server's defaults (1 shard, no replicas, in RAM)"
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in placement.to_meta().items() if k != "on_disk"]
    if placement.on_disk:
        parts.append("vectors and HNSW on disk")
    return "placement: " + ", ".join(parts)
