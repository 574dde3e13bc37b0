"""Gate and pair tests, L2 ranks and the Keras parameter count, against hand-made references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glr.evaluation import (
    first_relevant_l2_ranks,
    gate_precision_recall,
    mean_or_none,
    pair_test,
    sample_test_pairs,
)
from glr.models import GateNet, PairHead, keras_parameter_count


def test_gate_precision_recall_hand_case() -> None:
    truth = {"a": {1}, "b": set(), "c": {2}, "d": set()}

    precision, recall = gate_precision_recall(
        ["a", "b", "c", "d"], [True, True, False, False], truth
    )

    assert precision == pytest.approx(0.5)
    assert recall == pytest.approx(0.5)


def test_test_pairs_follow_labels() -> None:
    database_labels = np.array([7, 7, 8, 9])
    query_labels = [{7}, set(), {8}, {42}]

    queries, database, targets = sample_test_pairs(query_labels, database_labels, seed=0)

    assert queries.tolist() == [0, 1, 2]
    assert targets.tolist() == [1, 0, 1]
    assert database_labels[database[0]] == 7
    assert database_labels[database[2]] == 8


def test_test_pairs_seeded() -> None:
    database_labels = np.arange(50) % 5
    query_labels = [set(), {1}, set(), {3}] * 5

    first = sample_test_pairs(query_labels, database_labels, seed=3)
    second = sample_test_pairs(query_labels, database_labels, seed=3)

    for left, right in zip(first, second, strict=True):
        assert np.array_equal(left, right)


def test_pair_test_with_set_head() -> None:
    head = PairHead(2)
    with torch.no_grad():
        # Similarity sigmoid(b - |q - x|^2): pairs closer than 1 count as the same landmark.
        head.linear.weight.copy_(torch.tensor([[-1.0, -1.0]]))
        head.linear.bias.fill_(1.0)
    database = np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    database_labels = np.array([1, 2])
    queries = np.array([[0.1, 0.0], [5.0, 4.0], [0.0, 0.2]], dtype=np.float32)
    query_labels = [{1}, {2}, set()]

    result = pair_test(head, queries, database, query_labels, database_labels, seed=0)

    # Query 0 is close to its landmark (true positive), query 1 is 1.0 away from its
    # landmark, so sigmoid(0) = 0.5 counts as a positive too; query 2 has no landmark.
    assert result["pairs"] == 3
    assert result["positive_pairs"] == 2
    assert result["recall"] == pytest.approx(1.0)


def test_l2_ranks_match_argsort() -> None:
    rng = np.random.default_rng(0)
    database = rng.normal(size=(40, 8)).astype(np.float32)
    labels = rng.integers(0, 6, size=40)
    queries = rng.normal(size=(9, 8)).astype(np.float32)
    query_labels = [{int(label)} for label in rng.integers(0, 6, size=9)]
    query_labels[4] = set()

    ranks = first_relevant_l2_ranks(queries, database, labels, query_labels)

    for row, labels_of_query in enumerate(query_labels):
        if not labels_of_query:
            assert np.isnan(ranks[row])
            continue
        distances = ((database.astype(np.float64) - queries[row]) ** 2).sum(axis=1)
        order = np.argsort(distances, kind="stable")
        expected = 1 + next(i for i, index in enumerate(order) if labels[index] in labels_of_query)
        assert ranks[row] == expected


def test_l2_ranks_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    database = rng.normal(size=(30, 4)).astype(np.float32)
    labels = np.arange(30) % 3
    queries = rng.normal(size=(7, 4)).astype(np.float32)
    query_labels = [{row % 3} for row in range(7)]
    whole = first_relevant_l2_ranks(queries, database, labels, query_labels)

    monkeypatch.setattr("glr.evaluation.RANK_CHUNK", 2)
    chunked = first_relevant_l2_ranks(queries, database, labels, query_labels)

    assert np.array_equal(whole, chunked)


def test_mean_or_none() -> None:
    assert mean_or_none(np.array([1.0, np.nan, 3.0])) == pytest.approx(2.0)
    assert mean_or_none(np.array([np.nan])) is None


def test_resnet50_keras_counts() -> None:
    # Keras counts of ResNet-50 with its stem and conv stages 2-3 frozen, plus one output
    # unit, as printed by Keras' model.summary() for the reference gate.
    model = GateNet("resnet50", "none", "max", 3)

    total, trainable = keras_parameter_count(model)

    assert total == 23_589_761
    assert trainable == 22_086_657
