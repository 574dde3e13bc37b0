"""The report table and params profiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from glr.profiles import apply_profile
from glr.report import FIGURES, ROWS, format_value, lookup, render_report

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_lookup_dotted_keys() -> None:
    metrics = {"evaluation": {"gate": {"precision": 0.25}}}

    assert lookup(metrics, "evaluation", "gate.precision") == 0.25
    assert lookup(metrics, "evaluation", "gate.recall") is None
    assert lookup(metrics, "missing", "gate") is None


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (23589761, "", "23,589,761"),
        (0.015734, "", "0.01573"),
        (0.01592, "%", "1.59 %"),
        (332.75, "s", "332.8 s"),
        (21.03, "x", "21x"),
        (None, "", "n/a"),
    ],
)
def test_format_value(value: object, unit: str, expected: str) -> None:
    assert format_value(value, unit) == expected


def test_report_has_row_per_number() -> None:
    params = YAML(typ="safe", pure=True).load((REPO_ROOT / "params.yaml").read_text())
    metrics = {"data": {"train_images_found": 333}, "gate": {"parameters_total": 3_372_289}}

    page = render_report(metrics, params)

    table = [line for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == len(ROWS) + 1
    assert "| Data | train images found in those shards | 66,173 | 333 |" in page
    assert "3,372,289" in page
    for _, path in FIGURES:
        assert f"]({path})" in page


def test_report_profile_applies(tmp_path: Path) -> None:
    params_path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params_path)

    params = apply_profile(REPO_ROOT / "profiles" / "report.yaml", params_path)

    assert params.gate.backbone == "resnet50"
    assert params.siamese.backbone == "resnet152"
    assert params.siamese.lr == pytest.approx(1e-6)
    assert params.download.train_shards == 21
    text = params_path.read_text()
    assert "# Pipeline parameters." in text
    assert params.base.seed == YAML(typ="safe", pure=True).load(text)["base"]["seed"]


def test_profile_unknown_key_rejected(tmp_path: Path) -> None:
    params_path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params_path)
    before = params_path.read_text()
    profile = tmp_path / "profile.yaml"
    profile.write_text("gate:\n  learning_rate: 0.1\n")

    with pytest.raises(KeyError, match="gate.learning_rate"):
        apply_profile(profile, params_path)
    assert params_path.read_text() == before
