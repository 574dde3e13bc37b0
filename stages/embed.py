"""Stage embed: search descriptors of the index, which is every kept train image.

Runs as one process (`python stages/embed.py ...`) or as several under
`torchrun --nproc_per_node N stages/embed.py ...`, each embedding its share of the images.
"""

import argparse
from pathlib import Path

import pandas as pd

from glr.data import image_path, read_csv_columns
from glr.descriptors import SearchDescriptor, load_embedding_model
from glr.distributed import process_group
from glr.images import SkipLog
from glr.inference import embed_images
from glr.io import write_csv, write_json
from glr.params import Params
from glr.runtime import resolve_workers, start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="trained embedding model")
    parser.add_argument("--split", type=Path, required=True, help="split stage output folder")
    parser.add_argument("--images", type=Path, required=True, help="train image folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--skipped", type=Path, required=True, help="CSV of skipped images")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("embed")
    with process_group():
        run(args, params)


def run(args: argparse.Namespace, params: Params) -> None:
    model, config = load_embedding_model(args.model)
    describe = SearchDescriptor(model, config, params.embed.untrained_weight)

    index = pd.concat(
        [
            read_csv_columns(args.split / "siamese_train.csv", ["id", "landmark_id"]),
            read_csv_columns(args.split / "siamese_val.csv", ["id", "landmark_id"]),
        ]
    ).sort_values("id")
    skips = SkipLog()
    mapped = embed_images(
        describe,
        config,
        [image_path(args.images, image_id) for image_id in index["id"]],
        batch_size=params.embed.batch_size,
        workers=resolve_workers(params.base.num_workers),
        desc="embed index",
        max_pixels=params.base.max_image_pixels,
        skips=skips,
        image_size=params.embed.image_size,
        out=args.out / "index.npy",
    )

    # Rank 0 alone gets the result and writes the outputs, after every rank has finished.
    if mapped is None:
        return
    # Unreadable images leave the index; the CSV rows stay aligned with the array rows.
    write_csv(args.out / "index.csv", index[mapped.kept])
    skips.write(args.skipped)
    write_json(args.metrics, {"index_images": int(mapped.kept.sum()), "images_skipped": len(skips)})


if __name__ == "__main__":
    main()
