"""Stage train_gate: train the landmark-present classifier.

Runs in one process, or data-parallel under `torchrun` (gate.batch_size is then the
global batch). Rank 0 alone writes the model, figures, metrics and skip list.
"""

import argparse
import dataclasses

from glr.data import image_path, read_csv_columns
from glr.distributed import is_main, process_group
from glr.figures import plot_augmentations, plot_training_curves
from glr.images import ImageDataset, SkipLog, eval_transform, train_transform
from glr.io import write_json
from glr.models import GateNet, count_parameters, keras_parameter_count, save_model
from glr.params import Params
from glr.runtime import resolve_workers, start_stage, training_arguments, training_fingerprint
from glr.tracking import EpochLogger
from glr.training import Checkpointing, train_gate


def main() -> None:
    args = training_arguments(__doc__)
    params = start_stage("train_gate")
    with process_group():
        run(args, params)


def run(args: argparse.Namespace, params: Params) -> None:
    gate, size = params.gate, params.base.image_size

    model = GateNet(gate.backbone, gate.weights, gate.pooling, gate.frozen_blocks)
    total, trainable = count_parameters(model)
    keras_total, keras_trainable = keras_parameter_count(model)

    mean, std = model.backbone.mean, model.backbone.std
    augment = train_transform(size, mean, std, params.augment)
    datasets = []
    for name, transform in [("gate_train", augment), ("gate_val", eval_transform(size, mean, std))]:
        frame = read_csv_columns(args.split / f"{name}.csv", ["id", "label"])
        paths = [image_path(args.images, image_id) for image_id in frame["id"]]
        targets = frame["label"].astype(float).tolist()
        datasets.append(ImageDataset(paths, targets, size, transform, params.base.max_image_pixels))

    # Only rank 0 logs epochs, so only it creates the dvclive folder.
    logger = EpochLogger(args.live) if is_main() else None
    skips = SkipLog()
    checkpointing = Checkpointing(
        args.checkpoint, params.base.resume, training_fingerprint(params, params.gate)
    )
    train_gate(
        model,
        datasets[0],
        datasets[1],
        epochs=gate.epochs,
        lr=gate.lr,
        batch_size=gate.batch_size,
        workers=resolve_workers(params.base.num_workers),
        seed=params.base.seed,
        on_epoch=logger,
        checkpointing=checkpointing,
        skips=skips,
    )
    # Ranks other than 0 stop here, because rank 0 writes every output.
    if logger is None:
        return
    logger.close()
    plot_training_curves(logger.history, args.figures / "gate_curves.png", "Landmark gate")
    plot_augmentations(
        datasets[0].paths[:4], augment, mean, std, size, args.figures / "augmentations.png"
    )

    config = {
        "params": dataclasses.asdict(gate),
        "backbone": gate.backbone,
        "pooling": gate.pooling,
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
            "keras_parameters_total": keras_total,
            "keras_parameters_trainable": keras_trainable,
        },
    )


if __name__ == "__main__":
    main()
