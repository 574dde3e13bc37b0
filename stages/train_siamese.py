"""Stage train_siamese: train the embedding network.

`siamese.loss: contrastive` trains the reference report's Siamese net (embedding plus pair
head) on anchor / positive / negative pairs of the train classes, validated on the held-out
classes. `arcface` and `subcenter_arcface` train a GeM embedding with a margin loss over
every kept class, because the index contains all of them.

The margin losses also train data-parallel under `torchrun` (siamese.batch_size is then
the global batch), and rank 0 alone writes the outputs. The contrastive loss trains in
one process only.
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from glr.data import image_path, read_csv_columns
from glr.distributed import is_main, process_group
from glr.figures import plot_pairs, plot_training_curves
from glr.heads import LandmarkNet, create_margin_loss
from glr.images import ImageDataset, SkipLog, eval_transform, train_transform
from glr.io import write_json
from glr.models import SiameseNet, count_parameters, save_model
from glr.pairs import example_triplets
from glr.params import Params
from glr.runtime import resolve_workers, start_stage, training_arguments, training_fingerprint
from glr.tracking import EpochLogger
from glr.training import Checkpointing, train_margin, train_siamese


def main() -> None:
    args = training_arguments(__doc__)
    params = start_stage("train_siamese")
    with process_group():
        run(args, params)


def run(args: argparse.Namespace, params: Params) -> None:
    siamese, size = params.siamese, params.base.image_size

    train = read_csv_columns(args.split / "siamese_train.csv", ["id", "landmark_id"])
    val = read_csv_columns(args.split / "siamese_val.csv", ["id", "landmark_id"])
    train_paths = [image_path(args.images, image_id) for image_id in train["id"]]
    train_labels = train["landmark_id"].astype("int64").to_numpy()

    # Only rank 0 logs epochs, so only it creates the dvclive folder.
    logger = EpochLogger(args.live) if is_main() else None
    skips = SkipLog()
    checkpointing = Checkpointing(
        args.checkpoint, params.base.resume, training_fingerprint(params, siamese)
    )
    workers = resolve_workers(params.base.num_workers)

    model: nn.Module
    if siamese.loss == "contrastive":
        model = SiameseNet(
            siamese.backbone, siamese.weights, siamese.pooling, siamese.frozen_blocks, siamese.dim
        )
        mean, std = model.backbone.mean, model.backbone.std
        train_siamese(
            model,
            train_paths,
            train_labels,
            [image_path(args.images, image_id) for image_id in val["id"]],
            val["landmark_id"].astype("int64").to_numpy(),
            train_transform=train_transform(size, mean, std, params.augment),
            eval_transform=eval_transform(size, mean, std),
            image_size=size,
            epochs=siamese.epochs,
            lr=siamese.lr,
            margin=siamese.margin,
            batch_classes=siamese.batch_classes,
            workers=workers,
            seed=params.base.seed,
            max_pixels=params.base.max_image_pixels,
            on_epoch=logger,
            checkpointing=checkpointing,
            skips=skips,
        )
        kind = "pair"
    else:
        model, mean, std = train_margin_model(
            params, pd.concat([train, val]), args.images, logger, checkpointing, skips, workers
        )
        kind = "margin"
    # Ranks other than 0 stop here, because rank 0 writes every output.
    if logger is None:
        return
    logger.close()
    total, trainable = count_parameters(model)

    plot_training_curves(logger.history, args.figures / "siamese_curves.png", "Embedding net")
    triplets = example_triplets(train_labels, 4, np.random.default_rng(params.base.seed))
    plot_pairs(
        [tuple(train_paths[row] for row in triplet) for triplet in triplets],  # type: ignore[misc]
        size,
        args.figures / "siamese_pairs.png",
    )

    config = {
        "kind": kind,
        "params": dataclasses.asdict(siamese),
        "backbone": siamese.backbone,
        "pooling": siamese.pooling,
        "dim": siamese.dim,
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
    }
    save_model(args.model, model, config)
    skips.write(args.skipped)
    args.checkpoint.unlink(missing_ok=True)
    write_json(
        args.metrics,
        {
            "parameters_total": total,
            "parameters_trainable": trainable,
            "images_skipped": len(skips),
        },
    )


def train_margin_model(
    params: Params,
    images: pd.DataFrame,
    folder: Path,
    logger: EpochLogger | None,
    checkpointing: Checkpointing,
    skips: SkipLog,
    workers: int,
) -> tuple[LandmarkNet, tuple[float, ...], tuple[float, ...]]:
    """Train a LandmarkNet with the configured margin loss over the classes of `images`."""
    siamese, size = params.siamese, params.base.image_size
    model = LandmarkNet(
        siamese.backbone,
        siamese.weights,
        pooling=siamese.pooling,
        frozen_blocks=siamese.frozen_blocks,
        dim=siamese.dim,
    )
    classes = np.sort(images["landmark_id"].astype("int64").unique())
    targets = np.searchsorted(classes, images["landmark_id"].astype("int64").to_numpy())
    loss_function = create_margin_loss(
        siamese.loss,
        len(classes),
        model.dim,
        margin_degrees=siamese.arcface_margin_degrees,
        scale=siamese.arcface_scale,
    )
    dataset = ImageDataset(
        [image_path(folder, image_id) for image_id in images["id"]],
        targets.astype(float).tolist(),
        size,
        train_transform(size, model.mean, model.std, params.augment),
        params.base.max_image_pixels,
    )
    train_margin(
        model,
        loss_function,
        dataset,
        epochs=siamese.epochs,
        lr=siamese.lr,
        head_lr=siamese.head_lr,
        weight_decay=siamese.weight_decay,
        batch_size=siamese.batch_size,
        workers=workers,
        seed=params.base.seed,
        on_epoch=logger,
        checkpointing=checkpointing,
        skips=skips,
    )
    return model, model.mean, model.std


if __name__ == "__main__":
    main()
