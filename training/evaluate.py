"""Evaluation with each benchmark's protocol, on torch (the reference the served path must match)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cirdata import protocol
from cirdata.tables import CIRData
from encoder.fusion import resolve_weights
from encoder.text import TextTokenizer
from training.attributes import scene_objects
from training.model import DQECIR, inference_autocast, maxsim


@dataclass
class Evaluation:
    metrics: dict  # the protocol's metrics (+ "errors" on the synthetic set)
    scores: np.ndarray  # [queries, gallery] MaxSim of every fused query, for submissions and analysis


@torch.no_grad()
def encode_gallery(model: DQECIR, data: CIRData, batch_size: int = 256, idx: np.ndarray | None = None,
                   keep_on_device: bool = False) -> torch.Tensor:
    """Image tokens [N, K, D] (float32) of the gallery, or of the images `idx`; on CPU unless keep_on_device."""
    model.eval()
    cfg = model.cfg
    idx = np.arange(len(data.names)) if idx is None else np.asarray(idx)
    out = []
    for s in range(0, len(idx), batch_size):
        with inference_autocast(model):
            tokens = model.encode_image(_to(model, data.batch_pixels(idx[s: s + batch_size], cfg.mean, cfg.std)))
        out.append(tokens.float() if keep_on_device else tokens.float().cpu())
    if not out:
        k, d = cfg.num_query_tokens, cfg.embed_dim
        return torch.zeros(0, k, d, device=_device(model) if keep_on_device else "cpu")
    return torch.cat(out)


@torch.no_grad()
def gallery_scores(model: DQECIR, data: CIRData, q: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """MaxSim [Q, N] of fused queries against the whole gallery, encoded a batch at a time and scored
    at once: memory O(Q x N) scores, never the gallery's tokens (CIRCO's are 4 GB in float32)."""
    model.eval()
    cfg = model.cfg
    q = q.to(_device(model))
    out = np.empty((len(q), len(data.names)), dtype=np.float32)
    for s in range(0, len(data.names), batch_size):
        idx = np.arange(s, min(s + batch_size, len(data.names)))
        with inference_autocast(model):
            tokens = model.encode_image(_to(model, data.batch_pixels(idx, cfg.mean, cfg.std)))
        out[:, idx] = maxsim(q, tokens.float()).cpu().numpy()
    return out


def _device(model: DQECIR) -> torch.device:
    return next(model.parameters()).device


def _to(model: DQECIR, array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).to(next(model.parameters()).device)


@torch.no_grad()
def compose_queries(model: DQECIR, tok: TextTokenizer, data: CIRData, batch_size: int = 256,
                    weights_override: dict | None = None, idx: np.ndarray | None = None):
    """Fused query vectors [Q, D] and the composer's parts (numpy) for every query (or the queries idx)."""
    model.eval()
    cfg = model.cfg
    idx = np.arange(len(data.ref)) if idx is None else np.asarray(idx)
    parts = {"q_base": [], "q_attrs": [], "weights": []}
    for s in range(0, len(idx), batch_size):
        sel = idx[s: s + batch_size]
        ids, mask = tok([data.texts[i] for i in sel])
        px = _to(model, data.batch_pixels(data.ref[sel], cfg.mean, cfg.std))
        with inference_autocast(model):
            composed = model.compose(px, _to(model, ids), _to(model, mask))
        for k, v in zip(parts, composed, strict=True):
            parts[k].append(v.float().cpu())
    if not len(idx):
        d, a = cfg.embed_dim, len(cfg.attributes)
        return torch.zeros(0, d), {"q_base": np.zeros((0, d), np.float32), "q_attrs": np.zeros((0, a, d), np.float32),
                                   "weights": np.zeros((0, a), np.float32)}
    parts = {k: torch.cat(v) for k, v in parts.items()}
    w = torch.from_numpy(resolve_weights(parts["weights"].numpy(), weights_override, cfg.attributes))
    q = model.fuse(parts["q_base"], parts["q_attrs"], w)
    return q, {k: v.numpy() for k, v in parts.items()}


def query_hits(data: CIRData, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per query (CIRR protocol, as the metrics count them): right at R@1 and at Rs@1, bool [Q]; what a
    paired test between two models compares."""
    queries = protocol.queries_of(data)
    return protocol.query_hits(queries, protocol.rank_scores("cirr", data, scores, depth=1, queries=queries))


def top1_without_reference(data: CIRData, scores: np.ndarray) -> np.ndarray:
    """Each query's best gallery image other than its reference (what the edit diagnostics look at)."""
    s = np.array(scores, dtype=np.float64)
    s[np.arange(len(s)), data.ref] = -np.inf
    return s.argmax(axis=1)


def error_breakdown(data: CIRData, scores: np.ndarray) -> dict:
    """Synthetic set: why the top-1 (reference excluded) is wrong, by comparing its scene with the
    target's: wrong color, wrong shape, or other (position, size, wrong object...)."""
    if data.scene_keys is None:
        return {}
    top = top1_without_reference(data, scores)
    counts = {"correct": 0, "wrong_color": 0, "wrong_shape": 0, "wrong_other": 0}
    for i, t in enumerate(top):
        got, want = data.scene_keys[t], data.scene_keys[data.tgt[i]]
        if got == want:
            counts["correct"] += 1
            continue
        g, w = scene_objects(got), scene_objects(want)
        if [(p, z, sh) for p, z, _, sh in g] == [(p, z, sh) for p, z, _, sh in w]:
            counts["wrong_color"] += 1
        elif [(p, z, c) for p, z, c, _ in g] == [(p, z, c) for p, z, c, _ in w]:
            counts["wrong_shape"] += 1
        else:
            counts["wrong_other"] += 1
    n = max(len(top), 1)
    return {k: 100.0 * v / n for k, v in counts.items()}


def edit_accuracy(data: CIRData, scores: np.ndarray) -> dict:
    """Top-1 accuracy (reference excluded, a same-scene duplicate of the target counts) per kind of
    edit: color, shape, and every other kind together. Synthetic set only (it knows the edit kinds)."""
    if data.scene_keys is None or not any(data.edit_kinds):
        return {}
    top = top1_without_reference(data, scores)
    hits: dict[str, list[bool]] = {"color": [], "shape": [], "other": []}
    for i, t in enumerate(top):
        kind = data.edit_kinds[i] if data.edit_kinds[i] in ("color", "shape") else "other"
        hits[kind].append(data.scene_keys[t] == data.scene_keys[data.tgt[i]])
    return {f"{k}-edit top-1": 100.0 * float(np.mean(v)) for k, v in hits.items() if v}


def evaluate(model: DQECIR, tok: TextTokenizer, data: CIRData, weights_override: dict | None = None) -> Evaluation:
    """Score every query against the gallery; a split without targets (a test split) gets no metrics."""
    q, _ = compose_queries(model, tok, data, weights_override=weights_override)
    scores = gallery_scores(model, data, q)
    if (data.tgt < 0).any():
        return Evaluation({}, scores)
    metrics = protocol.score_metrics(data, scores)
    errors = error_breakdown(data, scores)
    if errors:
        metrics["errors"] = errors
    return Evaluation(metrics, scores)

