"""Training loops for the landmark gate and the Siamese net, with per-epoch checkpoints.

`train_gate` and `train_margin` also run data-parallel under `torchrun`: each rank trains
on its shard of every epoch through a `DistributedSampler`, DistributedDataParallel
averages the gradients, and rank 0 alone writes checkpoints and reports epochs. In a
plain process (no process group) they shuffle with a seeded DataLoader as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from glr.distributed import (
    barrier,
    collective_device,
    distributed_loader,
    is_main,
    rank,
    world_size,
    wrap_ddp,
)
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

    def all_reduce(self, device: torch.device) -> None:
        """Replace this rank's sums by the sums over every rank (a collective call)."""
        totals = torch.tensor(
            [self.loss, self.correct, float(self.count)], dtype=torch.float64, device=device
        )
        dist.all_reduce(totals)
        self.loss, self.correct, count = totals.tolist()
        self.count = int(count)

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
    # Every rank has the same weights, so one file from rank 0 serves them all.
    if checkpointing.path is None or not is_main():
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
    for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main()):
        if skips is not None:
            skips.extend(batch.skipped)
        if len(batch) >= minimum:
            yield batch
        elif len(batch):
            log.debug("%s: dropped a batch of %d item(s)", desc, len(batch))


def per_rank_batch_size(batch_size: int, parameter: str) -> int:
    """Return each rank's share of the global `batch_size` (all of it in one process).

    Raises ValueError, naming the params entry `parameter`, when several ranks cannot
    split the batch evenly with at least 2 images each (BatchNorm in training mode
    needs 2).
    """
    ranks = world_size()
    if ranks == 1:
        return batch_size
    if batch_size % ranks or batch_size // ranks < 2:
        smallest = 2 * ranks
        raise ValueError(
            f"{parameter} = {batch_size} is the global batch over {ranks} ranks, so it must "
            f"be a multiple of {ranks} with at least 2 images per rank: set it to "
            f"{max(smallest, -(-batch_size // ranks) * ranks)} or another multiple of "
            f"{ranks} that is at least {smallest}"
        )
    return batch_size // ranks


def _in_process_group() -> bool:
    """Return whether torchrun started this process, so training shards every epoch.

    This holds for one rank too, so that `torchrun --nproc_per_node 1` runs the same
    sampler as N ranks and is the reference that they reproduce.
    """
    return dist.is_initialized()


def _training_device(module: nn.Module, sharded: bool) -> torch.device:
    """Move `module` to the device of this rank's collectives (its GPU with NCCL)."""
    if not sharded:
        return torch.device("cpu")
    # NOTE: only gloo on CPU has run. The NCCL path (model and batches on the GPU) is untested.
    device = collective_device()
    # Before the optimizer is built and a checkpoint restores its state on that device.
    module.to(device)
    return device


def _sharded_loader(
    dataset: Dataset, *, batch_size: int, workers: int, seed: int, epoch: int, drop_last: bool
) -> DataLoader:
    """Return a loader over this rank's shard of `dataset` for one epoch, in even shards."""
    # The generator seeds the workers, so random augmentations differ between ranks.
    worker_seed = np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0]
    return distributed_loader(
        dataset,
        batch_size=batch_size,
        workers=workers,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        even_shards=True,
        drop_last=drop_last,
        generator=loader_generator(int(worker_seed)),
        collate_fn=collate_images,
    )


def _steps_per_epoch(dataset_size: int, rank_batch: int) -> int:
    """Count the optimizer steps of one epoch with drop_last, on every rank alike."""
    # The sharded sampler gives each rank dataset_size // world_size images.
    return max(1, dataset_size // world_size() // rank_batch)


def _training_batches(
    loader: Iterable[Batch],
    skips: SkipLog | None,
    desc: str,
    sharded: bool,
    device: torch.device,
) -> Iterator[tuple[Batch, float]]:
    """Yield each batch to train on, with the factor that weights its mean loss.

    In one process the factor is 1 and batches of fewer than 2 images are dropped (see
    `_batches`). With several ranks the factor is size * world_size / global size, so
    DDP's average of the scaled per-rank means is the mean over every rank's images even
    after skipped images made the shards uneven. A step is taken by every rank or by
    none: it is skipped when any rank has fewer than 2 images, which keeps the ranks'
    collectives and schedulers in step.
    """
    if not sharded:
        for batch in _batches(loader, skips, desc, minimum=2):
            yield batch, 1.0
        return

    for batch in _batches(loader, skips, desc, minimum=0):
        # One all-reduce: the global image count and the number of ranks below 2 images.
        sizes = torch.tensor([len(batch), int(len(batch) < 2)], dtype=torch.int64, device=device)
        dist.all_reduce(sizes)
        total, short_ranks = (int(value) for value in sizes.tolist())
        if short_ranks:
            log.debug(
                "%s: %d rank(s) had under 2 images, so every rank skipped the step",
                desc,
                short_ranks,
            )
            continue
        yield batch, len(batch) * world_size() / total


def _backward(loss: torch.Tensor, factor: float) -> None:
    # A factor of 1 leaves the graph of a single process exactly as it was.
    (loss if factor == 1.0 else loss * factor).backward()


def _check_same_epoch(epoch: int, checkpointing: Checkpointing, device: torch.device) -> None:
    """Raise RuntimeError unless every rank resumed after the same epoch."""
    bounds = torch.tensor([epoch, -epoch], dtype=torch.int64, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    latest, earliest = int(bounds[0]), -int(bounds[1])
    if latest != earliest:
        raise RuntimeError(
            f"ranks resumed after different epochs ({earliest} to {latest}): every rank must "
            f"read the same checkpoint {checkpointing.path}, so put it on a file system that "
            "all nodes share, or set base.resume to false"
        )


def _broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP keeps the parameters equal, but each rank's last forward updated the running
    statistics with its own batch.
    """
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def _gather_skips(skips: SkipLog | None) -> None:
    """Merge every rank's skipped images into each rank's `skips` (a collective call)."""
    if skips is None:
        return
    everyone: list[dict[str, str] | None] = [None] * world_size()
    dist.all_gather_object(everyone, skips.reasons)
    for reasons in everyone:
        for image, reason in (reasons or {}).items():
            # Direct insertion: the rank that met the image has logged it already.
            skips.reasons.setdefault(image, reason)


def _wait_for_checkpoint() -> None:
    # Rank 0 writes the checkpoint. The other ranks wait for it, so that a run which
    # resumes right after this one reads the same epoch on every rank.
    barrier()


def _validation_shard(dataset: Dataset) -> range:
    # Uneven shards without padding, so that no image counts twice. Validation runs the
    # unwrapped model, which needs no per-batch collective.
    return range(rank(), len(dataset), world_size())  # type: ignore[arg-type]


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
    counts a prediction as positive when its probability is at least 0.5. Under torchrun,
    `batch_size` is the global batch, the metrics cover every rank's images, and only
    rank 0 calls `on_epoch` and writes the checkpoint.
    """
    rank_batch = per_rank_batch_size(batch_size, "gate.batch_size")
    sharded = _in_process_group()
    device = _training_device(model, sharded)
    checkpointing = checkpointing or Checkpointing()
    optimizer = _optimizer(model, lr)
    criterion = nn.BCEWithLogitsLoss()
    state = _resume(checkpointing, model, optimizer, None)
    if sharded:
        _check_same_epoch(state.epoch, checkpointing, device)
    on_epoch = on_epoch if is_main() else None
    _replay(state, on_epoch)
    trainer = wrap_ddp(model)
    val_loader = DataLoader(
        val_set,
        batch_size=rank_batch,
        sampler=_validation_shard(val_set) if sharded else None,
        num_workers=workers,
        collate_fn=collate_images,
    )

    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        if sharded:
            train_loader = _sharded_loader(
                train_set,
                batch_size=rank_batch,
                workers=workers,
                seed=seed,
                epoch=epoch,
                drop_last=False,
            )
        else:
            # One generator per epoch, so a resumed run shuffles as an uninterrupted one.
            train_loader = DataLoader(
                train_set,
                batch_size=batch_size,
                shuffle=True,
                num_workers=workers,
                generator=loader_generator(seed + epoch),
                collate_fn=collate_images,
            )

        trainer.train()
        train = RunningMean()
        desc = f"gate epoch {epoch + 1}"
        for batch, factor in _training_batches(train_loader, skips, desc, sharded, device):
            targets = batch.targets.to(device)
            logits = trainer(batch.tensors[0].to(device))
            loss = criterion(logits, targets)
            optimizer.zero_grad()
            _backward(loss, factor)
            optimizer.step()
            correct = ((logits >= 0).float() == targets).sum()
            train.update(loss.detach(), correct, len(batch))

        if sharded:
            _broadcast_buffers(model)
        model.eval()
        val = RunningMean()
        with torch.no_grad():
            for batch in _batches(val_loader, skips, "gate validation"):
                targets = batch.targets.to(device)
                logits = model(batch.tensors[0].to(device))
                correct = ((logits >= 0).float() == targets).sum()
                val.update(criterion(logits, targets), correct, len(batch))
        if sharded:
            train.all_reduce(device)
            val.all_reduce(device)

        metrics = {**train.result(""), **val.result("val_")}
        _finish_epoch("gate", epoch, epochs, metrics, started, state, on_epoch)
        _save_checkpoint(checkpointing, model, optimizer, state, None)
        if sharded:
            _wait_for_checkpoint()

    if sharded:
        _gather_skips(skips)
        model.to("cpu")
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
    A pair counts as correct when similarity >= 0.5 matches its target. It runs in one
    process only and raises RuntimeError at once when torchrun started several ranks.
    """
    if world_size() > 1:
        raise RuntimeError(
            f"siamese.loss: contrastive trains in one process only, but torchrun started "
            f"{world_size()} ranks: run the train_siamese stage with plain python (without "
            "torchrun), or set siamese.loss to arcface or subcenter_arcface for data-parallel "
            "training"
        )
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
    # Under torchrun the metrics are already summed over the ranks, so rank 0 logs them.
    if is_main():
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


class MarginStep(nn.Module):
    """An embedding net and its margin loss as one module: `forward(images, labels)`
    returns the (B, dim) embeddings and the mean loss.

    DDP wraps this module, so it all-reduces the gradients of the loss's class weights
    along with the network's. Its state_dict keys start with `model.` and `loss.`.
    """

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.model(images)
        return embeddings, self.loss(embeddings, labels)


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
    Under torchrun, `batch_size` is the global batch, the metrics cover every rank's
    images, and only rank 0 calls `on_epoch` and writes the checkpoint.
    """
    rank_batch = per_rank_batch_size(batch_size, "siamese.batch_size")
    sharded = _in_process_group()
    # The loss owns the class weights, so it is checkpointed and synchronised with the net.
    step = MarginStep(model, loss_function)
    device = _training_device(step, sharded)
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
    steps_per_epoch = _steps_per_epoch(len(train_set), rank_batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[lr, head_lr], total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    state = _resume(checkpointing, step, optimizer, None)
    if state.epoch and checkpointing.path is not None:
        payload = torch.load(checkpointing.path, map_location="cpu", weights_only=True)
        scheduler.load_state_dict(payload["scheduler"])
    if sharded:
        _check_same_epoch(state.epoch, checkpointing, device)
    on_epoch = on_epoch if is_main() else None
    _replay(state, on_epoch)
    trainer = wrap_ddp(step)

    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        # drop_last keeps exactly steps_per_epoch scheduler steps per epoch.
        if sharded:
            loader = _sharded_loader(
                train_set,
                batch_size=rank_batch,
                workers=workers,
                seed=seed,
                epoch=epoch,
                drop_last=True,
            )
        else:
            loader = DataLoader(
                train_set,
                batch_size=batch_size,
                shuffle=True,
                drop_last=len(train_set) >= batch_size,
                num_workers=workers,
                generator=loader_generator(seed + epoch),
                collate_fn=collate_images,
            )
        trainer.train()
        train = RunningMean()
        desc = f"margin epoch {epoch + 1}"
        for batch, factor in _training_batches(loader, skips, desc, sharded, device):
            labels = batch.targets.long().to(device)
            embeddings, loss = trainer(batch.tensors[0].to(device), labels)
            optimizer.zero_grad()
            _backward(loss, factor)
            optimizer.step()
            if scheduler.last_epoch < scheduler.total_steps - 1:
                scheduler.step()
            with torch.no_grad():
                logits = loss_function.get_logits(embeddings)  # type: ignore[operator]
                correct = (logits.argmax(dim=1) == labels).sum()
            train.update(loss.detach(), correct, len(batch))

        if sharded:
            _broadcast_buffers(step)
            train.all_reduce(device)
        _finish_epoch("margin", epoch, epochs, train.result(""), started, state, on_epoch)
        _save_checkpoint(checkpointing, step, optimizer, state, None, scheduler)
        if sharded:
            _wait_for_checkpoint()

    if sharded:
        _gather_skips(skips)
        step.to("cpu")
    return state.history
