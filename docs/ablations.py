"""Regenerate docs/ablations.md: one `dvc exp run` per design choice, changed alone.

Run from the project root with the environment active, on a clean git tree:

    python docs/ablations.py            # runs every experiment, then writes the page
    python docs/ablations.py --list     # prints the dvc commands only

Each row starts from the committed params.yaml and changes the listed params. The wall
time is that of its `dvc exp run`, which re-runs only the stages the change affects.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The reference report's method on the default backbone and data.
REPORT_METHOD = [
    "augment.min_crop_area=0.64",
    "siamese.pooling=avg",
    "siamese.frozen_blocks=3",
    "siamese.dim=128",
    "siamese.loss=contrastive",
    "siamese.lr=0.000001",
    "siamese.epochs=20",
    "embed.image_size=128",
    "embed.untrained_weight=0",
    "retrieval.scoring=pair_head",
    "retrieval.query_expansion=average",
    "retrieval.dba_n=0",
    "retrieval.whitening=false",
]

EXPERIMENTS: list[tuple[str, str, list[str]]] = [
    ("default", "every choice as in params.yaml", []),
    ("no-whitening", "no PCA whitening", ["retrieval.whitening=false"]),
    ("no-dba", "no database-side augmentation", ["retrieval.dba_n=0"]),
    ("no-penalty", "no non-landmark penalty (beta 0)", ["retrieval.non_landmark_beta=0"]),
    ("knn-1", "1-nearest-neighbour label instead of a 3-NN vote", ["retrieval.knn_k=1"]),
    ("qe-average", "average query expansion (top 100)", ["retrieval.query_expansion=average"]),
    ("qe-alpha", "alpha query expansion (n 10, alpha 3)", ["retrieval.query_expansion=alpha"]),
    (
        "trained-only",
        "trained embedding alone (no untrained GeM part)",
        ["embed.untrained_weight=0"],
    ),
    ("size-128", "embedding at 128 px instead of 224", ["embed.image_size=128"]),
    ("pool-avg", "pooling: average instead of GeM", ["siamese.pooling=avg"]),
    ("loss-subcenter", "loss: sub-center ArcFace (3 centres)", ["siamese.loss=subcenter_arcface"]),
    (
        "report-method",
        "the report's method (contrastive pairs, pair head, threshold 0.9)",
        REPORT_METHOD,
    ),
    (
        "loss-contrastive",
        "loss: the report's contrastive pairs (lr 3e-4), kNN scoring",
        ["siamese.loss=contrastive", "siamese.dim=128"],
    ),
    ("pool-max", "pooling: max instead of GeM", ["siamese.pooling=max"]),
    ("dim-128", "embedding dimension 128 instead of 512", ["siamese.dim=128"]),
]

COLUMNS = [
    ("GAP", "score_all", "gap"),
    ("GAP, landmarks only", "score_all", "gap_ignore_non_landmarks"),
    ("top-1", "score_all", "top1_accuracy"),
    ("mAP@100", "score_all", "map_at_100"),
    ("GAP with gate", "score_gated", "gap"),
    ("baseline GAP", "baseline", "gap"),
]


def commands(name: str, changes: list[str]) -> list[str]:
    flags = [part for change in changes for part in ("-S", change)]
    return ["dvc", "exp", "run", "-n", f"ablation-{name}", *flags]


def run_all() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, description, changes in EXPERIMENTS:
        subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=ROOT, check=True)
        started = time.perf_counter()
        subprocess.run(commands(name, changes), cwd=ROOT, check=True)
        seconds = time.perf_counter() - started
        metrics = {
            stem: json.loads((ROOT / "metrics" / f"{stem}.json").read_text())
            for stem in ("score_all", "score_gated", "baseline")
        }
        rows.append(
            {
                "name": name,
                "description": description,
                "changes": changes,
                "seconds": seconds,
                "metrics": metrics,
            }
        )
        print(f"{name}: {metrics['score_all']['gap']:.3f} in {seconds:.0f} s", flush=True)
        # The page is rewritten after every row, so an interrupted batch keeps its results.
        (ROOT / "docs" / "ablations.md").write_text(render(rows))
        (ROOT / "docs" / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=ROOT, check=True)
    return rows


def render(rows: list[dict[str, object]]) -> str:
    first = rows[0]["metrics"]["score_all"]  # type: ignore[index]
    lines = [
        "# Ablations on the sample mirror",
        "",
        "Each row changes one choice of the default `params.yaml` and runs it with",
        "`dvc exp run`; `python docs/ablations.py` regenerates this page and",
        "`python docs/ablations.py --list` prints the commands. Scores are over the",
        f"{first['scored_rows']} test rows ({first['num_queries']} queries, "
        f"{first['num_landmark_queries']} showing a landmark); the Public rows without a "
        "landmark form the non-landmark pool. GAP is Kaggle's global average precision "
        'without the gate (`score@all`); "with gate" is `score@gated`. The baseline is '
        "untrained ImageNet features with 1-NN labels on the same rows, computed in the "
        "same run. The wall time is that of the row's `dvc exp run`, which re-runs only "
        "the stages its change affects, on 2 CPU cores. Training runs on the CPU, and "
        "another CPU's float32 kernels train slightly different models, which can move "
        "a score by a query or two.",
        "",
        "| experiment | change | "
        + " | ".join(title for title, _, _ in COLUMNS)
        + " | wall time |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |",
    ]
    for row in rows:
        metrics = row["metrics"]
        values = []
        for _, stem, key in COLUMNS:
            value = metrics[stem].get(key)  # type: ignore[index]
            values.append("n/a" if value is None else f"{value:.3f}")
        change = ", ".join(f"`{c}`" for c in row["changes"]) or "none"  # type: ignore[union-attr]
        if len(row["changes"]) > 4:  # type: ignore[arg-type]
            change = f"{len(row['changes'])} params, see `docs/ablations.py`"  # type: ignore[arg-type]
        lines.append(
            f"| {row['name']}: {row['description']} | {change} | "
            + " | ".join(values)
            + f" | {row['seconds']:.0f} s |"
        )
    lines += ["", "Commands:", "", "```bash"]
    for name, _, changes in EXPERIMENTS:
        lines.append("git checkout -- params.yaml && " + " ".join(commands(name, changes)))
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--list", action="store_true", help="print the commands and stop")
    args = parser.parse_args()
    if args.list:
        for name, _, changes in EXPERIMENTS:
            print(" ".join(commands(name, changes)))
        return
    run_all()


if __name__ == "__main__":
    sys.exit(main())
