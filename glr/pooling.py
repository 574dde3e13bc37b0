"""Global descriptors: pooling of CNN feature maps, L2 normalisation and PCA whitening.

Pooling maps a (B, C, H, W) feature map to (B, C). Generalised mean (GeM) pooling
(Radenovic, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation",
TPAMI 2018) is (mean over positions of x^p)^(1/p): p = 1 is average pooling and p -> inf
approaches max pooling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

POOLINGS = ("avg", "max", "gem")
GEM_EPS = 1e-6


def gem_pool(
    features: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = GEM_EPS
) -> torch.Tensor:
    """Pool (B, C, H, W) features to (B, C) by the generalised mean with exponent `p`.

    Values are clamped to at least `eps` before the power, so negative activations count
    as `eps` and the gradient with respect to `p` stays finite.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    powered = features.clamp(min=eps).pow(p)
    return powered.mean(dim=(-2, -1)).pow(1.0 / p)


def global_pool(features: torch.Tensor, method: str, p: float = 3.0) -> torch.Tensor:
    """Pool (B, C, H, W) features to (B, C) with `method`: avg, max or gem (exponent `p`)."""
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if method == "avg":
        return features.mean(dim=(-2, -1))
    if method == "max":
        return features.amax(dim=(-2, -1))
    if method == "gem":
        return gem_pool(features, p)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {method!r}")


class GeM(nn.Module):
    """GeM pooling layer with exponent `p`, a trainable parameter when `learn_p` is set."""

    def __init__(self, p: float = 3.0, learn_p: bool = False, eps: float = GEM_EPS) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be > 0, got {p}")
        initial = torch.tensor(float(p))
        self.p: torch.Tensor
        if learn_p:
            self.p = nn.Parameter(initial)
        else:
            self.register_buffer("p", initial)
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return gem_pool(features, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}, learn_p={isinstance(self.p, nn.Parameter)}"


class GlobalPool(nn.Module):
    """Pooling layer for any of `POOLINGS`; `p` and `learn_p` apply to gem only."""

    def __init__(self, method: str, p: float = 3.0, learn_p: bool = False) -> None:
        super().__init__()
        if method not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {method!r}")
        self.method = method
        self.gem = GeM(p, learn_p) if method == "gem" else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.gem is not None:
            return self.gem(features)
        return global_pool(features, self.method)


def l2_normalize(descriptors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row of a (N, D) array to unit L2 norm; all-zero rows stay zero."""
    matrix = np.asarray(descriptors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"descriptors must be a 2-D (N, D) array, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, eps)


def multiscale_descriptor(
    embed: Callable[[torch.Tensor], torch.Tensor], images_per_scale: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Average L2-normalised descriptors of the same images at several scales, renormalised.

    `embed` maps a (B, 3, H, W) batch to (B, D) descriptors. `images_per_scale` holds one
    batch per scale, all with the same B images in the same order.
    """
    if not images_per_scale:
        raise ValueError("images_per_scale must contain at least one batch")
    total: torch.Tensor | None = None
    for images in images_per_scale:
        descriptor = F.normalize(embed(images), dim=-1)
        total = descriptor if total is None else total + descriptor
    assert total is not None
    return F.normalize(total, dim=-1)


@dataclass(frozen=True)
class Whitening:
    """PCA whitening learned on a descriptor set: x -> ((x - mean) @ projection) then L2.

    `projection` is (D, dim) and already divides each principal axis by the square root
    of its variance, so learned-on descriptors get identity covariance before the L2 step.
    """

    mean: np.ndarray
    projection: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])


def fit_whitening(descriptors: np.ndarray, dim: int = 0, shrinkage: float = 0.0) -> Whitening:
    """Learn PCA whitening on (N, D) descriptors with scikit-learn's PCA(whiten=True).

    `dim` = 0 keeps min(N - 1, D) components, the max number with a non-zero variance.
    `shrinkage` in [0, 1] blends each axis' scale 1/sqrt(var) towards 1/sqrt(mean var):
    0 is full whitening, and a larger value damps the many low-variance axes that a
    small training set estimates badly.
    """
    matrix = np.asarray(descriptors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"descriptors must be a 2-D (N, D) array, got shape {matrix.shape}")
    n, d = matrix.shape
    max_dim = min(n - 1, d)
    if max_dim < 1:
        raise ValueError(f"whitening needs at least 2 descriptors, got {n}")
    if dim < 0 or dim > max_dim:
        raise ValueError(f"whitening dim must be in [0, {max_dim}] for {n} x {d} descriptors")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")

    pca = PCA(n_components=dim or max_dim, whiten=True, svd_solver="full").fit(matrix)
    variance = pca.explained_variance_
    scale = 1.0 / np.sqrt(variance)
    if shrinkage > 0:
        scale = (1.0 - shrinkage) * scale + shrinkage / np.sqrt(variance.mean())
    projection = pca.components_.T * scale[None, :]
    return Whitening(pca.mean_.astype(np.float32), projection.astype(np.float32))


def apply_whitening(descriptors: np.ndarray, whitening: Whitening) -> np.ndarray:
    """Centre, project and L2-normalise (N, D) descriptors with learned `whitening`."""
    matrix = np.asarray(descriptors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != whitening.mean.shape[0]:
        raise ValueError(
            f"descriptors must be (N, {whitening.mean.shape[0]}), got shape {matrix.shape}"
        )
    return l2_normalize((matrix - whitening.mean) @ whitening.projection)


def concatenate_descriptors(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Concatenate descriptor sets so that cosines combine with `weights`.

    Weights are divided by their sum. Each (N, D_i) part is L2-normalised row by row
    and scaled by sqrt(weight), so the cosine of two combined rows is
    sum_i weight_i * cosine_i and every combined row has unit norm.
    """
    if len(parts) != len(weights) or not parts:
        raise ValueError(
            f"need one weight per part, got {len(parts)} parts, {len(weights)} weights"
        )
    weight_array = np.asarray(weights, dtype=np.float64)
    if np.any(weight_array < 0) or weight_array.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    weight_array = weight_array / weight_array.sum()
    rows = {np.asarray(part).shape[0] for part in parts}
    if len(rows) != 1:
        raise ValueError(f"every part must have the same number of rows, got {sorted(rows)}")
    scaled = [
        l2_normalize(part) * np.float32(np.sqrt(weight))
        for part, weight in zip(parts, weight_array, strict=True)
    ]
    return np.ascontiguousarray(np.hstack(scaled), dtype=np.float32)
