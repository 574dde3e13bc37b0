"""The `glr` command: tools that work outside `dvc repro`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glr.logs import setup_logging


def _score(args: argparse.Namespace) -> int:
    from glr.metrics import score_submission

    metrics = score_submission(args.submission, args.solution)
    print(json.dumps(metrics, indent=2))
    return 0


def _check_params(args: argparse.Namespace) -> int:
    from glr.params import load_params

    load_params(args.params)
    print(f"{args.params}: valid")
    return 0


def _apply_profile(args: argparse.Namespace) -> int:
    from glr.profiles import apply_profile

    apply_profile(args.profile, args.params)
    print(f"{args.params}: applied {args.profile}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from glr.predict import run

    return run(args.photos, args.root, args.format, args.top_k)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="GAP, precision and recall of a submission CSV")
    score.add_argument("submission", help="CSV with columns id,landmarks")
    score.add_argument("solution", help="CSV with columns id,landmarks,Usage")
    score.set_defaults(handler=_score)

    check = commands.add_parser("check-params", help="validate a params file")
    check.add_argument("params", nargs="?", default="params.yaml", help="params file")
    check.set_defaults(handler=_check_params)

    profile = commands.add_parser(
        "apply-profile", help="merge a params profile (such as profiles/report.yaml) into params"
    )
    profile.add_argument("profile", help="YAML file with the params to change")
    profile.add_argument("--params", default="params.yaml", help="params file to update")
    profile.set_defaults(handler=_apply_profile)

    predict = commands.add_parser(
        "predict", help="recognise landmarks in photos with the trained pipeline"
    )
    predict.add_argument("photos", nargs="+", help="photo files or folders of photos")
    predict.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    predict.add_argument(
        "--top-k", type=int, default=5, help="nearest training images listed per photo"
    )
    predict.add_argument(
        "--root", type=Path, default=Path("."), help="project folder where `dvc repro` ran"
    )
    predict.set_defaults(handler=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `glr` command; return its exit status."""
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"glr {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
