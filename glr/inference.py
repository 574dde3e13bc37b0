"""Batched inference over image files: gate probabilities and embeddings."""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from glr.images import ImageDataset, eval_transform
from glr.models import GateNet, SiameseNet

log = logging.getLogger(__name__)


def map_images(
    function: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[Path],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    workers: int,
    desc: str,
) -> np.ndarray:
    """Apply `function` to every image in eval preprocessing; stack the outputs as float32.

    Returns an array whose first axis follows `paths`; an empty `paths` gives shape (0,).
    """
    dataset = ImageDataset(
        paths, [0.0] * len(paths), image_size, eval_transform(image_size, mean, std)
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    started = time.perf_counter()
    outputs: list[np.ndarray] = []
    with torch.no_grad():
        for images, _ in tqdm(loader, desc=desc, leave=False):
            outputs.append(function(images).float().numpy())
    elapsed = time.perf_counter() - started
    log.info(
        "%s: %d images in %.1f s (%.1f images/s)",
        desc,
        len(paths),
        elapsed,
        len(paths) / elapsed if elapsed > 0 else 0.0,
    )
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(outputs), dtype=np.float32)


def embed_images(
    model: SiameseNet,
    config: dict[str, object],
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int,
    desc: str,
) -> np.ndarray:
    """Embed images with a trained Siamese net, preprocessed as its config records: (N, dim)."""
    embeddings = map_images(
        model.embed,
        paths,
        image_size=int(str(config["image_size"])),
        mean=typing.cast(Sequence[float], config["mean"]),
        std=typing.cast(Sequence[float], config["std"]),
        batch_size=batch_size,
        workers=workers,
        desc=desc,
    )
    return embeddings.reshape(len(paths), int(str(config["dim"])))


def gate_probabilities(
    model: GateNet,
    config: dict[str, object],
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int,
) -> np.ndarray:
    """Probability that each image shows a landmark, from a trained gate: (N,)."""
    return map_images(
        lambda images: torch.sigmoid(model(images)),
        paths,
        image_size=int(str(config["image_size"])),
        mean=typing.cast(Sequence[float], config["mean"]),
        std=typing.cast(Sequence[float], config["std"]),
        batch_size=batch_size,
        workers=workers,
        desc="gate",
    ).reshape(len(paths))
