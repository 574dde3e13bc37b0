"""Tests for glr.baseline: 1-nearest-neighbour labels and the untrained ImageNet baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glr.baseline import nearest_neighbour_predictions, untrained_baseline


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_nearest_neighbour_matches_loop() -> None:
    queries = _unit_rows(8, 5, seed=0)
    database = _unit_rows(10, 5, seed=1)
    labels = [10, 11, 12, 13, 14, 10, 11, 12, 13, 14]
    predictions = nearest_neighbour_predictions(queries, database, labels)

    for query, prediction in zip(queries, predictions, strict=True):
        similarities = [float(np.dot(query, row)) for row in database]
        best = int(np.argmax(similarities))
        assert prediction is not None
        assert prediction[0] == labels[best]
        assert prediction[1] == pytest.approx(similarities[best], rel=1e-5)


def test_nearest_neighbour_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        nearest_neighbour_predictions(_unit_rows(2, 3, 0), _unit_rows(3, 3, 1), [1, 2])
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbour_predictions(_unit_rows(2, 3, 0), np.zeros((0, 3)), [])


def _write_image(path: Path, seed: int) -> Path:
    # Smooth random colour blobs, so that ImageNet features differ between seeds.
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((96, 96), Image.Resampling.BICUBIC).save(path)
    return path


def test_untrained_baseline_finds_copies(tmp_path: Path) -> None:
    database = [_write_image(tmp_path / f"db{seed}.jpg", seed) for seed in range(4)]
    queries = [database[2], database[0]]
    predictions = untrained_baseline(queries, database, [5, 6, 7, 8], image_size=64)

    assert [p[0] for p in predictions if p is not None] == [7, 5]
    for prediction in predictions:
        assert prediction is not None
        assert prediction[1] == pytest.approx(1.0, abs=1e-4)
