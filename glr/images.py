"""Image decoding, preprocessing and the datasets that feed the networks."""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from glr.params import AugmentParams

log = logging.getLogger(__name__)


# Pillow's default limit, used as ours: larger images are skipped before decoding.
DEFAULT_MAX_PIXELS = 89_478_485
# `load_rgb` checks the size from the header against its own `max_pixels` param, so
# Pillow's process-wide check (and its warning) is switched off rather than applied twice.
Image.MAX_IMAGE_PIXELS = None
# Transparent pixels are composited on white before the alpha channel is dropped.
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image that cannot be used: missing, empty, not an image, truncated or too large."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{reason}: {path}")
        self.path = str(path)
        self.reason = reason


def load_rgb(path: str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image as RGB, upright per its EXIF orientation.

    Grayscale, CMYK and palette images are converted to RGB; transparency is composited on
    white. For GIF, WebP and other multi-frame files the first frame is used. For JPEGs,
    `draft` lets the decoder downscale by 1/2, 1/4 or 1/8 while decoding, never below `size`
    on the short side. An image of more than `max_pixels` pixels is rejected from its header,
    before decoding. Raises `ImageError` with the reason for any image that cannot be used.
    """
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise ImageError(path, "file not found") from error
    except (UnidentifiedImageError, OSError) as error:
        size_bytes = Path(path).stat().st_size if Path(path).is_file() else 0
        reason = "empty file" if size_bytes == 0 else "not an image Pillow can decode"
        raise ImageError(path, reason) from error

    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                path,
                f"{width} x {height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (base.max_image_pixels)",
            )
        try:
            image.draft("RGB", (size, size))
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(path, f"truncated or corrupt image ({error})") from error

        upright = _apply_orientation(image)
        return _to_rgb(upright)


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        # A broken EXIF block leaves the image as stored rather than losing it.
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize to a `size` x `size` square (bicubic) and normalise."""
    return v2.Compose(
        [
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentParams
) -> v2.Compose:
    """Square resize, then zoom-in crop, horizontal flip, brightness and contrast jitter."""
    return v2.Compose(
        [
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomResizedCrop(
                size, scale=(augment.min_crop_area, 1.0), ratio=(1.0, 1.0), antialias=True
            ),
            v2.RandomHorizontalFlip(p=augment.hflip),
            v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImageItem(NamedTuple):
    """One dataset item at `position`; `image` is None and `error` says why if it was unusable."""

    image: torch.Tensor | None
    target: float
    position: int
    error: str
    error_path: str


class PairItem(NamedTuple):
    """One pair of images with its target (1.0 same landmark, 0.0 not), or the error."""

    first: torch.Tensor | None
    second: torch.Tensor | None
    target: float
    position: int
    error: str
    error_path: str


class ImageDataset(Dataset[ImageItem]):
    """Images from paths with one float target each (use 0 when there is none).

    An unusable image becomes an item with `image=None` and the reason, so that the
    loader's `collate_images` can drop it, count it and carry on.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[float],
        size: int,
        transform: v2.Compose,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = [float(target) for target in targets]
        self.size = size
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageItem:
        try:
            image = load_rgb(self.paths[index], self.size, self.max_pixels)
        except ImageError as error:
            return ImageItem(None, self.targets[index], index, error.reason, error.path)
        return ImageItem(self.transform(image), self.targets[index], index, "", "")


class PairDataset(Dataset[PairItem]):
    """Pairs of images with a target: 1.0 for the same landmark, 0.0 otherwise."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path, float]],
        size: int,
        transform: v2.Compose,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.pairs = list(pairs)
        self.size = size
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PairItem:
        first, second, target = self.pairs[index]
        try:
            first_image = load_rgb(first, self.size, self.max_pixels)
            second_image = load_rgb(second, self.size, self.max_pixels)
        except ImageError as error:
            return PairItem(None, None, float(target), index, error.reason, error.path)
        first_tensor, second_tensor = self.transform(first_image), self.transform(second_image)
        return PairItem(first_tensor, second_tensor, float(target), index, "", "")


@dataclass
class Batch:
    """The usable items of a loader batch (`indices` into the dataset) and the skipped ones.

    `skipped` lists (image path, reason) for every item whose image could not be used.
    """

    tensors: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    indices: list[int]
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.indices)


def collate_images(items: Sequence[ImageItem]) -> Batch:
    """Stack the usable images of a batch; list the unusable ones with their reasons."""
    return _collate(items, 1)


def collate_pairs(items: Sequence[PairItem]) -> Batch:
    """Stack the usable pairs of a batch; list the unusable ones with their reasons."""
    return _collate(items, 2)


def _collate(items: Sequence[ImageItem] | Sequence[PairItem], width: int) -> Batch:
    usable = [item for item in items if not item.error]
    skipped = [(item.error_path, item.error) for item in items if item.error]
    tensors = tuple(
        torch.stack([typing.cast(torch.Tensor, item[column]) for item in usable])
        if usable
        else torch.zeros(0)
        for column in range(width)
    )
    targets = torch.tensor([item.target for item in usable], dtype=torch.float32)
    return Batch(tensors, targets, [item.position for item in usable], skipped)


class SkipLog:
    """Images skipped by a stage, by image id with the reason; written as a CSV for metrics.

    An image skipped again (in a later epoch) is logged and counted once.
    """

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def add(self, image: str | Path, reason: str) -> None:
        name = Path(image).stem
        if name not in self.reasons:
            log.warning("skipped image %s: %s", name, reason)
            self.reasons[name] = reason

    def extend(self, skipped: Sequence[tuple[str, str]]) -> None:
        for image, reason in skipped:
            self.add(image, reason)

    def __len__(self) -> int:
        return len(self.reasons)

    def write(self, path: str | Path) -> None:
        from glr.io import write_csv

        rows = sorted(self.reasons.items())
        write_csv(path, pd.DataFrame(rows, columns=["id", "reason"]))
