"""Objectives: DQE-CIR's pairwise KL + margin ranking + attribute-aware auxiliary, and the in-batch
contrastive baseline (SPRC/QuRe style), each switchable for ablations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
