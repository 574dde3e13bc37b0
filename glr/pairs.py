"""Training pairs for the Siamese net: per class, an anchor with a positive and a negative."""

from __future__ import annotations

import numpy as np


def sample_pairs(
    labels: np.ndarray, classes: np.ndarray, rng: np.random.Generator
) -> list[tuple[int, int, float]]:
    """Sample two pairs for each class in `classes`, in that order.

    For a class: a random anchor image, a random positive (another image of the same
    class, target 1.0) and a random negative (an image of any other class, target 0.0).
    Returns (anchor, other, target) triples of row positions into `labels`. A class with
    fewer than two images gets no positive pair; with a single class there are no negatives.
    """
    rows_by_class: dict[int, np.ndarray] = {
        int(label): np.flatnonzero(labels == label) for label in np.unique(labels)
    }
    pairs: list[tuple[int, int, float]] = []
    for label in classes:
        rows = rows_by_class[int(label)]
        anchor = int(rng.choice(rows))

        others = rows[rows != anchor]
        if len(others):
            pairs.append((anchor, int(rng.choice(others)), 1.0))

        negatives = np.flatnonzero(labels != label)
        if len(negatives):
            pairs.append((anchor, int(rng.choice(negatives)), 0.0))
    return pairs


def epoch_batches(
    labels: np.ndarray, batch_classes: int, rng: np.random.Generator
) -> list[list[tuple[int, int, float]]]:
    """Shuffle the classes, group them `batch_classes` at a time and sample each group's pairs."""
    classes = rng.permutation(np.unique(labels))
    return [
        sample_pairs(labels, classes[start : start + batch_classes], rng)
        for start in range(0, len(classes), batch_classes)
    ]


def example_triplets(
    labels: np.ndarray, count: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Up to `count` (anchor, positive, negative) row triplets from distinct random classes."""
    classes = rng.permutation(np.unique(labels))
    triplets: list[tuple[int, int, int]] = []
    for label in classes:
        pairs = sample_pairs(labels, np.array([label]), rng)
        if len(pairs) == 2:
            (anchor, positive, _), (_, negative, _) = pairs
            triplets.append((anchor, positive, negative))
        if len(triplets) == count:
            break
    return triplets
