"""Tests for glr.pooling against loops over spatial positions and descriptor rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glr.pooling import (
    GeM,
    GlobalPool,
    apply_whitening,
    concatenate_descriptors,
    fit_whitening,
    gem_pool,
    global_pool,
    l2_normalize,
    multiscale_descriptor,
)


def _features(seed: int = 0, shape: tuple[int, ...] = (2, 3, 4, 5)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64) * 4.0


def _pool_by_loop(features: torch.Tensor, reduce: str, p: float = 3.0) -> torch.Tensor:
    batch, channels, height, width = features.shape
    out = torch.zeros(batch, channels, dtype=features.dtype)
    for b in range(batch):
        for c in range(channels):
            values = [float(features[b, c, y, x]) for y in range(height) for x in range(width)]
            if reduce == "avg":
                out[b, c] = sum(values) / len(values)
            elif reduce == "max":
                out[b, c] = max(values)
            else:
                clamped = [max(value, 1e-6) for value in values]
                out[b, c] = (sum(value**p for value in clamped) / len(clamped)) ** (1.0 / p)
    return out


@pytest.mark.parametrize("p", [1.0, 2.5, 3.0, 6.0])
def test_gem_matches_loop(p: float) -> None:
    features = _features()
    torch.testing.assert_close(gem_pool(features, p), _pool_by_loop(features, "gem", p))


def test_gem_clamps_negative_values() -> None:
    features = _features() - 2.0
    assert (features < 0).any()
    pooled = gem_pool(features, 3.0)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, _pool_by_loop(features, "gem", 3.0))


def test_gem_p1_is_avg_large_p_nears_max() -> None:
    features = _features()
    torch.testing.assert_close(gem_pool(features, 1.0), features.mean(dim=(-2, -1)))
    high = gem_pool(features, 200.0)
    maximum = features.amax(dim=(-2, -1))
    assert torch.all(high <= maximum + 1e-9)
    assert torch.all(high >= maximum * 0.98)


@pytest.mark.parametrize("method", ["avg", "max", "gem"])
def test_global_pool_matches_loop(method: str) -> None:
    features = _features(seed=1)
    torch.testing.assert_close(global_pool(features, method), _pool_by_loop(features, method))
    torch.testing.assert_close(GlobalPool(method)(features), _pool_by_loop(features, method))


def test_global_pool_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        global_pool(_features(), "sum")
    with pytest.raises(ValueError, match="pooling must be one of"):
        GlobalPool("sum")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        global_pool(torch.zeros(2, 3), "avg")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gem_pool(torch.zeros(2, 3, 4), 3.0)
    with pytest.raises(ValueError, match="p must be > 0"):
        GeM(0.0)


def test_gem_learnable_p_gets_gradient() -> None:
    layer = GeM(3.0, learn_p=True)
    assert isinstance(layer.p, torch.nn.Parameter)
    layer(_features().float()).sum().backward()
    assert layer.p.grad is not None
    assert torch.isfinite(layer.p.grad)
    assert layer.p.grad.abs() > 0


def test_gem_fixed_p_is_buffer() -> None:
    layer = GeM(3.0)
    assert list(layer.parameters()) == []
    assert "p" in dict(layer.named_buffers())
    assert "p" in layer.state_dict()


def test_l2_normalize_rows() -> None:
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    normalized = l2_normalize(matrix)
    np.testing.assert_allclose(normalized, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    assert normalized.dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        l2_normalize(np.zeros(3))


def test_multiscale_descriptor_averages_scales() -> None:
    def embed(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(-2, -1))

    small = _features(seed=2, shape=(3, 3, 4, 4))
    large = _features(seed=3, shape=(3, 3, 8, 8))
    combined = multiscale_descriptor(embed, [small, large])

    for row in range(3):
        first = embed(small)[row]
        second = embed(large)[row]
        expected = first / first.norm() + second / second.norm()
        torch.testing.assert_close(combined[row], expected / expected.norm())
    with pytest.raises(ValueError, match="at least one"):
        multiscale_descriptor(embed, [])


def _correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + 5.0


def test_whitening_gives_identity_covariance() -> None:
    descriptors = _correlated(400, 16)
    whitening = fit_whitening(descriptors)
    assert whitening.dim == 16

    projected = (descriptors - whitening.mean) @ whitening.projection
    covariance = np.cov(projected, rowvar=False)
    np.testing.assert_allclose(covariance, np.eye(16), atol=1e-3)
    np.testing.assert_allclose(projected.mean(axis=0), np.zeros(16), atol=1e-4)


def test_whitening_output_and_dim() -> None:
    descriptors = _correlated(50, 16)
    whitening = fit_whitening(descriptors, dim=8)
    whitened = apply_whitening(descriptors, whitening)
    assert whitened.shape == (50, 8)
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), np.ones(50), rtol=1e-5)


def test_whitening_shrinkage_blends_scales() -> None:
    descriptors = _correlated(200, 6)
    full = fit_whitening(descriptors, shrinkage=0.0)
    none = fit_whitening(descriptors, shrinkage=1.0)
    full_scales = np.linalg.norm(full.projection, axis=0)
    none_scales = np.linalg.norm(none.projection, axis=0)
    # Shrinkage 1 scales every principal axis alike, so only a rotation remains.
    np.testing.assert_allclose(none_scales, np.full(6, none_scales[0]), rtol=1e-5)
    assert full_scales.max() / full_scales.min() > 5.0


def test_whitening_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dim must be in"):
        fit_whitening(_correlated(10, 4), dim=5)
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(_correlated(10, 4), shrinkage=1.5)
    whitening = fit_whitening(_correlated(10, 4))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        apply_whitening(np.zeros((3, 5)), whitening)


def test_concatenate_descriptors_weights_cosines() -> None:
    rng = np.random.default_rng(0)
    first = l2_normalize(rng.normal(size=(5, 4)))
    second = l2_normalize(rng.normal(size=(5, 6)))
    combined = concatenate_descriptors([first, second], [3.0, 1.0])

    assert combined.shape == (5, 10)
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), np.ones(5), rtol=1e-5)
    for i in range(5):
        for j in range(5):
            expected = 0.75 * first[i] @ first[j] + 0.25 * second[i] @ second[j]
            assert combined[i] @ combined[j] == pytest.approx(expected, abs=1e-5)


def test_concatenate_descriptors_rejects_bad_input() -> None:
    part = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="one weight per part"):
        concatenate_descriptors([part], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        concatenate_descriptors([part, part], [0.0, 0.0])
    with pytest.raises(ValueError, match="same number of rows"):
        concatenate_descriptors([part, part[:2]], [1.0, 1.0])
