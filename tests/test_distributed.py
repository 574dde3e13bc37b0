"""Tests for glr.distributed: single-process helpers, and 2-rank torchrun runs on loopback.

Run as a script under torchrun, this file is also the worker that the slow test starts:
`python -m torch.distributed.run --nproc_per_node N tests/test_distributed.py IMAGES OUT`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from glr.distributed import (
    DistributedEnv,
    IndexedImages,
    NpyRowWriter,
    decoded_batches,
    detect_env,
    distributed_loader,
    embed_paths,
    gather_in_order,
    init_distributed,
    is_main,
    normalise,
    shutdown_distributed,
    wrap_ddp,
)
from glr.images import SkipLog, eval_transform, load_rgb
from glr.inference import map_images

REPO_ROOT = Path(__file__).resolve().parents[1]
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 64
TRAIN_STEPS = 3
TRAIN_BATCH = 8


def write_jpegs(folder: Path, count: int, seed: int) -> list[Path]:
    """Write `count` small smooth random JPEGs of varied sizes; return their paths in order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        size = (int(rng.integers(80, 160)), int(rng.integers(60, 120)))
        image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        path = folder / f"{number:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def small_cnn() -> nn.Module:
    """A seeded conv net without BatchNorm, so a DDP step equals a full-batch step."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def synthetic_training_set() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(TRAIN_STEPS * TRAIN_BATCH, 3, 16, 16, generator=generator)
    targets = torch.randint(0, 4, (TRAIN_STEPS * TRAIN_BATCH,), generator=generator)
    return TensorDataset(images, targets)


def train_steps() -> dict[str, list[float]]:
    """Run TRAIN_STEPS SGD steps with a global batch of TRAIN_BATCH split over the ranks."""
    model = wrap_ddp(small_cnn())
    per_rank = TRAIN_BATCH // int(os.environ.get("WORLD_SIZE", "1"))
    loader = distributed_loader(
        synthetic_training_set(), batch_size=per_rank, workers=0, shuffle=True, seed=3
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for images, targets in loader:
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: value.flatten().tolist() for name, value in model.state_dict().items()}


def worker(images: Path, out: Path) -> None:
    """Embed the JPEGs in `images` both ways, train a few steps and save results on rank 0."""
    from glr.models import Backbone

    env = init_distributed()
    torch.manual_seed(0)
    backbone = Backbone("tf_efficientnet_lite0", "none", "avg", 0).eval()
    paths = sorted(images.glob("*.jpg"))
    options = dict(
        dim=backbone.num_features,
        image_size=IMAGE_SIZE,
        mean=MEAN,
        std=STD,
        batch_size=4,
        workers=1,
    )
    gathered = embed_paths(backbone, paths, **options)  # type: ignore[arg-type]
    streamed = embed_paths(backbone, paths, out=out / "streamed.npy", **options)  # type: ignore[arg-type]
    weights = train_steps()
    if is_main():
        assert gathered is not None
        assert streamed is not None
        # The last file is not a JPEG: every rank must agree that it is skipped.
        assert gathered[1].tolist() == [True] * (len(paths) - 1) + [False]
        np.save(out / "gathered.npy", gathered[0])
        assert np.array_equal(np.asarray(streamed[0]), np.load(out / "streamed.npy"))
        (out / "weights.json").write_text(json.dumps(weights))
        (out / "world.json").write_text(json.dumps(env.world_size))
    shutdown_distributed()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun_environment() -> dict[str, str]:
    """The environment for test workers under torchrun: offline, loopback only, 1 thread."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # Keep gloo's connections on the loopback interface.
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


def run_torchrun(processes: int, images: Path, out: Path) -> None:
    out.mkdir(parents=True)
    environment = torchrun_environment()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(Path(__file__).resolve()),
        str(images),
        str(out),
    ]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path: Path):
    images = tmp_path / "images"
    paths = write_jpegs(images, 21, seed=0)
    # An HTML page saved as the last .jpg: one rank reads it, both must skip it.
    (images / "999.jpg").write_text("<html></html>")
    run_torchrun(1, images, tmp_path / "one")
    run_torchrun(2, images, tmp_path / "two")

    one = np.load(tmp_path / "one" / "gathered.npy")
    two = np.load(tmp_path / "two" / "gathered.npy")
    streamed = np.load(tmp_path / "two" / "streamed.npy")
    assert json.loads((tmp_path / "two" / "world.json").read_text()) == 2
    assert one.shape == (len(paths), 1280)
    # In eval mode every image's embedding depends only on that image, but each rank
    # runs other batch sizes, and oneDNN may then pick other kernels, which changes the
    # float32 summation order: a few ulps of values of order 1.
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(streamed, one, rtol=1e-4, atol=1e-5)

    # DDP averages the two ranks' mean gradients over 4 samples each. That equals the
    # mean gradient over all 8 up to float32 rounding of the extra sum, so after three
    # SGD steps with lr 0.1 the weights differ by about 1e-7.
    weights_one = json.loads((tmp_path / "one" / "weights.json").read_text())
    weights_two = json.loads((tmp_path / "two" / "weights.json").read_text())
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        np.testing.assert_allclose(weights_two[name], weights_one[name], atol=1e-5, err_msg=name)
    assert weights_one != small_cnn_weights()


def small_cnn_weights() -> dict[str, list[float]]:
    return {name: value.flatten().tolist() for name, value in small_cnn().state_dict().items()}


def test_detect_env_defaults_to_one_process():
    assert detect_env({}) == DistributedEnv(rank=0, world_size=1, local_rank=0)


def test_detect_env_reads_torchrun_variables():
    env = detect_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})

    assert env == DistributedEnv(rank=3, world_size=4, local_rank=1, launched=True)


@pytest.mark.parametrize(
    "environ",
    [{"RANK": "4", "WORLD_SIZE": "4"}, {"WORLD_SIZE": "0"}, {"RANK": "x", "WORLD_SIZE": "2"}],
)
def test_detect_env_rejects_invalid_values(environ: dict[str, str]):
    with pytest.raises(ValueError, match="RANK|WORLD_SIZE"):
        detect_env(environ)


def test_single_process_helpers(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)

    env = init_distributed()

    assert env.world_size == 1
    assert is_main()
    model = small_cnn()
    assert wrap_ddp(model) is model


def test_gather_in_order_single_process_reorders():
    rows = np.array([[2.0], [0.0], [1.0], [0.0]], dtype=np.float32)

    result = gather_in_order(rows, np.array([2, 0, 1, 0]))

    assert result is not None
    np.testing.assert_array_equal(result, [[0.0], [1.0], [2.0]])


def test_gather_in_order_rejects_bad_indices():
    with pytest.raises(ValueError, match="2 rows but 1 indices"):
        gather_in_order(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 2\)"):
        gather_in_order(np.zeros((1, 3)), np.array([5]), total=2)


def test_indexed_images_match_eval_transform(tmp_path: Path):
    paths = write_jpegs(tmp_path, 3, seed=1)
    dataset = IndexedImages(paths, IMAGE_SIZE)
    transform = eval_transform(IMAGE_SIZE, MEAN, STD)

    for position, path in enumerate(paths):
        index, image, reason = dataset[position]
        expected = transform(load_rgb(path, IMAGE_SIZE))
        assert index == position
        assert reason == ""
        assert image.dtype == torch.uint8
        torch.testing.assert_close(normalise(image[None], MEAN, STD)[0], expected)


def test_embed_paths_matches_map_images(tmp_path: Path):
    paths = write_jpegs(tmp_path / "images", 10, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    options = dict(image_size=IMAGE_SIZE, mean=MEAN, std=STD, batch_size=3, workers=0)

    gathered = embed_paths(model, paths, dim=4, **options)  # type: ignore[arg-type]
    streamed = embed_paths(model, paths, dim=4, out=tmp_path / "out.npy", **options)  # type: ignore[arg-type]
    channels_last = embed_paths(model, paths, dim=4, channels_last=True, **options)  # type: ignore[arg-type]

    expected = map_images(model, paths, desc="reference", **options)  # type: ignore[arg-type]
    assert gathered is not None
    assert streamed is not None
    assert channels_last is not None
    np.testing.assert_allclose(gathered[0], expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(streamed[0]), gathered[0])
    np.testing.assert_allclose(channels_last[0], expected, atol=1e-5)
    assert gathered[1].all()
    assert streamed[1].all()
    assert not (tmp_path / "out.npy.partial").exists()


def test_embed_paths_skips_unusable_images(tmp_path: Path):
    paths = write_jpegs(tmp_path / "images", 6, seed=4)
    paths[1].write_text("<html>not an image</html>")
    paths[4].write_bytes(b"")
    missing = tmp_path / "images" / "missing.jpg"
    paths.append(missing)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    options = dict(image_size=IMAGE_SIZE, mean=MEAN, std=STD, batch_size=4, workers=0)
    usable = [paths[i] for i in (0, 2, 3, 5)]
    expected = map_images(model, usable, desc="reference", **options)  # type: ignore[arg-type]

    for out in (None, tmp_path / "index.npy"):
        skips = SkipLog()
        result = embed_paths(model, paths, dim=4, out=out, skips=skips, **options)  # type: ignore[arg-type]

        assert result is not None
        values, kept = result
        assert kept.tolist() == [True, False, True, True, False, True, False]
        np.testing.assert_allclose(np.asarray(values), expected, atol=1e-6)
        assert skips.reasons == {
            "001": "not an image Pillow can decode",
            "004": "empty file",
            "missing": "file not found",
        }
    assert np.load(tmp_path / "index.npy").shape == (4, 4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "index.npy"]


def test_decoded_batches_threads_match_processes(tmp_path: Path):
    paths = write_jpegs(tmp_path, 7, seed=5)
    dataset = IndexedImages(paths, IMAGE_SIZE)
    order = [6, 0, 3, 1, 2, 5, 4]

    # A device other than the CPU selects DataLoader worker processes; "meta" needs no GPU.
    with_threads = list(decoded_batches(dataset, order, 3, 1, torch.device("cpu")))
    with_processes = list(decoded_batches(dataset, order, 3, 1, torch.device("meta")))

    assert [len(batch[0]) for batch in with_threads] == [3, 3, 1]
    assert torch.cat([batch[0] for batch in with_threads]).tolist() == order
    for threaded, forked in zip(with_threads, with_processes, strict=True):
        assert torch.equal(threaded[0], forked[0])
        assert torch.equal(threaded[1], forked[1])
        assert list(threaded[2]) == list(forked[2]) == [""] * len(threaded[0])


def test_embed_paths_no_images(tmp_path: Path):
    model = nn.Flatten()

    result = embed_paths(
        model, [], dim=5, image_size=8, mean=MEAN, std=STD, batch_size=2, workers=0
    )
    streamed = embed_paths(
        model,
        [],
        dim=5,
        image_size=8,
        mean=MEAN,
        std=STD,
        batch_size=2,
        workers=0,
        out=tmp_path / "empty.npy",
    )

    assert result is not None and result[0].shape == (0, 5)
    assert streamed is not None and streamed[0].shape == (0, 5)


def test_npy_row_writer_scattered_rows(tmp_path: Path):
    path = tmp_path / "rows.npy"
    NpyRowWriter(path, 4, 2, create=True).close()
    writer = NpyRowWriter(path, 4, 2, create=False)

    writer.write(np.array([3, 1]), np.array([[3, 3], [1, 1]], dtype=np.float32))
    writer.write(np.array([0]), np.array([[5, 5]], dtype=np.float64))
    writer.close()

    np.testing.assert_array_equal(np.load(path), [[5, 5], [1, 1], [0, 0], [3, 3]])


def test_npy_row_writer_rejects_other_shape(tmp_path: Path):
    path = tmp_path / "rows.npy"
    NpyRowWriter(path, 4, 2, create=True).close()

    with pytest.raises(ValueError, match="expected float32"):
        NpyRowWriter(path, 5, 2, create=False)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
