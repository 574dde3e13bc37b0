"""Training loops for the landmark gate and the Siamese net, with per-epoch checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from glr.heads import LandmarkNet
from glr.images import Batch, ImageDataset, PairDataset, SkipLog, collate_images, collate_pairs
from glr.io import atomic_path
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


@dataclass
class Checkpointing:
    """Checkpoint settings: the file written after every epoch and whether to resume from it.

    `fingerprint` identifies the run (its params); a checkpoint saved with another
    fingerprint is ignored, so changed params never resume a stale run.
    """

    path: Path | None = None
    resume: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingState:
    """Progress of an epoch loop: the next epoch and the history so far."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.Adam(trainable, lr=lr)


def _save_checkpoint(
    checkpointing: Checkpointing,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    rng: np.random.Generator | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    if checkpointing.path is None:
        return
    payload = {
        "fingerprint": checkpointing.fingerprint,
        "epoch": state.epoch,
        "history": state.history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state if rng is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
    }
    with atomic_path(checkpointing.path) as tmp:
        torch.save(payload, tmp)


def _resume(
    checkpointing: Checkpointing,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator | None,
) -> TrainingState:
    path = checkpointing.path
    if not checkpointing.resume or path is None or not path.is_file():
        return TrainingState()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["fingerprint"] != checkpointing.fingerprint:
        log.warning("checkpoint %s was saved with other params; starting from epoch 1", path)
        return TrainingState()

    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    if rng is not None:
        rng.bit_generator.state = payload["numpy_rng"]
    log.info("resuming from %s after epoch %d", path, payload["epoch"])
    return TrainingState(payload["epoch"], list(payload["history"]))


def _batches(
    loader: Iterable[Batch], skips: SkipLog | None, desc: str, minimum: int = 1
) -> Iterable[Batch]:
    """Yield batches of at least `minimum` items, logging the images each batch skipped.

    Training passes `minimum=2` because BatchNorm in training mode cannot normalise a
    batch of one. Such a batch is dropped: a last partial batch, or one left after
    skipped images.
    """
    for batch in tqdm(loader, desc=desc, leave=False):
        if skips is not None:
            skips.extend(batch.skipped)
        if len(batch) >= minimum:
            yield batch
        elif len(batch):
            log.debug("%s: dropped a batch of %d item(s)", desc, len(batch))


def train_gate(
    model: GateNet,
    train_set: ImageDataset,
    val_set: ImageDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    workers: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    checkpointing: Checkpointing | None = None,
    skips: SkipLog | None = None,
) -> list[dict[str, float]]:
    """Train the gate with binary cross-entropy and Adam; return the metrics of every epoch.

    Metrics per epoch: `loss`, `acc` (train) and `val_loss`, `val_acc`, where accuracy
    counts a prediction as positive when its probability is at least 0.5.
    """
    checkpointing = checkpointing or Checkpointing()
    optimizer = _optimizer(model, lr)
    criterion = nn.BCEWithLogitsLoss()
    state = _resume(checkpointing, model, optimizer, None)
    _replay(state, on_epoch)
    val_loader = DataLoader(
        val_set, batch_size=batch_size, num_workers=workers, collate_fn=collate_images
    )

    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        # One generator per epoch, so a resumed run shuffles as an uninterrupted one.
        train_loader = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            generator=loader_generator(seed + epoch),
            collate_fn=collate_images,
        )

        model.train()
        train = RunningMean()
        for batch in _batches(train_loader, skips, f"gate epoch {epoch + 1}", minimum=2):
            logits = model(batch.tensors[0])
            loss = criterion(logits, batch.targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct = ((logits >= 0).float() == batch.targets).sum()
            train.update(loss.detach(), correct, len(batch))

        model.eval()
        val = RunningMean()
        with torch.no_grad():
            for batch in _batches(val_loader, skips, "gate validation"):
                logits = model(batch.tensors[0])
                correct = ((logits >= 0).float() == batch.targets).sum()
                val.update(criterion(logits, batch.targets), correct, len(batch))

        metrics = {**train.result(""), **val.result("val_")}
        _finish_epoch("gate", epoch, epochs, metrics, started, state, on_epoch)
        _save_checkpoint(checkpointing, model, optimizer, state, None)
    return state.history


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
    checkpointing: Checkpointing | None = None,
    skips: SkipLog | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, float]]:
    """Train the Siamese net with the contrastive loss and Adam; return every epoch's metrics.

    Each epoch visits every training class once, `batch_classes` classes per batch, and
    samples for each class an anchor, a positive and a negative (two pairs). Validation
    uses pairs sampled once from the held-out classes, so epochs compare on the same pairs.
    A pair counts as correct when similarity >= 0.5 matches its target.
    """
    checkpointing = checkpointing or Checkpointing()
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    optimizer = _optimizer(model, lr)
    rng = np.random.default_rng(seed)
    state = _resume(checkpointing, model, optimizer, rng)
    _replay(state, on_epoch)

    val_pairs = sample_pairs(val_labels, np.unique(val_labels), np.random.default_rng(seed + 1))
    val_set = PairDataset(
        [(val_paths[a], val_paths[b], target) for a, b, target in val_pairs],
        image_size,
        eval_transform,
        **limit,
    )
    val_loader = DataLoader(
        val_set, batch_size=2 * batch_classes, num_workers=workers, collate_fn=collate_pairs
    )

    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        batches = epoch_batches(train_labels, batch_classes, rng)
        pairs = [pair for batch in batches for pair in batch]
        train_set = PairDataset(
            [(train_paths[a], train_paths[b], target) for a, b, target in pairs],
            image_size,
            train_transform,
            **limit,
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
            collate_fn=collate_pairs,
        )

        model.train()
        train = RunningMean()
        for batch in _batches(train_loader, skips, f"siamese epoch {epoch + 1}", minimum=2):
            first, second = batch.tensors
            similarity = torch.sigmoid(model(first, second))
            loss = contrastive_loss(similarity, batch.targets, margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct = ((similarity >= 0.5).float() == batch.targets).sum()
            train.update(loss.detach(), correct, len(batch))

        model.eval()
        val = RunningMean()
        with torch.no_grad():
            for batch in _batches(val_loader, skips, "siamese validation"):
                first, second = batch.tensors
                similarity = torch.sigmoid(model(first, second))
                correct = ((similarity >= 0.5).float() == batch.targets).sum()
                loss = contrastive_loss(similarity, batch.targets, margin)
                val.update(loss, correct, len(batch))

        metrics = {**train.result(""), **val.result("val_")}
        _finish_epoch("siamese", epoch, epochs, metrics, started, state, on_epoch)
        _save_checkpoint(checkpointing, model, optimizer, state, rng)
    return state.history


def _replay(state: TrainingState, on_epoch: EpochCallback | None) -> None:
    """Send the epochs a resumed run already has to the callback, so its log is complete."""
    if on_epoch:
        for epoch, metrics in enumerate(state.history):
            on_epoch(epoch, metrics)


def _finish_epoch(
    name: str,
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    started: float,
    state: TrainingState,
    on_epoch: EpochCallback | None,
) -> None:
    log.info(
        "%s epoch %d/%d: %s (%.1f s)",
        name,
        epoch + 1,
        epochs,
        ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()),
        time.perf_counter() - started,
    )
    state.epoch = epoch + 1
    state.history.append(metrics)
    if on_epoch:
        on_epoch(epoch, metrics)


def train_margin(
    model: LandmarkNet,
    loss_function: nn.Module,
    train_set: ImageDataset,
    *,
    epochs: int,
    lr: float,
    head_lr: float,
    weight_decay: float,
    batch_size: int,
    workers: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    checkpointing: Checkpointing | None = None,
    skips: SkipLog | None = None,
) -> list[dict[str, float]]:
    """Train an embedding net with a margin loss (ArcFace family) over the train classes.

    The dataset's targets are class indices in [0, num_classes). AdamW updates the backbone
    at `lr` and the projection head and the loss's class weights at `head_lr`, both under
    a one-cycle cosine schedule with 10 % warm-up. Metrics per epoch: `loss` and `acc`,
    the share of images whose nearest class weight is their own class (margin not applied).
    """
    checkpointing = checkpointing or Checkpointing()
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")]
    head = [p for n, p in model.named_parameters() if n.startswith("head")]
    optimizer = torch.optim.AdamW(
        [
            {"params": body, "lr": lr},
            {"params": head + list(loss_function.parameters()), "lr": head_lr},
        ],
        weight_decay=weight_decay,
    )
    steps_per_epoch = max(1, len(train_set) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[lr, head_lr], total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    # The loss owns the class weights, so it is checkpointed with the network.
    both = nn.ModuleDict({"model": model, "loss": loss_function})
    state = _resume(checkpointing, both, optimizer, None)
    if state.epoch and checkpointing.path is not None:
        payload = torch.load(checkpointing.path, map_location="cpu", weights_only=True)
        scheduler.load_state_dict(payload["scheduler"])
    _replay(state, on_epoch)

    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        # drop_last keeps exactly steps_per_epoch scheduler steps per epoch.
        loader = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(train_set) >= batch_size,
            num_workers=workers,
            generator=loader_generator(seed + epoch),
            collate_fn=collate_images,
        )
        model.train()
        train = RunningMean()
        for batch in _batches(loader, skips, f"margin epoch {epoch + 1}", minimum=2):
            labels = batch.targets.long()
            embeddings = model(batch.tensors[0])
            loss = loss_function(embeddings, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler.last_epoch < scheduler.total_steps - 1:
                scheduler.step()
            with torch.no_grad():
                logits = loss_function.get_logits(embeddings)  # type: ignore[operator]
                correct = (logits.argmax(dim=1) == labels).sum()
            train.update(loss.detach(), correct, len(batch))

        _finish_epoch("margin", epoch, epochs, train.result(""), started, state, on_epoch)
        _save_checkpoint(checkpointing, both, optimizer, state, None, scheduler)
    return state.history
