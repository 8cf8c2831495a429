"""The versions behind an alias: `<alias>__<UTC stamp>[-n]` collections and their life.

A full job creates a version in state `building`, fills it, and then either
- marks it `complete` (after the count check and the failed-share rule of indexer.report), switches
  the alias to it, and prunes: the newest `keep` complete versions stay (the live one included), older
  complete ones and builds left `building` by a job that died go; or
- refuses: the alias stays where it was, and the build is deleted, or kept as `failed` (--keep-failed)
  until someone deletes it.
Rollback moves the alias to the newest *complete* version older than the live one. Collections made
before build states existed (no state) are never pruned and never rolled back to.
Callers hold the alias's job lock (indexer.locks), so no other job is filling a version of this alias.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace as dc_replace

from qdrant_client import QdrantClient

from encoder.bundle import BundleSpec
from indexer.errors import IndexerError
from indexer.report import JobReport, SwapPolicy, incremental_problem, swap_problem
from plugin import store
from plugin.designs import Design
from plugin.placement import Placement

log = logging.getLogger(__name__)
VERSION = re.compile(r"(?P<stamp>\d{14})(?:-(?P<n>\d+))?")


def version_key(alias: str, name: str) -> tuple[str, int] | None:
    """Sort key of a version of `alias`, None for any other collection."""
    prefix = f"{alias}__"
    m = VERSION.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
    return (m["stamp"], int(m["n"] or 0)) if m else None


def versions(client: QdrantClient, alias: str) -> list[str]:
    """The versions of `alias`, oldest first."""
    named = [(version_key(alias, c), c) for c in store.collections(client)]
    return [c for key, c in sorted((k, c) for k, c in named if k is not None)]


def state(client: QdrantClient, name: str) -> str | None:
    """building, complete or failed; None for a collection without a build state (or not ours)."""
    try:
        return store.build_state(client, name)
    except store.StoreError:
        return None


DESIGN_SETTINGS = ("m", "ef_construct", "hnsw_ef")


def current_design(client: QdrantClient, alias: str) -> Design | None:
    """The design (with its settings) of the version the alias points at; None without one."""
    name = store.alias_target(client, alias)
    if name is None:
        return None
    try:
        return store.design_from(store.recorded_meta(client, name), name)  # no count: the service may hold it
    except store.StoreError:
        return None


def next_design(current: Design | None, design: str | Design | None = None, **settings) -> Design:
    """The design of a new version: `design` when named (with the current one's settings if it is the same
    design), else the current one (a re-index keeps the alias's design and settings), else the default; then
    any of m / ef_construct / hnsw_ef given (None: unchanged)."""
    unknown = sorted(set(settings) - set(DESIGN_SETTINGS))
    if unknown:
        raise IndexerError(f"unknown design settings {unknown}; known: {', '.join(DESIGN_SETTINGS)}")
    if isinstance(design, Design):
        base = design
    elif design is not None:
        base = current if current is not None and current.name == design else store.checked_design(design)
    else:
        base = current or store.checked_design(store.DEFAULT_DESIGN)
    chosen = dc_replace(base, **{k: v for k, v in settings.items() if v is not None})
    try:
        return store.checked_design(chosen)
    except store.StoreError as e:
        raise IndexerError(str(e)) from e


def new_version(client: QdrantClient, alias: str, spec: BundleSpec, payload_indexes: dict | None = None,
                storage: str = "fp32", design: str | Design | None = None, placement: Placement | None = None,
                **settings) -> str:
    """Create the next version of `alias` (state building) and return its name, which sorts after every
    existing version, also when one was deleted within the same second. `design`: its first-stage layout
    (plugin/designs.py); None keeps the alias's current design and its settings (the default for a new
    alias); `settings`: m / ef_construct / hnsw_ef over it. A change of design or settings is logged.
    `placement`: shards, replicas, write consistency, on-disk vectors (plugin/placement.py)."""
    current = current_design(client, alias)
    chosen = next_design(current, design, **settings)
    if current is not None and chosen != current:
        log.warning("alias %r: the new version's design is %s (the live one's was %s)", alias, _shown(chosen),
                    _shown(current))
    design = chosen
    stamp, n = time.strftime("%Y%m%d%H%M%S", time.gmtime()), 0
    keys = [version_key(alias, c) for c in store.collections(client)]
    latest = max((k for k in keys if k is not None), default=None)
    if latest is not None and latest[0] >= stamp:  # same second (or a clock behind): still sorts newest
        stamp, n = latest[0], latest[1] + 1
    name = f"{alias}__{stamp}" + (f"-{n}" if n else "")
    store.create_collection(client, name, spec, payload_indexes, storage, design, placement)
    return name


def _shown(d: Design) -> str:
    params = ", ".join(f"{k}={getattr(d, k)}" for k in DESIGN_SETTINGS if getattr(d, k) is not None)
    return f"{d.name}" + (f" ({params})" if params else "")


def incremental_target(client: QdrantClient, alias: str, fingerprint: str, design: str | Design | None = None,
                       placement: Placement | None = None, **settings) -> str:
    """The collection an incremental run writes into: the alias's target, indexed with this bundle. It keeps
    its design: a design or setting that differs from the target's is refused, not silently ignored."""
    name = store.alias_target(client, alias)
    if name is None:
        raise IndexerError(f"alias {alias!r} does not exist yet; run a full index first (without --incremental)")
    if placement is not None and not placement.is_default:
        raise IndexerError(f"an incremental run writes into {name} where it is; shards, replicas and on-disk "
                           "storage are chosen by a full re-index (drop --incremental)")
    if design is not None or any(v is not None for v in settings.values()):
        current = current_design(client, alias)
        if current is None or next_design(current, design, **settings) != current:
            shown = _shown(current) if current else "?"
            raise IndexerError(f"an incremental run writes into {name} as it is ({shown}); a design or its settings "
                               "change only with a full re-index (drop --incremental)")
    try:
        store.check_fingerprint(client, name, fingerprint)
    except store.StoreError as e:
        raise IndexerError(f"{e}. An incremental run needs the same bundle; run a full re-index") from e
    return name


def finish_full(client: QdrantClient, report: JobReport, policy: SwapPolicy) -> None:
    """Check the build; switch the alias to it and prune, or refuse with an IndexerError carrying the report."""
    name, alias = report.collection, report.alias
    store.seal(client, name)  # the edge engine builds its graphs here, before the count and the swap
    problem = swap_problem(report, store.count(client, name), policy.max_failed)
    if problem:
        report.problem = problem
        kept = abandon(client, name, policy, problem)
        raise IndexerError(f"{problem}. The alias {alias!r} was not switched (it still points at "
                           f"{store.alias_target(client, alias) or 'nothing'}); {kept}", report=report)
    store.set_state(client, name, store.COMPLETE)
    report.previous = store.switch_alias(client, alias, name)
    report.pruned = prune(client, alias, policy.keep)


def abandon(client: QdrantClient, name: str, policy: SwapPolicy, reason: str) -> str:
    """Delete a build that will not go live (or keep it as failed). Returns what was done, in words."""
    if policy.keep_failed:
        store.set_state(client, name, store.FAILED, reason)
        return f"the build {name} is kept with state 'failed' (--keep-failed; delete it when done with it)"
    store.drop_collection(client, name)
    return f"the build {name} was deleted (--keep-failed keeps a refused build)"


def abandon_quietly(client: QdrantClient, name: str, policy: SwapPolicy, reason: str) -> None:
    """`abandon` while another exception is on its way out: a second failure is logged, not raised over it."""
    try:
        abandon(client, name, policy, reason)
    except Exception:
        log.exception("could not remove the unfinished build %s; the next successful swap prunes it", name)


def finish_incremental(client: QdrantClient, report: JobReport, catalog_ids: set[str], policy: SwapPolicy) -> None:
    """Delete the items the catalog no longer lists, unless the run looks broken (then IndexerError)."""
    problem = incremental_problem(report, policy.max_failed)
    if problem:
        report.problem = problem
        raise IndexerError(f"{problem}. Nothing was deleted from {report.collection}; the {report.indexed} new or "
                           "changed items written stay (they are correct)", report=report)
    gone = [p["item_id"] for p in store.scroll_payloads(client, report.collection, ["item_id"])
            if p.get("item_id") not in catalog_ids]
    for s in range(0, len(gone), 1000):
        store.delete(client, report.collection, gone[s: s + 1000])
    report.deleted = len(gone)
    store.seal(client, report.collection)


def prune(client: QdrantClient, alias: str, keep: int) -> list[str]:
    """Delete the complete versions of `alias` beyond the newest `keep`, and builds left `building` by a job
    that died; never a collection some alias points at, a failed build kept on purpose (--keep-failed),
    or one without a build state."""
    protected = set(store.aliases(client).values())
    states = {v: state(client, v) for v in versions(client, alias)}
    complete = [v for v, s in states.items() if s == store.COMPLETE]
    keep_set = set(complete[-keep:]) | protected
    doomed = [v for v, s in states.items() if v not in keep_set and s in (store.COMPLETE, store.BUILDING)]
    for v in doomed:
        store.drop_collection(client, v)
    return doomed


def rollback(client: QdrantClient, alias: str) -> tuple[str, str]:
    """Point the alias back at the newest complete version older than the live one. Returns (from, to)."""
    current = store.alias_target(client, alias)
    if current is None:
        raise IndexerError(f"alias {alias!r} does not exist")
    key = version_key(alias, current)
    older = [v for v in versions(client, alias) if v != current and (key is None or version_key(alias, v) < key)]
    states = {v: state(client, v) for v in older}
    good = [v for v in older if states[v] == store.COMPLETE]
    if not good:
        skipped = ", ".join(f"{v} ({states[v] or 'no build state'})" for v in older) or "none"
        raise IndexerError(f"alias {alias!r} points at {current}, and no older complete version is kept to roll back "
                           f"to (older versions: {skipped})")
    store.switch_alias(client, alias, good[-1])
    return current, good[-1]


def finish(client: QdrantClient, report: JobReport, catalog_ids: set[str], policy: SwapPolicy) -> None:
    """End a job by its mode: a full build goes live or is refused; an incremental run deletes what is gone."""
    if report.mode == "incremental":
        finish_incremental(client, report, catalog_ids, policy)
    else:
        finish_full(client, report, policy)
