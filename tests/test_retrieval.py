"""Tests for glr.retrieval against brute-force numpy references on small seeded data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import glr.retrieval
from glr.metrics import read_submission
from glr.models import PairHead
from glr.retrieval import (
    average_query_expansion,
    label_by_threshold,
    pair_similarities,
    recognise,
    search,
    write_submission,
)

# faiss computes in float32, and from 20 queries on it uses |x|^2 + |y|^2 - 2 x.y, which
# loses a few float32 ulps of |x|^2 to cancellation. With entries in [0, 1) and D = 8,
# |x|^2 < 8, where one ulp is about 1e-6, so 1e-5 absolute leaves a wide margin.
DISTANCE_TOLERANCE = 1e-5


def brute_force_search(
    database: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Compute squared L2 distances in float64 and rank them with a stable argsort."""
    distances = np.zeros((len(queries), min(k, len(database))))
    ids = np.zeros((len(queries), min(k, len(database))), dtype=np.int64)
    for row, query in enumerate(np.asarray(queries, dtype=np.float64)):
        squared = np.array(
            [float(np.sum((query - item) ** 2)) for item in np.asarray(database, np.float64)]
        )
        order = np.argsort(squared, kind="stable")[:k]
        ids[row] = order
        distances[row] = squared[order]
    return distances, ids


def min_rank_gap(database: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Return the smallest gap between consecutive squared distances up to rank k + 1."""
    gaps = []
    for query in queries.astype(np.float64):
        squared = np.sort(((database.astype(np.float64) - query) ** 2).sum(axis=1))
        gaps.append(np.diff(squared[: k + 1]).min())
    return float(min(gaps))


def head_with_weights(weights: list[float], bias: float) -> PairHead:
    head = PairHead(len(weights))
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([weights]))
        head.linear.bias.fill_(bias)
    return head.eval()


def reference_similarities(
    weights: np.ndarray,
    bias: float,
    queries: np.ndarray,
    database: np.ndarray,
    neighbours: np.ndarray,
) -> np.ndarray:
    result = np.zeros(neighbours.shape)
    for row in range(neighbours.shape[0]):
        for column in range(neighbours.shape[1]):
            index = neighbours[row, column]
            if index < 0:
                continue
            difference = queries[row].astype(np.float64) - database[index].astype(np.float64)
            logit = float(np.dot(weights, difference**2)) + bias
            result[row, column] = 1.0 / (1.0 + math.exp(-logit))
    return result


@pytest.fixture
def random_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    database = rng.random((60, 8)).astype(np.float32)
    queries = rng.random((25, 8)).astype(np.float32)
    return database, queries


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_queries", [1, 5, 25])
def test_search_vs_brute_force(
    random_data: tuple[np.ndarray, np.ndarray], num_queries: int
) -> None:
    database, queries = random_data
    queries = queries[:num_queries]
    # Errors below the tolerance keep the order only if neighbouring distances differ by more.
    assert min_rank_gap(database, queries, 10) > 2 * DISTANCE_TOLERANCE

    distances, ids = search(database, queries, 10)
    expected_distances, expected_ids = brute_force_search(database, queries, 10)

    assert ids.shape == (num_queries, 10)
    assert distances.shape == (num_queries, 10)
    assert ids.dtype == np.int64
    assert distances.dtype == np.float32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, atol=DISTANCE_TOLERANCE)


def test_search_hand_example() -> None:
    database = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    queries = np.array([[0.0, 1.0]], dtype=np.float32)

    distances, ids = search(database, queries, 3)

    assert ids.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(distances, [[1.0, 2.0, 18.0]], atol=1e-6)


def test_search_k_clipped(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    small = database[:4]

    distances, ids = search(small, queries[:3], 10)

    assert ids.shape == (3, 4)
    assert distances.shape == (3, 4)
    assert (ids >= 0).all()
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]


def test_search_empty_database() -> None:
    distances, ids = search(np.zeros((0, 8), dtype=np.float32), np.ones((3, 8)), 5)

    assert distances.shape == (3, 0)
    assert ids.shape == (3, 0)
    assert distances.dtype == np.float32
    assert ids.dtype == np.int64


def test_search_no_queries_shape(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, _ = random_data

    distances, ids = search(database, np.zeros((0, 8), dtype=np.float32), 5)

    assert ids.shape == (0, 5)
    assert distances.shape == (0, 5)


def test_search_no_queries_empty(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, _ = random_data

    distances, ids = search(database, np.zeros((0, 8), dtype=np.float32), 5)

    assert len(ids) == 0
    assert len(distances) == 0
    assert ids.dtype == np.int64


def test_search_float64_input(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data

    distances, ids = search(database.astype(np.float64), queries.astype(np.float64), 5)
    expected_distances, expected_ids = search(database, queries, 5)

    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)


def test_search_non_contiguous_input(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    transposed = np.ascontiguousarray(database.T).T
    strided_queries = np.repeat(queries, 2, axis=0)[::2]
    sliced_columns = np.concatenate([database, database], axis=1)[:, :8]
    assert not transposed.flags.c_contiguous
    assert not strided_queries.flags.c_contiguous
    assert not sliced_columns.flags.c_contiguous

    _, expected_ids = search(database, queries, 5)

    np.testing.assert_array_equal(search(transposed, queries, 5)[1], expected_ids)
    np.testing.assert_array_equal(search(database, strided_queries, 5)[1], expected_ids)
    np.testing.assert_array_equal(search(sliced_columns, queries, 5)[1], expected_ids)


def test_search_dimension_mismatch(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data

    with pytest.raises(ValueError) as caught:
        search(database, queries[:, :3], 5)

    assert "dimension 3" in str(caught.value)
    assert "has 8" in str(caught.value)


@pytest.mark.parametrize("k", [0, -1])
def test_search_k_below_one(random_data: tuple[np.ndarray, np.ndarray], k: int) -> None:
    database, queries = random_data

    with pytest.raises(ValueError, match=f"k must be >= 1, got {k}"):
        search(database, queries, k)


def test_search_one_dimensional_raises(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data

    with pytest.raises(ValueError, match="2-D"):
        search(database, queries[0], 5)


# ---------------------------------------------------------------------------
# average_query_expansion
# ---------------------------------------------------------------------------


def reference_expansion(
    queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray
) -> np.ndarray:
    expanded = np.array(queries, dtype=np.float64)
    for row in range(len(queries)):
        rows = [database[index] for index in neighbours[row] if index >= 0]
        if rows:
            total = np.zeros(database.shape[1])
            for item in rows:
                total += item
            expanded[row] = total / len(rows)
    return expanded


def test_expansion_vs_loop(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.random.default_rng(1).integers(0, len(database), size=(len(queries), 4))

    expanded = average_query_expansion(queries, database, neighbours)

    assert expanded.dtype == np.float32
    assert expanded.shape == queries.shape
    np.testing.assert_allclose(
        expanded, reference_expansion(queries, database, neighbours), atol=1e-6
    )


def test_expansion_hand_example() -> None:
    database = np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 2.0]])
    queries = np.array([[9.0, 9.0]])

    expanded = average_query_expansion(queries, database, np.array([[1, 2, 0]]))

    np.testing.assert_allclose(expanded, [[2.0, 2.0]])


def test_expansion_skips_missing_ids(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.array([[3, -1, 7], [-1, -1, 5]])

    expanded = average_query_expansion(queries[:2], database, neighbours)

    np.testing.assert_allclose(expanded[0], (database[3] + database[7]) / 2, atol=1e-6)
    np.testing.assert_allclose(expanded[1], database[5], atol=1e-6)


def test_expansion_no_neighbour_unchanged(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.array([[-1, -1], [2, 4]])

    expanded = average_query_expansion(queries[:2], database, neighbours)

    np.testing.assert_array_equal(expanded[0], queries[0])
    assert not np.array_equal(expanded[1], queries[1])


def test_expansion_zero_columns(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data

    expanded = average_query_expansion(queries, database, np.zeros((len(queries), 0), np.int64))

    np.testing.assert_array_equal(expanded, queries)


def test_expansion_input_unchanged(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    before = queries.copy()

    average_query_expansion(queries, database, np.zeros((len(queries), 2), np.int64))

    np.testing.assert_array_equal(queries, before)


# ---------------------------------------------------------------------------
# pair_similarities
# ---------------------------------------------------------------------------


WEIGHTS = [-0.5, 0.25, -1.0, 0.0, -2.0, 0.5, -0.1, -0.3]
BIAS = 0.7


def test_pair_similarities_vs_direct(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.random.default_rng(2).integers(0, len(database), size=(len(queries), 5))
    head = head_with_weights(WEIGHTS, BIAS)

    similarities = pair_similarities(head, queries, database, neighbours)

    expected = reference_similarities(np.array(WEIGHTS), BIAS, queries, database, neighbours)
    assert similarities.shape == (len(queries), 5)
    assert similarities.dtype == np.float32
    np.testing.assert_allclose(similarities, expected, atol=1e-6)


def test_pair_similarities_missing_zero(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.array([[1, -1, 2], [-1, -1, -1]])
    head = head_with_weights(WEIGHTS, BIAS)

    similarities = pair_similarities(head, queries[:2], database, neighbours)

    expected = reference_similarities(np.array(WEIGHTS), BIAS, queries[:2], database, neighbours)
    assert similarities[0, 1] == 0.0
    assert (similarities[1] == 0.0).all()
    assert similarities[0, 0] > 0.0
    np.testing.assert_allclose(similarities, expected, atol=1e-6)


def test_pair_similarities_chunked(
    random_data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, queries = random_data
    neighbours = np.random.default_rng(3).integers(-1, len(database), size=(len(queries), 4))
    head = head_with_weights(WEIGHTS, BIAS)
    monkeypatch.setattr(glr.retrieval, "QUERY_CHUNK", 4)

    similarities = pair_similarities(head, queries, database, neighbours)

    # 25 queries in chunks of 4 leave a last chunk of 1.
    expected = reference_similarities(np.array(WEIGHTS), BIAS, queries, database, neighbours)
    np.testing.assert_allclose(similarities, expected, atol=1e-6)


def test_pair_similarities_float64_input(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    neighbours = np.tile(np.arange(3), (len(queries), 1))
    head = head_with_weights(WEIGHTS, BIAS)

    similarities = pair_similarities(
        head, queries.astype(np.float64), database.astype(np.float64), neighbours
    )

    expected = pair_similarities(head, queries, database, neighbours)
    np.testing.assert_allclose(similarities, expected, atol=1e-7)


def test_pair_similarities_zero_columns(random_data: tuple[np.ndarray, np.ndarray]) -> None:
    database, queries = random_data
    head = head_with_weights(WEIGHTS, BIAS)

    similarities = pair_similarities(head, queries, database, np.zeros((25, 0), np.int64))

    assert similarities.shape == (25, 0)


# ---------------------------------------------------------------------------
# label_by_threshold
# ---------------------------------------------------------------------------


def test_label_best_above_threshold() -> None:
    similarities = np.array([[0.6, 0.95, 0.7]])
    labels = np.array([[1, 2, 3]])

    assert label_by_threshold(similarities, labels, 0.5) == [(2, 0.95)]


def test_label_at_threshold() -> None:
    similarities = np.array([[0.25, 0.5]])
    labels = np.array([[1, 2]])

    assert label_by_threshold(similarities, labels, 0.5) == [(2, 0.5)]


def test_label_below_threshold_none() -> None:
    similarities = np.array([[0.49, 0.1]])
    labels = np.array([[1, 2]])

    assert label_by_threshold(similarities, labels, 0.5) == [None]


def test_label_ties_pick_first() -> None:
    similarities = np.array([[0.3, 0.8, 0.8]])
    labels = np.array([[1, 2, 3]])

    assert label_by_threshold(similarities, labels, 0.5) == [(2, 0.8)]


def test_label_no_neighbours_none() -> None:
    similarities = np.zeros((2, 0))
    labels = np.zeros((2, 0), dtype=np.int64)

    assert label_by_threshold(similarities, labels, 0.0) == [None, None]


def test_label_types_plain_python() -> None:
    similarities = np.array([[0.9]], dtype=np.float32)
    labels = np.array([[7]], dtype=np.int64)

    ((landmark, score),) = label_by_threshold(similarities, labels, 0.5)  # type: ignore[misc]

    assert type(landmark) is int
    assert type(score) is float


def test_label_several_queries() -> None:
    similarities = np.array([[0.9, 0.2], [0.1, 0.3], [0.4, 0.7]])
    labels = np.array([[5, 6], [7, 8], [9, 10]])

    predictions = label_by_threshold(similarities, labels, 0.6)

    assert predictions == [(5, 0.9), None, (10, 0.7)]


# ---------------------------------------------------------------------------
# recognise
# ---------------------------------------------------------------------------


def two_clusters() -> tuple[np.ndarray, np.ndarray, PairHead]:
    """Return cluster A (label 7) near the origin and cluster B (label 9) near (10, 10, 10, 10).

    The head gives sigmoid(2 - |q - x|^2): about 0.88 inside a cluster, about 0 across.
    """
    offsets = np.array([[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0]])
    database = np.concatenate([offsets, offsets + 10.0]).astype(np.float32)
    labels = np.array([7, 7, 7, 9, 9, 9])
    return database, labels, head_with_weights([-1.0] * 4, 2.0)


@pytest.mark.parametrize("expansion", ["none", "average"])
def test_recognise_two_clusters(expansion: str) -> None:
    database, labels, head = two_clusters()
    queries = np.array(
        [[0.05, 0.05, 0.0, 0.0], [10.0, 10.1, 10.0, 9.9], [5.0, 5.0, 5.0, 5.0]], dtype=np.float32
    )

    result = recognise(
        queries, database, labels, head, top_k=2, query_expansion=expansion, threshold=0.5
    )

    first, second, third = result.predictions
    assert first is not None
    assert first[0] == 7
    assert first[1] > 0.8
    assert second is not None
    assert second[0] == 9
    assert second[1] > 0.8
    assert third is None
    assert result.neighbours.shape == (3, 2)
    assert result.expanded_neighbours.shape == (3, 2)


def test_recognise_none_keeps_neighbours() -> None:
    database, labels, head = two_clusters()
    queries = np.array([[0.05, 0.05, 0.0, 0.0]], dtype=np.float32)

    result = recognise(
        queries, database, labels, head, top_k=3, query_expansion="none", threshold=0.5
    )

    np.testing.assert_array_equal(result.expanded_neighbours, result.neighbours)
    assert sorted(result.neighbours[0].tolist()) == [0, 1, 2]


def test_recognise_expansion_changes_label() -> None:
    # X (label 1) sits next to the query, and a tight cluster (label 2) lies further off.
    # The query's 3 neighbours are X and two cluster points, whose mean (1.67, 0.03) is
    # nearest to three cluster points, so expansion drops X and the label becomes 2.
    database = np.array(
        [[-1.0, 0.0], [3.0, 0.0], [3.0, 0.1], [3.0, -0.2], [3.1, 0.0]], dtype=np.float32
    )
    labels = np.array([1, 2, 2, 2, 2])
    head = head_with_weights([-1.0, -1.0], 10.0)
    queries = np.zeros((1, 2), dtype=np.float32)

    plain = recognise(
        queries, database, labels, head, top_k=3, query_expansion="none", threshold=0.5
    )
    expanded = recognise(
        queries, database, labels, head, top_k=3, query_expansion="average", threshold=0.5
    )

    assert plain.neighbours[0].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(plain.expanded_queries, queries)
    np.testing.assert_allclose(
        expanded.expanded_queries, database[[0, 1, 2]].mean(axis=0, keepdims=True), atol=1e-6
    )
    assert expanded.expanded_neighbours[0].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(expanded.neighbours, plain.neighbours)
    assert plain.predictions[0] is not None
    assert plain.predictions[0][0] == 1
    assert expanded.predictions[0] is not None
    assert expanded.predictions[0][0] == 2
    # The similarity is still between the original query and (3, 0): sigmoid(10 - 9).
    assert expanded.predictions[0][1] == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-6)


def test_recognise_unknown_expansion() -> None:
    database, labels, head = two_clusters()

    with pytest.raises(ValueError, match="'median'"):
        recognise(
            database[:1], database, labels, head, top_k=2, query_expansion="median", threshold=0.5
        )


def test_recognise_empty_database() -> None:
    _, _, head = two_clusters()
    queries = np.ones((2, 4), dtype=np.float32)

    result = recognise(
        queries,
        np.zeros((0, 4), dtype=np.float32),
        np.zeros(0, dtype=np.int64),
        head,
        top_k=5,
        query_expansion="average",
        threshold=0.5,
    )

    assert result.predictions == [None, None]


# ---------------------------------------------------------------------------
# write_submission
# ---------------------------------------------------------------------------


def test_write_submission_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    score = float(np.float32(0.123456789))
    ids = ["a1", "b2", "c3", "d4"]
    predictions = [(12, 0.75), None, (3, score), (0, 1.0)]

    write_submission(str(path), ids, predictions)

    read = read_submission(path)
    assert list(read) == ids
    assert read["a1"] == (12, 0.75)
    assert read["b2"] is None
    assert read["c3"] is not None
    assert read["c3"][0] == 3
    # "%.9g" keeps enough digits to restore any float32 exactly.
    assert np.float32(read["c3"][1]) == np.float32(score)
    assert read["d4"] == (0, 1.0)


def test_write_submission_header(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"

    write_submission(str(path), ["q"], [(5, 0.5)])

    assert path.read_text().splitlines() == ["id,landmarks", "q,5 0.5"]


def test_write_submission_all_empty(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"

    write_submission(str(path), ["x", "y"], [None, None])

    assert read_submission(path) == {"x": None, "y": None}


def test_write_submission_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"

    write_submission(str(path), [], [])

    assert read_submission(path) == {}


def test_write_submission_numpy_values(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"

    write_submission(str(path), ["q"], [(np.int64(42), np.float32(0.5))])  # type: ignore[list-item]

    assert read_submission(path) == {"q": (42, 0.5)}


def test_write_submission_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    path = folder / "submission.csv"
    path.parent.mkdir()
    path.write_text("old contents\n")

    write_submission(str(path), ["q"], [(1, 0.5)])

    assert sorted(item.name for item in folder.iterdir()) == ["submission.csv"]
    assert read_submission(path) == {"q": (1, 0.5)}


def test_write_submission_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"

    with pytest.raises(ValueError):
        write_submission(str(path), ["a", "b"], [None])

    assert list(tmp_path.iterdir()) == []
