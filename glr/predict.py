"""`glr predict`: recognise landmarks in new photos with the trained pipeline's artifacts."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glr.images import SkipLog
from glr.params import load_params
from glr.recognition import Recogniser, load_categories
from glr.runtime import resolve_workers

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def collect_photos(inputs: Sequence[str]) -> list[Path]:
    """Expand files and folders (searched recursively for image files) into a sorted list."""
    photos: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            photos += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            photos.append(path)
        else:
            raise FileNotFoundError(f"photo or folder not found: {path}")
    return photos


def predict(
    inputs: Sequence[str], root: Path, top_k: int, workers: int | None = None
) -> tuple[list[dict[str, Any]], SkipLog, float]:
    """Predict a landmark for every photo; return the rows, the skipped photos and photos/s.

    Uses the artifacts of `dvc repro` under `root`: params.yaml, models/siamese.pt,
    data/index, the non-landmark pool of data/retrieve/all, and the category names.
    """
    params = load_params(root / "params.yaml")
    recogniser = Recogniser.load(
        params,
        root / "models" / "siamese.pt",
        root / "data" / "index",
        root / "data" / "retrieve" / "all",
    )
    categories = load_categories(root / "data" / "raw" / "metadata" / "train_label_to_category.csv")
    photos = collect_photos(inputs)
    started = time.perf_counter()

    skips = SkipLog()
    mapped = recogniser.embed(
        photos,
        resolve_workers(params.base.num_workers if workers is None else workers),
        "predict",
        skips,
    )
    usable = [photo for photo, kept in zip(photos, mapped.kept, strict=True) if kept]
    result = recogniser.recognise([photo.stem for photo in usable], mapped.values)
    rate = len(photos) / max(time.perf_counter() - started, 1e-9)

    rows = []
    for photo, prediction, neighbours in zip(
        usable, result.predictions, result.expanded_neighbours, strict=True
    ):
        landmark = None if prediction is None else prediction[0]
        rows.append(
            {
                "photo": str(photo),
                "landmark_id": landmark,
                "category": categories.get(landmark, "") if landmark is not None else "",
                "confidence": None if prediction is None else round(prediction[1], 6),
                "nearest_train_ids": [
                    str(recogniser.index_ids[row]) for row in neighbours[:top_k] if row >= 0
                ],
            }
        )
    return rows, skips, rate


def format_rows(rows: list[dict[str, Any]], output_format: str) -> str:
    """Render prediction rows as an aligned table, JSON lines or CSV."""
    if output_format == "json":
        return "".join(json.dumps(row) + "\n" for row in rows)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["photo", "landmark_id", "category", "confidence", "nearest_train_ids"])
        for row in rows:
            writer.writerow(
                [
                    row["photo"],
                    "" if row["landmark_id"] is None else row["landmark_id"],
                    row["category"],
                    "" if row["confidence"] is None else row["confidence"],
                    " ".join(row["nearest_train_ids"]),
                ]
            )
        return buffer.getvalue()

    header = ("photo", "landmark", "category", "confidence", "nearest train images")
    lines = [
        (
            Path(row["photo"]).name,
            "-" if row["landmark_id"] is None else str(row["landmark_id"]),
            row["category"][:40],
            "-" if row["confidence"] is None else f"{row['confidence']:.3f}",
            " ".join(row["nearest_train_ids"]),
        )
        for row in rows
    ]
    widths = [max(len(item) for item in column) for column in zip(header, *lines, strict=False)]
    return "".join(
        "  ".join(item.ljust(width) for item, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in [header, *lines]
    )


def run(inputs: Sequence[str], root: Path, output_format: str, top_k: int) -> int:
    """Predict and print; log skipped photos and the rate. Returns the exit status."""
    rows, skips, rate = predict(inputs, root, top_k)
    sys.stdout.write(format_rows(rows, output_format))
    log.info("%d photos predicted, %d skipped, %.1f photos/s", len(rows), len(skips), rate)
    return 0
