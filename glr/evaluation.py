"""Evaluations beyond GAP: gate and pair tests on the test set, ranks before and after QE."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from glr.metrics import (
    binary_precision_recall,
    first_relevant_ranks,
    mean_average_precision_at_k,
    read_submission,
)
from glr.models import PairHead
from glr.retrieval import as_descriptors

RANK_CHUNK = 256


def gate_precision_recall(
    query_ids: Sequence[str], passed: Sequence[bool], ground_truth: Mapping[str, Collection[int]]
) -> tuple[float, float]:
    """Precision and recall of the gate, where positives are queries that show a landmark."""
    truth = [len(ground_truth[query_id]) > 0 for query_id in query_ids]
    return binary_precision_recall(truth, list(passed))


def sample_test_pairs(
    query_labels: Sequence[Collection[int]], database_labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair each query with one database image, as the reference report's pair test does.

    A query that shows a landmark is paired with a random database image of that landmark
    (target 1); a query without a landmark with a random database image (target 0). A query
    whose landmark has no database image gets no pair. Returns (query rows, database rows,
    targets), seeded.
    """
    rng = np.random.default_rng(seed)
    queries: list[int] = []
    database: list[int] = []
    targets: list[int] = []
    for row, labels in enumerate(query_labels):
        if labels:
            candidates = np.flatnonzero(np.isin(database_labels, list(labels)))
            target = 1
        else:
            candidates = np.arange(len(database_labels))
            target = 0
        if len(candidates) == 0:
            continue
        queries.append(row)
        database.append(int(rng.choice(candidates)))
        targets.append(target)
    return np.array(queries, dtype=np.int64), np.array(database, dtype=np.int64), np.array(targets)


def pair_test(
    head: PairHead,
    query_embeddings: np.ndarray,
    database_embeddings: np.ndarray,
    query_labels: Sequence[Collection[int]],
    database_labels: np.ndarray,
    seed: int,
) -> dict[str, float | int]:
    """Precision and recall of the pair head (similarity >= 0.5 means same landmark)."""
    query_rows, database_rows, targets = sample_test_pairs(query_labels, database_labels, seed)
    if len(targets) == 0:
        return {"pairs": 0, "precision": 0.0, "recall": 0.0}

    with torch.no_grad():
        queries = torch.from_numpy(as_descriptors(query_embeddings, "queries")[query_rows])
        database = torch.from_numpy(as_descriptors(database_embeddings, "database")[database_rows])
        similarity = torch.sigmoid(head(queries, database)).numpy()
    precision, recall = binary_precision_recall(targets == 1, similarity >= 0.5)
    return {
        "pairs": int(len(targets)),
        "positive_pairs": int(targets.sum()),
        "precision": precision,
        "recall": recall,
    }


def first_relevant_l2_ranks(
    queries: np.ndarray,
    database: np.ndarray,
    database_labels: np.ndarray,
    query_labels: Sequence[Collection[int]],
) -> np.ndarray:
    """Rank of the first database image of a true landmark, all images ranked by L2 distance.

    Ranks are 1-based; NaN for a query without a landmark or whose landmark is not in the
    database. Queries are processed in chunks, so memory stays at chunk x N scores.
    """
    queries = as_descriptors(queries, "queries")
    database = as_descriptors(database, "database")
    ranks = np.full(len(queries), np.nan)
    squared_norms = (database.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(queries), RANK_CHUNK):
        chunk = queries[start : start + RANK_CHUNK].astype(np.float64)
        # Higher score = closer: -|q - x|^2 without the |q|^2 term, which is the same per row.
        scores = 2.0 * chunk @ database.T.astype(np.float64) - squared_norms
        ranks[start : start + len(chunk)] = first_relevant_ranks(
            scores, database_labels, query_labels[start : start + len(chunk)]
        )
    return ranks


def mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the non-NaN values, or None when there are none (so JSON shows null)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def retrieval_metrics(
    submission: Path,
    retrieved: Sequence[str],
    neighbours: np.ndarray,
    index_ids: np.ndarray,
    index_labels: np.ndarray,
    ground_truth: Mapping[str, Collection[int]],
    scored: Collection[str],
) -> dict[str, float | None]:
    """Top-1 accuracy over scored landmark queries and mAP@100 of the ranked index images.

    A landmark query without a prediction counts as wrong for top-1, and one that was not
    retrieved (the gate rejected it) scores 0 in mAP@100. Relevant index images are those
    of the query's landmarks. A value is None when no scored query shows a landmark or,
    for mAP@100, when no such landmark has an index image.
    """
    landmark_queries = [q for q in scored if ground_truth.get(q)]
    if not landmark_queries:
        return {"top1_accuracy": None, "map_at_100": None}

    predictions = read_submission(submission)
    correct = sum(
        1
        for query_id in landmark_queries
        if (prediction := predictions.get(query_id)) and prediction[0] in ground_truth[query_id]
    )

    ranked = {
        query_id: [str(index_ids[row]) for row in rows if row >= 0]
        for query_id, rows in zip(retrieved, neighbours, strict=True)
    }
    relevant = {
        query_id: {
            str(image_id)
            for image_id, label in zip(index_ids, index_labels, strict=True)
            if label in ground_truth[query_id]
        }
        for query_id in landmark_queries
    }
    # mAP is defined over queries whose landmark has index images; it is None without any.
    relevant = {query_id: ids for query_id, ids in relevant.items() if ids}
    map_at_100 = (
        mean_average_precision_at_k(
            {query_id: ranked.get(query_id, []) for query_id in relevant}, relevant, 100
        )
        if relevant
        else None
    )
    return {"top1_accuracy": correct / len(landmark_queries), "map_at_100": map_at_100}
