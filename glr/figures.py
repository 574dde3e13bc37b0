"""PNG figures of training runs: curves per epoch, example pairs and augmentations.

DVC's HTML plots load their chart library from a CDN, so they do not render offline;
these images do, and dvc.yaml declares them as image plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from glr.io import atomic_path  # noqa: E402

# PNG metadata without the matplotlib version, so the same run gives the same bytes.
PNG_METADATA = {"Software": None}


def _save(figure: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)
    plt.close(figure)


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path, title: str) -> None:
    """Draw accuracy and loss per epoch, training against validation."""
    epochs = np.arange(1, len(history) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("acc", "loss"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [epoch.get(prefix + metric, np.nan) for epoch in history]
            # Margin-loss training has no validation pass, so it draws no validation line.
            if not np.all(np.isnan(values)):
                axis.plot(epochs, values, marker="o", label=label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel("accuracy" if metric == "acc" else "loss")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_image_grid(
    rows: Sequence[Sequence[Image.Image]], path: str | Path, titles: Sequence[str], suptitle: str
) -> None:
    """Draw rows of images; `titles` label the columns."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), squeeze=False
    )
    for row_index, row in enumerate(rows):
        for column in range(columns):
            axis = axes[row_index][column]
            axis.axis("off")
            if column < len(row):
                axis.imshow(row[column])
            if row_index == 0 and column < len(titles):
                axis.set_title(titles[column], fontsize=9)
    figure.suptitle(suptitle)
    figure.tight_layout()
    _save(figure, path)


def tensor_to_image(
    tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> Image.Image:
    """Undo the normalisation of a (3, H, W) input tensor and return it as an RGB image."""
    mean_tensor = torch.tensor(mean).view(3, 1, 1)
    std_tensor = torch.tensor(std).view(3, 1, 1)
    pixels = (tensor * std_tensor + mean_tensor).clamp(0, 1)
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def plot_augmentations(
    paths: Sequence[Path],
    transform: torch.nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    size: int,
    path: str | Path,
    views: int = 4,
) -> None:
    """Draw each image with `views` random augmentations of it, as the network sees them."""
    from glr.images import load_rgb

    rows = []
    for image_path in paths:
        image = load_rgb(image_path, size)
        original = image.resize((size, size), Image.Resampling.BICUBIC)
        augmented = [tensor_to_image(transform(image), mean, std) for _ in range(views)]
        rows.append([original, *augmented])
    titles = ["original", *[f"augmented {index + 1}" for index in range(views)]]
    plot_image_grid(rows, path, titles, "Training augmentation")


def plot_pairs(triplets: Sequence[tuple[Path, Path, Path]], size: int, path: str | Path) -> None:
    """Draw anchor / positive / negative examples, one triplet per row."""
    from glr.images import load_rgb

    rows = [
        [load_rgb(image, size).resize((size, size), Image.Resampling.BICUBIC) for image in row]
        for row in triplets
    ]
    plot_image_grid(rows, path, ["anchor", "positive", "negative"], "Siamese training pairs")
