"""The benchmark scripts run at their --quick sizes and print their tables.

These tests check only that the scripts still work with the package. Their timings are
measured on a quiet machine and copied into BENCHMARKS.md, so no test asserts them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(*arguments: str) -> str:
    """Run `python -m <arguments>` from the repository root and return its stdout."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def table_rows(output: str, label: str) -> list[list[str]]:
    """Return the cells of each Markdown table row whose first cell starts with `label`."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(label):
            rows.append(cells)
    return rows


def table_row(output: str, label: str) -> list[str]:
    """Return the cells of the one Markdown table row that starts with `label`."""
    rows = table_rows(output, label)
    assert len(rows) == 1, f"{len(rows)} table rows start with {label!r} in:\n{output}"
    return rows[0]


def leading_number(cell: str) -> float:
    match = re.match(r"[\d,.]+", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


@pytest.mark.slow
def test_retrieval_benchmark_prints_ratios():
    output = run_benchmark("benchmarks.retrieval", "--quick", "--rounds", "1")

    assert "torch threads: " in output
    for label in ["retrieve stage, reference rule", "retrieve stage, kNN rule"]:
        cells = table_row(output, label)
        assert leading_number(cells[1]) > 0
        assert "target <= 1.5" in cells[2]
        assert leading_number(cells[2]) > 0
    assert leading_number(table_row(output, "floor torch 2048x4096")[1]) > 0


@pytest.mark.slow
def test_scale_benchmark_measures_recall():
    output = run_benchmark(
        "benchmarks.scale", "--quick", "--factory", "IVF64,Flat", "--train-size", "8192"
    )

    exact = table_row(output, "exact (Flat, blocked)")
    assert leading_number(exact[3]) == 1.0
    recalls = [leading_number(cells[3]) for cells in table_rows(output, "IVF64,Flat, nprobe=")]
    assert recalls, output
    assert all(0 < recall <= 1 for recall in recalls)
    # Probing more lists never loses a neighbour that fewer lists found.
    assert recalls == sorted(recalls)
    assert "Cheapest setting" in output or "No setting reached" in output
