"""Evaluation through the served path (bundle + Qdrant + CIRSearch). The CIRR protocol is
cirdata.protocol's, the function torch evaluation uses: only the rankings come from elsewhere (CIRSearch
over Qdrant). Scoring through Qdrant needs no torch; `compare_served` also runs the torch evaluation of
the same checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from cirdata.datasets import CIRRSplit, load_cirr
from cirdata.protocol import RANK_DEPTH, Rankings, cirr_queries, ranked_metrics, short_rankings


def write_manifest(data: CIRRSplit, path: Path) -> Path:
    """A JSONL catalog manifest of a CIRR-layout split: id = image name, uri relative to the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for name, img in data.images.items():
            f.write(json.dumps({"id": name, "uri": str(img.relative_to(path.parent.resolve())),
                                "split": data.split}) + "\n")
    return path


def served_metrics(search, data: CIRRSplit, batch: int = 32, progress: bool = True,
                   max_queries: int | None = None) -> tuple[dict, list]:
    """CIRR-protocol metrics of CIRSearch's rankings (cirdata.protocol, as torch evaluation computes
    them); also returns the top-5 of every query."""
    from plugin.search import ItemRef

    queries = cirr_queries(data)[: max_queries or None]
    captions = [q.caption for q in data.queries[: len(queries)]]  # cirr_queries keeps the split's order
    rankings = Rankings([], [])
    bar = tqdm(total=len(queries), desc="served queries", unit="q", disable=not progress)
    for s in range(0, len(queries), batch):
        qs = queries[s: s + batch]
        refs = [ItemRef(q.reference) for q in qs]
        texts = captions[s: s + batch]
        full = search.query_batch(refs, texts, k=RANK_DEPTH, exact=True)  # the reference is left out
        rankings.ranked += [[h.id for h in hits] for hits in full]
        for q, ref, text in zip(qs, refs, texts, strict=True):
            members = [m for m in q.members if m != q.reference]
            hits = search.query(ref, text, k=len(members), exact=True, filter={"item_id": members})
            rankings.subset.append([h.id for h in hits])
        bar.update(len(qs))
    bar.close()
    short = short_rankings(queries, rankings, depth=min(RANK_DEPTH, len(data.images) - 1))
    if short:  # scored as misses beyond their end; say which, so that nobody mistakes them for a model's fault
        ids = ", ".join(str(data.queries[i].pairid) for i in short[:10])
        print(f"warning: {len(short)} of {len(queries)} served rankings came back shorter than the protocol's "
              f"depth (failed items or filters?), scored as misses beyond their end; pairids {ids}"
              f"{' ...' if len(short) > 10 else ''}", file=sys.stderr)
    return ranked_metrics("cirr", queries, rankings), [r[:5] for r in rankings.ranked]


def served_eval(bundle: str | Path, root: str | Path, split: str, qdrant_path: str | Path,
                alias: str = "catalog", progress: bool = True,
                max_queries: int | None = None) -> tuple[dict, list, CIRRSplit, object]:
    """Index a CIRR-layout split (in-process, on the embedded engine QDRANT_ENGINE) with the bundle, then score
    it through CIRSearch. Returns (metrics, top-5 per query, the split, the indexing report)."""
    from encoder import Encoder
    from indexer.reindex_inprocess import index_catalog
    from indexer.settings import load_settings
    from plugin import store
    from plugin.search import CIRSearch

    data = load_cirr(root, split)
    manifest = write_manifest(data, Path(root) / f"catalog.{split}.jsonl")
    client = store.open_embedded(str(qdrant_path), load_settings().qdrant_engine)
    try:
        enc = Encoder(bundle)
        report = index_catalog(client, enc, manifest, alias=alias, progress=progress)
        search = CIRSearch(client, alias, encoder=enc, catalog_root=manifest.parent)
        metrics, tops = served_metrics(search, data, progress=progress, max_queries=max_queries)
    finally:
        client.close()
    return metrics, tops, data, report


def compare_served(checkpoint: str | Path, kind: str, root: str | Path, split: str, max_queries: int | None = None,
                   bundle: str | Path | None = None, progress: bool = True) -> dict:
    """Torch metrics and the same metrics through bundle + local-mode Qdrant + CIRSearch, side by side
    (the checkpoint is exported to a temporary bundle unless `bundle` is given)."""
    import tempfile

    from cirdata.tables import load_cir_data
    from training.errors import TrainingError
    from training.evaluate import evaluate
    from training.export import export_bundle
    from training.train import load_checkpoint

    if kind not in ("synth", "cirr"):
        raise TrainingError("--served scores the CIRR protocol: use --data synth or cirr")
    model, tok, _ = load_checkpoint(checkpoint)
    data = load_cir_data(kind, root, split, model.cfg.image_size, progress, max_queries)
    torch_metrics = evaluate(model, tok, data).metrics
    with tempfile.TemporaryDirectory() as tmp:
        if bundle is None:
            bundle = Path(tmp) / "bundle"
            export_bundle(model, tok, bundle, log=lambda *_: None)
        served, _, _, _ = served_eval(bundle, root, split, Path(tmp) / "qdrant", progress=progress,
                                      max_queries=max_queries)
    return {"torch": {k: v for k, v in torch_metrics.items() if k in served}, "served": served,
            "max_abs_diff": max(abs(served[k] - torch_metrics[k]) for k in served)}
