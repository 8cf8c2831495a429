"""Objectives: DQE-CIR's pairwise KL + margin ranking + attribute-aware auxiliary, and the in-batch
contrastive baseline (SPRC/QuRe style), each switchable for ablations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.model import maxsim


def pairwise_kl(s_pos: torch.Tensor, s_neg: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """-log sigmoid((s_pos - s_neg) / tau): the KL between [1, 0] and softmax([s_pos, s_neg] / tau).
    tau is the pairwise term's own temperature (TrainConfig.pair_tau), not the contrastive one."""
    return -F.logsigmoid((s_pos - s_neg) / tau).mean()


def rowwise_maxsim(q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """s[i] = max_k <q_i, T_{i,k}>: each query against its own image (q [n, D], tokens [n, K, D])."""
    return (q[:, None] * tokens).sum(-1).amax(-1)


def attribute_loss(q_attrs: torch.Tensor, t_pos: torch.Tensor, tokens: torch.Tensor, neg_at: np.ndarray,
                   tau: float, per_attribute: np.ndarray | None = None) -> torch.Tensor:
    """The attribute-aware term: for each attribute a, its (normalised) sub-query must score the target
    above that attribute's own negative (tokens[neg_at[i, a]]; -1: query i has none). The pairwise KL
    averaged over the queries that have one, then over the attributes that have any.

    per_attribute [A]: how many queries of the whole batch have a negative for each attribute, divided
    by the number of processes (default: this process's own counts). With it, each process's term is
    its share of the whole batch's, so DDP's average of the processes' gradients is the gradient of
    the single-process term however unevenly the negatives fall on the processes."""
    if per_attribute is None:
        per_attribute = (neg_at >= 0).sum(axis=0)
    terms = []
    for a in range(q_attrs.shape[1]):
        if per_attribute[a] <= 0:
            continue
        rows = np.flatnonzero(neg_at[:, a] >= 0)
        if not len(rows):
            terms.append(q_attrs.new_zeros(()))
            continue
        r = torch.from_numpy(rows).to(q_attrs.device)
        qa = F.normalize(q_attrs[r, a], dim=-1)
        neg = tokens[torch.from_numpy(neg_at[rows, a]).to(tokens.device)]
        kl_sum = pairwise_kl(rowwise_maxsim(qa, t_pos[r]), rowwise_maxsim(qa, neg), tau) * len(rows)
        terms.append(kl_sum / float(per_attribute[a]))
    return torch.stack(terms).mean() if terms else q_attrs.new_zeros(())


def margin_ranking(s_pos: torch.Tensor, s_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, m - (s_pos - s_neg)) on un-tempered scores."""
    return F.relu(margin - (s_pos - s_neg)).mean()


def in_batch_contrastive(scores: torch.Tensor, tau: torch.Tensor, same: torch.Tensor | None = None,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE over the batch's targets: scores [B, C >= B], row i's positive at column labels[i]
    (default i; the other columns are negatives: other targets, hard distractors, other GPUs' columns).
    `same` [B, C] marks other columns that hold the same scene as row i's target: they are masked
    out instead of being pushed away as negatives."""
    if labels is None:
        labels = torch.arange(len(scores), device=scores.device)
    logits = scores / tau
    if same is not None:
        positive = torch.zeros_like(same)
        positive[torch.arange(len(scores), device=scores.device), labels] = True
        logits = logits.masked_fill(same & ~positive, float("-inf"))
    return F.cross_entropy(logits, labels)


# -- sub-queries that specialise: attribute probes, invariance, decorrelation, weight labels -------------
def probe_scores(q: torch.Tensor, probe_tokens: torch.Tensor, probe_at: np.ndarray) -> torch.Tensor:
    """s[i, j] = maxsim(q_i, probe j of query i) over the flattened [n, P] probe slots of probe_at
    (an index into probe_tokens, -1: no probe there -> -inf). q [n, D] or [n, A, D] -> [n, P] or [n, A, P]."""
    at = torch.from_numpy(probe_at.reshape(len(probe_at), -1)).to(probe_tokens.device)
    toks = probe_tokens[at.clamp(min=0)]  # [n, P, K, D]
    if q.ndim == 2:
        s = torch.einsum("nd,npkd->npk", q, toks).amax(-1)
        return s.masked_fill(at < 0, float("-inf"))
    s = torch.einsum("nad,npkd->napk", q, toks).amax(-1)
    return s.masked_fill((at < 0)[:, None], float("-inf"))


def attribute_sensitivity(s_target: torch.Tensor, s_probes: torch.Tensor, tau: float) -> torch.Tensor:
    """Each sub-query must rank the target first among the target and its OWN attribute's probes:
    s_target [n, A], s_probes [n, A, k] (-inf where missing). Softmax cross-entropy at temperature tau
    over [target, probes], averaged over the (query, attribute) pairs that have a probe."""
    has = torch.isfinite(s_probes).any(-1)
    if not bool(has.any()):
        return s_target.new_zeros(())
    logits = torch.cat([s_target[..., None], s_probes], dim=-1)[has] / tau
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def attribute_invariance(s_target: torch.Tensor, s_probes: torch.Tensor, tau: float) -> torch.Tensor:
    """A sub-query should not care about ANOTHER attribute: s_target [n, A] and s_probes [n, A, B, k] (head
    a's scores of attribute b's probes; b == a is skipped) give KL(uniform || softmax([target, probes] / tau)),
    0 when head a scores the target and those probes alike; averaged over the (query, a, b != a) that have
    a probe."""
    n, a_count, b_count, _ = s_probes.shape
    terms = []
    for a in range(a_count):
        for b in range(b_count):
            if a == b:
                continue
            sp = s_probes[:, a, b]
            rows = torch.isfinite(sp).any(-1)
            if not bool(rows.any()):
                continue
            logits = torch.cat([s_target[rows, a, None], sp[rows]], dim=-1) / tau
            logp = F.log_softmax(logits, dim=-1)
            valid = torch.isfinite(logits)
            m = valid.sum(-1).float()
            terms.append((-(logp.masked_fill(~valid, 0.0)).sum(-1) / m - torch.log(m)).mean())
    return torch.stack(terms).mean() if terms else s_target.new_zeros(())


def probe_losses(q_attrs: torch.Tensor, t_pos: torch.Tensor, probe_tokens: torch.Tensor, probe_at: np.ndarray,
                 tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sensitivity, invariance) of the sub-queries q_attrs [n, A, D] against each query's target tokens
    t_pos [n, K, D] and its probes (probe_at [n, A, k] rows of probe_tokens, -1 missing; the probes of
    attribute a are the target with a changed)."""
    qa = F.normalize(q_attrs, dim=-1)
    s_t = torch.einsum("nad,nkd->nak", qa, t_pos).amax(-1)  # [n, A]
    n, a, k = probe_at.shape
    s_p = probe_scores(qa, probe_tokens, probe_at).reshape(n, a, a, k)  # head, probed attribute, probe
    own = torch.diagonal(s_p, dim1=1, dim2=2).permute(0, 2, 1)  # [n, A, k]: each head's own attribute's probes
    return attribute_sensitivity(s_t, own, tau), attribute_invariance(s_t, s_p, tau)


def attribute_retrieval(q_attrs: torch.Tensor, col_tokens: torch.Tensor, agree: torch.Tensor,
                        probe_tokens: torch.Tensor | None = None, probe_at: np.ndarray | None = None,
                        tau: float = 0.05) -> torch.Tensor:
    """Each sub-query retrieves, among the batch's images, those that agree with its query's target on its own
    attribute (a global, not only a local, preference: what moves a whole top 10). q_attrs [n, A, D], col_tokens
    [C, K, D], agree [A, n, C] bool (the target's own column is always in it). With probes (probe_at [n, A, k]):
    query i's probes join its row, agreeing on every attribute but the one they change. Multi-positive InfoNCE at
    temperature tau, averaged over queries and attributes."""
    qa = F.normalize(q_attrs, dim=-1)
    n, a_count, _ = qa.shape
    terms = []
    for a in range(a_count):
        s = maxsim(qa[:, a], col_tokens)  # [n, C]
        pos = agree[a]
        if probe_at is not None and probe_tokens is not None and len(probe_tokens):
            sp = probe_scores(qa[:, a], probe_tokens, probe_at)  # [n, A*k], -inf where missing
            k = probe_at.shape[2]
            p_pos = torch.ones(n, a_count, k, dtype=torch.bool, device=s.device)
            p_pos[:, a] = False  # a's own probes differ from the target in a
            s = torch.cat([s, sp], dim=1)
            pos = torch.cat([pos, p_pos.reshape(n, -1) & torch.isfinite(sp)], dim=1)
        logits = s / tau
        all_lse = torch.logsumexp(logits, dim=1)
        pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
        terms.append((all_lse - pos_lse).mean())
    return torch.stack(terms).mean()


def subquery_decorrelation(q_attrs: torch.Tensor) -> torch.Tensor:
    """Mean over attribute pairs of cos(q_a, q_b)^2: sub-queries that are copies of each other cost 1."""
    qa = F.normalize(q_attrs, dim=-1)
    a = qa.shape[1]
    if a < 2:
        return q_attrs.new_zeros(())
    cos = torch.einsum("nad,nbd->nab", qa, qa)
    iu = torch.triu_indices(a, a, offset=1, device=cos.device)
    return cos[:, iu[0], iu[1]].pow(2).mean()


def weight_label_loss(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the attribute weights (sigmoid mode, in (0, 1)) against what the query's
    text edits (1: it edits attribute a, 0: it does not, nan: unknown, no term)."""
    known = ~torch.isnan(labels)
    if not bool(known.any()):
        return weights.new_zeros(())
    w = weights[known].clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(w, labels[known].to(w.dtype))
