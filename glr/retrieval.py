"""Nearest-neighbour search with faiss, query expansion and labels for each query.

Two rules: the reference report's (raw Siamese embeddings compared by L2 distance, labels
from the pair head above a threshold) and a kNN vote over cosine neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from glr.index import DatabaseIndex, average_query_expansion
from glr.io import write_csv
from glr.models import PairHead
from glr.params import RetrievalParams
from glr.pooling import apply_whitening, fit_whitening, l2_normalize
from glr.scoring import (
    alpha_query_expansion,
    database_augmentation,
    flat_search,
    knn_vote,
    max_similarity,
    penalize_non_landmarks,
)

log = logging.getLogger(__name__)

Prediction = tuple[int, float] | None
QUERY_CHUNK = 1024


def as_descriptors(array: np.ndarray, name: str) -> np.ndarray:
    """Return `array` as a C-contiguous float32 (N, D) matrix, as faiss requires."""
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def search(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Find each query's `k` nearest database rows by exact L2 distance.

    Returns (squared distances, row ids), both (Q, min(k, N)), nearest first. Ties keep
    faiss's order. With an empty database or no queries the arrays have 0 columns or rows.
    """
    return flat_search(queries, database, k, "l2")


def pair_similarities(
    head: PairHead, queries: np.ndarray, database: np.ndarray, neighbours: np.ndarray
) -> np.ndarray:
    """Pair-head similarity in [0, 1] between each query and each of its neighbours: (Q, k)."""
    similarities = np.zeros(neighbours.shape, dtype=np.float32)
    database_tensor = torch.from_numpy(as_descriptors(database, "database"))
    with torch.no_grad():
        for start in range(0, len(queries), QUERY_CHUNK):
            stop = start + QUERY_CHUNK
            query = torch.from_numpy(as_descriptors(queries[start:stop], "queries"))
            ids = torch.from_numpy(np.asarray(neighbours[start:stop], dtype=np.int64))
            logits = head(query[:, None, :], database_tensor[ids.clamp(min=0)])
            similarities[start:stop] = torch.sigmoid(logits).numpy()
    similarities[neighbours < 0] = 0.0
    return similarities


def label_by_threshold(
    similarities: np.ndarray, labels: np.ndarray, threshold: float
) -> list[Prediction]:
    """Predict, per query, the class of its most similar neighbour if that similarity >= threshold.

    `similarities` and `labels` are (Q, k). The confidence is the best similarity, so every
    class at or above the threshold is a candidate and the best one is reported (a
    submission row contains one landmark). A query with no neighbour at the threshold gets None.
    """
    predictions: list[Prediction] = []
    for scores, classes in zip(similarities, labels, strict=True):
        # Compare in the scores' own precision, so a float32 0.9 meets a threshold of 0.9.
        if len(scores) == 0 or scores.max() < np.asarray(threshold, dtype=scores.dtype):
            predictions.append(None)
            continue
        best = int(np.argmax(scores))
        predictions.append((int(classes[best]), float(scores[best])))
    return predictions


@dataclass
class RetrievalResult:
    """Predictions for every query, with the neighbours before and after query expansion.

    `expanded_queries` are the descriptors of the final search: without query expansion
    they are the queries themselves and `expanded_neighbours` equals `neighbours`.
    `queries` and `database` are the descriptors in the space that was searched (after
    normalisation, whitening and augmentation, where used).
    """

    predictions: list[Prediction]
    neighbours: np.ndarray
    expanded_queries: np.ndarray
    expanded_neighbours: np.ndarray
    queries: np.ndarray
    database: np.ndarray


def _no_queries() -> RetrievalResult:
    empty = np.zeros((0, 0), dtype=np.int64)
    descriptors = np.zeros((0, 0), dtype=np.float32)
    return RetrievalResult([], empty, descriptors, empty, descriptors, descriptors)


def recognise(
    queries: np.ndarray,
    database: np.ndarray,
    database_labels: np.ndarray,
    head: PairHead,
    *,
    top_k: int,
    query_expansion: str,
    threshold: float,
) -> RetrievalResult:
    """Retrieve the top-k neighbours, optionally expand the queries, and label by threshold."""
    if len(queries) == 0:
        return _no_queries()
    _, neighbours = search(database, queries, top_k)
    expanded, expanded_neighbours = as_descriptors(queries, "queries"), neighbours
    if query_expansion == "average":
        expanded = average_query_expansion(queries, database, neighbours)
        _, expanded_neighbours = search(database, expanded, top_k)
    elif query_expansion != "none":
        raise ValueError(f"query_expansion must be 'none' or 'average', got {query_expansion!r}")

    similarities = pair_similarities(head, queries, database, expanded_neighbours)
    labels = np.asarray(database_labels)[expanded_neighbours.clip(min=0)]
    predictions = label_by_threshold(similarities, labels, threshold)
    return RetrievalResult(
        predictions,
        neighbours,
        expanded,
        expanded_neighbours,
        as_descriptors(queries, "queries"),
        as_descriptors(database, "database"),
    )


def write_submission(path: str, ids: Sequence[str], predictions: Sequence[Prediction]) -> None:
    """Write a Kaggle-format submission: `id,landmarks` with "<landmark_id> <score>" or empty."""
    cells = ["" if p is None else f"{p[0]} {p[1]:.9g}" for p in predictions]
    write_csv(path, pd.DataFrame({"id": list(ids), "landmarks": cells}))


def recognise_knn(
    queries: np.ndarray,
    database: np.ndarray,
    database_labels: np.ndarray,
    settings: RetrievalParams,
    pool: np.ndarray | None = None,
    pool_exclude: np.ndarray | None = None,
) -> RetrievalResult:
    """Label queries by a similarity-weighted kNN vote over cosine neighbours.

    The descriptors are L2-normalised, then optionally PCA-whitened (learned on the
    database, with shrinkage). The database is augmented, the queries are expanded
    (average or alpha-weighted), and a top-k cosine search feeds a vote over the `knn_k`
    nearest images. With a pool of known non-landmark photos, the confidence drops by
    beta x the query's similarity to the pool.
    `pool_exclude` (Q, P) masks pool photos that are the query itself. A query with no
    neighbour (empty database) gets None. Confidences are finite for every input,
    including all-zero descriptors, which normalise to zero vectors.
    """
    if len(queries) == 0:
        return _no_queries()
    queries = l2_normalize(as_descriptors(queries, "queries"))
    database = l2_normalize(as_descriptors(database, "database"))
    pool = None if pool is None else l2_normalize(as_descriptors(pool, "pool"))
    if settings.whitening and len(database) > 1:
        whitening = fit_whitening(database, 0, settings.whitening_shrinkage)
        database = apply_whitening(database, whitening)
        queries = apply_whitening(queries, whitening)
        pool = None if pool is None else apply_whitening(pool, whitening)
    database = database_augmentation(database, settings.dba_n, settings.dba_alpha)

    try:
        index = DatabaseIndex.build(
            database, settings.index, "ip", search_parameters=settings.index_search
        )
    except ValueError as error:
        raise ValueError(f"retrieval.index / retrieval.index_search: {error}") from error
    # Without query expansion the first search gives the final neighbours. With it, the
    # expanded queries are searched again.
    similarities, neighbours = index.search(queries, settings.top_k)
    expanded, expanded_neighbours = queries, neighbours
    if settings.query_expansion == "average":
        expanded = l2_normalize(average_query_expansion(queries, database, neighbours))
    elif settings.query_expansion == "alpha":
        expanded = alpha_query_expansion(queries, database, settings.qe_n, settings.qe_alpha)
    if settings.query_expansion != "none":
        similarities, expanded_neighbours = index.search(expanded, settings.top_k)

    predictions: list[Prediction] = [None] * len(queries)
    if similarities.shape[1] > 0:
        labels, confidences = knn_vote(
            similarities, expanded_neighbours, np.asarray(database_labels), settings.knn_k
        )
        if pool is not None and settings.non_landmark_beta > 0:
            pool_similarity = max_similarity(
                queries, pool, settings.non_landmark_top_m, pool_exclude
            )
            confidences = penalize_non_landmarks(
                confidences, pool_similarity, settings.non_landmark_beta
            )
        # An approximate index can leave a query without any neighbour (label -1).
        predictions = [
            (int(label), float(confidence)) if label >= 0 else None
            for label, confidence in zip(labels, confidences, strict=True)
        ]
    return RetrievalResult(
        predictions,
        neighbours,
        expanded,
        expanded_neighbours,
        as_descriptors(queries, "queries"),
        as_descriptors(database, "database"),
    )
