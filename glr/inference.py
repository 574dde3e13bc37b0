"""Batched inference over image files: gate probabilities and embeddings."""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from glr.distributed import (
    IndexedImages,
    compute_device,
    decoded_batches,
    embed_paths,
    normalise,
)
from glr.heads import embed_with
from glr.images import DEFAULT_MAX_PIXELS, ImageError, SkipLog
from glr.models import GateNet

log = logging.getLogger(__name__)


@dataclass
class MappedImages:
    """Outputs for the usable images, in input order, and which inputs they belong to."""

    values: np.ndarray
    kept: np.ndarray

    @property
    def skipped(self) -> int:
        return int((~self.kept).sum())


def map_usable_images(
    function: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[Path],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    workers: int,
    desc: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skips: SkipLog | None = None,
) -> MappedImages:
    """Apply `function` to every usable image in eval preprocessing; float32 outputs.

    Images that cannot be decoded (see `load_rgb`) are skipped and added to `skips`;
    `kept` marks the paths that have an output row. Decoding runs as in `embed_paths`
    (see `decoded_batches`), and the model runs on the CPU in this process.
    """
    dataset = IndexedImages(paths, image_size, max_pixels)
    batches = decoded_batches(dataset, range(len(paths)), batch_size, workers, torch.device("cpu"))
    started = time.perf_counter()
    outputs: list[np.ndarray] = []
    kept = np.zeros(len(paths), dtype=bool)
    with torch.no_grad():
        for positions, images, reasons in tqdm(
            batches, desc=desc, total=-(-len(paths) // batch_size), leave=False
        ):
            usable = torch.tensor([not reason for reason in reasons], dtype=torch.bool)
            if skips is not None:
                skips.extend(
                    [
                        (str(paths[int(i)]), why)
                        for i, why in zip(positions, reasons, strict=True)
                        if why
                    ]
                )
            if usable.any():
                batch = normalise(images[usable], mean, std)
                outputs.append(function(batch).float().numpy())
                kept[positions[usable].numpy()] = True
    elapsed = time.perf_counter() - started
    log.info(
        "%s: %d images in %.1f s (%.1f images/s), %d skipped",
        desc,
        len(paths),
        elapsed,
        len(paths) / elapsed if elapsed > 0 else 0.0,
        len(paths) - int(kept.sum()),
    )
    values = (
        np.ascontiguousarray(np.concatenate(outputs), dtype=np.float32)
        if outputs
        else np.zeros((0,), dtype=np.float32)
    )
    return MappedImages(values, kept)


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
    """Apply `function` to every image; the first axis follows `paths`.

    Raises `ImageError` for the first unusable image: use `map_usable_images` to skip them.
    An empty `paths` gives shape (0,).
    """
    skips = SkipLog()
    mapped = map_usable_images(
        function,
        paths,
        image_size=image_size,
        mean=mean,
        std=std,
        batch_size=batch_size,
        workers=workers,
        desc=desc,
        skips=skips,
    )
    if len(skips):
        image, reason = next(iter(skips.reasons.items()))
        raise ImageError(image, reason)
    return mapped.values


def preprocessing(config: dict[str, object]) -> dict[str, typing.Any]:
    """Build the `map_usable_images` keywords from a trained model's input size and norm."""
    return {
        "image_size": int(str(config["image_size"])),
        "mean": typing.cast(Sequence[float], config["mean"]),
        "std": typing.cast(Sequence[float], config["std"]),
    }


def output_dim(
    function: Callable[[torch.Tensor], torch.Tensor], image_size: int, device: torch.device
) -> int:
    """Return the width D of `function`'s (B, D) output, found from one black image."""
    with torch.no_grad():
        return int(function(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1])


def embed_images(
    model: torch.nn.Module,
    config: dict[str, object],
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int,
    desc: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skips: SkipLog | None = None,
    image_size: int | None = None,
    out: Path | None = None,
    channels_last: bool = True,
) -> MappedImages | None:
    """Embed the usable images, normalised as the trained model's config records.

    `model` is a `SiameseNet`, a `LandmarkNet` or a `SearchDescriptor`; `image_size`
    overrides the training input size. `values` has shape (usable images, D). Under
    torchrun each process embeds its share of the images and only rank 0 gets the result
    (other ranks get None). With `out`, the rows stream into that .npy file and `values`
    is that file, memory-mapped, so memory stays flat however many images there are.
    `channels_last` (default) runs the model on channels-last batches: 1.4x the
    throughput of contiguous ones for EfficientNet-Lite0 on an AVX-512 Xeon (see
    BENCHMARKS.md), with results equal up to float32 rounding.
    """
    settings = preprocessing(config)
    if image_size is not None:
        settings["image_size"] = image_size

    device = compute_device()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device).to(memory_format=layout)

    def function(images: torch.Tensor) -> torch.Tensor:
        return embed_with(model, images)

    embedded = embed_paths(
        function,
        paths,
        dim=output_dim(function, settings["image_size"], device),
        device=device,
        channels_last=channels_last,
        **settings,
        batch_size=batch_size,
        workers=workers,
        out=out,
        desc=desc,
        max_pixels=max_pixels,
        skips=skips,
    )
    return None if embedded is None else MappedImages(*embedded)


def gate_probabilities(
    model: GateNet,
    config: dict[str, object],
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skips: SkipLog | None = None,
) -> MappedImages:
    """Compute the probability that each usable image shows a landmark, with a trained gate."""
    mapped = map_usable_images(
        lambda images: torch.sigmoid(model(images)),
        paths,
        **preprocessing(config),
        batch_size=batch_size,
        workers=workers,
        desc="gate",
        max_pixels=max_pixels,
        skips=skips,
    )
    mapped.values = mapped.values.reshape(int(mapped.kept.sum()))
    return mapped
