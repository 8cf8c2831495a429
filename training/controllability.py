"""Controllability of a trained model on the synthetic set: do its attribute weights steer the results,
and do its sub-queries specialise (docs/benchmarks/controllability.md)? The torch side of the measures;
the measures themselves are pure functions in cirdata/controllability.py, the probes cirdata/probes.py."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cirdata import controllability as ctl
from cirdata.metrics import top_k
from cirdata.probes import PROBE_FIELDS, ProbeRenderer
from cirdata.protocol import score_metrics
from cirdata.tables import CIRData
from encoder.preprocess import normalize
from training.evaluate import compose_queries, encode_gallery, query_hits
from training.losses import probe_scores, rowwise_maxsim
from training.model import DQECIR, maxsim_scores

PROBES = 3


@torch.no_grad()
def probe_target_scores(model: DQECIR, data: CIRData, root: Path, split: str, q_attrs: np.ndarray,
                        gallery_tokens: torch.Tensor) -> dict:
    """Each sub-query alone against the target (its tokens from `gallery_tokens`, the split's encoded gallery)
    and PROBES probes of each attribute: {(head, probed): (s_target [Q], s_probes [Q, PROBES] nan where
    missing)}."""
    names = [n for n in model.cfg.attributes if n in PROBE_FIELDS]
    renderer = ProbeRenderer(root, split, model.cfg.image_size)
    cfg = model.cfg
    probe_px, slots = [], {n: np.full((len(data.ref), PROBES), -1) for n in names}
    for i, (r, t) in enumerate(zip(data.ref, data.tgt, strict=True)):
        for n in names:
            px = renderer.probes(data.scene_keys[r], data.scene_keys[t], data.names[t], n, PROBES,
                                 np.random.default_rng([0, i]))
            slots[n][i, : len(px)] = np.arange(len(probe_px), len(probe_px) + len(px))
            probe_px.extend(px)
    toks = []
    for s in range(0, len(probe_px), 256):
        batch = normalize(np.stack(probe_px[s: s + 256]), cfg.mean, cfg.std)
        toks.append(model.encode_image(torch.from_numpy(batch)).float())
    probe_tokens = torch.cat(toks) if toks else torch.zeros(0, cfg.num_query_tokens, cfg.embed_dim)
    target_tokens = gallery_tokens[torch.from_numpy(np.asarray(data.tgt))]
    qa = torch.nn.functional.normalize(torch.from_numpy(q_attrs), dim=-1)
    out = {}
    for j, head in enumerate(model.cfg.attributes):
        if head not in names:
            continue
        s_t = rowwise_maxsim(qa[:, j], target_tokens).numpy()
        for probed in names:
            s_p = probe_scores(qa[:, j], probe_tokens, slots[probed]).numpy()  # -inf where a query has fewer
            out[(head, probed)] = (s_t, np.where(np.isinf(s_p), np.nan, s_p))
    return out


def measure(model: DQECIR, tok, data: CIRData, root: Path, split: str = "val") -> dict:
    """Every number of the page for one model (torch path), with the per-query R@1 / Rs@1 hits at the model's
    own weights ("hits", as '0'/'1' strings) for paired tests."""
    t0 = time.time()
    names = list(model.cfg.attributes)
    _, parts = compose_queries(model, tok, data)
    tokens = encode_gallery(model, data)
    groups = np.array([ctl.edit_group(k) for k in data.edit_kinds])
    q_base, q_attrs, w_model = parts["q_base"], parts["q_attrs"], parts["weights"]
    attrs_for_agreement = ctl.agreement_attributes(names)
    tkeys = [data.scene_keys[t] for t in data.tgt]
    settings, top10 = {}, {}
    for label, rule in ctl.weight_settings(names).items():
        w = torch.from_numpy(rule(w_model).astype(np.float32))
        q = model.fuse(torch.from_numpy(q_base), torch.from_numpy(q_attrs), w)
        scores = maxsim_scores(q, tokens)
        ranked = top_k(scores, 10, data.ref)  # the reference left out
        top10[label] = ranked
        if label == "model's":  # per-query hits at the model's own weights, for paired tests
            hits = {k: "".join("1" if h else "0" for h in v) for k, v in query_hits(data, scores).items()}
        overall = score_metrics(data, scores)
        row = {"all": {"R@1": overall["R@1"], "R@10": overall["R@10"], "Rs@1": overall["Rs@1"]}}
        for g in ctl.EDIT_GROUPS:
            sel = np.flatnonzero(groups == g)
            if not len(sel):
                continue
            top1 = np.mean([data.scene_keys[ranked[i, 0]] == tkeys[i] for i in sel])
            r10 = np.mean([tkeys[i] in {data.scene_keys[j] for j in ranked[i]} for i in sel])
            row[g] = {"n": int(len(sel)), "top-1": 100 * float(top1), "R@10": 100 * float(r10)}
            for a in attrs_for_agreement:
                row[g][f"top-10 {a} agreement"] = float(ctl.top_k_agreement(
                    ranked[sel], data.tgt[sel], data.scene_keys, a).mean())
        settings[label] = row
    out = {"settings": settings, "attributes": names}
    if len(names) >= 2:
        out["cos(q_0, q_1)"] = ctl.cosine(q_attrs[:, 0], q_attrs[:, 1])
    out["cos with q_base"] = {n: ctl.cosine(q_attrs[:, j], q_base) for j, n in enumerate(names)}
    out["weights by edit kind"] = {g: {n: float(w_model[groups == g, j].mean()) for j, n in enumerate(names)}
                                   for g in ctl.EDIT_GROUPS if (groups == g).any()}
    probes = probe_target_scores(model, data, root, split, q_attrs, tokens)
    out["probes"] = {}
    for (head, probed), (s_t, s_p) in probes.items():
        ok = ctl.has_probes(s_p)
        out["probes"][f"{head}|{probed}"] = {"n": int(ok.sum()),
                                             "first": 100 * float(ctl.first_among(s_t[ok], s_p[ok]).mean())}
    out["torch_top10"] = {k: v.tolist() for k, v in top10.items()}
    out["hits"] = hits
    out["seconds"] = round(time.time() - t0, 1)
    return out


def key_numbers(result: dict) -> dict:
    """The numbers the bars are about (docs/benchmarks/controllability.md), from measure()'s result of a
    model with color and shape sub-queries: the sub-queries' cosine, the steer on color-only and shape-only
    edits, each head's sensitivity and invariance, and the weights' move between those edits."""
    s, p, w = result["settings"], result["probes"], result["weights by edit kind"]
    return {"R@1": s["model's"]["all"]["R@1"], "Rs@1": s["model's"]["all"]["Rs@1"],
            "cos": result.get("cos(q_0, q_1)", float("nan")),
            "steer color": s["color alone"]["color"]["top-10 color agreement"]
            - s["shape alone"]["color"]["top-10 color agreement"],
            "steer shape": s["shape alone"]["shape"]["top-10 shape agreement"]
            - s["color alone"]["shape"]["top-10 shape agreement"],
            "color sens": p["color|color"]["first"], "color inv": p["color|shape"]["first"],
            "shape sens": p["shape|shape"]["first"], "shape inv": p["shape|color"]["first"],
            "w_color color-shape": w["color"]["color"] - w["shape"]["color"],
            "w_shape shape-color": w["shape"]["shape"] - w["color"]["shape"]}
