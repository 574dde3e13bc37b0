"""Tests for glr.pairs (pair sampling) and glr.losses (contrastive loss)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from glr.losses import contrastive_loss
from glr.pairs import epoch_batches, sample_pairs

# 7 classes: sizes 3, 1, 4, 2, 1, 5, 2 (classes 11 and 40 have a single image).
LABELS = np.array([10, 10, 10, 11, 12, 12, 12, 12, 20, 20, 40, 50, 50, 50, 50, 50, 60, 60])
SINGLETONS = {11, 40}


def shuffled_labels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(LABELS)


# ---------------------------------------------------------------------------
# sample_pairs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_sample_pairs_positive_same_class(seed: int) -> None:
    labels = shuffled_labels(seed)

    pairs = sample_pairs(labels, np.unique(labels), np.random.default_rng(seed))

    positives = [(a, b) for a, b, target in pairs if target == 1.0]
    assert len(positives) == len(np.unique(labels)) - len(SINGLETONS)
    for anchor, other in positives:
        assert labels[anchor] == labels[other]
        assert anchor != other


@pytest.mark.parametrize("seed", range(5))
def test_sample_pairs_negative_other_class(seed: int) -> None:
    labels = shuffled_labels(seed)

    pairs = sample_pairs(labels, np.unique(labels), np.random.default_rng(seed))

    negatives = [(a, b) for a, b, target in pairs if target == 0.0]
    assert len(negatives) == len(np.unique(labels))
    for anchor, other in negatives:
        assert labels[anchor] != labels[other]


def test_sample_pairs_target_values() -> None:
    pairs = sample_pairs(LABELS, np.unique(LABELS), np.random.default_rng(0))

    assert {target for _, _, target in pairs} == {0.0, 1.0}
    assert all(isinstance(target, float) for _, _, target in pairs)
    assert all(isinstance(a, int) and isinstance(b, int) for a, b, _ in pairs)


def test_sample_pairs_class_order_and_anchor() -> None:
    classes = np.array([50, 10, 11])

    pairs = sample_pairs(LABELS, classes, np.random.default_rng(1))

    # Classes 50 and 10 give a positive, then a negative. The singleton 11 gives a negative.
    assert [LABELS[a] for a, _, _ in pairs] == [50, 50, 10, 10, 11]
    assert [target for _, _, target in pairs] == [1.0, 0.0, 1.0, 0.0, 0.0]
    # Both pairs of a class share one anchor.
    assert pairs[0][0] == pairs[1][0]
    assert pairs[2][0] == pairs[3][0]


def test_sample_pairs_singleton_no_positive() -> None:
    pairs = sample_pairs(LABELS, np.array([11, 40]), np.random.default_rng(0))

    assert [target for _, _, target in pairs] == [0.0, 0.0]
    assert pairs[0][0] == 3
    assert pairs[1][0] == 10


def test_sample_pairs_single_class_no_negative() -> None:
    labels = np.array([5, 5, 5])

    pairs = sample_pairs(labels, np.array([5]), np.random.default_rng(0))

    assert len(pairs) == 1
    assert pairs[0][2] == 1.0


def test_sample_pairs_single_image() -> None:
    pairs = sample_pairs(np.array([5]), np.array([5]), np.random.default_rng(0))

    assert pairs == []


def test_sample_pairs_two_images_forced() -> None:
    labels = np.array([1, 2, 1])

    pairs = sample_pairs(labels, np.array([1]), np.random.default_rng(0))

    anchor = pairs[0][0]
    assert anchor in (0, 2)
    assert pairs[0] == (anchor, 2 - anchor, 1.0)
    assert pairs[1] == (anchor, 1, 0.0)


def test_sample_pairs_deterministic() -> None:
    first = sample_pairs(LABELS, np.unique(LABELS), np.random.default_rng(123))
    second = sample_pairs(LABELS, np.unique(LABELS), np.random.default_rng(123))

    assert first == second


def test_sample_pairs_covers_candidates() -> None:
    # Over many draws every image of class 12 serves as an anchor and as a positive,
    # and every image outside class 12 serves as a negative.
    rng = np.random.default_rng(0)
    anchors: set[int] = set()
    positives: set[int] = set()
    negatives: set[int] = set()
    for _ in range(300):
        pairs = sample_pairs(LABELS, np.array([12]), rng)
        anchors.add(pairs[0][0])
        positives.add(pairs[0][1])
        negatives.add(pairs[1][1])

    class_rows = set(np.flatnonzero(LABELS == 12).tolist())
    assert anchors == class_rows
    assert positives == class_rows
    assert negatives == set(range(len(LABELS))) - class_rows


# ---------------------------------------------------------------------------
# epoch_batches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_classes", [1, 2, 3, 7, 10])
def test_epoch_batches_each_class_once(batch_classes: int) -> None:
    labels = shuffled_labels(batch_classes)

    batches = epoch_batches(labels, batch_classes, np.random.default_rng(batch_classes))

    # Every class is an anchor class exactly once: one negative pair per class.
    anchor_classes = [
        int(labels[anchor]) for batch in batches for anchor, _, target in batch if target == 0.0
    ]
    assert Counter(anchor_classes) == dict.fromkeys(np.unique(labels).tolist(), 1)
    # One anchor per class per epoch.
    anchor_rows: dict[int, set[int]] = {int(label): set() for label in np.unique(labels)}
    for batch in batches:
        for anchor, _, _ in batch:
            anchor_rows[int(labels[anchor])].add(anchor)
    assert all(len(rows) == 1 for rows in anchor_rows.values())
    # A class's anchors all sit in one batch.
    batch_of_class = {
        int(labels[anchor]): index for index, batch in enumerate(batches) for anchor, _, _ in batch
    }
    for index, batch in enumerate(batches):
        assert all(batch_of_class[int(labels[anchor])] == index for anchor, _, _ in batch)


@pytest.mark.parametrize(("batch_classes", "sizes"), [(1, [1] * 7), (3, [3, 3, 1]), (7, [7])])
def test_epoch_batches_group_sizes(batch_classes: int, sizes: list[int]) -> None:
    batches = epoch_batches(LABELS, batch_classes, np.random.default_rng(0))

    classes_per_batch = [len({int(LABELS[anchor]) for anchor, _, _ in batch}) for batch in batches]
    assert classes_per_batch == sizes


def test_epoch_batches_pair_count() -> None:
    batches = epoch_batches(LABELS, 4, np.random.default_rng(0))

    pairs = [pair for batch in batches for pair in batch]
    assert len(pairs) == 2 * 7 - len(SINGLETONS)


def test_epoch_batches_deterministic() -> None:
    first = epoch_batches(LABELS, 3, np.random.default_rng(42))
    second = epoch_batches(LABELS, 3, np.random.default_rng(42))

    assert first == second


def test_epoch_batches_order_changes() -> None:
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(10):
        batches = epoch_batches(LABELS, 1, rng)
        orders.add(tuple(int(LABELS[batch[0][0]]) for batch in batches))

    assert len(orders) > 1


# ---------------------------------------------------------------------------
# contrastive_loss
# ---------------------------------------------------------------------------


def reference_loss(similarities: list[float], targets: list[float], margin: float) -> float:
    total = 0.0
    for similarity, target in zip(similarities, targets, strict=True):
        distance = 1.0 - similarity
        if target == 1.0:
            total += distance**2
        else:
            total += max(0.0, margin - distance) ** 2
    return total / len(similarities)


def test_contrastive_loss_hand_values() -> None:
    similarity = torch.tensor([0.75, 0.5, 0.25, 1.0], dtype=torch.float64)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)

    loss = contrastive_loss(similarity, target, margin=1.0)

    # Distances 0.25, 0.5, 0.75 and 0 cost 0.0625, 0.25, 0.0625 and 1.0, mean 1.375 / 4.
    assert loss.item() == pytest.approx(0.34375, abs=1e-12)


def test_contrastive_loss_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    similarity = torch.rand(50, generator=generator, dtype=torch.float64)
    target = (torch.rand(50, generator=generator) < 0.5).to(torch.float64)

    loss = contrastive_loss(similarity, target, margin=1.0)

    expected = (target * (1 - similarity) ** 2 + (1 - target) * similarity**2).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("margin", [0.3, 0.5, 1.0, 1.7])
def test_contrastive_loss_vs_loop(margin: float) -> None:
    rng = np.random.default_rng(int(margin * 10))
    similarities = rng.random(40).tolist()
    targets = rng.integers(0, 2, size=40).astype(float).tolist()

    loss = contrastive_loss(
        torch.tensor(similarities, dtype=torch.float64),
        torch.tensor(targets, dtype=torch.float64),
        margin=margin,
    )

    assert loss.item() == pytest.approx(reference_loss(similarities, targets, margin), abs=1e-12)


def test_contrastive_loss_negative_beyond_margin() -> None:
    # Distances 0.5, 0.6 and 0.9 are at or beyond the margin 0.5, so they cost nothing.
    similarity = torch.tensor([0.5, 0.4, 0.1])
    target = torch.zeros(3)

    loss = contrastive_loss(similarity, target, margin=0.5)

    assert loss.item() == 0.0


def test_contrastive_loss_negative_inside_margin() -> None:
    similarity = torch.tensor([0.8])
    target = torch.zeros(1)

    loss = contrastive_loss(similarity, target, margin=0.5)

    # d = 0.2, (0.5 - 0.2)^2 = 0.09.
    assert loss.item() == pytest.approx(0.09, abs=1e-6)


def test_contrastive_loss_perfect_pairs_zero() -> None:
    similarity = torch.tensor([1.0, 0.0, 1.0])
    target = torch.tensor([1.0, 0.0, 1.0])

    assert contrastive_loss(similarity, target).item() == 0.0


def test_contrastive_loss_gradient_signs() -> None:
    similarity = torch.tensor([0.3, 0.7, 0.2], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.0])

    contrastive_loss(similarity, target, margin=0.5).backward()

    assert similarity.grad is not None
    # A positive pair lowers its loss by becoming more similar.
    assert similarity.grad[0] < 0
    # A negative pair inside the margin lowers its loss by becoming less similar.
    assert similarity.grad[1] > 0
    # A negative pair beyond the margin (d = 0.8 >= 0.5) gets no gradient.
    assert similarity.grad[2] == 0


def test_contrastive_loss_gradient_values() -> None:
    similarity = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)

    contrastive_loss(similarity, target, margin=1.0).backward()

    assert similarity.grad is not None
    # Loss = ((1 - s0)^2 + s1^2) / 2, so the gradient is (-(1 - s0), s1).
    assert similarity.grad[0].item() == pytest.approx(-0.7, abs=1e-12)
    assert similarity.grad[1].item() == pytest.approx(0.7, abs=1e-12)


def test_contrastive_loss_scalar_output() -> None:
    loss = contrastive_loss(torch.rand(8), torch.ones(8))

    assert loss.shape == ()
