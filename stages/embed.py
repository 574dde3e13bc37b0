"""Stage embed: Siamese embeddings of the index, which is every kept train image."""

import argparse
from pathlib import Path

import pandas as pd

from glr.data import image_path, read_csv_columns
from glr.inference import embed_images
from glr.io import write_csv, write_npy
from glr.models import load_siamese
from glr.runtime import resolve_workers, start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="trained Siamese model")
    parser.add_argument("--split", type=Path, required=True, help="split stage output folder")
    parser.add_argument("--images", type=Path, required=True, help="train image folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()
    params = start_stage("embed")
    model, config = load_siamese(args.model)

    index = pd.concat(
        [
            read_csv_columns(args.split / "siamese_train.csv", ["id", "landmark_id"]),
            read_csv_columns(args.split / "siamese_val.csv", ["id", "landmark_id"]),
        ]
    ).sort_values("id")
    embeddings = embed_images(
        model,
        config,
        [image_path(args.images, image_id) for image_id in index["id"]],
        batch_size=params.embed.batch_size,
        workers=resolve_workers(params.base.num_workers),
        desc="embed index",
    )

    write_npy(args.out / "index.npy", embeddings)
    write_csv(args.out / "index.csv", index)


if __name__ == "__main__":
    main()
