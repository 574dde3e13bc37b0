"""Tests for glr.heads: margin losses against a hand-written formula, and the embedding net."""

from __future__ import annotations

import math

import pytest
import torch

from glr.heads import EmbeddingHead, LandmarkNet, create_margin_loss
from glr.models import LITE0


def _arcface_by_formula(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    margin: float,
    scale: float,
    sub_centers: int = 1,
) -> torch.Tensor:
    """Loss from the definition: s * cos(theta + m) for the target, s * cos(theta) else.

    `weights` is (D, C * sub_centers) with class c's sub-centers in columns
    c * sub_centers ... (c + 1) * sub_centers - 1, the layout of pytorch-metric-learning.
    """
    losses = []
    num_classes = weights.shape[1] // sub_centers
    for embedding, label in zip(embeddings, labels.tolist(), strict=True):
        logits = []
        for c in range(num_classes):
            best = -2.0
            for j in range(sub_centers):
                column = weights[:, c * sub_centers + j]
                cosine = float(embedding @ column) / float(embedding.norm() * column.norm())
                best = max(best, cosine)
            theta = math.acos(min(max(best, -1.0), 1.0))
            if c == label:
                # Past pi - m, cos(theta + m) would increase again, so the loss follows
                # the linear continuation cos(theta) - m * sin(m) instead.
                if theta <= math.pi - margin:
                    target = math.cos(theta + margin)
                else:
                    target = math.cos(theta) - margin * math.sin(margin)
                logits.append(scale * target)
            else:
                logits.append(scale * best)
        log_sum = math.log(sum(math.exp(logit) for logit in logits))
        losses.append(log_sum - logits[label])
    return torch.tensor(sum(losses) / len(losses), dtype=torch.float64)


def _inputs(seed: int, n: int = 6, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return embeddings, labels


@pytest.mark.parametrize(("margin_degrees", "scale"), [(28.6, 64.0), (10.0, 16.0), (0.0, 1.0)])
def test_arcface_matches_formula(margin_degrees: float, scale: float) -> None:
    embeddings, labels = _inputs(seed=0)
    loss = create_margin_loss("arcface", 3, 4, margin_degrees=margin_degrees, scale=scale).double()
    weights = loss.W.detach()
    expected = _arcface_by_formula(embeddings, labels, weights, math.radians(margin_degrees), scale)
    torch.testing.assert_close(loss(embeddings, labels).detach(), expected)


def test_arcface_large_angle_branch() -> None:
    # An embedding opposite its class weight has theta = pi > pi - m.
    loss = create_margin_loss("arcface", 2, 2, margin_degrees=30.0, scale=4.0).double()
    with torch.no_grad():
        loss.W.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    embeddings = torch.tensor([[-1.0, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0])
    expected = _arcface_by_formula(embeddings, labels, loss.W.detach(), math.radians(30.0), 4.0)
    torch.testing.assert_close(loss(embeddings, labels).detach(), expected)


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_subcenter_arcface_matches_formula(sub_centers: int) -> None:
    embeddings, labels = _inputs(seed=1)
    loss = create_margin_loss(
        "subcenter_arcface", 3, 4, margin_degrees=20.0, scale=30.0, sub_centers=sub_centers
    ).double()
    assert loss.W.shape == (4, 3 * sub_centers)
    expected = _arcface_by_formula(
        embeddings, labels, loss.W.detach(), math.radians(20.0), 30.0, sub_centers
    )
    torch.testing.assert_close(loss(embeddings, labels).detach(), expected)


def test_margin_loss_weights_get_gradient() -> None:
    embeddings, labels = _inputs(seed=2)
    embeddings = embeddings.float().requires_grad_()
    loss = create_margin_loss("arcface", 3, 4)
    loss(embeddings, labels).backward()
    assert loss.W.grad is not None
    assert loss.W.grad.abs().sum() > 0
    assert embeddings.grad is not None


def test_margin_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="must be one of"):
        create_margin_loss("cosface", 3, 4)
    with pytest.raises(ValueError, match="sub_centers"):
        create_margin_loss("subcenter_arcface", 3, 4, sub_centers=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_margin_loss("arcface", 0, 4)


def test_embedding_head_unit_norm() -> None:
    head = EmbeddingHead(10, 5)
    output = head(torch.randn(3, 10))
    assert output.shape == (3, 5)
    torch.testing.assert_close(output.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="dim"):
        EmbeddingHead(10, 0)


@pytest.mark.parametrize(("pooling", "dim", "expected_dim"), [("gem", 32, 32), ("avg", 0, 1280)])
def test_landmark_net_output(pooling: str, dim: int, expected_dim: int) -> None:
    torch.manual_seed(0)
    net = LandmarkNet(LITE0, "none", pooling=pooling, frozen_blocks=2, dim=dim).eval()
    assert net.dim == expected_dim
    with torch.no_grad():
        output = net(torch.randn(2, 3, 64, 64))
    assert output.shape == (2, expected_dim)
    torch.testing.assert_close(output.norm(dim=1), torch.ones(2))


def test_landmark_net_gem_matches_feature_map() -> None:
    torch.manual_seed(0)
    net = LandmarkNet(LITE0, "none", pooling="gem", gem_p=3.0).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feature_map = net.feature_map(images)
        output = net(images)
    pooled = feature_map.clamp(min=1e-6).pow(3.0).mean(dim=(-2, -1)).pow(1.0 / 3.0)
    torch.testing.assert_close(output, pooled / pooled.norm(dim=1, keepdim=True))


def test_landmark_net_freezes_stages() -> None:
    net = LandmarkNet(LITE0, "none", pooling="gem", learn_p=True, frozen_blocks=2, dim=8)
    body = net.backbone.body
    assert not any(p.requires_grad for p in body.conv_stem.parameters())
    assert not any(p.requires_grad for p in body.blocks[1].parameters())
    assert all(p.requires_grad for p in body.blocks[2].parameters())
    assert net.pool.gem is not None
    assert net.pool.gem.p.requires_grad
