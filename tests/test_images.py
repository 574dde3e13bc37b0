"""Tests for glr.images on real image files written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glr.images import (
    ImageDataset,
    ImageError,
    PairDataset,
    collate_pairs,
    eval_transform,
    load_rgb,
    train_transform,
)
from glr.params import AugmentParams

HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXIF_ORIENTATION = 0x0112


def save_solid(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def expected_draft_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Return the size that Pillow's JPEG draft decodes to for a requested (size, size).

    JpegImageFile.draft (read in Pillow 13.0) picks the largest scale s in 8, 4, 2, 1 with
    s <= min(width // size, height // size), or 1 when that minimum is 0, and rounds each
    side up. So a side shrinks only when both sides stay at least `size`.
    """
    limit = min(width // size, height // size)
    scale = max(s for s in (1, 2, 4, 8) if s <= max(limit, 1))
    return (-(-width // scale), -(-height // scale))


# ---------------------------------------------------------------------------
# load_rgb
# ---------------------------------------------------------------------------


def test_load_rgb_grayscale_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    Image.new("L", (40, 30), 128).save(path, quality=95)

    image = load_rgb(path, 32)

    assert image.mode == "RGB"
    assert image.size == (40, 30)
    red, green, blue = image.getpixel((20, 15))  # type: ignore[misc]
    assert red == green == blue
    assert abs(red - 128) <= 2


def test_load_rgb_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    # No ink at all is white.
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(path, quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"

    image = load_rgb(path, 32)

    assert image.mode == "RGB"
    assert all(value >= 250 for value in image.getpixel((16, 16)))  # type: ignore[union-attr]


def test_load_rgb_png_alpha(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (20, 10), (10, 200, 30, 60)).save(path)

    image = load_rgb(path, 32)

    assert image.mode == "RGB"
    assert image.size == (20, 10)
    # Composited on white: colour * alpha + 255 * (1 - alpha), alpha = 60 / 255.
    expected = tuple(round(value * 60 / 255 + 255 * (1 - 60 / 255)) for value in (10, 200, 30))
    for channel, value in zip(image.getpixel((5, 5)), expected, strict=True):
        assert abs(channel - value) <= 1


def test_load_rgb_palette_png(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    Image.new("RGB", (16, 16), (0, 0, 255)).convert("P").save(path)

    image = load_rgb(path, 32)

    assert image.mode == "RGB"
    assert image.getpixel((3, 3)) == (0, 0, 255)


def test_load_rgb_exif_rotation(tmp_path: Path) -> None:
    # Stored 64 x 32: left half red, right half blue. Orientation 6 means the viewer
    # rotates the image 90 degrees clockwise, so the left half ends up on top.
    path = tmp_path / "rotated.jpg"
    stored = Image.new("RGB", (64, 32), (255, 0, 0))
    stored.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(path, quality=95, exif=exif)

    image = load_rgb(path, 32)

    assert image.mode == "RGB"
    assert image.size == (32, 64)
    top = image.getpixel((16, 8))
    bottom = image.getpixel((16, 56))
    assert top[0] > 200  # type: ignore[index]
    assert top[2] < 50  # type: ignore[index]
    assert bottom[0] < 50  # type: ignore[index]
    assert bottom[2] > 200  # type: ignore[index]


def test_load_rgb_exif_orientation_one(tmp_path: Path) -> None:
    path = tmp_path / "upright.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 1
    Image.new("RGB", (64, 32), (0, 255, 0)).save(path, quality=95, exif=exif)

    assert load_rgb(path, 32).size == (64, 32)


@pytest.mark.parametrize(
    ("request_size", "expected"),
    [(70, (125, 75)), (128, (250, 150)), (300, (500, 300)), (301, (1000, 600))],
)
def test_load_rgb_draft_scale(tmp_path: Path, request_size: int, expected: tuple[int, int]) -> None:
    path = save_solid(tmp_path / "big.jpg", (1000, 600), (10, 20, 30))
    assert expected_draft_size(1000, 600, request_size) == expected

    image = load_rgb(path, request_size)

    assert image.size == expected
    assert min(image.size) >= request_size


@pytest.mark.parametrize("request_size", [32, 50, 64, 100, 129, 250])
def test_load_rgb_draft_never_below_size(tmp_path: Path, request_size: int) -> None:
    path = save_solid(tmp_path / "wide.jpg", (777, 259), (200, 100, 50))

    image = load_rgb(path, request_size)

    assert image.size == expected_draft_size(777, 259, request_size)
    assert image.width >= request_size
    assert image.height >= request_size
    # The decoder shrinks by at most 8 in each direction.
    assert image.width * 8 >= 777
    assert image.height * 8 >= 259


def test_load_rgb_small_not_upscaled(tmp_path: Path) -> None:
    path = save_solid(tmp_path / "small.jpg", (100, 80), (0, 0, 0))

    assert load_rgb(path, 128).size == (100, 80)


def test_load_rgb_draft_with_rotation(tmp_path: Path) -> None:
    path = tmp_path / "big_rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.new("RGB", (1000, 600), (0, 0, 0)).save(path, exif=exif)

    image = load_rgb(path, 128)

    assert image.size == (150, 250)


def test_load_rgb_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"

    with pytest.raises(ImageError, match="file not found") as raised:
        load_rgb(missing, 32)
    assert raised.value.path == str(missing)


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


def test_eval_transform_shape_dtype() -> None:
    image = Image.new("RGB", (90, 40), (1, 2, 3))

    tensor = eval_transform(24, IMAGENET_MEAN, IMAGENET_STD)(image)

    assert tensor.shape == (3, 24, 24)
    assert tensor.dtype == torch.float32


def test_eval_transform_solid_values() -> None:
    image = Image.new("RGB", (50, 30), (255, 0, 51))

    tensor = eval_transform(16, HALF, HALF)(image)

    # (value / 255 - 0.5) / 0.5 per channel: 1, -1 and 51 / 127.5 - 1 = -0.6.
    assert torch.allclose(tensor[0], torch.full((16, 16), 1.0), atol=1e-6)
    assert torch.allclose(tensor[1], torch.full((16, 16), -1.0), atol=1e-6)
    assert torch.allclose(tensor[2], torch.full((16, 16), -0.6), atol=1e-6)


def test_eval_transform_normalised_range() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)

    tensor = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)(image)

    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    low = (0.0 - mean) / std
    high = (1.0 - mean) / std
    assert bool((tensor >= low - 1e-6).all())
    assert bool((tensor <= high + 1e-6).all())


def test_train_transform_shape_dtype() -> None:
    augment = AugmentParams(brightness=0.2, contrast=0.2, hflip=0.5, min_crop_area=0.64)
    image = Image.new("RGB", (70, 45), (100, 150, 200))

    tensor = train_transform(20, IMAGENET_MEAN, IMAGENET_STD, augment)(image)

    assert tensor.shape == (3, 20, 20)
    assert tensor.dtype == torch.float32


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def test_image_dataset_length_mismatch(tmp_path: Path) -> None:
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]

    with pytest.raises(ValueError, match="2 paths but 1 targets"):
        ImageDataset(paths, [1.0], 16, eval_transform(16, HALF, HALF))


def test_image_dataset_items(tmp_path: Path) -> None:
    first = save_solid(tmp_path / "a.jpg", (40, 30), (255, 255, 255))
    second = save_solid(tmp_path / "b.jpg", (30, 40), (0, 0, 0))
    dataset = ImageDataset([first, second], [1, 0], 16, eval_transform(16, HALF, HALF))

    image, target, position, error, _ = dataset[1]

    assert len(dataset) == 2
    assert position == 1
    assert error == ""
    assert image is not None
    assert image.shape == (3, 16, 16)
    assert target == 0.0
    assert dataset[0].target == 1.0
    assert image.mean().item() == pytest.approx(-1.0, abs=0.02)


def test_pair_dataset_items(tmp_path: Path) -> None:
    first = save_solid(tmp_path / "a.jpg", (40, 30), (255, 255, 255))
    second = save_solid(tmp_path / "b.jpg", (30, 40), (0, 0, 0))
    dataset = PairDataset(
        [(first, second, 1.0), (second, second, 0.0)], 16, eval_transform(16, HALF, HALF)
    )

    left, right, target, _, error, _ = dataset[0]

    assert len(dataset) == 2
    assert error == ""
    assert isinstance(left, torch.Tensor)
    assert isinstance(right, torch.Tensor)
    assert left.shape == (3, 16, 16)
    assert right.shape == (3, 16, 16)
    assert left.mean().item() == pytest.approx(1.0, abs=0.02)
    assert right.mean().item() == pytest.approx(-1.0, abs=0.02)
    assert target == 1.0
    assert dataset[1].target == 0.0


def test_pair_dataset_batches(tmp_path: Path) -> None:
    path = save_solid(tmp_path / "a.jpg", (40, 30), (128, 128, 128))
    dataset = PairDataset([(path, path, 1.0)] * 3, 16, eval_transform(16, HALF, HALF))

    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_pairs)
    batch = next(iter(loader))
    left, right = batch.tensors
    targets = batch.targets

    assert left.shape == (3, 3, 16, 16)
    assert right.shape == (3, 3, 16, 16)
    assert targets.tolist() == [1.0, 1.0, 1.0]
