"""Objectives: DQE-CIR's pairwise KL + margin ranking + attribute-aware auxiliary, and the in-batch
contrastive baseline (SPRC/QuRe style), each switchable for ablations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_kl(s_pos: torch.Tensor, s_neg: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """-log sigmoid((s_pos - s_neg) / tau): the KL between [1, 0] and softmax([s_pos, s_neg] / tau)."""
    return -F.logsigmoid((s_pos - s_neg) / tau).mean()


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
