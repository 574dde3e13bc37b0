"""Training loops for the landmark gate and the Siamese net."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from glr.images import PairDataset
from glr.losses import contrastive_loss
from glr.models import GateNet, SiameseNet
from glr.pairs import epoch_batches, sample_pairs
from glr.runtime import loader_generator

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RunningMean:
    """Mean loss and accuracy over the batches of one epoch, weighted by batch size."""

    loss: float = 0.0
    correct: float = 0.0
    count: int = 0

    def update(self, loss: torch.Tensor, correct: torch.Tensor, size: int) -> None:
        self.loss += float(loss) * size
        self.correct += float(correct)
        self.count += size

    def result(self, prefix: str) -> dict[str, float]:
        if self.count == 0:
            return {}
        return {f"{prefix}loss": self.loss / self.count, f"{prefix}acc": self.correct / self.count}


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.Adam(trainable, lr=lr)


def train_gate(
    model: GateNet,
    train_set: Dataset[tuple[torch.Tensor, torch.Tensor]],
    val_set: Dataset[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    workers: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> dict[str, float]:
    """Train the gate with binary cross-entropy and Adam; return the last epoch's metrics.

    Metrics per epoch: `loss`, `acc` (train) and `val_loss`, `val_acc`, where accuracy
    counts a prediction as positive when its probability is at least 0.5.
    """
    optimizer = _optimizer(model, lr)
    criterion = nn.BCEWithLogitsLoss()
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=loader_generator(seed),
    )
    val_loader = DataLoader(val_set, batch_size=batch_size, num_workers=workers)

    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        started = time.perf_counter()

        model.train()
        train = RunningMean()
        for images, targets in tqdm(train_loader, desc=f"gate epoch {epoch + 1}", leave=False):
            logits = model(images)
            loss = criterion(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train.update(loss.detach(), ((logits >= 0).float() == targets).sum(), len(targets))

        model.eval()
        val = RunningMean()
        with torch.no_grad():
            for images, targets in val_loader:
                logits = model(images)
                correct = ((logits >= 0).float() == targets).sum()
                val.update(criterion(logits, targets), correct, len(targets))

        metrics = {**train.result(""), **val.result("val_")}
        log.info(
            "gate epoch %d/%d: %s (%.1f s)",
            epoch + 1,
            epochs,
            _fmt(metrics),
            time.perf_counter() - started,
        )
        if on_epoch:
            on_epoch(epoch, metrics)
    return metrics


def train_siamese(
    model: SiameseNet,
    train_paths: Sequence[Path],
    train_labels: np.ndarray,
    val_paths: Sequence[Path],
    val_labels: np.ndarray,
    *,
    train_transform: v2.Compose,
    eval_transform: v2.Compose,
    image_size: int,
    epochs: int,
    lr: float,
    margin: float,
    batch_classes: int,
    workers: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> dict[str, float]:
    """Train the Siamese net with the contrastive loss and Adam; return the last epoch's metrics.

    Each epoch visits every training class once, `batch_classes` classes per batch, and
    samples for each class an anchor, a positive and a negative (two pairs). Validation
    uses pairs sampled once from the held-out classes, so epochs compare on the same pairs.
    A pair counts as correct when similarity >= 0.5 matches its target.
    """
    optimizer = _optimizer(model, lr)
    rng = np.random.default_rng(seed)
    val_pairs = sample_pairs(val_labels, np.unique(val_labels), np.random.default_rng(seed + 1))
    val_set = PairDataset(
        [(val_paths[a], val_paths[b], target) for a, b, target in val_pairs],
        image_size,
        eval_transform,
    )
    val_loader = DataLoader(val_set, batch_size=2 * batch_classes, num_workers=workers)

    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        started = time.perf_counter()
        batches = epoch_batches(train_labels, batch_classes, rng)
        pairs = [pair for batch in batches for pair in batch]
        train_set = PairDataset(
            [(train_paths[a], train_paths[b], target) for a, b, target in pairs],
            image_size,
            train_transform,
        )
        # One loader batch per group of classes, in the order they were sampled.
        boundaries = np.cumsum([0] + [len(batch) for batch in batches])
        batch_sampler = [
            list(range(start, stop))
            for start, stop in zip(boundaries[:-1], boundaries[1:], strict=True)
        ]
        train_loader = DataLoader(
            train_set,
            batch_sampler=batch_sampler,
            num_workers=workers,
            generator=loader_generator(seed + epoch),
        )

        model.train()
        train = RunningMean()
        for first, second, targets in tqdm(
            train_loader, desc=f"siamese epoch {epoch + 1}", leave=False
        ):
            similarity = torch.sigmoid(model(first, second))
            loss = contrastive_loss(similarity, targets, margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct = ((similarity >= 0.5).float() == targets).sum()
            train.update(loss.detach(), correct, len(targets))

        model.eval()
        val = RunningMean()
        with torch.no_grad():
            for first, second, targets in val_loader:
                similarity = torch.sigmoid(model(first, second))
                correct = ((similarity >= 0.5).float() == targets).sum()
                val.update(contrastive_loss(similarity, targets, margin), correct, len(targets))

        metrics = {**train.result(""), **val.result("val_")}
        log.info(
            "siamese epoch %d/%d: %s (%.1f s)",
            epoch + 1,
            epochs,
            _fmt(metrics),
            time.perf_counter() - started,
        )
        if on_epoch:
            on_epoch(epoch, metrics)
    return metrics


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
