"""Data-parallel training: batch splitting, errors, and 2-rank torchrun runs on loopback.

Run as a script under torchrun, this file is also the worker that the slow test starts:
`python -m torch.distributed.run --nproc_per_node N tests/test_training_ddp.py IMAGES OUT`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from timm.layers import freeze_batch_norm_2d
from torch import nn

import glr.training
from glr.distributed import init_distributed, is_main, rank, shutdown_distributed
from glr.heads import LandmarkNet, create_margin_loss
from glr.images import ImageDataset, SkipLog, eval_transform
from glr.models import GateNet
from glr.training import Checkpointing, per_rank_batch_size, train_gate, train_margin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import free_port, torchrun_environment, write_jpegs  # noqa: E402

SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CLASSES = 3
# 17 JPEGs and one empty file: 3 global batches of 6, which 2 ranks split into 3 each.
IMAGES = 17
GLOBAL_BATCH = 6
VALIDATION_IMAGES = 5


def frozen_bn(module: nn.Module) -> nn.Module:
    """Replace BatchNorm by its inference form, so each image's output ignores its batch."""
    return freeze_batch_norm_2d(module)


def small_landmark_net() -> LandmarkNet:
    torch.manual_seed(0)
    model = LandmarkNet("tf_efficientnet_lite0", "none", pooling="gem", dim=8)
    model.backbone.body = frozen_bn(model.backbone.body)
    return model


def small_gate() -> GateNet:
    torch.manual_seed(1)
    model = GateNet("tf_efficientnet_lite0", "none", "avg", 0)
    model.backbone.body = frozen_bn(model.backbone.body)
    return model


def image_set(paths: list[Path], targets: list[float]) -> ImageDataset:
    return ImageDataset(paths, targets, SIZE, eval_transform(SIZE, MEAN, STD))


def worker(images: Path, out: Path) -> None:
    """Train the margin net and the gate (1 epoch, then resumed to 2) and save on rank 0."""
    env = init_distributed()
    paths = sorted(images.glob("*.jpg"))
    calls: list[int] = []

    margin_model = small_landmark_net()
    torch.manual_seed(2)
    loss_function = create_margin_loss("arcface", CLASSES, 8, margin_degrees=10.0, scale=10.0)
    margin_skips = SkipLog()
    margin_history = train_margin(
        margin_model,
        loss_function,
        image_set(paths, [float(index % CLASSES) for index in range(len(paths))]),
        epochs=2,
        lr=1e-3,
        head_lr=1e-2,
        weight_decay=1e-4,
        batch_size=GLOBAL_BATCH,
        workers=0,
        seed=5,
        on_epoch=lambda epoch, _: calls.append(epoch),
        checkpointing=Checkpointing(out / "margin.ckpt", False, {"run": "margin"}),
        skips=margin_skips,
    )

    gate_targets = [float(index % 2) for index in range(len(paths))]
    gate_options = dict(
        lr=1e-3, batch_size=GLOBAL_BATCH, workers=0, seed=7, on_epoch=lambda e, _: calls.append(e)
    )
    gate_checkpoint = out / "gate.ckpt"
    train_set = image_set(paths, gate_targets)
    val_set = image_set(paths[:VALIDATION_IMAGES], gate_targets[:VALIDATION_IMAGES])
    train_gate(  # type: ignore[misc]
        small_gate(),
        train_set,
        val_set,
        epochs=1,
        checkpointing=Checkpointing(gate_checkpoint, False, {"run": "gate"}),
        **gate_options,
    )
    # A fresh model that every rank resumes from the checkpoint that rank 0 wrote.
    gate_model = small_gate()
    gate_history = train_gate(  # type: ignore[misc]
        gate_model,
        train_set,
        val_set,
        epochs=2,
        checkpointing=Checkpointing(gate_checkpoint, True, {"run": "gate"}),
        **gate_options,
    )

    (out / f"callbacks_rank{rank()}.json").write_text(json.dumps(calls))
    if is_main():
        result = {
            "world_size": env.world_size,
            "margin_history": margin_history,
            "margin_skips": margin_skips.reasons,
            "gate_history": gate_history,
            "margin_state": {
                **margin_model.state_dict(),
                **{f"loss.{k}": v for k, v in loss_function.state_dict().items()},
            },
            "gate_state": gate_model.state_dict(),
        }
        torch.save(result, out / "result.pt")
    shutdown_distributed()


def run_workers(processes: int, images: Path, out: Path) -> dict:
    """Run `worker` under torchrun on 127.0.0.1 with `processes` ranks; return rank 0's result."""
    out.mkdir(parents=True)
    environment = torchrun_environment()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    rendezvous = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    script = [str(Path(__file__).resolve()), str(images), str(out)]
    result = subprocess.run(
        [*launcher, "--nproc_per_node", str(processes), *rendezvous, *script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    return torch.load(out / "result.pt", weights_only=True)


@pytest.mark.slow
def test_two_ranks_train_like_one(tmp_path: Path):
    images = tmp_path / "images"
    write_jpegs(images, IMAGES, seed=4)
    # An unreadable image: its rank's batch is one image short, which the loss weighting
    # must make up for.
    (images / "zz_empty.jpg").write_bytes(b"")

    one_rank = run_workers(1, images, tmp_path / "one")
    two_ranks = run_workers(2, images, tmp_path / "two")

    assert one_rank["world_size"] == 1
    assert two_ranks["world_size"] == 2
    assert json.loads((tmp_path / "two" / "callbacks_rank0.json").read_text()) == [0, 1, 0, 0, 1]
    assert json.loads((tmp_path / "two" / "callbacks_rank1.json").read_text()) == []
    assert two_ranks["margin_skips"] == {"zz_empty": "empty file"}
    assert one_rank["margin_skips"] == two_ranks["margin_skips"]
    assert (tmp_path / "two" / "margin.ckpt").is_file()

    # BatchNorm is frozen in these models. Live BatchNorm would normalise each rank's
    # 3 images with their own mean and variance, and the full batch of 6 with others, so
    # the two runs would differ by far more than rounding. Frozen, one image's gradient
    # depends on that image only. What is left is float32 summation order, because DDP
    # sums two means of 3 where one process takes one mean of 6, and convolutions may
    # pick other kernels for another batch size. Measured loss differences are below 3e-7.
    for key in ("margin_history", "gate_history"):
        assert len(two_ranks[key]) == 2, key
        for epoch, (expected, actual) in enumerate(zip(one_rank[key], two_ranks[key], strict=True)):
            assert expected.keys() == actual.keys(), (key, epoch)
            for metric in expected:
                assert actual[metric] == pytest.approx(expected[metric], rel=1e-5, abs=1e-6), (
                    key,
                    epoch,
                    metric,
                )

    # AdamW divides each gradient by its running RMS, so a weight whose gradient is near
    # zero can move by up to the learning rate (1e-3 for these backbones) per step on
    # rounding noise alone. Measured: 2 to 40 of 3.4 million elements differ by more
    # than 1e-6, the largest by 8e-5. The bounds: 1e-3 per element, and no more than
    # 1e-4 of the elements beyond 1e-6.
    for key in ("margin_state", "gate_state"):
        assert one_rank[key].keys() == two_ranks[key].keys(), key
        differences = torch.cat(
            [
                (two_ranks[key][name] - value).abs().flatten().double()
                for name, value in one_rank[key].items()
            ]
        )
        assert differences.max() < 1e-3, key
        assert (differences > 1e-6).double().mean() < 1e-4, key
    assert one_rank["margin_history"][-1]["loss"] < one_rank["margin_history"][0]["loss"]


@pytest.fixture
def ranks(monkeypatch: pytest.MonkeyPatch):
    """Set the world size that glr.training reads, without a process group."""

    def set_world_size(count: int) -> None:
        monkeypatch.setattr(glr.training, "world_size", lambda: count)

    return set_world_size


def test_per_rank_batch_size_one_process():
    assert per_rank_batch_size(7, "gate.batch_size") == 7


def test_per_rank_batch_size_splits(ranks):
    ranks(4)

    assert per_rank_batch_size(32, "gate.batch_size") == 8


@pytest.mark.parametrize("batch_size", [7, 2, 3])
def test_per_rank_batch_size_rejects(ranks, batch_size: int):
    ranks(2)

    with pytest.raises(ValueError, match=r"siamese\.batch_size = .* multiple of 2") as error:
        per_rank_batch_size(batch_size, "siamese.batch_size")

    suggested = int(str(error.value).split("set it to ")[1].split()[0])
    assert suggested % 2 == 0
    assert suggested // 2 >= 2


def test_train_margin_checks_batch_first(ranks):
    ranks(2)

    # The check runs before the model, the loss or the data are touched.
    with pytest.raises(ValueError, match=r"siamese\.batch_size = 9"):
        train_margin(
            None,  # type: ignore[arg-type]
            nn.Identity(),
            None,  # type: ignore[arg-type]
            epochs=1,
            lr=1e-3,
            head_lr=1e-3,
            weight_decay=0.0,
            batch_size=9,
            workers=0,
            seed=0,
        )


def test_train_gate_checks_batch_first(ranks):
    ranks(3)

    with pytest.raises(ValueError, match=r"gate\.batch_size = 4"):
        train_gate(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            epochs=1,
            lr=1e-3,
            batch_size=4,
            workers=0,
            seed=0,
        )


def test_contrastive_rejects_ranks(ranks):
    ranks(2)

    with pytest.raises(RuntimeError, match=r"siamese\.loss: contrastive .*without torchrun"):
        glr.training.train_siamese(
            None,  # type: ignore[arg-type]
            [],
            np.zeros(0),
            [],
            np.zeros(0),
            train_transform=None,  # type: ignore[arg-type]
            eval_transform=None,  # type: ignore[arg-type]
            image_size=SIZE,
            epochs=1,
            lr=1e-3,
            margin=1.0,
            batch_classes=2,
            workers=0,
            seed=0,
        )


@pytest.fixture
def one_rank_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A gloo process group of one rank in this process, left again after the test."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_gate_sharded_path_one_rank(tmp_path: Path, one_rank_group):
    paths = write_jpegs(tmp_path / "images", 6, seed=1)
    paths[1].write_bytes(b"")
    targets = [float(index % 2) for index in range(len(paths))]
    skips = SkipLog()
    seen: list[int] = []

    history = train_gate(
        small_gate(),
        image_set(paths, targets),
        image_set(paths[:3], targets[:3]),
        epochs=1,
        lr=1e-3,
        batch_size=3,
        workers=0,
        seed=0,
        on_epoch=lambda epoch, _: seen.append(epoch),
        checkpointing=Checkpointing(tmp_path / "gate.ckpt", False, {"run": "test"}),
        skips=skips,
    )

    assert seen == [0]
    assert set(history[0]) == {"loss", "acc", "val_loss", "val_acc"}
    assert np.isfinite(history[0]["loss"])
    assert skips.reasons == {paths[1].stem: "empty file"}
    assert (tmp_path / "gate.ckpt").is_file()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
