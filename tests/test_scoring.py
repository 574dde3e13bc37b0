"""Tests for glr.scoring against dict- and loop-based references on small random data."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from glr.scoring import (
    alpha_query_expansion,
    cosine_search,
    database_augmentation,
    knn_vote,
    max_similarity,
    penalize_non_landmarks,
)


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _top_by_loop(query: np.ndarray, database: np.ndarray, k: int) -> list[tuple[float, int]]:
    scored = [(float(np.dot(query, row)), index) for index, row in enumerate(database)]
    scored.sort(key=lambda pair: -pair[0])
    return scored[:k]


def test_cosine_search_matches_loop() -> None:
    queries = _unit_rows(5, 8, seed=0)
    database = _unit_rows(12, 8, seed=1)
    similarities, ids = cosine_search(queries, database, 4)
    assert similarities.shape == (5, 4)
    for row, query in enumerate(queries):
        expected = _top_by_loop(query, database, 4)
        assert ids[row].tolist() == [index for _, index in expected]
        np.testing.assert_allclose(similarities[row], [s for s, _ in expected], rtol=1e-5)


def test_cosine_search_caps_k_and_rejects() -> None:
    similarities, ids = cosine_search(_unit_rows(2, 4, 0), _unit_rows(3, 4, 1), 10)
    assert ids.shape == (2, 3)
    similarities, ids = cosine_search(_unit_rows(2, 4, 0), np.zeros((0, 4)), 5)
    assert ids.shape == (2, 0)
    with pytest.raises(ValueError, match="dimension"):
        cosine_search(_unit_rows(2, 4, 0), _unit_rows(3, 5, 1), 1)
    with pytest.raises(ValueError, match="k must be"):
        cosine_search(_unit_rows(2, 4, 0), _unit_rows(3, 4, 1), 0)


def _vote_by_dict(
    similarities: np.ndarray, ids: np.ndarray, labels: np.ndarray, k: int
) -> tuple[list[int], list[float]]:
    best_labels: list[int] = []
    best_scores: list[float] = []
    for row_similarities, row_ids in zip(similarities, ids, strict=True):
        scores: dict[int, float] = defaultdict(float)
        first_rank: dict[int, int] = {}
        for rank in range(k):
            label = int(labels[row_ids[rank]])
            scores[label] += float(row_similarities[rank])
            first_rank.setdefault(label, rank)
        winner = min(scores, key=lambda label: (-scores[label], first_rank[label]))
        best_labels.append(winner)
        best_scores.append(scores[winner])
    return best_labels, best_scores


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_vote_matches_dict(k: int) -> None:
    queries = _unit_rows(20, 6, seed=2)
    database = _unit_rows(30, 6, seed=3)
    labels = np.random.default_rng(4).integers(100, 105, size=30)
    similarities, ids = cosine_search(queries, database, 10)

    voted_labels, voted_scores = knn_vote(similarities, ids, labels, k)
    expected_labels, expected_scores = _vote_by_dict(similarities, ids, labels, k)
    assert voted_labels.tolist() == expected_labels
    np.testing.assert_allclose(voted_scores, expected_scores, rtol=1e-5)


def test_knn_vote_sums_over_class() -> None:
    similarities = np.array([[0.9, 0.5, 0.45]])
    ids = np.array([[0, 1, 2]])
    labels = np.array([7, 8, 8])
    voted_labels, voted_scores = knn_vote(similarities, ids, labels, 3)
    assert voted_labels.tolist() == [8]
    np.testing.assert_allclose(voted_scores, [0.95], rtol=1e-6)
    voted_labels, _ = knn_vote(similarities, ids, labels, 1)
    assert voted_labels.tolist() == [7]


def test_knn_vote_tie_goes_to_first_rank() -> None:
    labels, _ = knn_vote(np.array([[0.5, 0.5]]), np.array([[1, 0]]), np.array([3, 4]), 2)
    assert labels.tolist() == [4]


def test_knn_vote_ignores_missing_neighbours() -> None:
    # Row 0: the missing neighbour (-1) must not vote for the last label (9).
    # Row 1: no neighbour at all gives class -1 and score -inf.
    similarities = np.array([[0.8, 0.7, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    ids = np.array([[0, 1, -1], [-1, -1, -1]])
    labels = np.array([5, 6, 9])

    voted_labels, voted_scores = knn_vote(similarities, ids, labels, 3)

    assert voted_labels.tolist() == [5, -1]
    assert voted_scores[0] == pytest.approx(0.8)
    assert voted_scores[1] == -np.inf


def test_knn_vote_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same"):
        knn_vote(np.zeros((2, 3)), np.zeros((2, 2), dtype=int), np.zeros(3), 1)
    with pytest.raises(ValueError, match="k must be"):
        knn_vote(np.zeros((2, 3)), np.zeros((2, 3), dtype=int), np.zeros(3), 0)
    with pytest.raises(ValueError, match="no neighbours"):
        knn_vote(np.zeros((2, 0)), np.zeros((2, 0), dtype=int), np.zeros(3), 1)


def _expand_by_loop(
    vector: np.ndarray, database: np.ndarray, n: int, alpha: float, skip: int | None
) -> np.ndarray:
    candidates = [
        (float(np.dot(vector, row)), index) for index, row in enumerate(database) if index != skip
    ]
    candidates.sort(key=lambda pair: -pair[0])
    total = vector.astype(np.float64).copy()
    for similarity, index in candidates[:n]:
        total += max(similarity, 0.0) ** alpha * database[index]
    return total / np.linalg.norm(total)


@pytest.mark.parametrize(("n", "alpha"), [(1, 3.0), (4, 3.0), (5, 1.0)])
def test_query_expansion_matches_loop(n: int, alpha: float) -> None:
    queries = _unit_rows(6, 5, seed=5)
    database = _unit_rows(15, 5, seed=6)
    expanded = alpha_query_expansion(queries, database, n, alpha)
    for row, query in enumerate(queries):
        expected = _expand_by_loop(query, database, n, alpha, skip=None)
        np.testing.assert_allclose(expanded[row], expected, rtol=1e-4, atol=1e-6)


def test_query_expansion_zero_n_is_identity() -> None:
    queries = _unit_rows(3, 4, seed=7)
    database = _unit_rows(5, 4, 8)
    np.testing.assert_array_equal(alpha_query_expansion(queries, database, 0, 3.0), queries)
    with pytest.raises(ValueError, match="n must be"):
        alpha_query_expansion(queries, database, -1, 3.0)


@pytest.mark.parametrize(("n", "alpha"), [(1, 3.0), (3, 3.0), (4, 0.5)])
def test_database_augmentation_matches_loop(n: int, alpha: float) -> None:
    database = _unit_rows(12, 5, seed=9)
    augmented = database_augmentation(database, n, alpha)
    for row, vector in enumerate(database):
        expected = _expand_by_loop(vector, database, n, alpha, skip=row)
        np.testing.assert_allclose(augmented[row], expected, rtol=1e-4, atol=1e-6)


def test_database_augmentation_with_duplicates() -> None:
    # Two identical rows tie for first place, and each must still skip only itself.
    base = _unit_rows(4, 3, seed=10)
    database = np.vstack([base, base[:1]])
    augmented = database_augmentation(database, 2, 3.0)
    for row, vector in enumerate(database):
        expected = _expand_by_loop(vector, database, 2, 3.0, skip=row)
        np.testing.assert_allclose(augmented[row], expected, rtol=1e-4, atol=1e-6)


def test_database_augmentation_zero_n_is_identity() -> None:
    database = _unit_rows(4, 3, seed=11)
    np.testing.assert_array_equal(database_augmentation(database, 0, 3.0), database)


def test_max_similarity_matches_loop() -> None:
    queries = _unit_rows(7, 4, seed=12)
    pool = _unit_rows(9, 4, seed=13)
    exclude = np.zeros((7, 9), dtype=bool)
    exclude[0, :] = True
    exclude[1, 2] = True
    exclude[2, :8] = True
    for top_m in (1, 3):
        result = max_similarity(queries, pool, top_m, exclude)
        for row, query in enumerate(queries):
            allowed = sorted(
                (float(np.dot(query, pool[j])) for j in range(9) if not exclude[row, j]),
                reverse=True,
            )
            top = allowed[:top_m]
            expected = sum(top) / len(top) if top else 0.0
            assert result[row] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_max_similarity_empty_pool_and_shape() -> None:
    np.testing.assert_array_equal(max_similarity(_unit_rows(3, 4, 0), np.zeros((0, 4))), [0, 0, 0])
    with pytest.raises(ValueError, match="exclude"):
        max_similarity(_unit_rows(3, 4, 0), _unit_rows(2, 4, 1), exclude=np.zeros((2, 3), bool))


def test_penalize_non_landmarks() -> None:
    result = penalize_non_landmarks(np.array([1.0, 0.5]), np.array([0.2, 0.8]), 2.0)
    np.testing.assert_allclose(result, [0.6, -1.1], rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        penalize_non_landmarks(np.zeros(2), np.zeros(3), 1.0)
