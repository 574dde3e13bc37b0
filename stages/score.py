"""Stage score: GAP, precision and recall of the submission over the test queries."""

import argparse
from pathlib import Path

from glr.data import read_csv_columns
from glr.io import write_json
from glr.metrics import score_submission
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--submission", type=Path, required=True, help="submission CSV")
    parser.add_argument("--solution", type=Path, required=True, help="recognition solution CSV")
    parser.add_argument("--queries", type=Path, required=True, help="split stage queries CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    args = parser.parse_args()
    start_stage("score")

    queries = read_csv_columns(args.queries, ["id"])
    metrics = score_submission(args.submission, args.solution, query_ids=set(queries["id"]))
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
