"""Stage retrieve: embed the queries, search the index, label each query; write a submission.

`--variant gated` retrieves only the queries that the gate passes; `--variant all`
retrieves every query, so that one `dvc repro` measures the system with and without
the gate. `glr predict` labels new photos through the same `Recogniser`.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from glr.data import image_path, non_landmark_pool, read_csv_columns
from glr.io import write_csv, write_json, write_npy
from glr.recognition import Recogniser
from glr.retrieval import Prediction, write_submission
from glr.runtime import resolve_workers, start_stage

VARIANTS = ("gated", "all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=VARIANTS, required=True, help="which queries")
    parser.add_argument("--model", type=Path, required=True, help="trained embedding model")
    parser.add_argument("--index", type=Path, required=True, help="embed stage folder")
    parser.add_argument("--gate", type=Path, required=True, help="classify stage CSV")
    parser.add_argument("--images", type=Path, required=True, help="test image folder")
    parser.add_argument("--solution", type=Path, required=True, help="recognition solution CSV")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage(f"retrieve ({args.variant})")
    recogniser = Recogniser.load(params, args.model, args.index)

    queries = read_csv_columns(args.gate, ["id", "landmark"])
    if args.variant == "all":
        selected = np.ones(len(queries), dtype=bool)
    else:
        selected = (queries["landmark"] == "True").to_numpy(dtype=bool, copy=True)
    pool_ids = non_landmark_pool(
        params.retrieval.non_landmark_pool, args.solution, queries["id"].tolist()
    )

    # One embedding pass over the retrieved queries and the non-landmark pool together.
    started = time.perf_counter()
    embedded_ids = pd.Series(sorted(set(queries["id"][selected]) | set(pool_ids)), dtype=str)
    mapped = recogniser.embed(
        [image_path(args.images, image_id) for image_id in embedded_ids],
        resolve_workers(params.base.num_workers),
        f"embed queries ({args.variant})",
    )
    row_of = {image_id: row for row, image_id in enumerate(embedded_ids[mapped.kept])}
    # Queries whose image cannot be read get no prediction (the classify stage lists them).
    selected = selected & queries["id"].isin(row_of).to_numpy()
    retrieved = queries[selected].reset_index(drop=True)
    pool = [image_id for image_id in pool_ids if image_id in row_of]
    recogniser.pool_ids = pool
    recogniser.pool_descriptors = mapped.values[[row_of[i] for i in pool]] if pool else None
    query_descriptors = mapped.values[[row_of[i] for i in retrieved["id"]]]
    embedded = time.perf_counter()

    result = recogniser.recognise(retrieved["id"].tolist(), query_descriptors)
    finished = time.perf_counter()

    predictions: list[Prediction] = [None] * len(queries)
    for position, prediction in zip(np.flatnonzero(selected), result.predictions, strict=True):
        predictions[position] = prediction
    write_submission(str(args.out / "submission.csv"), queries["id"].tolist(), predictions)
    write_csv(args.out / "queries.csv", retrieved[["id"]])
    write_npy(args.out / "queries.npy", result.queries)
    write_npy(args.out / "expanded.npy", result.expanded_queries)
    write_npy(args.out / "database.npy", result.database)
    write_npy(args.out / "neighbours.npy", result.expanded_neighbours)
    # The pool is saved so that `glr predict` penalises new photos exactly as here.
    write_csv(args.out / "pool.csv", pd.DataFrame({"id": pool}))
    write_npy(
        args.out / "pool.npy",
        recogniser.pool_descriptors
        if recogniser.pool_descriptors is not None
        else np.zeros((0, 0), dtype=np.float32),
    )
    write_json(
        args.metrics,
        {
            "queries": len(queries),
            "queries_retrieved": len(retrieved),
            "queries_labelled": sum(prediction is not None for prediction in predictions),
            "non_landmark_pool": len(pool),
            "seconds": finished - started,
            "seconds_embedding": embedded - started,
            "seconds_search": finished - embedded,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
