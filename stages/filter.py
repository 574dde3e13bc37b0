"""Stage filter: label the downloaded train images and keep classes with enough images."""

import argparse
from pathlib import Path

from glr.data import filter_classes, label_found_images
from glr.io import write_csv, write_json
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="download stage output folder")
    parser.add_argument("--out", type=Path, required=True, help="CSV of images with `kept`")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("filter")

    found = label_found_images(args.raw / "metadata" / "train.csv", args.raw / "train")
    images = filter_classes(
        found, params.filter.min_images, params.filter.max_classes, params.base.seed
    )
    kept = images[images["kept"]]

    write_csv(args.out, images)
    write_json(
        args.metrics,
        {
            "train_images_found": len(found),
            "train_classes_found": int(found["landmark_id"].nunique()),
            "train_images_selected": len(images),
            "train_classes_selected": int(images["landmark_id"].nunique()),
            "train_images_kept": len(kept),
            "train_classes_kept": int(kept["landmark_id"].nunique()),
        },
    )


if __name__ == "__main__":
    main()
