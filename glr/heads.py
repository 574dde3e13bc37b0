"""Embedding network for recognition by retrieval, and margin-based classification losses.

`LandmarkNet` is a timm backbone's feature map, global pooling (avg, max or GeM), an
optional linear projection, and L2 normalisation. It is trained with ArcFace or
sub-center ArcFace over the train classes, from pytorch-metric-learning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses
from torch import nn

from glr.models import Backbone
from glr.pooling import GlobalPool

MARGIN_LOSSES = ("arcface", "subcenter_arcface")


def create_margin_loss(
    kind: str,
    num_classes: int,
    embedding_dim: int,
    *,
    margin_degrees: float = 28.6,
    scale: float = 30.0,
    sub_centers: int = 3,
) -> losses.ArcFaceLoss:
    """Create an ArcFace-family loss that owns its class weights (a trainable parameter).

    `kind` is `arcface` (Deng et al., CVPR 2019) or `subcenter_arcface` (Deng et al.,
    ECCV 2020, with `sub_centers` weight vectors per class, of which the most similar
    counts). The target logit is s * cos(theta + m) with m = `margin_degrees` in degrees,
    the other logits s * cos(theta), then cross-entropy averaged over the batch.
    Call it as `loss(embeddings, labels)` with labels in [0, num_classes). Optimise
    `loss.parameters()` together with the network.
    """
    if num_classes < 1 or embedding_dim < 1:
        raise ValueError(
            f"num_classes and embedding_dim must be >= 1, got {num_classes} and {embedding_dim}"
        )
    common: dict[str, Any] = {
        "num_classes": num_classes,
        "embedding_size": embedding_dim,
        "margin": margin_degrees,
        "scale": scale,
    }
    if kind == "arcface":
        return losses.ArcFaceLoss(**common)
    if kind == "subcenter_arcface":
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        return losses.SubCenterArcFaceLoss(**common, sub_centers=sub_centers)
    raise ValueError(f"margin loss must be one of {MARGIN_LOSSES}, got {kind!r}")


class EmbeddingHead(nn.Module):
    """Linear projection to `dim` followed by L2 normalisation."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.linear = nn.Linear(in_features, dim)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(descriptors), dim=-1)


class LandmarkNet(nn.Module):
    """Backbone feature map, global pooling, optional projection to `dim`, L2 normalisation.

    `dim` = 0 keeps the pooled backbone features (`Backbone.num_features` of them).
    Input: (B, 3, H, W) normalised with `mean` and `std`. Output: (B, `dim`) unit vectors.
    """

    def __init__(
        self,
        name: str,
        weights: str,
        *,
        pooling: str = "gem",
        gem_p: float = 3.0,
        learn_p: bool = False,
        frozen_blocks: int = 0,
        dim: int = 0,
    ) -> None:
        super().__init__()
        # Backbone loads the weights and freezes the first stages. Its own pooling is
        # skipped: forward_features returns the map before timm's global pool.
        self.backbone = Backbone(name, weights, "avg", frozen_blocks)
        self.mean = self.backbone.mean
        self.std = self.backbone.std
        self.pool = GlobalPool(pooling, gem_p, learn_p)
        self.head = EmbeddingHead(self.backbone.num_features, dim) if dim > 0 else None
        self.dim: int = dim if dim > 0 else self.backbone.num_features

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Return the backbone's last feature map, (B, C, H / 32, W / 32) for EfficientNet."""
        body: Any = self.backbone.body
        return body.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.feature_map(images))
        if self.head is not None:
            return self.head(pooled)
        return F.normalize(pooled, dim=-1)


def embed_with(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embed images with either trained embedding network (`SiameseNet` or `LandmarkNet`)."""
    embed = getattr(model, "embed", None)
    return embed(images) if embed is not None else model(images)


def load_landmark_net(path: str | Path) -> tuple[LandmarkNet, dict[str, Any]]:
    """Rebuild a trained `LandmarkNet` from `save_model`'s file (no pretrained weights loaded)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model not found: {file}; run `dvc repro train_siamese` first")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    model = LandmarkNet(
        str(config["backbone"]),
        "none",
        pooling=str(config["pooling"]),
        dim=int(config["dim"]),
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), config
