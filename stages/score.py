"""Stage score: GAP, precision and recall of a submission, and ranks before and after QE."""

import argparse
from pathlib import Path

import numpy as np

from glr.data import read_csv_columns
from glr.evaluation import first_relevant_l2_ranks, mean_or_none
from glr.io import write_json
from glr.metrics import read_solution, score_submission
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retrieved", type=Path, required=True, help="retrieve stage folder")
    parser.add_argument("--index", type=Path, required=True, help="embed stage folder")
    parser.add_argument("--solution", type=Path, required=True, help="recognition solution CSV")
    parser.add_argument("--queries", type=Path, required=True, help="split stage queries CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    start_stage("score")

    queries = read_csv_columns(args.queries, ["id"])
    metrics: dict[str, object] = dict(
        score_submission(
            args.retrieved / "submission.csv", args.solution, query_ids=set(queries["id"])
        )
    )

    # Rank of the first index image of a true landmark, among all index images, over
    # the retrieved queries that show a landmark.
    truth = read_solution(args.solution).landmarks
    retrieved = read_csv_columns(args.retrieved / "queries.csv", ["id"])["id"]
    index = read_csv_columns(args.index / "index.csv", ["id", "landmark_id"])
    index_embeddings = np.load(args.index / "index.npy")
    labels = index["landmark_id"].astype("int64").to_numpy()
    query_labels = [truth.get(query_id, frozenset()) for query_id in retrieved]
    for name, file in [("before_qe", "queries.npy"), ("after_qe", "expanded.npy")]:
        ranks = first_relevant_l2_ranks(
            np.load(args.retrieved / file), index_embeddings, labels, query_labels
        )
        metrics[f"mean_rank_{name}"] = mean_or_none(ranks)
    metrics["ranked_queries"] = int(sum(1 for labels_of_query in query_labels if labels_of_query))

    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
