"""Stage split: Siamese (class-disjoint) and gate (image-level) splits, and the test queries."""

import argparse
from pathlib import Path

from glr.data import class_split, image_split, list_images, read_csv_columns, sample_queries
from glr.io import write_csv, write_json
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--filtered", type=Path, required=True, help="filter stage CSV")
    parser.add_argument("--raw", type=Path, required=True, help="download stage output folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder for split CSVs")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("split")
    seed = params.base.seed

    images = read_csv_columns(args.filtered, ["id", "landmark_id", "kept"])
    images["landmark_id"] = images["landmark_id"].astype("int64")
    images["label"] = (images["kept"] == "True").astype("int64")

    kept = images[images["label"] == 1][["id", "landmark_id"]]
    siamese_train, siamese_val = class_split(kept, params.split.val_fraction, seed)
    gate_train, gate_val = image_split(
        images[["id", "landmark_id", "label"]], "label", params.split.gate_val_fraction, seed
    )

    solution_path = args.raw / "ground_truth" / "recognition_solution_v2.1.csv"
    solution = read_csv_columns(solution_path, ["id", "landmarks", "Usage"])
    test_ids = list_images(args.raw / "test")
    queries = sample_queries(test_ids, solution, params.split.test_fraction, seed)
    truth = queries.merge(solution[["id", "landmarks"]], on="id", how="left")
    with_landmark = int((truth["landmarks"].str.strip() != "").sum())

    for name, frame in [
        ("siamese_train", siamese_train),
        ("siamese_val", siamese_val),
        ("gate_train", gate_train),
        ("gate_val", gate_val),
        ("queries", queries),
    ]:
        write_csv(args.out / f"{name}.csv", frame)
    write_json(
        args.metrics,
        {
            "siamese_train_images": len(siamese_train),
            "siamese_train_classes": int(siamese_train["landmark_id"].nunique()),
            "siamese_val_images": len(siamese_val),
            "siamese_val_classes": int(siamese_val["landmark_id"].nunique()),
            "gate_train_images": len(gate_train),
            "gate_val_images": len(gate_val),
            "test_images_available": len(test_ids),
            "test_images_used": len(queries),
            "test_landmark_share": with_landmark / len(queries) if len(queries) else 0.0,
        },
    )


if __name__ == "__main__":
    main()
