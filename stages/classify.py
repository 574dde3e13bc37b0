"""Stage classify: the gate's landmark-present probability for every test query."""

import argparse
import time
from pathlib import Path

import numpy as np

from glr.data import image_path, read_csv_columns
from glr.images import SkipLog
from glr.inference import gate_probabilities
from glr.io import write_csv, write_json
from glr.models import load_gate
from glr.runtime import resolve_workers, start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="trained gate model")
    parser.add_argument("--split", type=Path, required=True, help="split stage output folder")
    parser.add_argument("--images", type=Path, required=True, help="test image folder")
    parser.add_argument("--out", type=Path, required=True, help="output CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    parser.add_argument("--skipped", type=Path, required=True, help="CSV of skipped images")
    args = parser.parse_args()
    params = start_stage("classify")
    model, config = load_gate(args.model)
    queries = read_csv_columns(args.split / "queries.csv", ["id"])

    skips = SkipLog()
    started = time.perf_counter()
    mapped = gate_probabilities(
        model,
        config,
        [image_path(args.images, image_id) for image_id in queries["id"]],
        batch_size=params.embed.batch_size,
        workers=resolve_workers(params.base.num_workers),
        max_pixels=params.base.max_image_pixels,
        skips=skips,
    )
    seconds = time.perf_counter() - started

    # A query whose image cannot be read gets probability 0 and is never retrieved.
    probabilities = np.zeros(len(queries), dtype=np.float32)
    probabilities[mapped.kept] = mapped.values
    queries["probability"] = probabilities
    queries["landmark"] = mapped.kept & (probabilities >= params.gate.threshold)
    write_csv(args.out, queries)
    skips.write(args.skipped)
    write_json(
        args.metrics,
        {
            "queries": len(queries),
            "queries_passed": int(queries["landmark"].sum()),
            "images_skipped": len(skips),
            "seconds": seconds,
        },
    )


if __name__ == "__main__":
    main()
