"""Stage score: GAP, precision, recall, top-1 and mAP@100, and ranks before and after QE.

With a non-landmark pool taken from the Public test rows, only the Private rows are
scored, so no scored row was seen by the pipeline. Without a pool, every row of the
solution that is not Ignored is scored.
"""

import argparse
from pathlib import Path

import numpy as np

from glr.data import read_csv_columns
from glr.evaluation import first_relevant_l2_ranks, mean_or_none, retrieval_metrics
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
    params = start_stage("score")
    usages = ("Private",) if params.retrieval.non_landmark_pool == "public" else None

    queries = read_csv_columns(args.queries, ["id"])
    solution = read_solution(args.solution)
    scored = {
        query_id
        for query_id in queries["id"]
        if usages is None or solution.usage.get(query_id) in usages
    }
    metrics: dict[str, object] = {
        "scored_rows": "Private" if usages else "Public and Private",
        **score_submission(args.retrieved / "submission.csv", args.solution, query_ids=scored),
    }

    retrieved = read_csv_columns(args.retrieved / "queries.csv", ["id"])["id"].tolist()
    index = read_csv_columns(args.index / "index.csv", ["id", "landmark_id"])
    labels = index["landmark_id"].astype("int64").to_numpy()
    metrics.update(
        retrieval_metrics(
            args.retrieved / "submission.csv",
            retrieved,
            np.load(args.retrieved / "neighbours.npy"),
            index["id"].to_numpy(),
            labels,
            solution.landmarks,
            scored,
        )
    )

    # Rank of the first index image of a true landmark among all index images, over the
    # retrieved queries that show a landmark, in the space that retrieval searched.
    database = np.load(args.retrieved / "database.npy")
    query_labels = [solution.landmarks.get(query_id, frozenset()) for query_id in retrieved]
    for name, file in [("before_qe", "queries.npy"), ("after_qe", "expanded.npy")]:
        ranks = first_relevant_l2_ranks(
            np.load(args.retrieved / file), database, labels, query_labels
        )
        metrics[f"mean_rank_{name}"] = mean_or_none(ranks)
    metrics["ranked_queries"] = sum(1 for labels_of_query in query_labels if labels_of_query)

    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
