"""Stage evaluate: the gate and the pair head on the test set, and the gate's speed-up."""

import argparse
import json
import typing
from pathlib import Path

import numpy as np

from glr.data import read_csv_columns
from glr.descriptors import load_embedding_model
from glr.evaluation import gate_precision_recall, pair_test
from glr.io import write_json
from glr.metrics import read_solution
from glr.models import PairHead
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--siamese-model", type=Path, required=True, help="trained Siamese net")
    parser.add_argument("--gate", type=Path, required=True, help="classify stage CSV")
    parser.add_argument("--index", type=Path, required=True, help="embed stage folder")
    parser.add_argument("--retrieved", type=Path, required=True, help="retrieve (all) folder")
    parser.add_argument("--solution", type=Path, required=True, help="recognition solution CSV")
    parser.add_argument(
        "--timings",
        type=Path,
        nargs=3,
        required=True,
        help="classify, retrieve (gated) and retrieve (all) metrics files",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("evaluate")
    truth = read_solution(args.solution).landmarks

    gate = read_csv_columns(args.gate, ["id", "landmark"])
    gate_precision, gate_recall = gate_precision_recall(
        gate["id"].tolist(), (gate["landmark"] == "True").tolist(), truth
    )

    # The pair test needs the reference Siamese net's pair head; margin-loss nets have none.
    model, _ = load_embedding_model(args.siamese_model)
    pairs: dict[str, object] = {"pairs": 0}
    if params.retrieval.scoring == "pair_head":
        index = read_csv_columns(args.index / "index.csv", ["id", "landmark_id"])
        retrieved = read_csv_columns(args.retrieved / "queries.csv", ["id"])["id"]
        pairs = dict(
            pair_test(
                typing.cast(PairHead, model.pair_head),
                np.load(args.retrieved / "queries.npy"),
                np.load(args.index / "index.npy"),
                [truth.get(query_id, frozenset()) for query_id in retrieved],
                index["landmark_id"].astype("int64").to_numpy(),
                params.base.seed,
            )
        )

    classify, gated, everything = (json.loads(path.read_text()) for path in args.timings)
    with_gate = classify["seconds"] + gated["seconds"]
    write_json(
        args.metrics,
        {
            "gate": {
                "precision": gate_precision,
                "recall": gate_recall,
            },
            "siamese_pairs": pairs,
            "system": {
                "seconds_gate": classify["seconds"],
                "seconds_retrieval_gated": gated["seconds"],
                "seconds_with_gate": with_gate,
                "seconds_without_gate": everything["seconds"],
                "speedup": everything["seconds"] / with_gate if with_gate > 0 else None,
                "cpu_count": everything["cpu_count"],
                "torch_threads": everything["torch_threads"],
            },
        },
    )


if __name__ == "__main__":
    main()
