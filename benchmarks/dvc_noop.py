"""Benchmark DVC's own overhead: `dvc status` and a no-op `dvc repro`.

Target: `dvc repro` on an up-to-date pipeline returns in under 5 s. The script runs
`dvc repro` only right after `dvc status` reports that the pipeline and data are up to
date. Otherwise it prints what `dvc status` listed and stops.

NOTE: a dependency that changes between the two commands (another user editing the
project) makes that `dvc repro` run the affected stages.

    python -m benchmarks.dvc_noop [--repo PATH] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine_description, markdown_table

TARGET_SECONDS = 5.0
UP_TO_DATE = "Data and pipelines are up to date."


def run_dvc(dvc: Path, repo: Path, *arguments: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [str(dvc), *arguments], cwd=repo, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(arguments)} failed:\n{result.stdout}{result.stderr}")
    return seconds, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="DVC project folder")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command")
    args = parser.parse_args()
    dvc = Path(sys.executable).with_name("dvc")

    status_seconds: list[float] = []
    repro_seconds: list[float] = []
    for _ in range(args.rounds):
        seconds, output = run_dvc(dvc, args.repo, "status")
        status_seconds.append(seconds)
        if UP_TO_DATE not in output:
            print(f"`dvc status` in {args.repo} lists changes, so `dvc repro` was not run:")
            print(output)
            break
        seconds, output = run_dvc(dvc, args.repo, "repro")
        repro_seconds.append(seconds)

    print(f"## DVC overhead in {args.repo}")
    print()
    print(machine_description())
    print()
    rows = [["dvc status", f"{min(status_seconds):.2f}", f"{max(status_seconds):.2f}", ""]]
    if repro_seconds:
        # Every run must meet the target, so the slowest one decides.
        verdict = "met" if max(repro_seconds) < TARGET_SECONDS else "not met"
        rows.append(
            [
                "dvc repro (no-op)",
                f"{min(repro_seconds):.2f}",
                f"{max(repro_seconds):.2f}",
                f"< {TARGET_SECONDS:.0f} s: {verdict}",
            ]
        )
    header = ["command", "fastest seconds", f"slowest of {len(status_seconds)}", "target"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
