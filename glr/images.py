"""Image decoding, preprocessing and the datasets that feed the networks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from glr.params import AugmentParams


def load_rgb(path: str | Path, size: int) -> Image.Image:
    """Decode an image as RGB, upright per its EXIF orientation.

    For JPEGs, `draft` lets the decoder downscale by 1/2, 1/4 or 1/8 while decoding,
    never below `size` on the short side, which makes decoding of large photos faster.
    """
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")


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


class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images from paths with one float target each (use 0 when there is none)."""

    def __init__(
        self, paths: Sequence[Path], targets: Sequence[float], size: int, transform: v2.Compose
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = torch.as_tensor(list(targets), dtype=torch.float32)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.paths[index], self.size)
        return self.transform(image), self.targets[index]


class PairDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Pairs of images with a target: 1.0 for the same landmark, 0.0 otherwise."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path, float]],
        size: int,
        transform: v2.Compose,
    ) -> None:
        self.pairs = list(pairs)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, second, target = self.pairs[index]
        return (
            self.transform(load_rgb(first, self.size)),
            self.transform(load_rgb(second, self.size)),
            torch.tensor(target, dtype=torch.float32),
        )
