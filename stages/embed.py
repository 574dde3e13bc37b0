"""Stage embed: Siamese embeddings of the index (kept train images) and of the test queries."""

import argparse
from pathlib import Path

import pandas as pd

from glr.data import image_path, read_csv_columns
from glr.inference import map_images
from glr.io import write_csv, write_npy
from glr.models import load_siamese
from glr.runtime import resolve_workers, start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="trained Siamese model")
    parser.add_argument("--split", type=Path, required=True, help="split stage output folder")
    parser.add_argument("--raw", type=Path, required=True, help="download stage output folder")
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
    queries = read_csv_columns(args.split / "queries.csv", ["id"])

    for name, frame, folder in [
        ("index", index, args.raw / "train"),
        ("queries", queries, args.raw / "test"),
    ]:
        embeddings = map_images(
            model.embed,
            [image_path(folder, image_id) for image_id in frame["id"]],
            image_size=int(str(config["image_size"])),
            mean=config["mean"],  # type: ignore[arg-type]
            std=config["std"],  # type: ignore[arg-type]
            batch_size=params.embed.batch_size,
            workers=resolve_workers(params.base.num_workers),
            desc=f"embed {name}",
        ).reshape(len(frame), int(str(config["dim"])))
        write_npy(args.out / f"{name}.npy", embeddings)
        write_csv(args.out / f"{name}.csv", frame)


if __name__ == "__main__":
    main()
