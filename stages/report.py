"""Stage report: the reference report's numbers beside this run's, in metrics/report.md."""

import argparse
from pathlib import Path

from ruamel.yaml import YAML

from glr.io import atomic_open
from glr.report import METRIC_STEMS, load_metrics, render_report
from glr.runtime import start_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics folder")
    parser.add_argument("--out", type=Path, required=True, help="output Markdown file")
    args = parser.parse_args()
    start_stage("report")

    params = YAML(typ="safe", pure=True).load(Path("params.yaml").read_text())
    page = render_report(load_metrics(args.metrics, METRIC_STEMS), params)
    with atomic_open(args.out) as handle:
        handle.write(page)


if __name__ == "__main__":
    main()
