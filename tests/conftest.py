"""Shared fixtures: the sample GLDv2 mirror and offline settings for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Model-hub calls fail at once instead of retrying a network that is not there.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The read-only sample mirror: GLR_SAMPLE_DIR, or ../shared/data/gldv2-sample."""
    default = REPO_ROOT.parent / "shared" / "data" / "gldv2-sample"
    path = Path(os.environ.get("GLR_SAMPLE_DIR", default))
    if not (path / "metadata" / "train.csv").is_file():
        message = f"sample mirror not found at {path}; set GLR_SAMPLE_DIR"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
