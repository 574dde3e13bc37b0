"""Recognition by cosine kNN: query expansion, database augmentation, class votes and a
penalty for queries that look like known non-landmark photos.

Every descriptor here is a row of an (N, D) float array with unit L2 norm, so the inner
product is the cosine similarity. Searches here are exact (`glr.index.exact_search`).
"""

from __future__ import annotations

import numpy as np

from glr.index import exact_search
from glr.pooling import l2_normalize


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def flat_search(
    queries: np.ndarray, database: np.ndarray, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Find each query's `k` best database rows by exact search (`glr.index.exact_search`).

    `metric` is `ip` (inner product, most similar first) or `l2` (squared L2 distance,
    nearest first). Returns (scores, row ids), both (Q, min(k, N)). With an empty database
    or no queries the arrays have 0 columns or rows.
    """
    queries = _as_matrix(queries, "queries")
    database = _as_matrix(database, "database")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but the database has {database.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(database))
    if k == 0 or len(queries) == 0:
        return (
            np.zeros((len(queries), k), dtype=np.float32),
            np.zeros((len(queries), k), dtype=np.int64),
        )
    return exact_search(database, queries, int(k), metric="ip" if metric == "ip" else "l2")


def cosine_search(
    queries: np.ndarray, database: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Find each query's `k` most similar database rows by inner product.

    Returns (similarities, row ids), both (Q, min(k, N)), most similar first.
    """
    return flat_search(queries, database, k, "ip")


def _weighted_sum(
    vectors: np.ndarray,
    base: np.ndarray,
    similarities: np.ndarray,
    ids: np.ndarray,
    alpha: float,
) -> np.ndarray:
    # Negative similarities get weight 0, because a fractional power of them is undefined.
    weights = np.clip(similarities, 0.0, None) ** alpha
    return base + np.einsum("qk,qkd->qd", weights, vectors[ids])


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float
) -> np.ndarray:
    """Expand each query with its top-`n` database neighbours (alpha-weighted QE).

    The new query is the L2-normalised sum of the query (weight 1) and each neighbour
    weighted by max(similarity, 0) ** `alpha` (Radenovic et al., TPAMI 2018). `n` = 0
    returns the queries unchanged.
    """
    queries = _as_matrix(queries, "queries")
    database = _as_matrix(database, "database")
    if n < 0:
        raise ValueError(f"query expansion n must be >= 0, got {n}")
    if n == 0 or len(database) == 0:
        return queries.copy()
    similarities, ids = cosine_search(queries, database, n)
    return l2_normalize(_weighted_sum(database, queries, similarities, ids, alpha))


def database_augmentation(database: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Replace each database row by the weighted mean of itself and its top-`n` neighbours.

    Weights are as in `alpha_query_expansion`: 1 for the row itself and
    max(similarity, 0) ** `alpha` for each of the `n` most similar other rows. The
    result is L2-normalised. `n` = 0 returns the database unchanged.
    """
    database = _as_matrix(database, "database")
    if n < 0:
        raise ValueError(f"database augmentation n must be >= 0, got {n}")
    if n == 0 or len(database) < 2:
        return database.copy()
    similarities, ids = cosine_search(database, database, n + 1)
    # Drop each row itself from its neighbour list. A row usually ranks first for
    # itself, but duplicates may tie, so remove it by id and keep the first n others.
    others_similarity = np.zeros((len(database), min(n, len(database) - 1)), dtype=np.float32)
    others_ids = np.zeros(others_similarity.shape, dtype=np.int64)
    for row in range(len(database)):
        keep = ids[row] != row
        others_similarity[row] = similarities[row][keep][: others_ids.shape[1]]
        others_ids[row] = ids[row][keep][: others_ids.shape[1]]
    return l2_normalize(_weighted_sum(database, database, others_similarity, others_ids, alpha))


def knn_vote(
    similarities: np.ndarray, ids: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vote for a class per query: sum the similarities of each class over the top `k`.

    `similarities` and `ids` are (Q, >= k) search results, most similar first, and
    `labels` maps database rows to class ids. Returns (class per query, its summed
    similarity). Ties go to the class whose best neighbour ranks first. A query whose
    top `k` are all missing (id -1) gets class -1 and score -inf.
    """
    similarities = np.asarray(similarities, dtype=np.float32)
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    if similarities.shape != ids.shape or similarities.ndim != 2:
        raise ValueError(
            f"similarities {similarities.shape} and ids {ids.shape} must be the same (Q, k)"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if similarities.shape[1] == 0:
        raise ValueError("the search returned no neighbours, so no class can be voted for")

    # Missing neighbours (id -1, from an approximate index) have no class and no weight.
    found = ids[:, :k] >= 0
    top_similarities = np.where(found, similarities[:, :k], 0.0).astype(np.float32)
    top_labels = np.where(found, labels[ids[:, :k].clip(min=0)], -1)
    # (Q, k, k): same[q, i, j] is True when neighbours i and j of query q share a class,
    # so a row sum gives the class score seen from each neighbour.
    same = (top_labels[:, :, None] == top_labels[:, None, :]) & found[:, None, :]
    class_scores = np.where(found, np.einsum("qij,qj->qi", same, top_similarities), -np.inf)
    # argmax returns the first maximum, i.e. the best-ranked neighbour of the best class.
    best = np.argmax(class_scores, axis=1)
    rows = np.arange(len(best))
    return top_labels[rows, best], class_scores[rows, best]


def max_similarity(
    queries: np.ndarray, pool: np.ndarray, top_m: int = 1, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Return each query's mean similarity to its `top_m` most similar pool rows: (Q,).

    `exclude` is an optional (Q, P) boolean mask of pairs to skip, for example a query
    that is itself in the pool. A query with fewer than `top_m` allowed pool rows
    averages the ones it has, and a query with none gets 0.
    """
    queries = _as_matrix(queries, "queries")
    pool = _as_matrix(pool, "pool")
    if top_m < 1:
        raise ValueError(f"top_m must be >= 1, got {top_m}")
    if len(pool) == 0:
        return np.zeros(len(queries), dtype=np.float32)
    similarities = queries @ pool.T
    if exclude is not None:
        if exclude.shape != similarities.shape:
            raise ValueError(f"exclude must be {similarities.shape}, got {exclude.shape}")
        similarities = np.where(exclude, -np.inf, similarities)
    m = min(top_m, len(pool))
    top = -np.sort(-similarities, axis=1)[:, :m]
    finite = np.isfinite(top)
    counts = finite.sum(axis=1)
    totals = np.where(finite, top, 0.0).sum(axis=1)
    return np.where(counts > 0, totals / np.maximum(counts, 1), 0.0).astype(np.float32)


def penalize_non_landmarks(
    confidences: np.ndarray, pool_similarity: np.ndarray, beta: float
) -> np.ndarray:
    """Lower each confidence by `beta` times the query's similarity to non-landmark photos.

    `pool_similarity` is `max_similarity` of each query to a pool of photos known to show
    no landmark. With `beta` = 0 the confidences are returned unchanged.
    """
    confidences = np.asarray(confidences, dtype=np.float32)
    pool_similarity = np.asarray(pool_similarity, dtype=np.float32)
    if confidences.shape != pool_similarity.shape:
        raise ValueError(
            f"confidences {confidences.shape} and pool similarities {pool_similarity.shape} "
            "must have the same shape"
        )
    return confidences - beta * pool_similarity
