"""The files the benchmarks' test servers take, written from the protocol's rankings (cirdata/protocol.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cirdata.errors import DataError
from cirdata.protocol import Rankings


def write_cirr_submission(out_dir: str | Path, pairids: Sequence[int], rankings: Rankings,
                          prefix: str = "cirr") -> tuple[Path, Path]:
    """The two files of the CIRR test server: each pair's top 50 names and top 3 img_set members, the
    reference left out of both (as `rank_scores` and CIRSearch rank them)."""
    if rankings.subset is None:
        raise DataError("a CIRR submission needs the img_set rankings (Rankings.subset) too")
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for pid, ranked, members in zip(pairids, rankings.ranked, rankings.subset, strict=True):
        recall[str(pid)] = list(ranked[:50])
        subset[str(pid)] = list(members[:3])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{prefix}_recall_submission.json", out_dir / f"{prefix}_recall_subset_submission.json")
    paths[0].write_text(json.dumps(recall))
    paths[1].write_text(json.dumps(subset))
    return paths


def write_circo_submission(path: str | Path, query_ids: Sequence[int], rankings: Rankings) -> Path:
    """{"<query id>": [top 50 image ids]} for the CIRCO test server (ids as numbers, as COCO's are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(q): [int(x) for x in r[:50]]
                                for q, r in zip(query_ids, rankings.ranked, strict=True)}))
    return path
