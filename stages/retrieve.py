"""Stage retrieve: top-k search, query expansion and threshold labels; writes a submission."""

import argparse
import time
from pathlib import Path

import numpy as np

from glr.data import read_csv_columns
from glr.io import write_json
from glr.models import load_siamese
from glr.retrieval import Prediction, recognise, write_submission
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="trained Siamese model")
    parser.add_argument("--embeddings", type=Path, required=True, help="embed stage folder")
    parser.add_argument("--gate", type=Path, required=True, help="classify stage CSV")
    parser.add_argument("--out", type=Path, required=True, help="submission CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("retrieve")
    retrieval = params.retrieval
    model, _ = load_siamese(args.model)

    index = read_csv_columns(args.embeddings / "index.csv", ["id", "landmark_id"])
    queries = read_csv_columns(args.embeddings / "queries.csv", ["id"])
    index_embeddings = np.load(args.embeddings / "index.npy")
    query_embeddings = np.load(args.embeddings / "queries.npy")

    gate = read_csv_columns(args.gate, ["id", "landmark"])
    passed = queries["id"].map(dict(zip(gate["id"], gate["landmark"] == "True", strict=True)))
    selected = passed.to_numpy(dtype=bool) if retrieval.use_gate else np.ones(len(queries), bool)

    started = time.perf_counter()
    result = recognise(
        query_embeddings[selected],
        index_embeddings,
        index["landmark_id"].astype("int64").to_numpy(),
        model.pair_head,
        top_k=retrieval.top_k,
        query_expansion=retrieval.query_expansion,
        threshold=retrieval.threshold,
    )
    seconds = time.perf_counter() - started

    predictions: list[Prediction] = [None] * len(queries)
    for position, prediction in zip(np.flatnonzero(selected), result.predictions, strict=True):
        predictions[position] = prediction
    write_submission(str(args.out), queries["id"].tolist(), predictions)
    write_json(
        args.metrics,
        {
            "queries": len(queries),
            "queries_retrieved": int(selected.sum()),
            "queries_labelled": sum(prediction is not None for prediction in predictions),
            "seconds": seconds,
        },
    )


if __name__ == "__main__":
    main()
