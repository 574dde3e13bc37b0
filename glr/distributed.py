"""Data-parallel inference and training under `torchrun`, on one node or many.

`torchrun --nproc_per_node N` (with `--nnodes`, `--node_rank` and `--master_addr` for
several nodes) starts one process per rank and sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT`. `init_distributed` reads them and joins the process
group: gloo on CPU, NCCL when CUDA is available. Without those variables every helper
here runs as a single process (rank 0 of 1), so the same code serves both cases.

`embed_paths` embeds image files with each rank taking its shard and either gathers the
embeddings in input order on rank 0 or streams them into one .npy file as batches finish.
Unusable images are skipped on every rank and reported once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torchvision.transforms import v2
from tqdm import tqdm

from glr.images import DEFAULT_MAX_PIXELS, ImageError, SkipLog, load_rgb
from glr.io import atomic_path

log = logging.getLogger(__name__)

ENV_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place among the ranks that torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    # True when a launcher such as torchrun set RANK, even for a world of one process.
    launched: bool = False


def detect_env(environ: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read `RANK`, `WORLD_SIZE` and `LOCAL_RANK`. Missing variables mean a single process."""
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name, default in zip(ENV_VARIABLES, (0, 1, 0), strict=True):
        text = environ.get(name, str(default))
        try:
            values[name] = int(text)
        except ValueError as error:
            raise ValueError(
                f"environment variable {name} must be an integer, got {text!r}"
            ) from error

    env = DistributedEnv(
        values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], launched="RANK" in environ
    )
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise ValueError(
            f"invalid torchrun environment: RANK={env.rank}, WORLD_SIZE={env.world_size}, "
            f"LOCAL_RANK={env.local_rank}"
        )
    return env


def default_backend() -> str:
    """Return "nccl" when CUDA is available, else "gloo" (the CPU backend)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_seconds: float = 1800.0) -> DistributedEnv:
    """Join the process group when started by torchrun. In a plain process, do nothing.

    With NCCL, each process also selects the GPU `LOCAL_RANK`. Calling it again after the
    group exists returns the environment without joining twice.
    """
    env = detect_env()
    if not env.launched or dist.is_initialized():
        return env

    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds))
    log.info(
        "joined process group: rank %d of %d (local rank %d), backend %s",
        env.rank,
        env.world_size,
        env.local_rank,
        backend,
    )
    return env


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group() -> Iterator[DistributedEnv]:
    """Join the process group for the block (see `init_distributed`) and leave it after.

    A stage wraps its work in this, so that every rank leaves the group even when the
    work raises.
    """
    env = init_distributed()
    try:
        yield env
    finally:
        shutdown_distributed()


def rank() -> int:
    """Return this process's global rank: 0 without a process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Return the number of ranks: 1 without a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Return whether this process is rank 0, the rank that writes shared outputs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank. Without a process group, return at once."""
    if dist.is_initialized():
        dist.barrier()


def collective_device() -> torch.device:
    """The device that collective tensors must be on: this rank's GPU with NCCL, else CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def compute_device() -> torch.device:
    """Return the device to compute on: GPU `LOCAL_RANK` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", detect_env().local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def wrap_ddp(model: nn.Module) -> nn.Module:
    """Wrap `model` in DistributedDataParallel when in a process group, else return it.

    With NCCL the model moves to this rank's GPU first. DDP averages the gradients over
    ranks in `backward`, so every rank keeps the same weights after each optimizer step.
    """
    if not dist.is_initialized():
        return model
    if dist.get_backend() == "nccl":
        device = collective_device()
        return DistributedDataParallel(model.to(device), device_ids=[device.index])
    return DistributedDataParallel(model)


def distributed_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    even_shards: bool = False,
    drop_last: bool = False,
    **loader_options: Any,
) -> DataLoader:
    """A DataLoader over this rank's shard of `dataset`, through a `DistributedSampler`.

    Each rank gets every `world_size`-th sample of the order, which is shuffled alike on
    every rank from `seed` and `epoch` when `shuffle`. With `even_shards` the sampler
    drops the last len(dataset) % world_size samples, so that every rank has as many
    batches as the others (DDP needs each rank to take every step). Otherwise it repeats
    a few samples to even out the shards, so results must be deduplicated by index (see
    `gather_in_order`). With `drop_last` the loader drops an incomplete last batch unless
    it is the shard's only batch. `loader_options` go to the DataLoader (collate_fn,
    generator, ...).
    """
    sampler: DistributedSampler = DistributedSampler(
        dataset,
        num_replicas=world_size(),
        rank=rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=even_shards,
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last and len(sampler) >= batch_size,
        **loader_options,
    )


def _all_counts(count: int) -> list[int]:
    counts = [
        torch.zeros(1, dtype=torch.int64, device=collective_device()) for _ in range(world_size())
    ]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.int64, device=collective_device()))
    return [int(value.item()) for value in counts]


def gather_in_order(
    array: np.ndarray, indices: np.ndarray, total: int | None = None
) -> np.ndarray | None:
    """Collect every rank's rows on rank 0, placed at their dataset `indices`.

    `array` is this rank's (n, ...) output and `indices` its (n,) dataset positions. All
    ranks must pass the same dtype and trailing shape, even with n = 0. Rows that several
    ranks computed (the sampler's padding) are written once per rank, so the last rank's
    copy is kept. Returns the (total, ...) array on rank 0 and None on the other ranks;
    `total` defaults to the largest index plus one. Positions no rank covered are zero.
    Without a process group it only reorders.
    """
    array = np.asarray(array)
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) != len(array):
        raise ValueError(f"{len(array)} rows but {len(indices)} indices")

    if not dist.is_initialized():
        parts = [(array, indices)]
    else:
        device = collective_device()
        counts = _all_counts(len(array))
        padded_rows = max(counts)
        values = torch.zeros((padded_rows, *array.shape[1:]), dtype=torch.from_numpy(array).dtype)
        values[: len(array)] = torch.from_numpy(np.ascontiguousarray(array))
        positions = torch.full((padded_rows,), -1, dtype=torch.int64)
        positions[: len(indices)] = torch.from_numpy(indices)
        main = dist.get_rank() == 0
        value_list = [torch.empty_like(values, device=device) for _ in counts] if main else None
        position_list = (
            [torch.empty_like(positions, device=device) for _ in counts] if main else None
        )
        dist.gather(values.to(device), value_list, dst=0)
        dist.gather(positions.to(device), position_list, dst=0)
        if not main or value_list is None or position_list is None:
            return None
        parts = [
            (gathered.cpu().numpy()[:count], where.cpu().numpy()[:count])
            for gathered, where, count in zip(value_list, position_list, counts, strict=True)
        ]

    if total is None:
        total = max((int(where.max()) + 1 for _, where in parts if len(where)), default=0)
    result = np.zeros((total, *array.shape[1:]), dtype=array.dtype)
    for rows, where in parts:
        if len(where) and (where.min() < 0 or where.max() >= total):
            raise ValueError(f"indices must be in [0, {total}), got {where.min()}..{where.max()}")
        result[where] = rows
    return result


class IndexedImages(Dataset[tuple[int, torch.Tensor, str]]):
    """Images resized to `size` x `size` as uint8 (3, H, W) tensors, with their positions.

    Decoding uses `glr.images.load_rgb` (JPEG draft mode, EXIF orientation, pixel limit)
    and the same bicubic resize as `glr.images.eval_transform`. Normalisation is left to
    `normalise`, which runs on whole batches, so workers send uint8 images to the main
    process. An unusable image gives a zero image and the reason; usable ones give "".
    """

    def __init__(
        self, paths: Sequence[Path], size: int, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.max_pixels = max_pixels
        self.resize = v2.Resize(
            (size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            image = load_rgb(self.paths[index], self.size, self.max_pixels)
        except ImageError as error:
            return index, torch.zeros((3, self.size, self.size), dtype=torch.uint8), error.reason
        return index, v2.functional.pil_to_tensor(self.resize(image)), ""


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale uint8 (B, 3, H, W) images to [0, 1] and normalise them per channel.

    The same arithmetic as `ToDtype(float32, scale=True)` then `Normalize(mean, std)`.
    """
    scaled = images.to(torch.float32).div_(255.0)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return scaled.sub_(mean_tensor).div_(std_tensor)


class NpyRowWriter:
    """Writer of float32 rows into a preallocated (rows, dim) .npy file, by row index.

    Rows go straight to the file with `os.pwrite`, so memory does not grow with the row
    count, and ranks that share the file system can write their own rows concurrently.
    """

    def __init__(self, path: Path, rows: int, dim: int, *, create: bool) -> None:
        self.path = path
        self.row_bytes = 4 * dim
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        existing = np.load(path, mmap_mode="r")
        if existing.shape != (rows, dim) or existing.dtype != np.float32:
            raise ValueError(
                f"{path} contains {existing.dtype} {existing.shape}, expected float32 {(rows, dim)}"
            )
        self.offset = int(existing.offset)
        del existing
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, indices: np.ndarray, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=np.float32)
        if len(indices) and np.array_equal(
            indices, np.arange(indices[0], indices[0] + len(indices))
        ):
            os.pwrite(self.fd, data.tobytes(), self.offset + int(indices[0]) * self.row_bytes)
            return
        for index, row in zip(indices, data, strict=True):
            os.pwrite(self.fd, row.tobytes(), self.offset + int(index) * self.row_bytes)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def decoded_batches(
    dataset: IndexedImages,
    indices: Sequence[int],
    batch_size: int,
    workers: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Yield (positions, uint8 images, reasons) batches of `dataset` at `indices`, in order.

    For a model on the CPU, each batch is decoded by a pool of `torch.get_num_threads()`
    threads and only then handed to the model, so decoding and the model take turns on
    all cores. Decoding in DataLoader processes while the model runs made both compete
    for the same cores: with 2 cores, EfficientNet-Lite0 at 128 px reached 0.60x the bare
    model's throughput that way and 0.78x this way. Pillow releases the GIL while it
    decodes and resizes, so the threads run in parallel. For a model on a GPU the CPU
    cores are free, and `workers` DataLoader processes decode while the GPU computes.
    """
    if device.type != "cpu":
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=list(indices),
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        yield from loader
        return

    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        for start in range(0, len(indices), batch_size):
            items = list(pool.map(dataset.__getitem__, indices[start : start + batch_size]))
            yield default_collate(items)


def _gather_skipped(skipped: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Collect every rank's (position, reason) pairs of unusable images, sorted, on all ranks."""
    if not dist.is_initialized():
        return sorted(set(skipped))
    parts: list[list[tuple[int, str]] | None] = [None] * world_size()
    dist.all_gather_object(parts, skipped)
    return sorted({item for part in parts for item in part or []})


def _drop_rows(path: Path, kept: np.ndarray, chunk_rows: int = 65_536) -> None:
    """Rewrite the (N, D) .npy file at `path` with only the `kept` rows, chunk by chunk."""
    source = np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        target = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(int(kept.sum()), source.shape[1])
        )
        written = 0
        for start in range(0, len(source), chunk_rows):
            rows = source[start : start + chunk_rows][kept[start : start + chunk_rows]]
            target[written : written + len(rows)] = rows
            written += len(rows)
        target.flush()
        del target
    del source


def embed_paths(
    function: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[Path],
    *,
    dim: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    workers: int,
    out: Path | None = None,
    channels_last: bool = False,
    desc: str = "embed",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skips: SkipLog | None = None,
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Apply `function` (images to (B, dim) outputs) to every usable image, each rank its shard.

    Preprocessing equals `glr.inference.map_usable_images` with the eval transform.
    Returns, on rank 0, (values, kept): `kept` (N,) marks the paths that gave a row and
    `values` contains those rows, float32 (kept.sum(), dim), in input order. Other ranks
    return None. Unusable images (see `load_rgb`) are left out and added to `skips`.

    With `out`, rows are written into that .npy file as each batch finishes (every rank
    must see the same file system), so memory does not grow with the image count, and
    `values` is the finished file opened with `mmap_mode="r"`. Without `out`, rank 0
    gathers the rows in memory. `channels_last` converts each batch to that memory
    format first, which speeds up some convolution networks on CPU. Batches move to
    `device` (default CPU), where `function`'s weights must be. `workers` DataLoader
    processes decode the images for a GPU; on the CPU a thread pool does (see
    `decoded_batches`).
    """
    paths = list(paths)
    device = device or torch.device("cpu")
    dataset = IndexedImages(paths, image_size, max_pixels)
    # This rank's share of the images; the sampler pads the shards to equal length.
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=world_size(), rank=rank(), shuffle=False
    )
    shard: list[int] = list(sampler)
    writer: NpyRowWriter | None = None
    partial = None if out is None else out.with_name(out.name + ".partial")
    if partial is not None:
        if is_main():
            NpyRowWriter(partial, len(paths), dim, create=True).close()
        barrier()
        writer = NpyRowWriter(partial, len(paths), dim, create=False)

    started = time.perf_counter()
    kept_rows: list[np.ndarray] = []
    kept_indices: list[np.ndarray] = []
    skipped: list[tuple[int, str]] = []
    with torch.no_grad():
        batches = decoded_batches(dataset, shard, batch_size, workers, device)
        total = -(-len(shard) // batch_size)
        for indices, images, reasons in tqdm(
            batches, desc=desc, total=total, leave=False, disable=not is_main()
        ):
            skipped += [(int(i), why) for i, why in zip(indices, reasons, strict=True) if why]
            batch = normalise(images.to(device, non_blocking=True), mean, std)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            rows = function(batch).float().cpu().numpy().reshape(len(indices), dim)
            if writer is not None:
                writer.write(indices.numpy(), rows)
            else:
                kept_rows.append(rows)
                kept_indices.append(indices.numpy())
    elapsed = time.perf_counter() - started
    log.info(
        "%s (rank %d of %d): %d images in %.1f s (%.1f images/s)",
        desc,
        rank(),
        world_size(),
        len(shard),
        elapsed,
        len(shard) / elapsed if elapsed > 0 else 0.0,
    )

    all_skipped = _gather_skipped(skipped)
    kept = np.ones(len(paths), dtype=bool)
    kept[[position for position, _ in all_skipped]] = False
    if skips is not None and is_main():
        skips.extend([(str(paths[position]), reason) for position, reason in all_skipped])

    if writer is not None and out is not None and partial is not None:
        writer.close()
        barrier()
        if not is_main():
            return None
        if not kept.all():
            _drop_rows(partial, kept)
        os.replace(partial, out)
        return np.load(out, mmap_mode="r"), kept

    rows = np.concatenate(kept_rows) if kept_rows else np.zeros((0, dim), dtype=np.float32)
    positions = np.concatenate(kept_indices) if kept_indices else np.zeros(0, dtype=np.int64)
    gathered = gather_in_order(rows, positions, len(paths))
    if gathered is None:
        return None
    return gathered[kept], kept
