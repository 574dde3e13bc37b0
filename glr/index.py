"""Exact and approximate nearest-neighbour search with faiss, in bounded memory.

`exact_search` splits the queries and the database into blocks, searches each database
block with faiss's brute-force k-NN (`faiss.knn`, the search of an `IndexFlat` without
the copy into an index) and merges the top k across blocks, so memory stays at one
database block plus one query block of results whatever the sizes. `build_index`
and `search_index` wrap `faiss.index_factory` for approximate search (for example
"IVF1024,Flat" searched with `nprobe`), and `recall_at_k` compares them with exact search.
`DatabaseIndex` is what the pipeline searches: exact blocked search for the factory
string "Flat", otherwise a faiss index built once and searched many times.

Missing neighbours (k larger than the database) follow faiss: id -1 and distance
`MISSING_L2` for "l2" (squared L2 distance, smaller is nearer) or `MISSING_IP` for "ip"
(inner product, larger is nearer).
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Metric = Literal["l2", "ip"]
METRICS: tuple[Metric, ...] = ("l2", "ip")
MISSING_L2 = float(np.finfo(np.float32).max)
MISSING_IP = -MISSING_L2

# Defaults sized so that one block of a 128-d database is 128 MiB and one block of
# results with k = 100 is about 20 MiB; callers with other shapes pass their own.
DEFAULT_QUERY_BLOCK = 16_384
DEFAULT_DATABASE_BLOCK = 262_144
# Queries expanded at once by query expansion (one embedding_bag call each).
EXPANSION_BLOCK = 4_096
# Tile of the distance matrix that faiss computes with one BLAS call before it
# updates the top k: 1,024 queries x 16,384 rows (64 MiB). faiss 1.15's default,
# 4,096 x 1,024, made a 46,820 x 29,930 x 128 search with k = 100 about 1.8x slower
# on 2 cores of an AMD EPYC, because the top-k update then runs on many small tiles.
BLAS_QUERY_TILE = 1_024
BLAS_DATABASE_TILE = 16_384


def set_faiss_threads(threads: int) -> None:
    """Set faiss's OpenMP threads; 0 keeps faiss's default (one per CPU).

    faiss bundles its own OpenMP runtime and BLAS, so `torch.set_num_threads` does not
    reach it.
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads > 0:
        faiss.omp_set_num_threads(threads)


def _check_matrix(array: np.ndarray, name: str) -> np.ndarray:
    # Validate without converting, so that a memory-mapped float64 database is not
    # copied whole; each block is converted on its own.
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {matrix.shape}")
    if matrix.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {matrix.shape}")
    return matrix


def _as_float32(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block, dtype=np.float32)


def _check_positive(value: int, name: str) -> int:
    number = operator.index(value)
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {number}")
    return number


def _check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric  # type: ignore[return-value]


def _faiss_metric(metric: Metric) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _missing_distance(metric: Metric) -> float:
    return MISSING_L2 if metric == "l2" else MISSING_IP


def _check_dimensions(database: np.ndarray, queries: np.ndarray) -> None:
    if database.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but the database has {database.shape[1]}"
        )


def _merge_top_k(
    distances: np.ndarray, ids: np.ndarray, k: int, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k best columns of each row; missing ids (-1) sort last.

    The sort is stable, so among equal distances earlier columns win.
    """
    key = distances if metric == "l2" else -distances
    key = np.where(ids < 0, np.inf, key)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)


@contextmanager
def _blas_tiles(query_tile: int, database_tile: int) -> Iterator[None]:
    # faiss keeps these tile sizes in process-wide globals; restore them afterwards.
    # NOTE: a search in another thread at the same time also uses the changed tiles, which
    # changes its speed but not its results.
    saved = (
        faiss.cvar.distance_compute_blas_query_bs,
        faiss.cvar.distance_compute_blas_database_bs,
    )
    faiss.cvar.distance_compute_blas_query_bs = query_tile
    faiss.cvar.distance_compute_blas_database_bs = database_tile
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = (
            saved
        )


def _search_query_block(
    database: np.ndarray, queries: np.ndarray, k: int, database_block: int, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    best_distances = np.full((len(queries), k), _missing_distance(metric), dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    if metric == "l2":
        # Squared L2 as an inner product, which faiss searches faster (no pass that adds
        # the norms to every entry): |q - x|^2 = |q|^2 - 2 [q, 1] . [x, -|x|^2 / 2].
        query_norms = np.einsum("qd,qd->q", queries, queries)
        queries = np.hstack([queries, np.ones((len(queries), 1), dtype=np.float32)])
    for start in range(0, len(database), database_block):
        block = _as_float32(database[start : start + database_block])
        if metric == "l2":
            half_norms = -0.5 * np.einsum("nd,nd->n", block, block)
            block = np.hstack([block, half_norms[:, None]])
        # faiss.knn searches the block in place, where an IndexFlat would copy it.
        distances, ids = faiss.knn(
            queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT
        )
        if metric == "l2":
            # Rounding can leave a tiny negative value where the distance is 0; faiss's
            # own L2 search clamps these to 0 as well.
            distances = np.maximum(query_norms[:, None] - 2.0 * distances, 0.0)
            distances[ids < 0] = MISSING_L2
        ids[ids >= 0] += start
        if start == 0 and ids.shape[1] == k:
            best_distances, best_ids = distances, ids
            continue
        best_distances, best_ids = _merge_top_k(
            np.concatenate([best_distances, distances], axis=1),
            np.concatenate([best_ids, ids], axis=1),
            k,
            metric,
        )
    return best_distances, best_ids


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    query_block: int = DEFAULT_QUERY_BLOCK,
    database_block: int = DEFAULT_DATABASE_BLOCK,
    metric: Metric = "l2",
) -> tuple[np.ndarray, np.ndarray]:
    """Find each query's k nearest database rows by brute force, block by block.

    Returns (distances float32, ids int64), both (Q, k), nearest first. Rows past the size
    of the database have id -1 (see the module docstring). The ids equal those of one
    `faiss.IndexFlat` over the whole database except among equal distances, whose order
    (and which of them is kept at the k-th place) is unspecified. Inputs of any float
    dtype or memory layout are converted to float32 one block at a time, so a `np.memmap`
    database is read, not loaded. Memory beyond the inputs and outputs: one database
    block (`database_block * (D + 1) * 4` bytes, with a norm column for "l2"), the
    results being merged (about `query_block * k * 24` bytes) and faiss's 64 MiB
    distance tile.
    """
    database = _check_matrix(database, "database")
    queries = _check_matrix(queries, "queries")
    _check_dimensions(database, queries)
    k = _check_positive(k, "k")
    query_block = _check_positive(query_block, "query_block")
    database_block = _check_positive(database_block, "database_block")
    metric = _check_metric(metric)

    distances = np.full((len(queries), k), _missing_distance(metric), dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    if len(database) == 0:
        return distances, ids

    with _blas_tiles(BLAS_QUERY_TILE, BLAS_DATABASE_TILE):
        for start in range(0, len(queries), query_block):
            stop = start + query_block
            distances[start:stop], ids[start:stop] = _search_query_block(
                database, _as_float32(queries[start:stop]), k, database_block, metric
            )
    return distances, ids


def average_query_expansion(
    queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray
) -> np.ndarray:
    """Replace each query by the mean of its neighbours' descriptors (average QE).

    `neighbours` is (Q, k) database row ids; ids of -1 are skipped, and a query without
    any neighbour stays as it is. Returns float32 (Q, D). The sums run in torch's
    `embedding_bag`, block by block, about 10x faster than gathering the (Q, k, D)
    neighbour descriptors with numpy.
    """
    queries = _as_float32(_check_matrix(queries, "queries"))
    database = _check_matrix(database, "database")
    neighbours = np.asarray(neighbours)
    if neighbours.ndim != 2 or len(neighbours) != len(queries):
        raise ValueError(
            f"neighbours must be (Q, k) with Q = {len(queries)}, got shape {neighbours.shape}"
        )
    _check_dimensions(database, queries)

    expanded = queries.copy()
    if len(database) == 0 or neighbours.shape[1] == 0:
        return expanded
    # A float32 database (memory-mapped included) is read in place; others are converted.
    with warnings.catch_warnings():
        # torch warns that a read-only array (np.load with mmap_mode="r") stays read-only.
        warnings.simplefilter("ignore", UserWarning)
        table = torch.from_numpy(_as_float32(database))
    for start in range(0, len(queries), EXPANSION_BLOCK):
        ids = neighbours[start : start + EXPANSION_BLOCK]
        valid = ids >= 0
        counts = valid.sum(axis=1)
        if not counts.any():
            continue
        # Each valid neighbour weighs 1 / (valid neighbours of its query); missing ones 0.
        weights = valid / np.maximum(counts, 1)[:, None]
        means = F.embedding_bag(
            torch.from_numpy(ids.clip(min=0).astype(np.int64)),
            table,
            mode="sum",
            per_sample_weights=torch.from_numpy(weights.astype(np.float32)),
        ).numpy()
        rows = counts > 0
        expanded[start : start + len(ids)][rows] = means[rows]
    return expanded


def build_index(
    database: np.ndarray,
    factory: str,
    metric: Metric = "l2",
    *,
    train_size: int = 65_536,
    seed: int = 0,
    add_block: int = DEFAULT_DATABASE_BLOCK,
) -> faiss.Index:
    """Build a faiss index from an `index_factory` string, train it and add the database.

    Indexes that need training (IVF, PQ, ...) train on `train_size` rows drawn without
    replacement with `seed`. faiss's k-means logs a warning below 39 rows per centroid.
    Rows are added `add_block` at a time, converted to float32.
    """
    database = _check_matrix(database, "database")
    metric = _check_metric(metric)
    train_size = _check_positive(train_size, "train_size")
    add_block = _check_positive(add_block, "add_block")

    index = faiss.index_factory(database.shape[1], factory, _faiss_metric(metric))
    if not index.is_trained:
        if len(database) == 0:
            raise ValueError(f"index {factory!r} needs training data but the database is empty")
        rng = np.random.default_rng(seed)
        size = min(train_size, len(database))
        sample = np.sort(rng.choice(len(database), size=size, replace=False))
        log.info("training %s on %d of %d rows", factory, size, len(database))
        index.train(_as_float32(database[sample]))

    for start in range(0, len(database), add_block):
        index.add(_as_float32(database[start : start + add_block]))
    return index


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Search a faiss index; `nprobe` sets how many inverted lists an IVF index visits.

    Returns (distances float32, ids int64), both (Q, k), in faiss's conventions.
    """
    queries = _as_float32(_check_matrix(queries, "queries"))
    k = _check_positive(k, "k")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the index has {index.d}")
    if nprobe is not None:
        nprobe = _check_positive(nprobe, "nprobe")
        try:
            faiss.extract_index_ivf(index)
        except RuntimeError as error:
            raise ValueError(f"nprobe={nprobe} given but the index is not an IVF index") from error
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    if len(queries) == 0:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    distances, ids = index.search(queries, k)
    return distances, ids


EXACT = "Flat"


@dataclass
class DatabaseIndex:
    """A database prepared for repeated k-NN searches with one metric.

    For the factory string `EXACT` ("Flat") searches are exact and blocked
    (`exact_search`). Any other `faiss.index_factory` string (for example
    "IVF4096,Flat" or "HNSW32,Flat") builds a faiss index, trained and filled once.
    `search_parameters`, a `faiss.ParameterSpace` string such as "nprobe=64" or
    "efSearch=256", sets how much of that index each search visits.
    """

    database: np.ndarray
    metric: Metric
    factory: str = EXACT
    index: faiss.Index | None = None

    @classmethod
    def build(
        cls,
        database: np.ndarray,
        factory: str = EXACT,
        metric: Metric = "l2",
        *,
        search_parameters: str = "",
        train_size: int = 65_536,
        seed: int = 0,
    ) -> DatabaseIndex:
        """Prepare `database` for search; raises ValueError naming a factory faiss rejects."""
        database = _check_matrix(database, "database")
        metric = _check_metric(metric)
        if factory == EXACT:
            if search_parameters:
                raise ValueError(
                    f"search parameters {search_parameters!r} need an approximate index, "
                    f"not {EXACT!r}"
                )
            return cls(database, metric)
        if len(database) == 0:
            return cls(database, metric, factory)

        try:
            index = build_index(database, factory, metric, train_size=train_size, seed=seed)
        except RuntimeError as error:
            raise ValueError(
                f"faiss cannot build index {factory!r} for {database.shape[1]}-d rows: "
                f"{str(error).strip().splitlines()[-1]}"
            ) from error
        built = cls(database, metric, factory, index)
        if search_parameters:
            built.set_search_parameters(search_parameters)
        log.info(
            "built %s over %d rows (%s)", factory, len(database), search_parameters or "defaults"
        )
        return built

    def set_search_parameters(self, settings: str) -> None:
        """Apply a faiss ParameterSpace string such as "nprobe=64" to the approximate index."""
        if self.index is None:
            raise ValueError(f"search parameters {settings!r} need an approximate index")
        try:
            faiss.ParameterSpace().set_index_parameters(self.index, settings)  # type: ignore[arg-type]
        except RuntimeError as error:
            raise ValueError(
                f"faiss cannot apply search parameters {settings!r} to {self.factory!r}"
            ) from error

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), both (Q, min(k, N)), best first.

        An approximate index may find fewer than k rows for some queries: those places
        hold id -1 and the module's missing-distance value.
        """
        queries = _check_matrix(queries, "queries")
        _check_dimensions(self.database, queries)
        k = min(_check_positive(k, "k"), len(self.database))
        if k == 0 or len(queries) == 0:
            return (
                np.zeros((len(queries), k), dtype=np.float32),
                np.zeros((len(queries), k), dtype=np.int64),
            )
        if self.index is None:
            return exact_search(self.database, queries, k, metric=self.metric)
        return search_index(self.index, queries, k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Share of the exact top-k ids, over all queries, that the approximate top k contains.

    Only the first k columns of each array count, and ids of -1 are ignored, so a query
    with fewer than k exact neighbours weighs less. With no exact ids at all the recall
    is 1.0.
    """
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    k = _check_positive(k, "k")
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or len(approx_ids) != len(exact_ids):
        raise ValueError(
            f"approx_ids and exact_ids must be (Q, k) arrays with the same Q, got shapes "
            f"{approx_ids.shape} and {exact_ids.shape}"
        )

    found = 0
    expected = 0
    for approx, exact in zip(approx_ids[:, :k], exact_ids[:, :k], strict=True):
        truth = exact[exact >= 0]
        expected += len(truth)
        found += int(np.isin(truth, approx[approx >= 0]).sum())
    if expected == 0:
        return 1.0
    return found / expected
