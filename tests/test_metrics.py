"""Tests for glr.metrics against hand-derived values and slow reference implementations."""

from __future__ import annotations

import functools
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from glr.metrics import (
    EvaluationFileError,
    Solution,
    UndefinedMetricError,
    average_precision_at_k,
    binary_precision_recall,
    first_relevant_ranks,
    global_average_precision,
    mean_average_precision_at_k,
    mean_first_relevant_rank,
    precision_recall,
    read_solution,
    read_submission,
    restrict_to_ground_truth,
    score_submission,
    select_usage,
)

# The five-query example of the GAP definition: M = 3, and the sorted predictions are
# q1 right (P = 1/1), q2 wrong, q3 wrong, q4 right (P = 2/4).
EXAMPLE_TRUTH: dict[str, frozenset[int]] = {
    "q1": frozenset({10}),
    "q2": frozenset({20}),
    "q3": frozenset(),
    "q4": frozenset({30}),
    "q5": frozenset(),
}
EXAMPLE_PREDICTIONS: dict[str, tuple[int, float] | None] = {
    "q1": (10, 0.9),
    "q2": (21, 0.8),
    "q3": (40, 0.7),
    "q4": (30, 0.6),
    "q5": None,
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------


def reference_gap(predictions, ground_truth, ignore_non_landmarks=False) -> Fraction:
    """GAP with exact fractions, an explicit comparator and a plain loop."""
    entries = []
    for query_id, prediction in predictions.items():
        if prediction is None:
            continue
        if ignore_non_landmarks and not ground_truth[query_id]:
            continue
        entries.append((query_id, prediction[0], prediction[1]))

    def compare(left, right) -> int:
        if left[2] != right[2]:
            return -1 if left[2] > right[2] else 1
        if left[0] != right[0]:
            return -1 if left[0] < right[0] else 1
        if left[1] != right[1]:
            return -1 if left[1] < right[1] else 1
        return 0

    entries.sort(key=functools.cmp_to_key(compare))
    total = Fraction(0)
    num_correct = 0
    for position, (query_id, landmark_id, _) in enumerate(entries, start=1):
        if landmark_id in ground_truth[query_id]:
            num_correct += 1
            total += Fraction(num_correct, position)
    num_landmark_queries = sum(1 for truth in ground_truth.values() if truth)
    return total / num_landmark_queries


def reference_average_precision(ranked, relevant, k) -> Fraction:
    """AP@k that re-scans the list prefix at every position instead of keeping state."""
    top = list(ranked)[:k]
    total = Fraction(0)
    for position in range(1, len(top) + 1):
        item = top[position - 1]
        is_first_occurrence = item not in top[: position - 1]
        if not (is_first_occurrence and item in relevant):
            continue
        hits_so_far = sum(
            1
            for earlier in range(position)
            if top[earlier] in relevant and top[earlier] not in top[:earlier]
        )
        total += Fraction(hits_so_far, position)
    return total / min(len(relevant), k)


def reference_first_relevant_ranks(scores, database_labels, query_labels) -> list[float]:
    """Ranks found by sorting every row and walking down the sorted list."""
    ranks = []
    for row, labels in zip(scores, query_labels, strict=True):
        order = np.argsort(-row, kind="stable")
        rank = float("nan")
        for position, index in enumerate(order, start=1):
            if database_labels[index] in labels:
                rank = float(position)
                break
        ranks.append(rank)
    return ranks


def random_recognition_case(rng: random.Random):
    num_queries = rng.randint(1, 30)
    query_ids = [f"{rng.getrandbits(64):016x}" for _ in range(num_queries)]
    ground_truth: dict[str, frozenset[int]] = {}
    predictions: dict[str, tuple[int, float] | None] = {}
    for query_id in query_ids:
        ground_truth[query_id] = frozenset(rng.sample(range(6), rng.choice([0, 0, 1, 1, 2])))
        if rng.random() < 0.2:
            predictions[query_id] = None
        elif rng.random() < 0.9:
            # Few distinct confidences, so that ties are common.
            predictions[query_id] = (rng.randrange(6), rng.choice([0.1, 0.2, 0.5, 0.5, 0.9]))
    if not any(ground_truth.values()):
        ground_truth[query_ids[0]] = frozenset({0})
    return predictions, ground_truth


# ---------------------------------------------------------------------------
# GAP
# ---------------------------------------------------------------------------


def test_gap_worked_example():
    assert global_average_precision(EXAMPLE_PREDICTIONS, EXAMPLE_TRUTH) == pytest.approx(0.5)


def test_gap_worked_example_without_q3_prediction():
    predictions = {**EXAMPLE_PREDICTIONS, "q3": None}
    assert global_average_precision(predictions, EXAMPLE_TRUTH) == pytest.approx(5 / 9)


def test_gap_missing_key_equals_none():
    predictions = {key: value for key, value in EXAMPLE_PREDICTIONS.items() if key != "q3"}
    assert global_average_precision(predictions, EXAMPLE_TRUTH) == pytest.approx(5 / 9)


def test_gap_ignore_non_landmarks_drops_q3():
    gap = global_average_precision(EXAMPLE_PREDICTIONS, EXAMPLE_TRUTH, ignore_non_landmarks=True)
    # q3 shows no landmark, so its prediction is dropped, but M stays 3.
    assert gap == pytest.approx(5 / 9)


def test_gap_ties_ordered_by_query_id():
    # Both predictions have confidence 0.5. Query "a" comes first in the tie order.
    truth = {"a": frozenset({1}), "b": frozenset({2})}
    wrong_first = {"b": (2, 0.5), "a": (9, 0.5)}
    right_first = {"b": (9, 0.5), "a": (1, 0.5)}

    # a wrong (P = 0), b right at position 2 (P = 1/2): GAP = (1/2) / 2.
    assert global_average_precision(wrong_first, truth) == pytest.approx(0.25)
    # a right at position 1 (P = 1), b wrong: GAP = 1 / 2.
    assert global_average_precision(right_first, truth) == pytest.approx(0.5)


def test_gap_tie_order_is_string_order():
    # "q10" sorts before "q9" as a string, so the wrong prediction on q10 comes first.
    truth = {"q9": frozenset({1}), "q10": frozenset()}
    predictions = {"q9": (1, 0.5), "q10": (1, 0.5)}
    assert global_average_precision(predictions, truth) == pytest.approx(0.5)


def test_gap_ignored_rows_dropped():
    solution = Solution(
        landmarks={**EXAMPLE_TRUTH, "q6": frozenset({50})},
        usage={"q1": "Public", "q2": "Private", "q3": "Public", "q4": "Private", "q5": "Public"}
        | {"q6": "Ignored"},
    )
    # A wrong top-ranked prediction on the Ignored query would lower every precision.
    predictions = {**EXAMPLE_PREDICTIONS, "q6": (99, 0.95)}

    ground_truth = select_usage(solution)
    scored = restrict_to_ground_truth(predictions, ground_truth)

    assert "q6" not in ground_truth
    assert "q6" not in scored
    assert global_average_precision(scored, ground_truth) == pytest.approx(0.5)


def test_gap_all_predictions_empty():
    predictions = dict.fromkeys(EXAMPLE_TRUTH)
    assert global_average_precision(predictions, EXAMPLE_TRUTH) == 0.0


def test_gap_no_predictions_at_all():
    assert global_average_precision({}, EXAMPLE_TRUTH) == 0.0


def test_gap_only_non_landmark_predictions_ignored():
    predictions = {"q3": (40, 0.7), "q5": (1, 0.2)}
    assert global_average_precision(predictions, EXAMPLE_TRUTH, ignore_non_landmarks=True) == 0.0


def test_gap_without_landmark_queries_raises():
    truth = {"q3": frozenset(), "q5": frozenset()}
    with pytest.raises(UndefinedMetricError, match="M = 0"):
        global_average_precision({"q3": (1, 0.5)}, truth)


def test_gap_empty_ground_truth_raises():
    with pytest.raises(UndefinedMetricError):
        global_average_precision({}, {})


def test_gap_unknown_query_id_raises():
    with pytest.raises(ValueError, match="'q9'"):
        global_average_precision({"q9": (1, 0.5)}, EXAMPLE_TRUTH)


def test_gap_non_finite_confidence_raises():
    with pytest.raises(ValueError, match="'q1'"):
        global_average_precision({"q1": (10, float("nan"))}, EXAMPLE_TRUTH)


def test_gap_multiple_true_landmarks():
    truth = {"a": frozenset({1, 2}), "b": frozenset({3})}
    # a right with its second landmark at position 1, b wrong: GAP = 1 / 2.
    assert global_average_precision({"a": (2, 0.9), "b": (4, 0.1)}, truth) == pytest.approx(0.5)


def test_gap_matches_reference_on_random_cases():
    rng = random.Random(1234)
    for _ in range(300):
        predictions, ground_truth = random_recognition_case(rng)
        for ignore in (False, True):
            expected = float(reference_gap(predictions, ground_truth, ignore))
            actual = global_average_precision(
                predictions, ground_truth, ignore_non_landmarks=ignore
            )
            assert actual == pytest.approx(expected, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------------
# Precision and recall
# ---------------------------------------------------------------------------


def test_precision_recall_worked_example():
    precision, recall = precision_recall(EXAMPLE_PREDICTIONS, EXAMPLE_TRUTH)
    # 4 predictions made, 2 of them right, and 3 queries show a landmark.
    assert precision == pytest.approx(0.5)
    assert recall == pytest.approx(2 / 3)


def test_precision_recall_no_predictions():
    precision, recall = precision_recall(dict.fromkeys(EXAMPLE_TRUTH), EXAMPLE_TRUTH)
    assert precision == 0.0
    assert recall == 0.0


def test_precision_recall_without_landmark_queries():
    precision, recall = precision_recall({"a": (1, 0.5)}, {"a": frozenset()})
    assert precision == 0.0
    assert recall == 0.0


def test_binary_precision_recall_hand_case():
    y_true = [True, True, False, False, True]
    y_pred = [True, False, True, False, True]
    precision, recall = binary_precision_recall(y_true, y_pred)
    # True positives 2, predicted positives 3, actual positives 3.
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)


def test_binary_precision_recall_gate_passes_nothing():
    precision, recall = binary_precision_recall([True, False], [False, False])
    assert precision == 0.0
    assert recall == 0.0


def test_binary_precision_recall_no_positives():
    precision, recall = binary_precision_recall(np.zeros(3, bool), np.ones(3, bool))
    assert precision == 0.0
    assert recall == 0.0


def test_binary_precision_recall_length_mismatch_raises():
    with pytest.raises(ValueError, match="equal length"):
        binary_precision_recall([True, False], [True])


# ---------------------------------------------------------------------------
# CSV files
# ---------------------------------------------------------------------------


@pytest.fixture
def solution_file(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "solution.csv",
        [
            "id,landmarks,Usage",
            "q1,10,Public",
            "q2,20,Private",
            "q3,,Public",
            "q4,30,Private",
            "q5,,Public",
            "q6,50 51,Ignored",
        ],
    )


@pytest.fixture
def submission_file(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "submission.csv",
        [
            "id,landmarks",
            "q1,10 0.9",
            "q2,21 0.8",
            "q3,40 0.7",
            "q4,30 0.6",
            "q5,",
            "q6,99 0.95",
        ],
    )


def assert_error_location(error: EvaluationFileError, path: Path, line: int, column: str | None):
    message = str(error)
    assert str(path) in message
    assert error.line == line
    assert f"line {line}" in message
    assert error.column == column
    if column is not None:
        assert f"column '{column}'" in message


def test_read_solution_values(solution_file: Path):
    solution = read_solution(solution_file)
    assert solution.landmarks["q1"] == {10}
    assert solution.landmarks["q3"] == frozenset()
    assert solution.landmarks["q6"] == {50, 51}
    assert solution.usage["q6"] == "Ignored"
    assert len(solution.landmarks) == 6


def test_read_submission_values(submission_file: Path):
    predictions = read_submission(submission_file)
    assert predictions["q1"] == (10, 0.9)
    assert predictions["q5"] is None
    assert len(predictions) == 6


def test_read_keeps_ids_as_strings(tmp_path: Path):
    path = write_lines(
        tmp_path / "solution.csv",
        ["id,landmarks,Usage", "0123,1,Public", "nan,,Public", "NA,2,Private", "1e5,,Public"],
    )
    assert list(read_solution(path).landmarks) == ["0123", "nan", "NA", "1e5"]


def test_read_skips_blank_lines_and_byte_order_mark(tmp_path: Path):
    path = tmp_path / "submission.csv"
    path.write_text("\ufeffid,landmarks\n\nq1,3 0.5\n\n", encoding="utf-8")
    assert read_submission(path) == {"q1": (3, 0.5)}


def test_read_allows_extra_columns_in_any_order(tmp_path: Path):
    path = write_lines(tmp_path / "solution.csv", ["Usage,extra,landmarks,id", "Public,x,7,q1"])
    solution = read_solution(path)
    assert solution.landmarks == {"q1": {7}}
    assert solution.usage == {"q1": "Public"}


def test_solution_missing_column(tmp_path: Path):
    path = write_lines(tmp_path / "solution.csv", ["id,landmarks", "q1,1"])
    with pytest.raises(EvaluationFileError, match="missing column") as caught:
        read_solution(path)
    assert_error_location(caught.value, path, 1, "Usage")


def test_submission_missing_column(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmark", "q1,1 0.5"])
    with pytest.raises(EvaluationFileError, match="missing column") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 1, "landmarks")


def test_empty_file(tmp_path: Path):
    path = tmp_path / "submission.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(EvaluationFileError, match="empty") as caught:
        read_submission(path)
    assert str(path) in str(caught.value)


def test_solution_duplicate_id(tmp_path: Path):
    path = write_lines(
        tmp_path / "solution.csv", ["id,landmarks,Usage", "q1,1,Public", "q1,2,Public"]
    )
    with pytest.raises(
        EvaluationFileError, match="duplicate id 'q1', first seen on line 2"
    ) as caught:
        read_solution(path)
    assert_error_location(caught.value, path, 3, "id")


def test_submission_duplicate_id(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,1 0.5", "q2,", "q1,"])
    with pytest.raises(EvaluationFileError, match="duplicate id 'q1'") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 4, "id")


def test_line_numbers_count_blank_lines(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "", "q1,1 0.5", "", "q1,"])
    with pytest.raises(EvaluationFileError) as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 5, "id")


def test_submission_empty_id(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", ",1 0.5"])
    with pytest.raises(EvaluationFileError, match="empty") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, "id")


def test_submission_one_token(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,1 0.5", "q2,7"])
    with pytest.raises(EvaluationFileError, match="found 1 tokens") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 3, "landmarks")


def test_submission_three_tokens(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,1 0.5 2"])
    with pytest.raises(EvaluationFileError, match="found 3 tokens") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, "landmarks")


def test_submission_non_integer_landmark(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,1.5 0.5"])
    with pytest.raises(EvaluationFileError, match="'1.5' is not a non-negative integer") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, "landmarks")


def test_submission_negative_landmark(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,-3 0.5"])
    with pytest.raises(EvaluationFileError, match="'-3'") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, "landmarks")


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "high"])
def test_submission_invalid_confidence(tmp_path: Path, score: str):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", f"q1,3 {score}"])
    with pytest.raises(EvaluationFileError, match="not a finite number") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, "landmarks")


def test_solution_non_integer_landmark(tmp_path: Path):
    path = write_lines(tmp_path / "solution.csv", ["id,landmarks,Usage", "q1,4 x,Public"])
    with pytest.raises(EvaluationFileError, match="'x'") as caught:
        read_solution(path)
    assert_error_location(caught.value, path, 2, "landmarks")


def test_solution_unknown_usage(tmp_path: Path):
    path = write_lines(tmp_path / "solution.csv", ["id,landmarks,Usage", "q1,4,public"])
    with pytest.raises(EvaluationFileError, match="invalid value 'public'") as caught:
        read_solution(path)
    assert_error_location(caught.value, path, 2, "Usage")


def test_wrong_number_of_fields(tmp_path: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,1 0.5,extra"])
    with pytest.raises(EvaluationFileError, match="expected 2 fields") as caught:
        read_submission(path)
    assert_error_location(caught.value, path, 2, None)


def test_submission_id_not_in_solution(tmp_path: Path, solution_file: Path):
    path = write_lines(tmp_path / "submission.csv", ["id,landmarks", "q1,10 0.9", "zz,1 0.5"])
    known_ids = read_solution(solution_file).landmarks
    with pytest.raises(EvaluationFileError, match="'zz' is not in the solution") as caught:
        read_submission(path, known_ids=known_ids)
    assert_error_location(caught.value, path, 3, "id")


def test_score_submission_worked_example(submission_file: Path, solution_file: Path):
    scores = score_submission(submission_file, solution_file)
    # q6 is Ignored, so its wrong top-ranked prediction changes nothing.
    assert scores["gap"] == pytest.approx(0.5)
    assert scores["gap_ignore_non_landmarks"] == pytest.approx(5 / 9)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["num_queries"] == 5
    assert scores["num_landmark_queries"] == 3
    assert scores["num_predictions"] == 4


def test_select_usage_rejects_unknown_value(solution_file: Path):
    with pytest.raises(ValueError, match="unknown Usage"):
        select_usage(read_solution(solution_file), usages=("Test",))


def test_select_usage_public_only(solution_file: Path):
    ground_truth = select_usage(read_solution(solution_file), usages=("Public",))
    assert sorted(ground_truth) == ["q1", "q3", "q5"]


# ---------------------------------------------------------------------------
# mAP@k
# ---------------------------------------------------------------------------


def test_average_precision_hand_case():
    # Hits at positions 1, 3 and 5. The repeated "a" at position 4 is not a hit.
    ap = average_precision_at_k(["a", "x", "b", "a", "c"], {"a", "b", "c"})
    assert ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_average_precision_duplicate_takes_position():
    # Without the repeated "a", "b" would sit at position 2 with P = 1.
    ap = average_precision_at_k(["a", "a", "b"], {"a", "b"})
    assert ap == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_denominator_capped_at_k():
    relevant = {f"r{index}" for index in range(150)}
    ranked = sorted(relevant)[:100]
    assert average_precision_at_k(ranked, relevant, k=100) == pytest.approx(1.0)


def test_average_precision_ignores_positions_after_k():
    ranked = [f"x{index}" for index in range(100)] + ["r"]
    assert average_precision_at_k(ranked, {"r"}, k=100) == 0.0


def test_average_precision_denominator_not_hits():
    # One of two relevant ids found at position 1: AP = 1 / 2, not 1 / 1.
    assert average_precision_at_k(["a"], {"a", "b"}) == pytest.approx(0.5)


def test_map_query_without_predictions_scores_zero():
    relevant = {"q1": {"a"}, "q2": {"b"}}
    assert mean_average_precision_at_k({"q1": ["a"]}, relevant) == pytest.approx(0.5)


def test_map_skips_queries_without_relevant_ids():
    relevant = {"q1": {"a"}, "q2": set()}
    ranked = {"q1": ["a"], "q2": ["a", "b"]}
    assert mean_average_precision_at_k(ranked, relevant) == pytest.approx(1.0)


def test_map_without_relevant_ids_raises():
    with pytest.raises(UndefinedMetricError):
        mean_average_precision_at_k({"q1": ["a"]}, {"q1": set()})


def test_map_unknown_query_raises():
    with pytest.raises(ValueError, match="'q9'"):
        mean_average_precision_at_k({"q9": ["a"]}, {"q1": {"a"}})


def test_map_invalid_k_raises():
    with pytest.raises(ValueError, match="k must be at least 1"):
        mean_average_precision_at_k({"q1": ["a"]}, {"q1": {"a"}}, k=0)


def test_map_matches_reference_on_random_cases():
    rng = random.Random(99)
    for _ in range(40):
        relevant: dict[str, set[int]] = {}
        ranked: dict[str, list[int]] = {}
        for query_index in range(rng.randint(1, 6)):
            query_id = f"q{query_index}"
            # Up to 140 relevant ids out of 300, so that m_q > 100 occurs.
            relevant[query_id] = set(rng.sample(range(300), rng.choice([0, 1, 5, 40, 140])))
            if rng.random() < 0.85:
                # Draws with replacement produce repeated ids.
                ranked[query_id] = [rng.randrange(300) for _ in range(rng.randint(0, 130))]
        if not any(relevant.values()):
            relevant["q0"] = {0}
        for k in (1, 10, 100):
            scored = [query_id for query_id, ids in relevant.items() if ids]
            expected = sum(
                reference_average_precision(ranked.get(query_id, []), relevant[query_id], k)
                for query_id in scored
            ) / len(scored)
            actual = mean_average_precision_at_k(ranked, relevant, k=k)
            assert actual == pytest.approx(float(expected), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------------
# Mean rank of the first relevant database image
# ---------------------------------------------------------------------------


def test_first_relevant_ranks_hand_case():
    database_labels = np.array([5, 6, 5, 7])
    scores = np.array(
        [
            [0.1, 0.9, 0.8, 0.2],  # label 5: order 1, 2, 3, 0, so image 2 at rank 2
            [0.5, 0.5, 0.5, 0.5],  # label 7: all tied, index order, image 3 at rank 4
            [0.3, 0.2, 0.1, 0.0],  # no landmark
            [0.3, 0.2, 0.1, 0.0],  # landmark 8 labels no database image
            [0.4, 0.4, 0.1, 0.0],  # labels {6, 7}: image 1 ties with image 0, rank 2
        ]
    )
    query_labels = [{5}, {7}, set(), {8}, {6, 7}]

    ranks = first_relevant_ranks(scores, database_labels, query_labels)

    assert ranks[0] == 2
    assert ranks[1] == 4
    assert np.isnan(ranks[2])
    assert np.isnan(ranks[3])
    assert ranks[4] == 2
    assert mean_first_relevant_rank(scores, database_labels, query_labels) == pytest.approx(8 / 3)


def test_first_relevant_ranks_match_reference():
    rng = np.random.default_rng(7)
    for _ in range(20):
        num_queries, num_database = rng.integers(1, 8), rng.integers(1, 40)
        # Integer scores make ties frequent.
        scores = rng.integers(0, 5, size=(num_queries, num_database)).astype(np.float64)
        database_labels = rng.integers(0, 6, size=num_database)
        query_labels = [
            set(rng.choice(8, size=rng.integers(0, 3), replace=False).tolist())
            for _ in range(num_queries)
        ]
        expected = reference_first_relevant_ranks(scores, database_labels, query_labels)
        actual = first_relevant_ranks(scores, database_labels, query_labels)
        np.testing.assert_array_equal(actual, np.array(expected))


def test_mean_rank_without_ranked_queries_raises():
    with pytest.raises(UndefinedMetricError):
        mean_first_relevant_rank(np.zeros((1, 2)), np.array([1, 2]), [set()])


def test_first_relevant_ranks_shape_mismatch_raises():
    with pytest.raises(ValueError, match="database_labels"):
        first_relevant_ranks(np.zeros((1, 3)), np.array([1, 2]), [{1}])


def test_first_relevant_ranks_non_finite_score_raises():
    with pytest.raises(ValueError, match="NaN"):
        first_relevant_ranks(np.array([[np.nan, 1.0]]), np.array([1, 2]), [{1}])
