"""The `glr` command line on small files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glr.cli import main


def test_score_prints_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    solution = tmp_path / "solution.csv"
    solution.write_text(
        "id,landmarks,Usage\nq1,10,Public\nq2,20,Public\nq3,,Private\nq4,30,Public\nq5,,Public\n"
    )
    submission = tmp_path / "submission.csv"
    submission.write_text("id,landmarks\nq1,10 0.9\nq2,21 0.8\nq3,40 0.7\nq4,30 0.6\nq5,\n")

    status = main(["score", str(submission), str(solution)])

    assert status == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["gap"] == pytest.approx(0.5)
    assert metrics["num_landmark_queries"] == 3


def test_check_params_reports_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).resolve().parents[1] / "params.yaml"
    broken = tmp_path / "params.yaml"
    broken.write_text(shipped.read_text().replace("lr: 0.001", "lr: -1"))

    assert main(["check-params", str(shipped)]) == 0
    assert main(["check-params", str(broken)]) == 2
    assert "gate.lr" in capsys.readouterr().err


def test_predict_without_artifacts_names_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = Path(__file__).resolve().parents[1] / "params.yaml"
    (tmp_path / "params.yaml").write_text(shipped.read_text())
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")

    status = main(["predict", "--root", str(tmp_path), str(photo)])

    assert status == 2
    assert "run `dvc repro train_siamese` first" in capsys.readouterr().err
