"""What a job did (JobReport) and the rules that decide whether its result may go live (pure functions).

A full build moves the alias only when something was indexed, the stored count equals the indexed
count, and the failed share is at most `max_failed`. An incremental run deletes the items gone from
the catalog only when the catalog is not empty and its failed share is within the same bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from indexer.errors import IndexerError

DEFAULT_MAX_FAILED = 0.01
DEFAULT_KEEP = 2


@dataclass(frozen=True)
class SwapPolicy:
    """max_failed: the largest failed share (0..1) that still switches the alias; keep: complete versions
    kept after a swap, the live one included; keep_failed: keep a refused build (state failed) to look at
    instead of deleting it (it stays until deleted by hand, and is never switched or rolled back to)."""

    max_failed: float = DEFAULT_MAX_FAILED
    keep: int = DEFAULT_KEEP
    keep_failed: bool = False

    def __post_init__(self):
        if not 0.0 <= self.max_failed <= 1.0:
            raise IndexerError(f"--max-failed must be a share from 0 to 1 (or 0% to 100%), not {self.max_failed}")
        if self.keep < 1:
            raise IndexerError(f"--keep must be at least 1 (the live version), not {self.keep}")


def parse_share(text: str) -> float:
    """'1%' -> 0.01, '0.05' -> 0.05."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError as e:
        raise IndexerError(f"--max-failed {text!r}: give a share like 0.01 or a percentage like 1%") from e


@dataclass
class JobReport:
    alias: str
    collection: str
    mode: str  # full | incremental
    total: int = 0
    indexed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[dict] = field(default_factory=list)  # {"item_id", "uri", "reason"}
    previous: str | None = None
    seconds: float = 0.0
    problem: str | None = None  # why the alias was not switched (or, incremental, nothing was deleted)
    lost_chunks: list[str] = field(default_factory=list)  # chunks no worker reported on by the deadline
    pruned: list[str] = field(default_factory=list)  # older versions deleted after the swap
    job_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _failed_share(report: JobReport) -> float:
    return len(report.failed) / report.total if report.total else 0.0


def _over_limit(report: JobReport, max_failed: float) -> str | None:
    share = _failed_share(report)
    if share <= max_failed:
        return None
    return (f"{len(report.failed)} of {report.total} items failed ({share:.1%}), more than --max-failed "
            f"{max_failed:.1%} allows (first: {report.failed[0]['item_id']}: {report.failed[0]['reason']})")


def _with_lost(problem: str, report: JobReport) -> str:
    if not report.lost_chunks:
        return problem
    more = f" and {len(report.lost_chunks) - 5} more" if len(report.lost_chunks) > 5 else ""
    return f"{problem}; lost chunks: {', '.join(report.lost_chunks[:5])}{more}"


def swap_problem(report: JobReport, stored: int, max_failed: float) -> str | None:
    """Why a full build must not go live, or None when it may."""
    if report.total == 0:
        problem = "the catalog is empty"
    elif report.indexed == 0:
        first = report.failed[0] if report.failed else {"item_id": "-", "reason": "-"}
        problem = (f"none of the {report.total} items was indexed (first failure: {first['item_id']}: "
                   f"{first['reason']})")
    elif stored != report.indexed:
        problem = f"collection {report.collection} holds {stored} points but {report.indexed} items were indexed"
    else:
        problem = _over_limit(report, max_failed)
    return _with_lost(problem, report) if problem else None


def incremental_problem(report: JobReport, max_failed: float) -> str | None:
    """Why an incremental run must not delete what the catalog no longer lists, or None when it may."""
    if report.total == 0:
        problem = "the catalog is empty: deleting what it no longer lists would empty the collection"
    else:
        problem = _over_limit(report, max_failed)
    return _with_lost(problem, report) if problem else None
