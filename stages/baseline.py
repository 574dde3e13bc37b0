"""Stage baseline: untrained ImageNet features with 1-nearest-neighbour labels, same rows.

The reference point for every other configuration: the backbone's ImageNet weights,
average pooling at 224 px, the class of the most similar index image, and the cosine
similarity as confidence, scored on the same test rows as the score stage.
"""

import argparse
from pathlib import Path

import pandas as pd

from glr.baseline import untrained_baseline
from glr.data import image_path, read_csv_columns
from glr.io import write_json
from glr.metrics import read_solution, score_submission
from glr.retrieval import write_submission
from glr.runtime import resolve_workers, start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", type=Path, required=True, help="split stage output folder")
    parser.add_argument("--raw", type=Path, required=True, help="download stage output folder")
    parser.add_argument("--solution", type=Path, required=True, help="recognition solution CSV")
    parser.add_argument("--out", type=Path, required=True, help="submission CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    params = start_stage("baseline")

    index = pd.concat(
        [
            read_csv_columns(args.split / "siamese_train.csv", ["id", "landmark_id"]),
            read_csv_columns(args.split / "siamese_val.csv", ["id", "landmark_id"]),
        ]
    ).sort_values("id")
    queries = read_csv_columns(args.split / "queries.csv", ["id"])["id"].tolist()
    predictions = untrained_baseline(
        [image_path(args.raw / "test", image_id) for image_id in queries],
        [image_path(args.raw / "train", image_id) for image_id in index["id"]],
        index["landmark_id"].astype("int64").tolist(),
        backbone=params.siamese.backbone,
        weights=params.siamese.weights,
        batch_size=params.embed.batch_size,
        workers=resolve_workers(params.base.num_workers),
    )
    write_submission(str(args.out), queries, list(predictions))

    # The same rows as the score stage: Private only when Public rows feed a pool.
    solution = read_solution(args.solution)
    private_only = params.retrieval.non_landmark_pool == "public"
    scored = {q for q in queries if not private_only or solution.usage.get(q) == "Private"}
    metrics = score_submission(args.out, args.solution, query_ids=scored)
    landmark_queries = [q for q in scored if solution.landmarks.get(q)]
    by_id = dict(zip(queries, predictions, strict=True))
    correct = sum(1 for q in landmark_queries if by_id[q][0] in solution.landmarks[q])
    write_json(
        args.metrics,
        {
            "scored_rows": "Private" if private_only else "Public and Private",
            **metrics,
            "top1_accuracy": correct / len(landmark_queries) if landmark_queries else None,
        },
    )


if __name__ == "__main__":
    main()
