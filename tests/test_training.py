"""Training loops: checkpoints, resuming, and images that fail to decode."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image

from glr.images import ImageDataset, SkipLog, eval_transform
from glr.models import GateNet
from glr.training import Checkpointing, train_gate

SIZE = 32


def write_images(folder: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"{index:016x}.jpg"
        buffer = io.BytesIO()
        colour = (40 * index % 256, 255 - 30 * index % 256, 90)
        Image.new("RGB", (48, 40), colour).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def make_gate(seed: int) -> GateNet:
    torch.manual_seed(seed)
    return GateNet("resnet18", "none", "avg", 0)


def datasets(paths: list[Path]) -> tuple[ImageDataset, ImageDataset]:
    transform = eval_transform(SIZE, (0.5,) * 3, (0.5,) * 3)
    targets = [float(index % 2) for index in range(len(paths))]
    return (
        ImageDataset(paths, targets, SIZE, transform),
        ImageDataset(paths[:4], targets[:4], SIZE, transform),
    )


def run(model: GateNet, paths: list[Path], epochs: int, checkpointing: Checkpointing) -> list:
    train_set, val_set = datasets(paths)
    return train_gate(
        model,
        train_set,
        val_set,
        epochs=epochs,
        lr=1e-3,
        batch_size=4,
        workers=0,
        seed=7,
        checkpointing=checkpointing,
    )


def test_resume_matches_uninterrupted(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 8)
    fingerprint = {"run": "test"}

    straight = make_gate(0)
    straight_history = run(
        straight, paths, 2, Checkpointing(tmp_path / "a.ckpt", False, fingerprint)
    )

    interrupted = make_gate(0)
    run(interrupted, paths, 1, Checkpointing(tmp_path / "b.ckpt", False, fingerprint))
    resumed = make_gate(0)
    seen: list[int] = []
    train_set, val_set = datasets(paths)
    resumed_history = train_gate(
        resumed,
        train_set,
        val_set,
        epochs=2,
        lr=1e-3,
        batch_size=4,
        workers=0,
        seed=7,
        on_epoch=lambda epoch, _: seen.append(epoch),
        checkpointing=Checkpointing(tmp_path / "b.ckpt", True, fingerprint),
    )

    assert seen == [0, 1]
    assert resumed_history == straight_history
    for key, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], tensor), key


def test_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 4)
    path = tmp_path / "gate.ckpt"

    run(make_gate(0), paths, 1, Checkpointing(path, False, {"run": "test"}))

    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["epoch"] == 1
    assert len(payload["history"]) == 1


def test_stale_checkpoint_ignored(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 4)
    path = tmp_path / "gate.ckpt"
    run(make_gate(0), paths, 1, Checkpointing(path, False, {"lr": 0.1}))

    history = run(make_gate(0), paths, 1, Checkpointing(path, True, {"lr": 0.2}))

    assert len(history) == 1


def test_bad_training_image_skipped(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 6)
    paths[2].write_bytes(b"")
    train_set, val_set = datasets(paths)
    skips = SkipLog()

    history = train_gate(
        make_gate(0),
        train_set,
        val_set,
        epochs=2,
        lr=1e-3,
        batch_size=4,
        workers=0,
        seed=1,
        skips=skips,
    )

    assert len(history) == 2
    assert skips.reasons == {paths[2].stem: "empty file"}
    assert math.isfinite(history[-1]["loss"])
