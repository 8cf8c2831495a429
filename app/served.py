"""Evaluation through the served path (bundle + Qdrant + CIRSearch) and the demo's picture of a few
queries. The CIRR protocol, as in training/evaluate.py: the reference is left out of its own results,
Rs@K ranks the img_set members other than the reference. Scoring through Qdrant needs no torch;
`compare_served` also runs the torch evaluation of the same checkpoint."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from training.datasets import CIRRSplit, load_cirr
from training.metrics import CIRR_KS, CIRR_SUBSET_KS, recall_at_k


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
    """CIRR-protocol metrics from CIRSearch results; also returns the top-5 of every query."""
    from plugin.search import ItemRef

    ranks, sub_ranks, tops = [], [], []
    queries = data.queries[:max_queries] if max_queries else data.queries
    bar = tqdm(total=len(queries), desc="served queries", unit="q", disable=not progress)
    for s in range(0, len(queries), batch):
        qs = queries[s: s + batch]
        refs = [ItemRef(q.reference) for q in qs]
        texts = [q.caption for q in qs]
        full = search.query_batch(refs, texts, k=max(CIRR_KS), exact=True)
        for q, hits in zip(qs, full, strict=True):
            ids = [h.id for h in hits]
            ranks.append(ids.index(q.target) if q.target in ids else max(CIRR_KS))
            tops.append(ids[:5])
        for q, ref, text in zip(qs, refs, texts, strict=True):
            members = [m for m in q.members if m != q.reference]
            hits = search.query(ref, text, k=len(members), exact=True, filter={"item_id": members})
            ids = [h.id for h in hits]
            sub_ranks.append(ids.index(q.target) if q.target in ids else len(members))
        bar.update(len(qs))
    bar.close()
    out = recall_at_k(np.array(ranks), CIRR_KS)
    out.update(recall_at_k(np.array(sub_ranks), CIRR_SUBSET_KS, prefix="Rs"))
    out["Avg"] = (out["R@5"] + out["Rs@1"]) / 2
    return out, tops


def query_sheet(data: CIRRSplit, tops: list[list[str]], out_dir: Path, n: int = 6,
                thumb: int = 96) -> tuple[Path, Path]:
    """A PNG and an HTML page: reference, text, top-5 (target framed in green)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = list(range(min(n, len(tops))))
    text_w = 260
    sheet = Image.new("RGB", (thumb * 6 + text_w + 40, (thumb + 30) * len(rows) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    cells = []
    for r, qi in enumerate(rows):
        q = data.queries[qi]
        y = 10 + r * (thumb + 30)
        sheet.paste(Image.open(data.images[q.reference]).convert("RGB").resize((thumb, thumb)), (10, y))
        draw.text((10, y + thumb + 2), "reference", fill="black")
        draw.multiline_text((thumb + 20, y + 10), _wrap(q.caption, 36), fill="black")
        for j, name in enumerate(tops[qi][:5]):
            x = thumb + text_w + 30 + j * thumb
            sheet.paste(Image.open(data.images[name]).convert("RGB").resize((thumb - 6, thumb - 6)), (x + 3, y + 3))
            if name == q.target:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline=(0, 170, 0), width=3)
            draw.text((x + 3, y + thumb + 2), f"#{j + 1}", fill="black")
        cells.append((q, tops[qi][:5]))
    png = out_dir / "queries.png"
    sheet.save(png)
    page = ["<!doctype html><meta charset=utf-8><title>DQE-CIR demo queries</title>",
            "<style>img{width:96px;height:96px;margin:2px;image-rendering:pixelated}.t{outline:4px solid #0a0}"
            "td{vertical-align:middle;padding:4px}</style><h1>DQE-CIR demo: composed queries</h1><table>"]
    for q, top in cells:
        imgs = "".join(f'<img src="{data.images[n].as_uri()}" class="{"t" if n == q.target else ""}" '
                       f'title="{html.escape(n)}">' for n in top)
        page.append(f'<tr><td><img src="{data.images[q.reference].as_uri()}"></td><td>{html.escape(q.caption)}'
                    f"</td><td>{imgs}</td></tr>")
    page.append("</table><p>Green frame: the target.</p>")
    page_path = out_dir / "queries.html"
    page_path.write_text("\n".join(page))
    return png, page_path


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def served_eval(bundle: str | Path, root: str | Path, split: str, qdrant_path: str | Path,
                alias: str = "catalog", progress: bool = True,
                max_queries: int | None = None) -> tuple[dict, list, CIRRSplit, object]:
    """Index a CIRR-layout split (in-process, local mode) with the bundle, then score it through
    CIRSearch. Returns (metrics, top-5 per query, the split, the indexing report)."""
    from qdrant_client import QdrantClient

    from encoder import Encoder
    from indexer.jobs import index_catalog
    from plugin.search import CIRSearch

    data = load_cirr(root, split)
    manifest = write_manifest(data, Path(root) / f"catalog.{split}.jsonl")
    client = QdrantClient(path=str(qdrant_path))
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

    from training.cir_data import load_cir_data
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
