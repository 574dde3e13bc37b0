"""Stage retrieve: embed the queries, search the index, expand, label; write a submission.

`--variant gated` retrieves only the queries that the gate passes; `--variant all`
retrieves every query, so that one `dvc repro` measures the system with and without
the gate.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from glr.data import image_path, read_csv_columns
from glr.inference import embed_images
from glr.io import write_csv, write_json, write_npy
from glr.models import load_siamese
from glr.retrieval import Prediction, recognise, write_submission
from glr.runtime import resolve_workers, start_stage

VARIANTS = ("gated", "all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=VARIANTS, required=True, help="which queries")
    parser.add_argument("--model", type=Path, required=True, help="trained Siamese model")
    parser.add_argument("--index", type=Path, required=True, help="embed stage folder")
    parser.add_argument("--gate", type=Path, required=True, help="classify stage CSV")
    parser.add_argument("--images", type=Path, required=True, help="test image folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage(f"retrieve ({args.variant})")
    retrieval = params.retrieval
    model, config = load_siamese(args.model)

    index = read_csv_columns(args.index / "index.csv", ["id", "landmark_id"])
    index_embeddings = np.load(args.index / "index.npy")
    queries = read_csv_columns(args.gate, ["id", "landmark"])
    if args.variant == "all":
        selected = np.ones(len(queries), dtype=bool)
    else:
        selected = (queries["landmark"] == "True").to_numpy(dtype=bool)
    retrieved = queries[selected].reset_index(drop=True)

    started = time.perf_counter()
    mapped = embed_images(
        model,
        config,
        [image_path(args.images, image_id) for image_id in retrieved["id"]],
        batch_size=params.embed.batch_size,
        workers=resolve_workers(params.base.num_workers),
        desc=f"embed queries ({args.variant})",
        max_pixels=params.base.max_image_pixels,
    )
    embedded = time.perf_counter()
    # Queries whose image cannot be read get no prediction (the classify stage lists them).
    query_embeddings = mapped.values
    selected[np.flatnonzero(selected)[~mapped.kept]] = False
    retrieved = retrieved[mapped.kept].reset_index(drop=True)
    result = recognise(
        query_embeddings,
        index_embeddings,
        index["landmark_id"].astype("int64").to_numpy(),
        model.pair_head,
        top_k=retrieval.top_k,
        query_expansion=retrieval.query_expansion,
        threshold=retrieval.threshold,
    )
    finished = time.perf_counter()

    predictions: list[Prediction] = [None] * len(queries)
    for position, prediction in zip(np.flatnonzero(selected), result.predictions, strict=True):
        predictions[position] = prediction
    write_submission(str(args.out / "submission.csv"), queries["id"].tolist(), predictions)
    write_csv(args.out / "queries.csv", retrieved[["id"]])
    write_npy(args.out / "queries.npy", query_embeddings)
    write_npy(args.out / "expanded.npy", result.expanded_queries)
    write_json(
        args.metrics,
        {
            "queries": len(queries),
            "queries_retrieved": len(retrieved),
            "queries_labelled": sum(prediction is not None for prediction in predictions),
            "seconds": finished - started,
            "seconds_embedding": embedded - started,
            "seconds_search": finished - embedded,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
