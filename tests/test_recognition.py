"""The default recognition path: kNN labels, non-landmark pool, search descriptors, metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from glr.data import non_landmark_pool
from glr.descriptors import SearchDescriptor
from glr.evaluation import retrieval_metrics
from glr.heads import LandmarkNet, create_margin_loss
from glr.images import ImageDataset, eval_transform
from glr.index import DatabaseIndex
from glr.params import RetrievalParams
from glr.retrieval import recognise_knn, write_submission
from glr.training import train_margin

PLAIN = RetrievalParams(
    scoring="knn",
    top_k=10,
    query_expansion="none",
    qe_n=2,
    qe_alpha=3.0,
    dba_n=0,
    dba_alpha=3.0,
    whitening=False,
    knn_k=3,
)


def clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three well-separated classes of 4 database rows each, and one query per class."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16, dtype=np.float32) * 5
    database = np.repeat(centres, 4, axis=0) + rng.normal(0, 0.1, (12, 16)).astype(np.float32)
    labels = np.repeat([10, 20, 30], 4)
    queries = centres + rng.normal(0, 0.1, (3, 16)).astype(np.float32)
    return queries, database, labels


def vote_reference(queries: np.ndarray, database: np.ndarray, labels: np.ndarray, k: int) -> list:
    """Cosine similarities by brute force and a dictionary vote over the k most similar."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    similarities = unit(queries) @ unit(database).T
    predictions = []
    for row in similarities:
        order = np.argsort(-row, kind="stable")[:k]
        scores: dict[int, float] = {}
        for index in order:
            scores[int(labels[index])] = scores.get(int(labels[index]), 0.0) + float(row[index])
        best = max(scores, key=lambda label: scores[label])
        predictions.append((best, scores[best]))
    return predictions


def test_knn_matches_reference() -> None:
    queries, database, labels = clusters()

    result = recognise_knn(queries, database, labels, PLAIN)

    expected = vote_reference(queries, database, labels, 3)
    for (label, confidence), (expected_label, expected_confidence) in zip(
        result.predictions, expected, strict=True
    ):
        assert label == expected_label
        assert confidence == pytest.approx(expected_confidence, abs=1e-5)


@pytest.mark.parametrize(("expansion", "passes"), [("none", 1), ("average", 2), ("alpha", 2)])
def test_knn_searches_again_only_with_expansion(
    monkeypatch: pytest.MonkeyPatch, expansion: str, passes: int
) -> None:
    queries, database, labels = clusters()
    calls: list[int] = []
    search = DatabaseIndex.search

    def counting_search(self: DatabaseIndex, rows: np.ndarray, k: int):  # type: ignore[no-untyped-def]
        calls.append(len(rows))
        return search(self, rows, k)

    monkeypatch.setattr(DatabaseIndex, "search", counting_search)
    settings = dataclasses.replace(PLAIN, query_expansion=expansion)
    result = recognise_knn(queries, database, labels, settings)

    assert calls == [len(queries)] * passes
    assert len(result.predictions) == len(queries)
    if expansion == "none":
        np.testing.assert_array_equal(result.expanded_neighbours, result.neighbours)
        np.testing.assert_array_equal(result.expanded_queries, result.queries)
    else:
        assert not np.allclose(result.expanded_queries, result.queries)


def test_knn_labels_clusters_with_every_option() -> None:
    queries, database, labels = clusters(1)
    settings = dataclasses.replace(PLAIN, whitening=True, dba_n=2, query_expansion="alpha", knn_k=3)

    result = recognise_knn(queries, database, labels, settings)

    assert [label for label, _ in result.predictions] == [10, 20, 30]  # type: ignore[misc]
    # PCA keeps at most N - 1 components for N database rows.
    assert result.database.shape == (12, 11)


def test_knn_with_ivf_index_matches_exact() -> None:
    queries, database, labels = clusters(2)
    # Every list probed: the approximate index returns exactly the exact neighbours.
    ivf = dataclasses.replace(PLAIN, index="IVF2,Flat", index_search="nprobe=2")

    exact = recognise_knn(queries, database, labels, PLAIN)
    approximate = recognise_knn(queries, database, labels, ivf)

    np.testing.assert_array_equal(approximate.expanded_neighbours, exact.expanded_neighbours)
    assert [p[0] for p in approximate.predictions] == [10, 20, 30]  # type: ignore[index]


def test_knn_bad_index_names_the_parameter() -> None:
    queries, database, labels = clusters(3)
    settings = dataclasses.replace(PLAIN, index="IVF2,NoSuchCodec")

    with pytest.raises(ValueError, match="retrieval.index / retrieval.index_search: faiss"):
        recognise_knn(queries, database, labels, settings)


def test_penalty_lowers_non_landmark_confidence() -> None:
    queries, database, labels = clusters(2)
    settings = dataclasses.replace(PLAIN, non_landmark_beta=2.0, non_landmark_top_m=1)
    pool = queries[:1] + 0.01

    result = recognise_knn(queries, database, labels, settings, pool=pool)
    unpenalised = recognise_knn(queries, database, labels, PLAIN)

    first, second = result.predictions[0], unpenalised.predictions[0]
    assert first is not None and second is not None
    assert first[1] < second[1] - 1.0
    assert result.predictions[1] == pytest.approx(unpenalised.predictions[1], abs=0.2)


def test_knn_zero_descriptor_finite() -> None:
    queries, database, labels = clusters(3)
    queries[0] = 0.0

    result = recognise_knn(queries, database, labels, dataclasses.replace(PLAIN, whitening=True))

    for prediction in result.predictions:
        assert prediction is not None
        assert np.isfinite(prediction[1])


def test_knn_no_queries_and_empty_database() -> None:
    queries, database, labels = clusters(4)

    assert recognise_knn(queries[:0], database, labels, PLAIN).predictions == []
    empty = recognise_knn(queries, database[:0], labels[:0], PLAIN)
    assert empty.predictions == [None, None, None]


def test_pool_is_public_non_landmarks(tmp_path: Path) -> None:
    solution = tmp_path / "solution.csv"
    solution.write_text(
        "id,landmarks,Usage\na,,Public\nb,5,Public\nc,,Private\nd,,Public\ne,,Ignored\n"
    )

    assert non_landmark_pool("public", solution, ["a", "b", "c", "e"]) == ["a"]
    assert non_landmark_pool("none", solution, ["a", "b"]) == []


def test_search_descriptor_cosine_is_weighted_sum() -> None:
    torch.manual_seed(0)
    model = LandmarkNet("tf_efficientnet_lite0", "none", pooling="gem", dim=8).eval()
    describe = SearchDescriptor(model, {"backbone": "tf_efficientnet_lite0"}, 0.3).eval()
    images = torch.randn(2, 3, 64, 64)

    with torch.no_grad():
        combined = describe(images)
        trained = torch.nn.functional.normalize(model(images), dim=-1)
        untrained = describe.untrained(images)  # type: ignore[misc]

    expected = 0.3 * (untrained[0] @ untrained[1]) + 0.7 * (trained[0] @ trained[1])
    assert combined.shape == (2, 1280 + 8)
    assert float(combined[0] @ combined[1]) == pytest.approx(float(expected), abs=1e-5)


def test_retrieval_metrics_hand_case(tmp_path: Path) -> None:
    submission = tmp_path / "submission.csv"
    write_submission(str(submission), ["q1", "q2", "q3"], [(7, 0.9), (8, 0.5), None])
    index_ids = np.array(["i1", "i2", "i3"])
    index_labels = np.array([7, 9, 7])
    truth = {"q1": frozenset({7}), "q2": frozenset({9}), "q3": frozenset()}
    neighbours = np.array([[0, 1, 2], [0, 1, -1], [2, 1, 0]])

    metrics = retrieval_metrics(
        submission,
        ["q1", "q2", "q3"],
        neighbours,
        index_ids,
        index_labels,
        truth,
        {"q1", "q2", "q3"},
    )

    # q1: relevant i1, i3 at ranks 1 and 3 -> AP (1 + 2/3) / 2; q2: i2 at rank 2 -> 1/2.
    assert metrics["top1_accuracy"] == pytest.approx(0.5)
    assert metrics["map_at_100"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)


def test_margin_training_learns_colours(tmp_path: Path) -> None:
    from PIL import Image

    paths, targets = [], []
    for index in range(12):
        label = index % 3
        path = tmp_path / f"{index:016x}.jpg"
        colour = [(220, 30, 30), (30, 220, 30), (30, 30, 220)][label]
        Image.new("RGB", (40, 40), colour).save(path)
        paths.append(path)
        targets.append(float(label))
    torch.manual_seed(0)
    model = LandmarkNet("resnet18", "none", pooling="gem", dim=16)
    loss_function = create_margin_loss("arcface", 3, 16, margin_degrees=10.0, scale=10.0)
    dataset = ImageDataset(paths, targets, 32, eval_transform(32, (0.5,) * 3, (0.5,) * 3))

    history = train_margin(
        model,
        loss_function,
        dataset,
        epochs=6,
        lr=1e-3,
        head_lr=1e-2,
        weight_decay=0.0,
        batch_size=6,
        workers=0,
        seed=0,
    )

    assert len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"]


def test_retrieval_metrics_landmark_not_indexed(tmp_path: Path) -> None:
    submission = tmp_path / "submission.csv"
    write_submission(str(submission), ["q1"], [(7, 0.9)])

    metrics = retrieval_metrics(
        submission,
        ["q1"],
        np.array([[0, 1]]),
        np.array(["i1", "i2"]),
        np.array([5, 6]),
        {"q1": frozenset({7})},
        {"q1"},
    )

    assert metrics["top1_accuracy"] == pytest.approx(1.0)
    assert metrics["map_at_100"] is None
