"""Search descriptors from a trained embedding model, optionally with untrained GeM features."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glr.heads import LandmarkNet, embed_with, load_landmark_net
from glr.models import load_siamese


def load_embedding_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load the train_siamese stage's model: a `SiameseNet` (pair) or a `LandmarkNet` (margin)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model not found: {file}; run `dvc repro train_siamese` first")
    kind = torch.load(file, map_location="cpu", weights_only=True)["config"].get("kind", "pair")
    if kind == "margin":
        return load_landmark_net(file)
    return load_siamese(file)


class SearchDescriptor(nn.Module):
    """The descriptor that retrieval searches with, (B, D) for (B, 3, H, W) images.

    With `untrained_weight` w > 0 it is the concatenation of sqrt(w) x the untrained
    ImageNet GeM descriptor and sqrt(1 - w) x the trained embedding, both L2-normalised,
    so the cosine of two descriptors is w x the untrained cosine plus (1 - w) x the
    trained one. With w = 0 it is the trained embedding as the model outputs it (raw for
    the reference Siamese net, whose pair head needs it unnormalised).
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], untrained_weight: float) -> None:
        super().__init__()
        self.model = model
        self.weight = untrained_weight
        # Same backbone, so the same input preprocessing serves both parts.
        self.untrained = (
            LandmarkNet(str(config["backbone"]), "imagenet", pooling="gem").eval()
            if untrained_weight > 0
            else None
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trained = embed_with(self.model, images)
        if self.untrained is None:
            return trained
        return torch.cat(
            [
                math.sqrt(self.weight) * self.untrained(images),
                math.sqrt(1.0 - self.weight) * F.normalize(trained, dim=-1),
            ],
            dim=1,
        )
