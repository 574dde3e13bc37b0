"""End-to-end runs of the DVC pipeline on a few classes of the sample, in a temporary git repo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mirror import MirrorServer
from ruamel.yaml import YAML
from test_distributed import free_port

from glr.data import image_path
from glr.params import load_params
from glr.profiles import apply_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "download",
    "filter",
    "split",
    "train_gate",
    "train_siamese",
    "embed",
    "classify",
    "retrieve@gated",
    "retrieve@all",
    "score@gated",
    "score@all",
    "evaluate",
    "baseline",
    "report",
]

# Folders that `dvc repro` and `dvc plots show` write.
GENERATED = {"data", "models", "metrics", "dvc_plots"}

pytestmark = pytest.mark.slow


def tiny_params(sample_dir: Path) -> dict:
    """The shipped params.yaml shrunk to a few classes, small images and one epoch."""
    params = YAML(typ="safe", pure=True).load((REPO_ROOT / "params.yaml").read_text())
    params["base"].update(image_size=64, num_workers=0)
    params["embed"]["image_size"] = 64
    params["download"]["base_url"] = str(sample_dir)
    params["filter"]["max_classes"] = 6
    params["split"]["test_fraction"] = 0.5
    params["gate"].update(epochs=1, batch_size=16)
    params["siamese"].update(epochs=1, batch_classes=4)
    params["retrieval"]["top_k"] = 5
    return params


def run(command: list[str], cwd: Path) -> str:
    """Run a command with the test's virtual environment first on PATH; return its output."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Requests to the test's own server on 127.0.0.1 must not go through a proxy.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


def ran_stages(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def make_project(root: Path, params: dict) -> Path:
    """Copy the project's files into `root`, write `params`, and commit it as a git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        # Results of the developer's own runs must not leak into the fresh repository.
        top = name.split("/", 1)[0]
        if name == "dvc.lock" or top in GENERATED or not source.is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, root / name)

    with open(root / "params.yaml", "w") as handle:
        YAML().dump(params, handle)

    run(["git", "init", "-q"], root)
    run(["git", "config", "user.name", "glr tests"], root)
    run(["git", "config", "user.email", "tests@glr.invalid"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "Tiny profile"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A fresh git repository with the project's files and the tiny params, committed."""
    return make_project(tmp_path_factory.mktemp("project"), tiny_params(sample_dir))


def test_repro_runs_every_stage(project: Path) -> None:
    output = run(["dvc", "repro"], project)

    assert ran_stages(output) == STAGES
    score = json.loads((project / "metrics" / "score_gated.json").read_text())
    assert 0.0 <= score["gap"] <= 1.0
    assert 0.0 <= score["precision"] <= 1.0
    assert 0.0 <= score["recall"] <= 1.0
    assert score["num_queries"] > 0
    assert score["scored_rows"] == "Private"
    for key in ("top1_accuracy", "map_at_100"):
        # None when no scored query of the few chosen classes shows a landmark.
        assert score[key] is None or 0.0 <= score[key] <= 1.0
    baseline = json.loads((project / "metrics" / "baseline.json").read_text())
    assert baseline["num_queries"] == score["num_queries"]
    data = json.loads((project / "metrics" / "data.json").read_text())
    assert data["train_classes_selected"] == 6
    submission = project / "data" / "retrieve" / "all" / "submission.csv"
    assert submission.read_text().startswith("id,landmarks")
    assert (project / "metrics" / "report.md").is_file()
    for figure in ("gate_curves", "siamese_curves", "siamese_pairs", "augmentations"):
        assert (project / "metrics" / "figures" / f"{figure}.png").stat().st_size > 0


def test_second_repro_runs_nothing(project: Path) -> None:
    output = run(["dvc", "repro"], project)

    assert ran_stages(output) == []
    status = run(["dvc", "status"], project)
    assert "up to date" in status


def test_metrics_and_params_shown(project: Path) -> None:
    metrics = run(["dvc", "metrics", "show"], project)
    params = run(["dvc", "params", "diff", "--all"], project)

    for name in ("gap", "precision", "recall"):
        assert name in metrics
    assert "siamese.lr" in params
    assert "retrieval.threshold" in params


def test_predict_matches_retrieve(project: Path) -> None:
    retrieved = (project / "data" / "retrieve" / "all" / "queries.csv").read_text().split()[1:6]
    photos = [
        str(image_path(project / "data" / "raw" / "test", image_id)) for image_id in retrieved
    ]
    with open(project / "data" / "retrieve" / "all" / "submission.csv", newline="") as handle:
        submission = {row["id"]: row["landmarks"] for row in csv.DictReader(handle)}

    output = run(["glr", "predict", "--format", "json", "--top-k", "3", *photos], project)

    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [Path(row["photo"]).stem for row in rows] == retrieved
    for row in rows:
        expected = submission[Path(row["photo"]).stem].split()
        assert row["landmark_id"] == int(expected[0])
        assert row["confidence"] == pytest.approx(float(expected[1]), abs=1e-5)
        assert len(row["nearest_train_ids"]) == 3
    assert "photos/s" in output


def test_predict_skips_unreadable_photo(project: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("<html>not a photo</html>")
    good = (project / "data" / "retrieve" / "all" / "queries.csv").read_text().split()[1]

    output = run(
        [
            "glr",
            "predict",
            "--format",
            "csv",
            str(broken),
            str(image_path(project / "data" / "raw" / "test", good)),
        ],
        project,
    )

    assert "skipped image broken: not an image" in output
    assert f"{good}.jpg" in output


def test_exp_run_lr_reruns_only_later_stages(project: Path) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "Tiny profile results"], project)

    output = run(["dvc", "exp", "run", "-S", "siamese.lr=1e-5"], project)

    assert ran_stages(output) == [
        "train_siamese",
        "embed",
        "retrieve@gated",
        "retrieve@all",
        "score@gated",
        "score@all",
        "evaluate",
        "report",
    ]
    assert "1e-05" in (project / "params.yaml").read_text()
    assert load_params(project / "params.yaml").siamese.lr == 1e-5
    checkpoint = torch.load(project / "models" / "siamese.pt", weights_only=True)
    learning_rate = checkpoint["config"]["params"]["lr"]
    assert isinstance(learning_rate, float)
    assert learning_rate == 1e-5


def test_download_stage_over_http(tmp_path: Path, sample_dir: Path) -> None:
    with MirrorServer(sample_dir) as server:
        params = tiny_params(sample_dir)
        params["download"]["base_url"] = server.base_url
        root = make_project(tmp_path / "project", params)

        output = run(["dvc", "repro", "download"], root)

        assert ran_stages(output) == ["download"]
        assert len(server.tar_requests()) == 3
    counts = json.loads((root / "metrics" / "download.json").read_text())
    assert counts["train"]["images_extracted"] == 333
    assert counts["test"]["images_extracted"] == 220
    assert len(list((root / "data" / "raw" / "train").glob("*/*/*/*.jpg"))) == 333


def test_report_profile_runs_tiny(tmp_path: Path, sample_dir: Path) -> None:
    # The report's configuration, shrunk so it runs here: random weights instead of hub
    # weights, a few classes of the sample, 64 px and one epoch.
    params_path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params_path)
    apply_profile(REPO_ROOT / "profiles" / "report.yaml", params_path)
    params = YAML(typ="safe", pure=True).load(params_path.read_text())
    params["base"].update(image_size=64, num_workers=0)
    params["embed"]["image_size"] = 64
    params["download"].update(base_url=str(sample_dir), train_shards=2, test_shards=1)
    params["filter"]["max_classes"] = 4
    params["split"]["test_fraction"] = 0.2
    params["gate"].update(weights="none", epochs=1)
    params["siamese"].update(weights="none", epochs=1, batch_classes=4)
    params["retrieval"]["top_k"] = 5
    root = make_project(tmp_path / "project", params)

    output = run(["dvc", "repro"], root)

    assert "Running stage 'report'" in output
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert gate["keras_parameters_total"] == 23_589_761
    assert gate["keras_parameters_trainable"] == 22_086_657
    report = (root / "metrics" / "report.md").read_text()
    assert "`gate.backbone=resnet50`" in report
    assert "`siamese.backbone=resnet152`" in report


def metrics_without_timings(root: Path) -> dict[str, object]:
    """Every metrics JSON file of a run, without the wall-clock and machine entries."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {
                key: strip(item)
                for key, item in value.items()
                if not key.startswith("seconds") and key not in TIMING_KEYS
            }
        return value

    return {
        str(path.relative_to(root)): strip(json.loads(path.read_text()))
        for path in sorted((root / "metrics").rglob("*.json"))
    }


# Entries that measure the machine rather than the results.
TIMING_KEYS = {"speedup", "cpu_count", "torch_threads"}


def test_forced_repro_repeats_metrics(project: Path) -> None:
    run(["dvc", "repro", "--force"], project)
    first = metrics_without_timings(project)
    figures = {
        path.name: path.read_bytes() for path in (project / "metrics" / "figures").glob("*.png")
    }

    run(["dvc", "repro", "--force"], project)

    assert metrics_without_timings(project) == first
    for name, data in figures.items():
        assert (project / "metrics" / "figures" / name).read_bytes() == data, name


def test_embed_stage_under_torchrun_matches_one_process(project: Path, tmp_path: Path) -> None:
    run(["dvc", "repro", "embed"], project)
    out = tmp_path / "index"

    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "stages/embed.py",
            "--model",
            "models/siamese.pt",
            "--split",
            "data/split",
            "--images",
            "data/raw/train",
            "--out",
            str(out),
            "--skipped",
            str(tmp_path / "skipped.csv"),
            "--metrics",
            str(tmp_path / "embed.json"),
        ],
        project,
    )

    one = np.load(project / "data" / "index" / "index.npy")
    two = np.load(out / "index.npy")
    assert (out / "index.csv").read_text() == (project / "data" / "index" / "index.csv").read_text()
    # Each rank embeds other batches, so oneDNN may sum in another order: a few float32 ulps.
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "embed.json").read_text()) == json.loads(
        (project / "metrics" / "embed.json").read_text()
    )
    assert sorted(path.name for path in out.iterdir()) == ["index.csv", "index.npy"]


def test_dvc_remote_shares_results(project: Path, tmp_path: Path) -> None:
    # A local folder remote goes through the same push and pull as an s3:// or gs:// one.
    run(["dvc", "repro"], project)
    run(
        ["dvc", "remote", "add", "--force", "--default", "shared", str(tmp_path / "remote")],
        project,
    )
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "--allow-empty", "-m", "Results and remote"], project)
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)

    run(["dvc", "pull"], clone)

    assert "up to date" in run(["dvc", "status"], clone)
    for name in ("models/siamese.pt", "models/gate.pt", "data/index/index.npy"):
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
