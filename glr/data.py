"""GLDv2 tables: images found on disk, the class filter and the train/validation/test splits."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)


def image_path(root: str | Path, image_id: str) -> Path:
    """Path of an extracted image: GLDv2 nests `<id>.jpg` under its first three characters."""
    return Path(root) / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def list_images(root: str | Path) -> list[str]:
    """Return the sorted ids of the `a/b/c/<id>.jpg` images below `root`."""
    return sorted(path.stem for path in Path(root).glob("*/*/*/*.jpg"))


def read_csv_columns(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """Read a CSV as strings and check that it has `columns`; raise naming the missing ones."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}"
        )
    return frame


def label_found_images(train_csv: str | Path, image_root: str | Path) -> pd.DataFrame:
    """Join the images found below `image_root` with their landmark ids from train.csv.

    Returns columns `id` (str) and `landmark_id` (int64), sorted by id. Images on disk
    that train.csv does not list are dropped and counted in the log.
    """
    metadata = read_csv_columns(train_csv, ["id", "landmark_id"])
    found = pd.DataFrame({"id": list_images(image_root)})
    labelled = found.merge(metadata[["id", "landmark_id"]], on="id", how="inner")
    unlisted = len(found) - len(labelled)
    if unlisted:
        log.warning("%d images below %s are not listed in %s", unlisted, image_root, train_csv)
    labelled["landmark_id"] = labelled["landmark_id"].astype("int64")
    return labelled.sort_values("id").reset_index(drop=True)


def filter_classes(
    images: pd.DataFrame, min_images: int, max_classes: int, seed: int
) -> pd.DataFrame:
    """Mark the images whose class has at least `min_images` images.

    Adds a boolean `kept` column. With `max_classes` > 0, first keeps a seeded random
    subset of that many classes and drops the other images entirely (for quick runs).
    """
    images = images.copy()
    if max_classes > 0:
        classes = np.sort(images["landmark_id"].unique())
        rng = np.random.default_rng(seed)
        chosen = rng.choice(classes, size=min(max_classes, len(classes)), replace=False)
        images = images[images["landmark_id"].isin(chosen)].reset_index(drop=True)

    counts = images["landmark_id"].map(images["landmark_id"].value_counts())
    images["kept"] = counts >= min_images
    return images


def class_split(
    images: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split images by class: no landmark appears on both sides (seeded)."""
    classes = np.sort(images["landmark_id"].unique())
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(classes)
    n_val = int(round(len(classes) * val_fraction))
    if len(classes) >= 2:
        n_val = min(max(n_val, 1), len(classes) - 1)
    val_classes = set(shuffled[:n_val].tolist())
    is_val = images["landmark_id"].isin(val_classes)
    return images[~is_val].reset_index(drop=True), images[is_val].reset_index(drop=True)


def image_split(
    images: pd.DataFrame, label: str, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split images at random (seeded), stratified by `label` where stratifying is possible.

    Stratifying needs every label to have two or more images and both sides to have room
    for one image of every label; otherwise the split is plain random.
    """
    counts = images[label].value_counts()
    n_val = math.ceil(val_fraction * len(images))
    n_train = len(images) - n_val
    can_stratify = len(counts) > 1 and counts.min() >= 2 and min(n_val, n_train) >= len(counts)
    train, val = train_test_split(
        images,
        test_size=n_val,
        random_state=seed,
        stratify=images[label] if can_stratify else None,
    )
    return (
        train.sort_values("id").reset_index(drop=True),
        val.sort_values("id").reset_index(drop=True),
    )


def sample_queries(
    test_ids: list[str], solution: pd.DataFrame, fraction: float, seed: int
) -> pd.DataFrame:
    """Choose a seeded random share of the test images that the solution scores.

    `solution` has `id` and `Usage`; rows marked `Ignored` are never chosen.
    Returns the chosen ids, sorted.
    """
    scored = set(solution.loc[solution["Usage"] != "Ignored", "id"])
    available = sorted(set(test_ids) & scored)
    missing = len(scored) - len(available)
    if missing:
        log.info("%d scored test images were not downloaded and are left out", missing)
    rng = np.random.default_rng(seed)
    size = int(round(len(available) * fraction))
    if available:
        size = max(size, 1)
    chosen = rng.choice(np.array(available, dtype=object), size=size, replace=False)
    return pd.DataFrame({"id": sorted(chosen.tolist())})


def non_landmark_pool(kind: str, solution_path: str | Path, candidates: list[str]) -> list[str]:
    """Ids among `candidates` of test photos known to show no landmark: Public rows with none.

    `kind` is `public` or `none` (no pool). Only Private rows stay unseen, so a run with
    a pool is scored on the Private rows alone.
    """
    if kind == "none":
        return []
    from glr.metrics import read_solution

    solution = read_solution(solution_path)
    return sorted(
        image_id
        for image_id in candidates
        if solution.usage.get(image_id) == "Public" and not solution.landmarks.get(image_id)
    )
