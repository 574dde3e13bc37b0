"""Broken and unusual image files: decoded when possible, otherwise skipped with a reason."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from glr.images import ImageError, SkipLog, load_rgb
from glr.inference import map_usable_images

HALF = (0.5, 0.5, 0.5)


def jpeg_bytes(
    size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_truncated_jpeg_rejected(tmp_path: Path) -> None:
    path = tmp_path / "truncated.jpg"
    data = jpeg_bytes((256, 256))
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_rgb(path, 64)


def test_empty_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    with pytest.raises(ImageError, match="empty file"):
        load_rgb(path, 64)


def test_html_named_jpg_rejected(tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_text("<html><body>404 Not Found</body></html>")

    with pytest.raises(ImageError, match="not an image"):
        load_rgb(path, 64)


def test_webp_named_jpg_decoded(tmp_path: Path) -> None:
    path = tmp_path / "webp.jpg"
    Image.new("RGB", (40, 30), (0, 128, 255)).save(path, format="WEBP", lossless=True)

    image = load_rgb(path, 64)

    assert image.mode == "RGB"
    assert image.size == (40, 30)
    assert image.getpixel((10, 10)) == (0, 128, 255)


def test_gif_named_jpg_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "animated.jpg"
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100)

    image = load_rgb(path, 64)

    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 0, 0)


def test_pixel_limit_rejected_before_decoding(tmp_path: Path) -> None:
    # A 1-bit PNG of 20,000 x 20,000 pixels compresses to a few kilobytes but would
    # decode to 400 megapixels.
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000

    started = time.perf_counter()
    with pytest.raises(ImageError, match="over the limit") as raised:
        load_rgb(path, 64, max_pixels=50_000_000)

    assert time.perf_counter() - started < 2.0
    assert "base.max_image_pixels" in str(raised.value)


def test_pixel_limit_is_a_param(tmp_path: Path) -> None:
    path = tmp_path / "small.jpg"
    path.write_bytes(jpeg_bytes((100, 100)))

    assert load_rgb(path, 32, max_pixels=10_000).mode == "RGB"
    with pytest.raises(ImageError, match="10,001 pixels|over the limit"):
        load_rgb(path, 32, max_pixels=9_999)


def test_bad_images_skipped_and_counted(tmp_path: Path) -> None:
    good = []
    for index in range(3):
        path = tmp_path / f"{index:016x}.jpg"
        path.write_bytes(jpeg_bytes(colour=(50 * index, 0, 0)))
        good.append(path)
    empty = tmp_path / "e000000000000000.jpg"
    empty.write_bytes(b"")
    html = tmp_path / "f000000000000000.jpg"
    html.write_text("<html></html>")
    paths = [good[0], empty, good[1], html, good[2]]
    skips = SkipLog()

    mapped = map_usable_images(
        lambda images: images.mean(dim=(2, 3)),
        paths,
        image_size=16,
        mean=HALF,
        std=HALF,
        batch_size=2,
        workers=0,
        desc="test",
        skips=skips,
    )

    assert mapped.kept.tolist() == [True, False, True, False, True]
    assert mapped.values.shape == (3, 3)
    assert not np.isnan(mapped.values).any()
    assert mapped.skipped == 2
    assert skips.reasons == {
        "e000000000000000": "empty file",
        "f000000000000000": "not an image Pillow can decode",
    }


def test_skip_log_written(tmp_path: Path) -> None:
    skips = SkipLog()
    skips.add("/data/a/b/c/abc0000000000000.jpg", "empty file")
    skips.add("/data/a/b/c/abc0000000000000.jpg", "empty file")
    skips.add("/data/d/e/f/def0000000000000.jpg", "truncated or corrupt image")

    skips.write(tmp_path / "skipped.csv")

    frame = pd.read_csv(tmp_path / "skipped.csv", dtype=str)
    assert len(skips) == 2
    assert frame["id"].tolist() == ["abc0000000000000", "def0000000000000"]
    assert frame["reason"].tolist() == ["empty file", "truncated or corrupt image"]


def test_all_bad_batch_gives_no_output(tmp_path: Path) -> None:
    path = tmp_path / "0000000000000000.jpg"
    path.write_bytes(b"")

    mapped = map_usable_images(
        lambda images: torch.ones(len(images), 2),
        [path],
        image_size=16,
        mean=HALF,
        std=HALF,
        batch_size=4,
        workers=0,
        desc="test",
    )

    assert mapped.kept.tolist() == [False]
    assert mapped.values.shape == (0,)
