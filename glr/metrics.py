"""Evaluation metrics for landmark recognition and retrieval on GLDv2.

GAP and mAP@k follow the official GLDv2 metric code (tensorflow/models,
research/delf/delf/python/datasets/google_landmarks_dataset/metrics.py), including
its tie order and its handling of repeated ids:

- GAP (global average precision, Kaggle's micro-AP) scores one prediction per
  query, a landmark id with a confidence, ranked over all queries.
- mAP@k scores a ranked list of database images per query.
- Precision and recall of the recognition output and of the landmark-present
  gate, and the mean rank of the first database image of a true landmark.

Terms: a *query* is a test image. Its *ground truth* is the set of landmark ids
that it shows, and the empty set means that it shows no landmark. ``M`` is the
number of queries whose ground truth is not empty.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

Prediction = tuple[int, float]
"""A recognition prediction: (landmark id, confidence). Higher confidence ranks first."""

Predictions = Mapping[str, Prediction | None]
"""Query id -> its prediction, or None for a query without a prediction."""

GroundTruth = Mapping[str, Collection[int]]
"""Query id -> landmark ids that the query shows. An empty collection means no landmark."""

USAGE_VALUES = ("Public", "Private", "Ignored")
"""The values of the Usage column of a GLDv2 solution file."""

SCORED_USAGES = ("Public", "Private")
"""Usage values that are scored. Rows with Usage ``Ignored`` leave both the solution and
the submission."""

SOLUTION_COLUMNS = ("id", "landmarks", "Usage")
SUBMISSION_COLUMNS = ("id", "landmarks")

_LANDMARK_ID = re.compile(r"[0-9]+")

ItemT = TypeVar("ItemT", bound=Hashable)
ValueT = TypeVar("ValueT")


class UndefinedMetricError(ValueError):
    """Raised when a metric's denominator is zero, for example GAP when no query shows a
    landmark (M = 0)."""


class EvaluationFileError(ValueError):
    """Raised for an invalid solution or submission CSV file.

    ``line`` is the 1-based line of the file (the header is line 1), or None when the
    problem concerns the whole file. ``column`` is the column name, or None.
    """

    def __init__(
        self, path: str | os.PathLike[str], line: int | None, column: str | None, problem: str
    ):
        self.path = os.fspath(path)
        self.line = line
        self.column = column
        self.problem = problem
        location = self.path
        if line is not None:
            location += f", line {line}"
        if column is not None:
            location += f", column '{column}'"
        super().__init__(f"{location}: {problem}")


@dataclass(frozen=True)
class Solution:
    """Contents of a recognition solution file.

    ``landmarks`` maps every query id in the file to the landmark ids that the query
    shows (empty for no landmark). ``usage`` maps the same ids to their Usage value.
    """

    landmarks: dict[str, frozenset[int]]
    usage: dict[str, str]


# ---------------------------------------------------------------------------
# CSV files
# ---------------------------------------------------------------------------


def _read_rows(
    path: str | os.PathLike[str], required_columns: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, cells of the required columns) for each non-blank data row.

    Every field is read as a string, so ids such as "0123" or "nan" stay unchanged.
    Extra columns are allowed and skipped. A row with a different number of fields
    than the header raises EvaluationFileError.
    """
    # utf-8-sig strips a byte order mark, which would otherwise become part of "id".
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise EvaluationFileError(
                    path,
                    None,
                    None,
                    f"file is empty, expected the header {','.join(required_columns)}",
                )
            positions = _column_positions(path, header, required_columns)

            for fields in reader:
                # csv.reader counts physical lines, so a quoted cell that spans lines
                # makes line_num the row's last line.
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise EvaluationFileError(
                        path,
                        line,
                        None,
                        f"expected {len(header)} fields as in the header, found {len(fields)}",
                    )
                yield line, {name: fields[index] for name, index in positions.items()}
        except csv.Error as error:
            raise EvaluationFileError(
                path, reader.line_num, None, f"invalid CSV: {error}"
            ) from error
        except UnicodeDecodeError as error:
            raise EvaluationFileError(path, None, None, f"not valid UTF-8: {error}") from error


def _column_positions(
    path: str | os.PathLike[str], header: list[str], required_columns: Sequence[str]
) -> dict[str, int]:
    positions: dict[str, int] = {}
    for name in required_columns:
        count = header.count(name)
        if count == 0:
            raise EvaluationFileError(
                path,
                1,
                name,
                f"missing column. The header is {','.join(header)!r} and must contain "
                f"{', '.join(required_columns)}",
            )
        if count > 1:
            raise EvaluationFileError(
                path, 1, name, f"the header contains this column {count} times"
            )
        positions[name] = header.index(name)
    return positions


def _parse_landmark_id(path: str | os.PathLike[str], line: int, column: str, token: str) -> int:
    if not _LANDMARK_ID.fullmatch(token):
        raise EvaluationFileError(
            path, line, column, f"landmark id {token!r} is not a non-negative integer"
        )
    return int(token)


def read_solution(path: str | os.PathLike[str]) -> Solution:
    """Read a recognition solution CSV with the columns ``id,landmarks,Usage``.

    ``landmarks`` contains space-separated landmark ids, or nothing for a query that
    shows no landmark. ``Usage`` is one of Public, Private or Ignored. Blank lines
    are skipped and extra columns are allowed.

    Raises:
        EvaluationFileError: a required column is missing, or a row has an empty or
            duplicate id, a landmark id that is not a non-negative integer, an unknown
            Usage value or the wrong number of fields. The message names the file,
            the line (the header is line 1) and the column.
    """
    landmarks: dict[str, frozenset[int]] = {}
    usage: dict[str, str] = {}
    first_line: dict[str, int] = {}

    for line, cells in _read_rows(path, SOLUTION_COLUMNS):
        query_id = cells["id"]
        _check_query_id(path, line, query_id, first_line)

        tokens = cells["landmarks"].split()
        landmarks[query_id] = frozenset(
            _parse_landmark_id(path, line, "landmarks", token) for token in tokens
        )

        if cells["Usage"] not in USAGE_VALUES:
            raise EvaluationFileError(
                path,
                line,
                "Usage",
                f"invalid value {cells['Usage']!r}, expected one of {', '.join(USAGE_VALUES)}",
            )
        usage[query_id] = cells["Usage"]

    return Solution(landmarks=landmarks, usage=usage)


def read_submission(
    path: str | os.PathLike[str], known_ids: Collection[str] | None = None
) -> dict[str, Prediction | None]:
    """Read a recognition submission CSV with the columns ``id,landmarks``.

    Each ``landmarks`` cell contains ``"<landmark_id> <confidence>"`` or nothing, and an
    empty cell maps to None (no prediction). Blank lines are skipped and extra columns
    are allowed. Ids of the solution that the file lacks are not an error here, and
    the metrics treat them as queries without a prediction.

    Args:
        path: the submission file.
        known_ids: if given, every id in the file must be one of these, normally the
            keys of ``Solution.landmarks`` (all rows, including Usage Ignored).

    Raises:
        EvaluationFileError: a required column is missing, or a row has the wrong
            number of fields or an empty, duplicate or unknown (not in ``known_ids``)
            id. A landmarks cell is also invalid without exactly two tokens, with a
            landmark id that is not a non-negative integer or with a confidence that is
            not a finite number. The message names the file, the line (the header is
            line 1) and the column.
    """
    predictions: dict[str, Prediction | None] = {}
    first_line: dict[str, int] = {}
    allowed_ids = None if known_ids is None else set(known_ids)

    for line, cells in _read_rows(path, SUBMISSION_COLUMNS):
        query_id = cells["id"]
        _check_query_id(path, line, query_id, first_line)
        if allowed_ids is not None and query_id not in allowed_ids:
            raise EvaluationFileError(path, line, "id", f"id {query_id!r} is not in the solution")

        tokens = cells["landmarks"].split()
        if not tokens:
            predictions[query_id] = None
            continue
        if len(tokens) != 2:
            raise EvaluationFileError(
                path,
                line,
                "landmarks",
                f"expected '<landmark_id> <confidence>' or an empty cell, found {len(tokens)} "
                f"tokens in {cells['landmarks']!r}",
            )

        landmark_id = _parse_landmark_id(path, line, "landmarks", tokens[0])
        try:
            confidence = float(tokens[1])
        except ValueError:
            confidence = math.nan
        if not math.isfinite(confidence):
            raise EvaluationFileError(
                path, line, "landmarks", f"confidence {tokens[1]!r} is not a finite number"
            )
        predictions[query_id] = (landmark_id, confidence)

    return predictions


def _check_query_id(
    path: str | os.PathLike[str], line: int, query_id: str, first_line: dict[str, int]
) -> None:
    """Raise EvaluationFileError for an empty or repeated id, else record the id's line."""
    if not query_id:
        raise EvaluationFileError(path, line, "id", "the id is empty")
    if query_id in first_line:
        raise EvaluationFileError(
            path,
            line,
            "id",
            f"duplicate id {query_id!r}, first seen on line {first_line[query_id]}",
        )
    first_line[query_id] = line


def select_usage(
    solution: Solution, usages: Iterable[str] = SCORED_USAGES
) -> dict[str, frozenset[int]]:
    """Return the ground truth of the queries whose Usage is one of ``usages``.

    With the default, rows with Usage Ignored are dropped. Restrict the predictions to
    the returned ids (see ``restrict_to_ground_truth``) so that those rows leave both sides.
    """
    selected = set(usages)
    unknown = selected.difference(USAGE_VALUES)
    if unknown:
        raise ValueError(
            f"unknown Usage values {sorted(unknown)}, expected values from {USAGE_VALUES}"
        )
    return {
        query_id: landmarks
        for query_id, landmarks in solution.landmarks.items()
        if solution.usage[query_id] in selected
    }


def restrict_to_ground_truth(
    per_query: Mapping[str, ValueT], ground_truth: Mapping[str, object]
) -> dict[str, ValueT]:
    """Return the entries of ``per_query`` whose query id is in ``ground_truth``.

    Use it on predictions or ranked lists after ``select_usage`` has dropped rows.
    """
    return {query_id: value for query_id, value in per_query.items() if query_id in ground_truth}


# ---------------------------------------------------------------------------
# Recognition: GAP, precision and recall
# ---------------------------------------------------------------------------


def _check_prediction_ids(
    predictions: Mapping[str, object], ground_truth: Mapping[str, object]
) -> None:
    unknown = [query_id for query_id in predictions if query_id not in ground_truth]
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted query ids are not in the ground truth, for example "
            f"{unknown[0]!r}. Drop them first, for example with restrict_to_ground_truth"
        )


def _count_landmark_queries(ground_truth: GroundTruth) -> int:
    return sum(1 for landmarks in ground_truth.values() if len(landmarks) > 0)


def global_average_precision(
    predictions: Predictions, ground_truth: GroundTruth, *, ignore_non_landmarks: bool = False
) -> float:
    """Compute GAP, Kaggle's micro-averaged average precision for recognition.

    All predictions, over all queries, are sorted by confidence descending. Ties are
    broken by query id ascending (string order), then landmark id ascending. Then

        GAP = (1 / M) * sum_i P(i) * rel(i)

    where P(i) is the precision of the first i sorted predictions and rel(i) is 1 when
    prediction i's landmark is in its query's ground truth.

    - A query with no prediction (None, or absent from ``predictions``) adds nothing
      to the sum but still counts in M when it shows a landmark.
    - A prediction on a query without a landmark is wrong, so it lowers the precision
      of every prediction ranked below it. With ``ignore_non_landmarks=True`` such
      predictions are dropped before sorting instead. M is the same in both modes.
    - No predictions at all gives 0.0.

    Args:
        predictions: query id -> (landmark id, confidence) or None. Every key must be
            in ``ground_truth``, so drop Usage Ignored rows from both sides first.
        ground_truth: query id -> landmark ids. An empty collection means no landmark.
        ignore_non_landmarks: drop predictions on queries without a landmark.

    Raises:
        UndefinedMetricError: no query in ``ground_truth`` shows a landmark (M = 0).
        ValueError: a predicted query id is not in ``ground_truth``, or a confidence
            is not finite.
    """
    num_landmark_queries = _count_landmark_queries(ground_truth)
    if num_landmark_queries == 0:
        raise UndefinedMetricError(
            "GAP is undefined because no query in the ground truth shows a landmark (M = 0)"
        )
    _check_prediction_ids(predictions, ground_truth)

    # Gather the scored predictions.
    query_ids: list[str] = []
    landmark_ids: list[int] = []
    confidences: list[float] = []
    correct: list[bool] = []
    for query_id, prediction in predictions.items():
        if prediction is None:
            continue
        truth = ground_truth[query_id]
        if ignore_non_landmarks and len(truth) == 0:
            continue
        landmark_id, confidence = prediction
        query_ids.append(query_id)
        landmark_ids.append(int(landmark_id))
        confidences.append(float(confidence))
        correct.append(int(landmark_id) in truth)
    if not query_ids:
        return 0.0

    confidence_array = np.asarray(confidences, dtype=np.float64)
    if not np.all(np.isfinite(confidence_array)):
        bad = query_ids[int(np.flatnonzero(~np.isfinite(confidence_array))[0])]
        raise ValueError(f"the confidence of query {bad!r} is not finite")

    # np.lexsort sorts by the last key first: confidence descending, then query id,
    # then landmark id. Query ids are unique in a mapping, so the landmark id never
    # decides the order here. It stays as a key to match the official tie rule.
    order = np.lexsort(
        (np.asarray(landmark_ids, dtype=np.int64), np.asarray(query_ids), -confidence_array)
    )
    is_correct = np.asarray(correct, dtype=bool)[order]

    precision_at_rank = np.cumsum(is_correct) / np.arange(1, len(is_correct) + 1)
    return float(precision_at_rank[is_correct].sum() / num_landmark_queries)


def precision_recall(predictions: Predictions, ground_truth: GroundTruth) -> tuple[float, float]:
    """Return the (precision, recall) of recognition predictions.

    precision = correct predictions / predictions made (non-None values), and
    recall = correct predictions / queries that show a landmark (M). A prediction on
    a query without a landmark counts as made and wrong. Following scikit-learn's
    ``zero_division=0``, precision is 0.0 when no prediction is made and recall is
    0.0 when M = 0.

    Raises:
        ValueError: a predicted query id is not in ``ground_truth``.
    """
    _check_prediction_ids(predictions, ground_truth)
    num_made = 0
    num_correct = 0
    for query_id, prediction in predictions.items():
        if prediction is None:
            continue
        num_made += 1
        if int(prediction[0]) in ground_truth[query_id]:
            num_correct += 1

    num_landmark_queries = _count_landmark_queries(ground_truth)
    precision = num_correct / num_made if num_made else 0.0
    recall = num_correct / num_landmark_queries if num_landmark_queries else 0.0
    return precision, recall


def binary_precision_recall(
    y_true: Sequence[bool] | np.ndarray, y_pred: Sequence[bool] | np.ndarray
) -> tuple[float, float]:
    """Return the (precision, recall) of the landmark-present gate.

    Positives are queries that show a landmark. ``y_true[i]`` is True when query i
    shows one and ``y_pred[i]`` is True when the gate lets it pass. Precision is 0.0 when
    the gate passes nothing, and recall is 0.0 when no query shows a landmark
    (scikit-learn's ``zero_division=0``).

    Raises:
        ValueError: the inputs are not 1-D or differ in length.
    """
    truth = np.asarray(y_true, dtype=bool)
    predicted = np.asarray(y_pred, dtype=bool)
    if truth.ndim != 1 or truth.shape != predicted.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D and of equal length, got shapes {truth.shape} "
            f"and {predicted.shape}"
        )
    precision, recall, _, _ = precision_recall_fscore_support(
        truth, predicted, average="binary", pos_label=True, zero_division=0
    )
    return float(precision), float(recall)


def score_submission(
    submission_path: str | os.PathLike[str],
    solution_path: str | os.PathLike[str],
    usages: Iterable[str] = SCORED_USAGES,
    query_ids: Collection[str] | None = None,
) -> dict[str, float | int]:
    """Read a submission and a solution file and compute the recognition metrics.

    Only queries whose Usage is in ``usages`` are scored and, when ``query_ids`` is
    given, only those among them (the test subset that was queried). The result has the
    keys ``gap``, ``gap_ignore_non_landmarks``, ``precision``, ``recall`` (see
    ``global_average_precision`` and ``precision_recall``), ``num_queries``,
    ``num_landmark_queries`` (M) and ``num_predictions`` (non-empty predictions on
    scored queries).

    Raises:
        EvaluationFileError: either file is invalid, or the submission has an id that
            the solution lacks.
        UndefinedMetricError: no scored query shows a landmark.
    """
    solution = read_solution(solution_path)
    predictions = read_submission(submission_path, known_ids=solution.landmarks)
    ground_truth = select_usage(solution, usages)
    if query_ids is not None:
        ground_truth = restrict_to_ground_truth(ground_truth, dict.fromkeys(query_ids))
    scored = restrict_to_ground_truth(predictions, ground_truth)

    precision, recall = precision_recall(scored, ground_truth)
    return {
        "gap": global_average_precision(scored, ground_truth),
        "gap_ignore_non_landmarks": global_average_precision(
            scored, ground_truth, ignore_non_landmarks=True
        ),
        "precision": precision,
        "recall": recall,
        "num_queries": len(ground_truth),
        "num_landmark_queries": _count_landmark_queries(ground_truth),
        "num_predictions": sum(1 for prediction in scored.values() if prediction is not None),
    }


# ---------------------------------------------------------------------------
# Retrieval: mAP@k and rank of the first relevant database image
# ---------------------------------------------------------------------------


def average_precision_at_k(
    ranked_ids: Sequence[ItemT], relevant: Collection[ItemT], k: int = 100
) -> float:
    """Compute AP@k of one ranked list against a non-empty set of relevant ids.

    AP@k = (1 / min(m, k)) * sum_{r=1..min(n, k)} P(r) * rel(r), where m is the number
    of relevant ids, n the length of the list, and P(r) the precision of the first r
    positions. An id repeated in the list counts as not relevant at its later
    positions but still takes up those positions.

    Raises:
        ValueError: ``relevant`` is empty or ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    relevant_set = set(relevant)
    if not relevant_set:
        raise ValueError("AP@k needs at least one relevant id")

    top = ranked_ids[:k]
    hits = np.zeros(len(top), dtype=bool)
    seen: set[ItemT] = set()
    for position, item in enumerate(top):
        if item in seen:
            continue
        seen.add(item)
        hits[position] = item in relevant_set

    precision_at_rank = np.cumsum(hits) / np.arange(1, len(top) + 1)
    return float(precision_at_rank[hits].sum() / min(len(relevant_set), k))


def mean_average_precision_at_k(
    ranked_ids: Mapping[str, Sequence[ItemT]],
    relevant: Mapping[str, Collection[ItemT]],
    k: int = 100,
) -> float:
    """Compute mAP@k, the mean of AP@k over queries with at least one relevant id.

    Queries whose relevant collection is empty are not scored. A scored query without
    an entry in ``ranked_ids`` scores 0. Only the first k positions of each list count.
    See ``average_precision_at_k`` for the per-query definition and duplicates.

    Raises:
        UndefinedMetricError: no query has a relevant id.
        ValueError: a query of ``ranked_ids`` is not in ``relevant``, or ``k`` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _check_prediction_ids(ranked_ids, relevant)

    scores = [
        average_precision_at_k(ranked_ids.get(query_id, ()), ids, k)
        for query_id, ids in relevant.items()
        if len(ids) > 0
    ]
    if not scores:
        raise UndefinedMetricError("mAP is undefined because no query has a relevant id")
    return float(np.mean(scores))


def first_relevant_ranks(
    scores: np.ndarray, database_labels: np.ndarray, query_labels: Sequence[Collection[int]]
) -> np.ndarray:
    """Return, per query, the 1-based rank of the first database image of a true landmark.

    Database images are ranked by similarity score descending, and equal scores are
    ranked by database index ascending (the order of a stable sort). The result is a
    float64 array of shape (Q,). It is NaN for a query without a landmark and for a
    query none of whose landmarks labels any database image.

    Args:
        scores: (Q, N) similarities of each query to each database image, higher is
            more similar.
        database_labels: (N,) landmark id of each database image.
        query_labels: Q collections of the landmark ids that each query shows.

    Raises:
        ValueError: the shapes do not match or a score is not finite.
    """
    scores = np.asarray(scores)
    database_labels = np.asarray(database_labels)
    if scores.ndim != 2 or database_labels.shape != (scores.shape[1],):
        raise ValueError(
            f"scores must be (Q, N) and database_labels (N,), got {scores.shape} and "
            f"{database_labels.shape}"
        )
    if len(query_labels) != scores.shape[0]:
        raise ValueError(
            f"query_labels has {len(query_labels)} entries but scores has {scores.shape[0]} rows"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")

    ranks = np.full(scores.shape[0], np.nan)
    for query_index, labels in enumerate(query_labels):
        if len(labels) == 0:
            continue
        relevant = np.isin(database_labels, list(labels))
        if not relevant.any():
            continue
        row = scores[query_index]
        best = row[relevant].max()
        first = int(np.flatnonzero(relevant & (row == best))[0])
        # Every image ranked above `first` has a higher score, or the same score and a
        # lower index. None of them is relevant, by the choice of `best` and `first`.
        num_above = np.count_nonzero(row > best) + np.count_nonzero(row[:first] == best)
        ranks[query_index] = 1 + num_above
    return ranks


def mean_first_relevant_rank(
    scores: np.ndarray, database_labels: np.ndarray, query_labels: Sequence[Collection[int]]
) -> float:
    """Return the mean of ``first_relevant_ranks`` over queries that show a landmark.

    Queries whose landmarks label no database image have no rank and are left out of
    the mean. Count them with ``first_relevant_ranks`` when that matters.

    Raises:
        UndefinedMetricError: no query has a rank.
        ValueError: see ``first_relevant_ranks``.
    """
    ranks = first_relevant_ranks(scores, database_labels, query_labels)
    ranked = ranks[~np.isnan(ranks)]
    if ranked.size == 0:
        raise UndefinedMetricError(
            "mean rank is undefined because no query has a landmark that labels a database image"
        )
    return float(ranked.mean())
