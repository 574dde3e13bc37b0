"""Tests of glr.download against a copy of the GLDv2 sample mirror.

HTTP tests use the server in mirror.py, bound to 127.0.0.1. No test contacts
any other host.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mirror import MirrorServer

from glr.download import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    MetadataError,
    Mirror,
    download_gldv2,
    parse_shards,
)

ALL_SHARDS = {"train": [0, 1], "test": [0]}
METADATA_FILES = ("train.csv", "train_label_to_category.csv", "test.csv")
TRAIN_IMAGES = 333
TEST_IMAGES = 220


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep urllib from sending requests for 127.0.0.1 to a proxy from the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def mirror_root(sample_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the sample mirror."""
    root = tmp_path / "mirror"
    shutil.copytree(sample_dir, root)
    return root


@pytest.fixture
def server(mirror_root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(mirror_root) as running:
        yield running


def run_download(
    base_url: str | Path,
    tmp_path: Path,
    shards: dict[str, list[int]] | None = None,
    *,
    out_name: str = "out",
    cache_name: str = "cache",
    **options: Any,
) -> dict[str, dict[str, int]]:
    settings: dict[str, Any] = {
        "metadata_files": METADATA_FILES,
        "workers": 2,
        "retries": 2,
        "backoff_seconds": 0.01,
        "timeout_seconds": 10.0,
        "show_progress": False,
    }
    settings.update(options)
    return download_gldv2(
        base_url,
        tmp_path / out_name,
        ALL_SHARDS if shards is None else shards,
        cache_dir=tmp_path / cache_name,
        **settings,
    )


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def expected_md5(root: Path, split: str, shard: int) -> str:
    text = (root / "md5sum" / split / f"md5.images_{shard:03d}.txt").read_text()
    return text.split()[0]


def write_md5_file(root: Path, split: str, shard: int) -> None:
    name = f"images_{shard:03d}.tar"
    digest = md5_of((root / split / name).read_bytes())
    (root / "md5sum" / split / f"md5.images_{shard:03d}.txt").write_text(f"{digest}  {name}\n")


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def tree_digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): md5_of(path.read_bytes())
        for path in files_under(folder)
    }


# --------------------------------------------------------------------------- HTTP runs


def test_http_download_clean_run(tmp_path: Path, mirror_root: Path, server: MirrorServer) -> None:
    counts = run_download(server.base_url, tmp_path)
    out = tmp_path / "out"

    train_bytes = sum((mirror_root / "train" / f"images_00{i}.tar").stat().st_size for i in (0, 1))
    test_bytes = (mirror_root / "test" / "images_000.tar").stat().st_size
    assert counts["train"] == {
        "shards": 2,
        "shards_reused": 0,
        "bytes_downloaded": train_bytes,
        "images_extracted": TRAIN_IMAGES,
        "members_skipped": 0,
        "images_not_downloaded": 0,
        "images_not_listed": 0,
    }
    assert counts["test"] == {
        "shards": 1,
        "shards_reused": 0,
        "bytes_downloaded": test_bytes,
        "images_extracted": TEST_IMAGES,
        "members_skipped": 0,
        "images_not_downloaded": 0,
        "images_not_listed": 0,
    }

    for name in METADATA_FILES:
        copied = (out / "metadata" / name).read_bytes()
        assert copied == (mirror_root / "metadata" / name).read_bytes(), name
    ground_truth = out / "ground_truth" / "recognition_solution_v2.1.csv"
    assert (
        ground_truth.read_bytes()
        == (mirror_root / "ground_truth" / "recognition_solution_v2.1.csv").read_bytes()
    )
    assert len(list((out / "train").rglob("*.jpg"))) == TRAIN_IMAGES
    assert len(list((out / "test").rglob("*.jpg"))) == TEST_IMAGES
    assert sorted(path.name for path in out.iterdir()) == [
        "ground_truth",
        "metadata",
        "test",
        "train",
    ]

    with tarfile.open(mirror_root / "train" / "images_001.tar") as tar:
        member = next(member for member in tar.getmembers() if member.isfile())
        handle = tar.extractfile(member)
        assert handle is not None
        member_md5 = md5_of(handle.read())
    assert md5_of((out / "train" / member.name).read_bytes()) == member_md5

    cached = tmp_path / "cache" / "train" / "images_000.tar"
    assert md5_of(cached.read_bytes()) == expected_md5(mirror_root, "train", 0)
    assert list((tmp_path / "cache").rglob("*.part")) == []


def test_rerun_downloads_no_shards(tmp_path: Path, server: MirrorServer) -> None:
    run_download(server.base_url, tmp_path)
    shutil.rmtree(tmp_path / "out")
    server.clear_requests()

    counts = run_download(server.base_url, tmp_path)

    assert server.tar_requests() == []
    assert counts["train"]["shards_reused"] == 2
    assert counts["test"]["shards_reused"] == 1
    assert counts["train"]["bytes_downloaded"] == 0
    assert counts["train"]["images_extracted"] == TRAIN_IMAGES
    assert len(list((tmp_path / "out" / "train").rglob("*.jpg"))) == TRAIN_IMAGES


def test_damaged_cached_shard_downloaded_again(tmp_path: Path, server: MirrorServer) -> None:
    shards = {"train": [0, 1]}
    run_download(server.base_url, tmp_path, shards)
    cached = tmp_path / "cache" / "train" / "images_000.tar"
    with open(cached, "r+b") as handle:
        handle.truncate(cached.stat().st_size // 2)
    server.clear_requests()

    counts = run_download(server.base_url, tmp_path, shards)

    assert [request.path for request in server.tar_requests()] == ["train/images_000.tar"]
    assert counts["train"]["shards_reused"] == 1
    assert counts["train"]["images_extracted"] == TRAIN_IMAGES


def test_truncated_shard_fails_md5(tmp_path: Path, mirror_root: Path, server: MirrorServer) -> None:
    archive = mirror_root / "train" / "images_001.tar"
    expected = expected_md5(mirror_root, "train", 1)
    with open(archive, "r+b") as handle:
        handle.truncate(archive.stat().st_size // 2)
    actual = md5_of(archive.read_bytes())

    with pytest.raises(ChecksumError) as caught:
        run_download(server.base_url, tmp_path, {"train": [1]}, retries=2)

    message = str(caught.value)
    assert "train/images_001.tar" in message
    assert expected in message
    assert actual in message
    assert caught.value.expected == expected
    assert caught.value.actual == actual
    assert len(server.requests_for("train/images_001.tar")) == 3
    assert list((tmp_path / "cache" / "train").iterdir()) == []
    assert list((tmp_path / "out").rglob("*.jpg")) == []


def test_missing_shard_reports_url(tmp_path: Path, mirror_root: Path, server: MirrorServer) -> None:
    (mirror_root / "train" / "images_001.tar").unlink()

    with pytest.raises(DownloadError) as caught:
        run_download(server.base_url, tmp_path, {"train": [0, 1]})

    message = str(caught.value)
    assert f"{server.base_url}/train/images_001.tar" in message
    assert "HTTP 404" in message
    assert "base URL" in message
    assert "shard numbers" in message
    assert len(server.requests_for("train/images_001.tar")) == 1


def test_server_error_is_retried(tmp_path: Path, server: MirrorServer) -> None:
    server.faults.status_once["train/images_000.tar"] = 503

    counts = run_download(server.base_url, tmp_path, {"train": [0]})

    statuses = [request.status for request in server.requests_for("train/images_000.tar")]
    assert statuses == [503, 200]
    assert counts["train"]["images_extracted"] > 0


def test_read_timeout_is_retried(tmp_path: Path, server: MirrorServer) -> None:
    server.faults.stall_once["train/images_000.tar"] = 2.0

    counts = run_download(server.base_url, tmp_path, {"train": [0]}, timeout_seconds=0.5)

    assert len(server.requests_for("train/images_000.tar")) == 2
    assert counts["train"]["images_extracted"] > 0


def test_dropped_connection_resumes_with_range(
    tmp_path: Path, mirror_root: Path, server: MirrorServer
) -> None:
    size = (mirror_root / "train" / "images_000.tar").stat().st_size
    server.faults.drop_halfway_once.add("train/images_000.tar")

    counts = run_download(server.base_url, tmp_path, {"train": [0]})

    first, second = server.requests_for("train/images_000.tar")
    assert first.range is None
    assert first.status == 200
    assert second.range == f"bytes={size // 2}-"
    assert second.status == 206
    assert counts["train"]["bytes_downloaded"] == size
    cached = tmp_path / "cache" / "train" / "images_000.tar"
    assert md5_of(cached.read_bytes()) == expected_md5(mirror_root, "train", 0)


def test_dropped_connection_restarts_without_range(
    tmp_path: Path, mirror_root: Path, server: MirrorServer
) -> None:
    size = (mirror_root / "train" / "images_000.tar").stat().st_size
    server.faults.drop_halfway_once.add("train/images_000.tar")
    server.faults.ignore_range = True

    counts = run_download(server.base_url, tmp_path, {"train": [0]})

    first, second = server.requests_for("train/images_000.tar")
    assert second.range == f"bytes={size // 2}-"
    assert second.status == 200
    assert counts["train"]["bytes_downloaded"] == size + size // 2
    cached = tmp_path / "cache" / "train" / "images_000.tar"
    assert md5_of(cached.read_bytes()) == expected_md5(mirror_root, "train", 0)


# --------------------------------------------------------------------------- unsafe shards


def build_unsafe_shard(root: Path, unsafe: tarfile.TarInfo, image: Path) -> None:
    """Replace train/images_000.tar by a real image followed by `unsafe`, and fix its md5."""
    archive = root / "train" / "images_000.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(image, arcname=f"{image.stem[0]}/{image.stem[1]}/{image.stem[2]}/{image.name}")
        payload = b"not an image"
        if unsafe.isfile():
            unsafe.size = len(payload)
            tar.addfile(unsafe, io.BytesIO(payload))
        else:
            tar.addfile(unsafe)
    write_md5_file(root, "train", 0)


def unsafe_member(kind: str) -> tarfile.TarInfo:
    if kind == "parent":
        return tarfile.TarInfo("../escaped.jpg")
    if kind == "absolute":
        return tarfile.TarInfo(f"/tmp/glr-test-{os.getpid()}-escaped.jpg")
    member = tarfile.TarInfo("a/b/c/abc0000000000000.jpg")
    member.type = tarfile.SYMTYPE
    member.linkname = "../../../../escaped.jpg"
    return member


@pytest.mark.parametrize("with_filter", [True, False], ids=["data-filter", "no-filter"])
@pytest.mark.parametrize("kind", ["parent", "symlink", "absolute"])
def test_unsafe_member_rejected(
    tmp_path: Path,
    mirror_root: Path,
    server: MirrorServer,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    with_filter: bool,
) -> None:
    if with_filter and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no extraction filters (added in 3.11.4)")
    if not with_filter:
        # As on Python before 3.11.4, which has no tarfile extraction filters.
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    member = unsafe_member(kind)
    with tarfile.open(mirror_root / "train" / "images_000.tar") as tar:
        first = next(item for item in tar.getmembers() if item.isfile())
        image = tmp_path / Path(first.name).name
        handle = tar.extractfile(first)
        assert handle is not None
        image.write_bytes(handle.read())
    build_unsafe_shard(mirror_root, member, image)

    with pytest.raises(ArchiveError) as caught:
        run_download(server.base_url, tmp_path, {"train": [0]})

    message = str(caught.value)
    assert repr(member.name) in message
    assert "train/images_000.tar" in message
    out = tmp_path / "out"
    assert files_under(out / "train") == []
    assert sorted(path.name for path in out.iterdir()) == ["ground_truth", "metadata", "train"]
    assert list(tmp_path.rglob("escaped.jpg")) == []
    assert not Path(f"/tmp/glr-test-{os.getpid()}-escaped.jpg").exists()


# --------------------------------------------------------------------------- metadata


def test_train_csv_missing_column(tmp_path: Path, mirror_root: Path, server: MirrorServer) -> None:
    train_csv = mirror_root / "metadata" / "train.csv"
    frame = pd.read_csv(train_csv, dtype=str)
    frame.drop(columns=["landmark_id"]).to_csv(train_csv, index=False)

    with pytest.raises(MetadataError) as caught:
        run_download(server.base_url, tmp_path)

    message = str(caught.value)
    assert "metadata/train.csv" in message
    assert "'landmark_id'" in message
    assert "line 1" in message
    assert not (tmp_path / "out" / "metadata" / "train.csv").exists()
    assert server.tar_requests() == []


def test_invalid_image_id_names_row(
    tmp_path: Path, mirror_root: Path, server: MirrorServer
) -> None:
    test_csv = mirror_root / "metadata" / "test.csv"
    frame = pd.read_csv(test_csv, dtype=str)
    frame.loc[2, "id"] = "NOT-AN-IMAGE-ID"
    frame.to_csv(test_csv, index=False)

    with pytest.raises(MetadataError) as caught:
        run_download(server.base_url, tmp_path)

    message = str(caught.value)
    assert "metadata/test.csv" in message
    assert "data row 3" in message
    assert "'id'" in message
    assert "NOT-AN-IMAGE-ID" in message


def test_subset_counts_unlisted_and_missing(
    tmp_path: Path, mirror_root: Path, server: MirrorServer
) -> None:
    train_csv = mirror_root / "metadata" / "train.csv"
    frame = pd.read_csv(train_csv, dtype=str)
    with tarfile.open(mirror_root / "train" / "images_000.tar") as tar:
        shard_ids = {Path(member.name).stem for member in tar.getmembers() if member.isfile()}
    dropped = sorted(shard_ids)[:5]
    frame[~frame["id"].isin(dropped)].to_csv(train_csv, index=False)

    counts = run_download(server.base_url, tmp_path, {"train": [0]})

    assert counts["train"]["images_extracted"] == len(shard_ids)
    assert counts["train"]["images_not_listed"] == 5
    assert counts["train"]["images_not_downloaded"] == TRAIN_IMAGES - len(shard_ids)


# --------------------------------------------------------------------------- local sources


def test_path_and_file_url_identical(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(sample_dir, tmp_path)

    from_path = run_download(relative, tmp_path, out_name="out_path", cache_name="cache_path")
    from_url = run_download(
        sample_dir.as_uri(), tmp_path, out_name="out_url", cache_name="cache_url"
    )

    assert from_path == from_url
    path_tree = tree_digests(tmp_path / "out_path")
    url_tree = tree_digests(tmp_path / "out_url")
    assert len(path_tree) == len(METADATA_FILES) + 1 + TRAIN_IMAGES + TEST_IMAGES
    assert path_tree == url_tree


def test_extraction_without_filter_identical(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filtered = run_download(sample_dir, tmp_path, out_name="out_filter", cache_name="cache_filter")
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    unfiltered = run_download(sample_dir, tmp_path, out_name="out_plain", cache_name="cache_plain")

    assert filtered == unfiltered
    filtered_tree = tree_digests(tmp_path / "out_filter")
    assert len(filtered_tree) == len(METADATA_FILES) + 1 + TRAIN_IMAGES + TEST_IMAGES
    assert filtered_tree == tree_digests(tmp_path / "out_plain")


def test_unsupported_scheme_rejected() -> None:
    with pytest.raises(ValueError, match="s3://bucket/gldv2"):
        Mirror("s3://bucket/gldv2")


# --------------------------------------------------------------------------- parse_shards


@pytest.mark.parametrize(
    ("spec", "split", "expected"),
    [
        (3, "train", [0, 1, 2]),
        (0, "test", []),
        ([5, 1], "index", [1, 5]),
        ([], "train", []),
        (20, "test", list(range(20))),
        ([499], "train", [499]),
    ],
)
def test_parse_shards_valid(spec: object, split: str, expected: list[int]) -> None:
    assert parse_shards(spec, split) == expected


@pytest.mark.parametrize(
    ("spec", "split", "fragment"),
    [
        (-1, "train", "download.train_shards = -1"),
        (501, "train", "download.train_shards = 501"),
        (21, "test", "download.test_shards = 21"),
        (True, "index", "download.index_shards = True"),
        ("3", "train", "download.train_shards = '3'"),
        (2.0, "train", "download.train_shards = 2.0"),
        ([1, 1], "train", "lists shard 1 twice"),
        ([100], "index", "shard 100, which is out of range"),
        ([1.5], "test", "contains 1.5"),
    ],
)
def test_parse_shards_invalid(spec: object, split: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_shards(spec, split)

    message = str(caught.value)
    assert fragment in message
    assert "shard count" in message


def test_parse_shards_unknown_split() -> None:
    with pytest.raises(ValueError, match="Unknown split 'val'. Expected one of"):
        parse_shards(1, "val")
