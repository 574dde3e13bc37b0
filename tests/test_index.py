"""Tests for glr.index against brute-force numpy search on small seeded data."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from glr.index import (
    EXACT,
    MISSING_IP,
    MISSING_L2,
    DatabaseIndex,
    average_query_expansion,
    build_index,
    exact_search,
    recall_at_k,
    search_index,
    set_faiss_threads,
)

# faiss computes in float32 and, from 20 queries on, as |x|^2 + |y|^2 - 2 x.y, which loses
# a few ulps of |x|^2 to cancellation. Entries here are below 4 in magnitude with D <= 16,
# so squared norms stay below 256, where one float32 ulp is about 3e-5.
DISTANCE_TOLERANCE = 1e-3


def brute_force(
    database: np.ndarray, queries: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return every query's distances to every row in float64 and the rows sorted nearest first."""
    database = np.asarray(database, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if metric == "l2":
        scores = ((queries[:, None, :] - database[None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(scores, axis=1, kind="stable")
    else:
        scores = queries @ database.T
        order = np.argsort(-scores, axis=1, kind="stable")
    return scores, order


def assert_matches_brute_force(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    distances: np.ndarray,
    ids: np.ndarray,
    metric: str,
) -> None:
    """Check a top-k result against brute force, accepting any order among equal distances."""
    scores, order = brute_force(database, queries, metric)
    found = min(k, len(database))
    assert distances.shape == (len(queries), k)
    assert ids.shape == (len(queries), k)
    for row in range(len(queries)):
        expected = scores[row, order[row, :found]]
        np.testing.assert_allclose(distances[row, :found], expected, atol=DISTANCE_TOLERANCE)
        valid = ids[row, :found]
        assert (valid >= 0).all()
        assert len(np.unique(valid)) == found
        # Each returned id really is at the distance reported for it.
        np.testing.assert_allclose(scores[row, valid], distances[row, :found], atol=1e-3)
        assert (ids[row, found:] == -1).all()


def seeded(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(rows, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize(
    ("query_block", "database_block"), [(1000, 1000), (7, 13), (1, 1), (25, 64)]
)
def test_exact_search_matches_brute_force(metric: str, query_block: int, database_block: int):
    database = seeded(150, 8, 0)
    queries = seeded(40, 8, 1)

    distances, ids = exact_search(
        database,
        queries,
        10,
        query_block=query_block,
        database_block=database_block,
        metric=metric,  # type: ignore[arg-type]
    )

    assert distances.dtype == np.float32
    assert ids.dtype == np.int64
    assert_matches_brute_force(database, queries, 10, distances, ids, metric)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_search_ids_equal_one_flat_index(metric: str):
    database = seeded(3000, 16, 2)
    queries = seeded(300, 16, 3)
    index = faiss.IndexFlat(16, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    index.add(database)
    _, expected = index.search(queries, 50)

    _, ids = exact_search(
        database,
        queries,
        50,
        query_block=64,
        database_block=500,
        metric=metric,  # type: ignore[arg-type]
    )

    # Continuous random data has no equal distances, so the order is unique.
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_search_with_many_ties(metric: str):
    # Integer points on a small grid: many rows share a distance to each query.
    rng = np.random.default_rng(4)
    database = rng.integers(-2, 3, size=(60, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(25, 3)).astype(np.float32)

    distances, ids = exact_search(
        database,
        queries,
        12,
        query_block=4,
        database_block=9,
        metric=metric,  # type: ignore[arg-type]
    )

    # Rows at a tied distance may come in any order, and any of them may be kept at the
    # k-th place. The check accepts both.
    assert_matches_brute_force(database, queries, 12, distances, ids, metric)


@pytest.mark.parametrize(("metric", "missing"), [("l2", MISSING_L2), ("ip", MISSING_IP)])
def test_exact_search_k_above_database_size(metric: str, missing: float):
    database = seeded(5, 4, 5)
    queries = seeded(3, 4, 6)

    distances, ids = exact_search(
        database,
        queries,
        8,
        database_block=2,
        metric=metric,  # type: ignore[arg-type]
    )

    assert_matches_brute_force(database, queries, 8, distances, ids, metric)
    assert (ids[:, 5:] == -1).all()
    assert (distances[:, 5:] == np.float32(missing)).all()


def test_exact_search_empty_database():
    distances, ids = exact_search(np.zeros((0, 4), np.float32), seeded(3, 4, 7), 2)

    assert ids.shape == (3, 2)
    assert (ids == -1).all()
    assert (distances == np.float32(MISSING_L2)).all()


def test_exact_search_no_queries():
    distances, ids = exact_search(seeded(10, 4, 8), np.zeros((0, 4), np.float32), 3)

    assert distances.shape == (0, 3)
    assert ids.shape == (0, 3)


def test_exact_search_float64_and_strided_input():
    database = seeded(200, 12, 9).astype(np.float64)
    queries = np.asfortranarray(seeded(30, 24, 10)[:, ::2]).astype(np.float64)
    assert not queries.flags.c_contiguous

    distances, ids = exact_search(database, queries, 7, query_block=8, database_block=50)

    assert_matches_brute_force(database, queries, 7, distances, ids, "l2")


def test_exact_search_reads_memmap(tmp_path: Path):
    database = seeded(500, 8, 11)
    path = tmp_path / "database.npy"
    np.save(path, database)
    mapped = np.load(path, mmap_mode="r")

    distances, ids = exact_search(mapped, seeded(20, 8, 12), 5, database_block=128)

    expected_distances, expected_ids = exact_search(database, seeded(20, 8, 12), 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, atol=DISTANCE_TOLERANCE)


def test_exact_search_numpy_integer_k():
    _, ids = exact_search(seeded(10, 4, 13), seeded(2, 4, 14), np.int64(3))  # type: ignore[arg-type]

    assert ids.shape == (2, 3)


@pytest.mark.parametrize(
    ("database", "queries", "k", "options", "message"),
    [
        (np.zeros((5, 4)), np.zeros((2, 3)), 2, {}, "dimension 3"),
        (np.zeros((5, 4)), np.zeros(4), 2, {}, "2-D"),
        (np.zeros((5, 0)), np.zeros((2, 0)), 2, {}, "at least one column"),
        (np.zeros((5, 4)), np.zeros((2, 4)), 0, {}, "k must be >= 1"),
        (np.zeros((5, 4)), np.zeros((2, 4)), 2, {"query_block": 0}, "query_block"),
        (np.zeros((5, 4)), np.zeros((2, 4)), 2, {"database_block": 0}, "database_block"),
        (np.zeros((5, 4)), np.zeros((2, 4)), 2, {"metric": "cosine"}, "metric"),
    ],
)
def test_exact_search_rejects_invalid_input(database, queries, k, options, message):
    with pytest.raises(ValueError, match=message):
        exact_search(database, queries, k, **options)


def test_exact_search_restores_faiss_tiles():
    before = (
        faiss.cvar.distance_compute_blas_query_bs,
        faiss.cvar.distance_compute_blas_database_bs,
    )

    exact_search(seeded(100, 4, 15), seeded(50, 4, 16), 3)

    after = (
        faiss.cvar.distance_compute_blas_query_bs,
        faiss.cvar.distance_compute_blas_database_bs,
    )
    assert after == before


def test_average_query_expansion_matches_loop():
    # 5,000 queries span two expansion blocks; -1 ids are missing neighbours.
    database = seeded(300, 8, 17)
    queries = seeded(5000, 8, 18)
    neighbours = np.random.default_rng(19).integers(-1, 300, size=(5000, 6))
    neighbours[3] = -1

    expanded = average_query_expansion(queries, database, neighbours)

    for row in (0, 3, 4095, 4096, 4999):
        ids = neighbours[row][neighbours[row] >= 0]
        expected = database[ids].astype(np.float64).mean(axis=0) if len(ids) else queries[row]
        np.testing.assert_allclose(expanded[row], expected, atol=1e-6, err_msg=str(row))
    np.testing.assert_array_equal(expanded[3], queries[3])


def test_average_query_expansion_reads_float64_memmap(tmp_path: Path):
    path = tmp_path / "database.npy"
    np.save(path, seeded(50, 4, 30).astype(np.float64))
    database = np.load(path, mmap_mode="r")
    neighbours = np.array([[0, 1], [2, -1]])

    expanded = average_query_expansion(seeded(2, 4, 31), database, neighbours)

    np.testing.assert_allclose(expanded[0], (database[0] + database[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(expanded[1], database[2], atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_with_all_lists_probed_is_exact(metric: str):
    database = seeded(2000, 8, 22)
    queries = seeded(50, 8, 23)

    index = build_index(database, "IVF16,Flat", metric, train_size=1000, seed=0)  # type: ignore[arg-type]
    _, ids = search_index(index, queries, 10, nprobe=16)

    _, exact_ids = exact_search(database, queries, 10, metric=metric)  # type: ignore[arg-type]
    assert index.ntotal == 2000
    assert recall_at_k(ids, exact_ids, 10) == 1.0


def test_ivf_recall_grows_with_nprobe():
    database = seeded(4000, 8, 24)
    queries = seeded(100, 8, 25)
    index = build_index(database, "IVF64,Flat", train_size=4000, seed=1)
    _, exact_ids = exact_search(database, queries, 20)

    recalls = [recall_at_k(search_index(index, queries, 20, n)[1], exact_ids, 20) for n in (1, 8)]

    assert recalls[0] < recalls[1]
    assert recalls[1] > 0.5


def test_build_index_flat_needs_no_training():
    database = seeded(100, 4, 26)

    index = build_index(database, "Flat", "ip")

    assert index.ntotal == 100
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT


def test_build_index_empty_database_cannot_train():
    with pytest.raises(ValueError, match="needs training data"):
        build_index(np.zeros((0, 4), np.float32), "IVF4,Flat")


def test_search_index_nprobe_needs_ivf():
    index = build_index(seeded(10, 4, 27), "Flat")

    with pytest.raises(ValueError, match="not an IVF index"):
        search_index(index, seeded(2, 4, 28), 3, nprobe=2)


def test_search_index_wrong_dimension():
    index = build_index(seeded(10, 4, 29), "Flat")

    with pytest.raises(ValueError, match="dimension 5"):
        search_index(index, seeded(2, 5, 30), 3)


def test_search_index_no_queries():
    index = build_index(seeded(10, 4, 31), "Flat")

    distances, ids = search_index(index, np.zeros((0, 4), np.float32), 3)

    assert distances.shape == (0, 3)
    assert ids.shape == (0, 3)


def test_recall_at_k_counts_shared_ids():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 2, 9, 9], [4, 5, 6, 7]])

    assert recall_at_k(approx, exact, 4) == pytest.approx(6 / 8)
    assert recall_at_k(approx, exact, 2) == pytest.approx(2 / 4)


def test_recall_at_k_ignores_missing_ids():
    exact = np.array([[0, 1, -1, -1]])
    approx = np.array([[1, -1, -1, -1]])

    assert recall_at_k(approx, exact, 4) == pytest.approx(1 / 2)
    assert recall_at_k(np.full((1, 4), -1), np.full((1, 4), -1), 4) == 1.0


def test_recall_at_k_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same Q"):
        recall_at_k(np.zeros((2, 3)), np.zeros((3, 3)), 3)


def test_set_faiss_threads():
    before = faiss.omp_get_max_threads()
    try:
        set_faiss_threads(1)
        assert faiss.omp_get_max_threads() == 1
        set_faiss_threads(0)
        assert faiss.omp_get_max_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            set_faiss_threads(-1)
    finally:
        faiss.omp_set_num_threads(before)


# DatabaseIndex


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_database_index_flat_is_exact(metric: str):
    database, queries = seeded(300, 8, 1), seeded(17, 8, 2)

    scores, ids = DatabaseIndex.build(database, EXACT, metric).search(queries, 5)

    assert_matches_brute_force(database, queries, 5, scores, ids, metric)


def test_database_index_clips_k_to_database_size():
    database = seeded(4, 8, 3)

    scores, ids = DatabaseIndex.build(database).search(seeded(3, 8, 4), 10)

    assert scores.shape == ids.shape == (3, 4)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]


def test_database_index_empty_database_gives_no_columns():
    empty = np.zeros((0, 8), dtype=np.float32)

    for factory in (EXACT, "IVF4,Flat"):
        scores, ids = DatabaseIndex.build(empty, factory, "ip").search(seeded(2, 8, 5), 3)
        assert scores.shape == ids.shape == (2, 0)


def test_database_index_ivf_all_lists_equals_exact():
    database, queries = seeded(2_000, 16, 6), seeded(50, 16, 7)
    exact = DatabaseIndex.build(database, EXACT, "ip")
    approximate = DatabaseIndex.build(
        database, "IVF8,Flat", "ip", search_parameters="nprobe=8", train_size=2_000
    )

    _, exact_ids = exact.search(queries, 10)
    _, approximate_ids = approximate.search(queries, 10)

    assert approximate.index is not None and faiss.extract_index_ivf(approximate.index).nprobe == 8
    assert recall_at_k(approximate_ids, exact_ids, 10) == 1.0


def test_database_index_ivf_one_probe_misses_some():
    database, queries = seeded(2_000, 16, 8), seeded(50, 16, 9)

    _, exact_ids = DatabaseIndex.build(database, EXACT, "ip").search(queries, 10)
    _, ids = DatabaseIndex.build(database, "IVF32,Flat", "ip", train_size=2_000).search(queries, 10)

    assert 0.0 < recall_at_k(ids, exact_ids, 10) < 1.0


@pytest.mark.parametrize(
    ("factory", "parameters", "message"),
    [
        ("NoSuchIndex", "", "faiss cannot build index 'NoSuchIndex' for 16-d rows"),
        ("IVF8,Flat", "nprobe=zero", "cannot apply search parameters 'nprobe=zero'"),
        (EXACT, "nprobe=4", "need an approximate index"),
    ],
)
def test_database_index_rejects_bad_settings(factory: str, parameters: str, message: str):
    with pytest.raises(ValueError, match=message):
        DatabaseIndex.build(
            seeded(500, 16, 10), factory, "ip", search_parameters=parameters, train_size=500
        )
