"""Losses for the Siamese pair head."""

from __future__ import annotations

import torch


def contrastive_loss(
    similarity: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Contrastive loss (Hadsell, Chopra and LeCun, 2006) on the distance 1 - similarity.

    Same-landmark pairs (target 1) pay d^2; other pairs pay max(0, margin - d)^2, so they
    stop costing once their distance reaches `margin`. With similarity in [0, 1] and
    margin 1 this is target * (1 - s)^2 + (1 - target) * s^2. Returns the batch mean.
    """
    distance = 1.0 - similarity
    positive = target * distance.pow(2)
    negative = (1.0 - target) * torch.clamp(margin - distance, min=0.0).pow(2)
    return (positive + negative).mean()
