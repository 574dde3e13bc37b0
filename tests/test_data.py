"""Tests for glr.data: image layout, labelling, class filter, splits and query sampling."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glr.data import (
    class_split,
    filter_classes,
    image_path,
    image_split,
    label_found_images,
    list_images,
    read_csv_columns,
    sample_queries,
)


def make_images(class_sizes: dict[int, int]) -> pd.DataFrame:
    """Return a table of `id` and `landmark_id` with `class_sizes[c]` images of class c."""
    ids: list[str] = []
    labels: list[int] = []
    for landmark, size in class_sizes.items():
        for index in range(size):
            ids.append(f"{landmark:04d}{index:04d}")
            labels.append(landmark)
    return pd.DataFrame({"id": ids, "landmark_id": np.asarray(labels, dtype=np.int64)})


def seeded_images(seed: int, num_classes: int, max_size: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=num_classes)
    return make_images({100 + c: int(size) for c, size in enumerate(sizes)})


def touch_image(root: Path, image_id: str) -> Path:
    path = image_path(root, image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


# ---------------------------------------------------------------------------
# Paths and labels
# ---------------------------------------------------------------------------


def test_image_path_layout() -> None:
    path = image_path("root", "abcdef0123")

    assert path == Path("root/a/b/c/abcdef0123.jpg")


def test_image_path_accepts_path_root(tmp_path: Path) -> None:
    assert image_path(tmp_path, "123") == tmp_path / "1" / "2" / "3" / "123.jpg"


def test_list_images_nested_sorted(tmp_path: Path) -> None:
    for image_id in ["fff1", "0ab2", "0ab1"]:
        touch_image(tmp_path, image_id)
    (tmp_path / "stray.jpg").touch()
    (tmp_path / "0" / "a" / "b" / "notes.txt").touch()

    assert list_images(tmp_path) == ["0ab1", "0ab2", "fff1"]


def test_list_images_empty_root(tmp_path: Path) -> None:
    assert list_images(tmp_path) == []


def test_label_found_images_joins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "train"
    for image_id in ["c00003", "a00001", "b00002", "d00004"]:
        touch_image(root, image_id)
    csv_path = tmp_path / "train.csv"
    # e00005 is listed but not on disk, and d00004 is on disk but not listed.
    csv_path.write_text(
        "id,url,landmark_id\n"
        "a00001,http://x/1,7\n"
        "b00002,http://x/2,7\n"
        "c00003,http://x/3,123456\n"
        "e00005,http://x/5,9\n"
    )

    with caplog.at_level(logging.WARNING, logger="glr.data"):
        labelled = label_found_images(csv_path, root)

    assert list(labelled.columns) == ["id", "landmark_id"]
    assert labelled["id"].tolist() == ["a00001", "b00002", "c00003"]
    assert labelled["landmark_id"].tolist() == [7, 7, 123456]
    assert labelled["landmark_id"].dtype == np.int64
    assert labelled.index.tolist() == [0, 1, 2]
    assert "1 images" in caplog.text


def test_label_found_images_keeps_leading_zeros(tmp_path: Path) -> None:
    root = tmp_path / "train"
    touch_image(root, "000abc")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,landmark_id\n000abc,0042\n")

    labelled = label_found_images(csv_path, root)

    assert labelled["id"].tolist() == ["000abc"]
    assert labelled["landmark_id"].tolist() == [42]


def test_label_found_images_missing_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,url\na00001,http://x/1\n")

    with pytest.raises(ValueError) as caught:
        label_found_images(csv_path, tmp_path)

    assert str(csv_path) in str(caught.value)
    assert "landmark_id" in str(caught.value)


def test_read_csv_columns_names_missing(tmp_path: Path) -> None:
    csv_path = tmp_path / "solution.csv"
    csv_path.write_text("id,landmarks\nq1,5\n")

    with pytest.raises(ValueError) as caught:
        read_csv_columns(csv_path, ["id", "landmarks", "Usage"])

    message = str(caught.value)
    assert str(csv_path) in message
    assert "missing column(s) Usage" in message
    assert "found id, landmarks" in message


def test_read_csv_columns_reads_strings(tmp_path: Path) -> None:
    csv_path = tmp_path / "solution.csv"
    csv_path.write_text("id,landmarks,Usage\n0123,,Public\nnan,5,Ignored\n")

    frame = read_csv_columns(csv_path, ["id", "landmarks", "Usage"])

    assert frame["id"].tolist() == ["0123", "nan"]
    assert frame["landmarks"].tolist() == ["", "5"]


# ---------------------------------------------------------------------------
# Class filter
# ---------------------------------------------------------------------------


def reference_kept(labels: list[int], min_images: int) -> list[bool]:
    counts = Counter(labels)
    return [counts[label] >= min_images for label in labels]


@pytest.mark.parametrize("min_images", [1, 2, 3, 5])
def test_filter_classes_kept_reference(min_images: int) -> None:
    images = seeded_images(seed=3, num_classes=12, max_size=5)

    result = filter_classes(images, min_images=min_images, max_classes=0, seed=0)

    assert result["kept"].tolist() == reference_kept(images["landmark_id"].tolist(), min_images)
    assert result["id"].tolist() == images["id"].tolist()
    assert result["kept"].dtype == bool


def test_filter_classes_hand_example() -> None:
    images = make_images({1: 3, 2: 1, 3: 2})

    result = filter_classes(images, min_images=2, max_classes=0, seed=0)

    assert result["kept"].tolist() == [True, True, True, False, True, True]


def test_filter_classes_input_unchanged() -> None:
    images = make_images({1: 3, 2: 1})

    filter_classes(images, min_images=2, max_classes=1, seed=0)

    assert "kept" not in images.columns
    assert len(images) == 4


def test_filter_classes_max_classes_subset() -> None:
    images = seeded_images(seed=5, num_classes=20, max_size=4)

    result = filter_classes(images, min_images=2, max_classes=6, seed=11)

    chosen = set(result["landmark_id"])
    assert len(chosen) == 6
    assert chosen <= set(images["landmark_id"])
    # Every image of a chosen class stays, and the other classes are dropped entirely.
    expected = images[images["landmark_id"].isin(chosen)]
    assert result["id"].tolist() == expected["id"].tolist()
    assert result.index.tolist() == list(range(len(result)))
    # `kept` counts images within the subset, which for whole classes equals the full count.
    assert result["kept"].tolist() == reference_kept(result["landmark_id"].tolist(), 2)


def test_filter_classes_max_classes_deterministic() -> None:
    images = seeded_images(seed=5, num_classes=20, max_size=4)

    first = filter_classes(images, min_images=2, max_classes=6, seed=11)
    second = filter_classes(images, min_images=2, max_classes=6, seed=11)
    shuffled = filter_classes(images.sample(frac=1.0, random_state=0), 2, 6, seed=11)

    assert first.equals(second)
    assert set(shuffled["landmark_id"]) == set(first["landmark_id"])


def test_filter_classes_max_classes_seed_varies() -> None:
    images = seeded_images(seed=5, num_classes=20, max_size=4)

    subsets = {
        frozenset(filter_classes(images, 2, 6, seed=seed)["landmark_id"]) for seed in range(5)
    }

    assert len(subsets) > 1


def test_filter_classes_max_classes_above_count() -> None:
    images = make_images({1: 2, 2: 1, 3: 4})

    result = filter_classes(images, min_images=2, max_classes=10, seed=0)

    assert result["id"].tolist() == images["id"].tolist()
    assert result["kept"].tolist() == reference_kept(images["landmark_id"].tolist(), 2)


# ---------------------------------------------------------------------------
# Class-disjoint split
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_class_split_disjoint_and_complete(seed: int, fraction: float) -> None:
    images = seeded_images(seed=seed, num_classes=30, max_size=4)

    train, val = class_split(images, fraction, seed)

    assert set(train["landmark_id"]).isdisjoint(set(val["landmark_id"]))
    assert sorted(train["id"].tolist() + val["id"].tolist()) == sorted(images["id"].tolist())
    assert len(train) + len(val) == len(images)
    assert val["landmark_id"].nunique() == round(30 * fraction)
    assert train.index.tolist() == list(range(len(train)))
    assert val.index.tolist() == list(range(len(val)))


def test_class_split_deterministic() -> None:
    images = seeded_images(seed=4, num_classes=25, max_size=3)

    first_train, first_val = class_split(images, 0.2, seed=9)
    second_train, second_val = class_split(images, 0.2, seed=9)
    shuffled_train, shuffled_val = class_split(images.sample(frac=1.0, random_state=1), 0.2, seed=9)

    assert first_train.equals(second_train)
    assert first_val.equals(second_val)
    assert set(shuffled_val["landmark_id"]) == set(first_val["landmark_id"])


def test_class_split_seed_varies() -> None:
    images = seeded_images(seed=4, num_classes=25, max_size=3)

    val_sets = {frozenset(class_split(images, 0.2, seed)[1]["landmark_id"]) for seed in range(5)}

    assert len(val_sets) > 1


def test_class_split_keeps_both_sides() -> None:
    images = make_images({1: 2, 2: 3, 3: 2})

    small_train, small_val = class_split(images, 0.01, seed=0)
    large_train, large_val = class_split(images, 0.99, seed=0)

    assert small_val["landmark_id"].nunique() == 1
    assert small_train["landmark_id"].nunique() == 2
    assert large_val["landmark_id"].nunique() == 2
    assert large_train["landmark_id"].nunique() == 1


def test_class_split_single_class() -> None:
    images = make_images({7: 4})

    train, val = class_split(images, 0.2, seed=0)

    assert len(train) == 4
    assert len(val) == 0


# ---------------------------------------------------------------------------
# Image split
# ---------------------------------------------------------------------------


def test_image_split_stratified() -> None:
    images = make_images({0: 40, 1: 60})
    images["label"] = images["landmark_id"]

    train, val = image_split(images, "label", 0.2, seed=0)

    assert len(val) == 20
    assert len(train) == 80
    assert Counter(val["label"]) == {0: 8, 1: 12}
    assert Counter(train["label"]) == {0: 32, 1: 48}
    assert set(train["id"]).isdisjoint(set(val["id"]))
    assert set(train["id"]) | set(val["id"]) == set(images["id"])


def test_image_split_sorted_and_deterministic() -> None:
    images = make_images({0: 10, 1: 15})
    images["label"] = images["landmark_id"]

    train, val = image_split(images, "label", 0.2, seed=3)
    train_again, val_again = image_split(images, "label", 0.2, seed=3)

    assert train["id"].tolist() == sorted(train["id"])
    assert val["id"].tolist() == sorted(val["id"])
    assert train.index.tolist() == list(range(len(train)))
    assert train.equals(train_again)
    assert val.equals(val_again)


def test_image_split_singleton_label_unstratified() -> None:
    images = make_images({0: 9, 1: 1})
    images["label"] = images["landmark_id"]

    train, val = image_split(images, "label", 0.2, seed=0)

    assert len(train) == 8
    assert len(val) == 2


def test_image_split_one_label() -> None:
    images = make_images({5: 10})
    images["label"] = 1

    train, val = image_split(images, "label", 0.3, seed=0)

    assert len(train) == 7
    assert len(val) == 3


def test_image_split_tiny_stratified() -> None:
    # Every label has two images, so the docstring promises a stratified split, but a
    # 20% validation share of 4 images is 1 image, less than the 2 labels.
    images = make_images({0: 2, 1: 2})
    images["label"] = images["landmark_id"]

    train, val = image_split(images, "label", 0.2, seed=0)

    assert len(train) + len(val) == 4
    assert len(val) >= 1


# ---------------------------------------------------------------------------
# Test query sampling
# ---------------------------------------------------------------------------


def make_solution(num_rows: int, ignored_every: int) -> pd.DataFrame:
    ids = [f"q{index:03d}" for index in range(num_rows)]
    usage: list[str] = []
    for index in range(num_rows):
        if index % ignored_every == 0:
            usage.append("Ignored")
        elif index % 2:
            usage.append("Public")
        else:
            usage.append("Private")
    return pd.DataFrame({"id": ids, "landmarks": "", "Usage": usage})


def test_sample_queries_skips_ignored() -> None:
    solution = make_solution(30, ignored_every=3)
    test_ids = solution["id"].tolist()

    queries = sample_queries(test_ids, solution, 1.0, seed=0)

    ignored = set(solution.loc[solution["Usage"] == "Ignored", "id"])
    assert ignored.isdisjoint(set(queries["id"]))
    assert len(queries) == 20


@pytest.mark.parametrize(("fraction", "expected"), [(0.5, 10), (0.25, 5), (0.01, 1)])
def test_sample_queries_fraction(fraction: float, expected: int) -> None:
    solution = make_solution(30, ignored_every=3)

    queries = sample_queries(solution["id"].tolist(), solution, fraction, seed=0)

    assert len(queries) == expected
    assert queries["id"].is_unique


def test_sample_queries_only_downloaded(caplog: pytest.LogCaptureFixture) -> None:
    solution = make_solution(10, ignored_every=100)
    downloaded = ["q001", "q002", "q005", "extra"]

    with caplog.at_level(logging.INFO, logger="glr.data"):
        queries = sample_queries(downloaded, solution, 1.0, seed=0)

    assert queries["id"].tolist() == ["q001", "q002", "q005"]
    assert "6 scored test images" in caplog.text


def test_sample_queries_sorted_deterministic() -> None:
    solution = make_solution(50, ignored_every=4)
    test_ids = solution["id"].tolist()

    first = sample_queries(test_ids, solution, 0.3, seed=7)
    second = sample_queries(list(reversed(test_ids)), solution, 0.3, seed=7)

    assert first["id"].tolist() == sorted(first["id"])
    assert first.equals(second)


def test_sample_queries_none_available() -> None:
    solution = make_solution(5, ignored_every=1)

    queries = sample_queries(solution["id"].tolist(), solution, 0.5, seed=0)

    assert list(queries.columns) == ["id"]
    assert len(queries) == 0
