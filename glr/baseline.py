"""Untrained baseline: ImageNet descriptors of the backbone and 1-nearest-neighbour labels.

Every query gets the landmark of its most similar train image, with the cosine
similarity as the confidence. Nothing is trained on landmarks, so the score of this
baseline is the floor that a fine-tuned recipe has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from glr.heads import LandmarkNet
from glr.inference import map_images
from glr.metrics import Prediction
from glr.models import LITE0
from glr.pooling import l2_normalize
from glr.scoring import cosine_search

BASELINE_IMAGE_SIZE = 224


def nearest_neighbour_predictions(
    queries: np.ndarray, database: np.ndarray, database_labels: Sequence[int]
) -> list[Prediction]:
    """Label each query with its nearest database row's class; confidence = cosine.

    `queries` and `database` are L2-normalised (N, D) descriptors.
    """
    labels = np.asarray(database_labels)
    if len(labels) != len(database):
        raise ValueError(f"{len(database)} database rows but {len(labels)} labels")
    if len(database) == 0:
        raise ValueError("the database is empty, so no query can be labelled")
    similarities, ids = cosine_search(queries, database, 1)
    return [
        (int(labels[row_ids[0]]), float(row_similarities[0]))
        for row_similarities, row_ids in zip(similarities, ids, strict=True)
    ]


def embed_paths(
    net: torch.nn.Module,
    paths: Sequence[Path],
    *,
    image_size: int,
    batch_size: int = 64,
    workers: int = 0,
) -> np.ndarray:
    """Return the L2-normalised descriptors of image files, (N, D) float32, in path order.

    `net` has `mean` and `std` attributes (as `LandmarkNet` does) and is set to eval mode.
    """
    net.eval()
    descriptors = map_images(
        net,
        paths,
        image_size=image_size,
        mean=getattr(net, "mean"),  # noqa: B009
        std=getattr(net, "std"),  # noqa: B009
        batch_size=batch_size,
        workers=workers,
        desc=f"embed {image_size}px",
    )
    return l2_normalize(descriptors.reshape(len(paths), -1))


def untrained_baseline(
    query_paths: Sequence[Path],
    database_paths: Sequence[Path],
    database_labels: Sequence[int],
    *,
    backbone: str = LITE0,
    weights: str = "imagenet",
    image_size: int = BASELINE_IMAGE_SIZE,
    batch_size: int = 64,
    workers: int = 0,
) -> list[Prediction]:
    """Predict a landmark per query from untrained ImageNet features (average pooling).

    `weights` is as for `create_classifier`: `imagenet` for the baseline proper, `none`
    where no pretrained weights can be loaded (a smoke test).

    Returns one (landmark id, cosine confidence) per query path, in order.
    """
    net = LandmarkNet(backbone, weights, pooling="avg")
    database = embed_paths(
        net, database_paths, image_size=image_size, batch_size=batch_size, workers=workers
    )
    queries = embed_paths(
        net, query_paths, image_size=image_size, batch_size=batch_size, workers=workers
    )
    return nearest_neighbour_predictions(queries, database, database_labels)
