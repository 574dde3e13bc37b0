"""Download Google Landmarks Dataset v2 (GLDv2) metadata and image shards.

The source is a folder laid out like the official bucket
(https://s3.amazonaws.com/google-landmark): an ``https://``, ``http://`` or
``file://`` URL, or a plain filesystem path. All of them go through `Mirror.open`,
so the same code fetches from the real bucket, a local copy or a test server::

    metadata/train.csv, metadata/test.csv, ...      CSV metadata
    ground_truth/recognition_solution_v2.1.csv      test labels
    {split}/images_NNN.tar                          members a/b/c/<id>.jpg
    md5sum/{split}/md5.images_NNN.txt               "<md5 hex>  images_NNN.tar"

Shards are cached in ``cache_dir/{split}/images_NNN.tar``. A shard is streamed to
``images_NNN.tar.part``, checked against its md5 file and only then renamed to
its final name, next to a marker ``images_NNN.tar.verified`` (JSON with the md5
and the size). A later run reuses a cached shard without hashing it again when
the marker's md5 equals the mirror's current md5 file and the size is unchanged.
Without a matching marker the cached file is hashed again. A ``.part`` file left
by an interrupted run is resumed, because the md5 check catches a bad splice.

Images are extracted on every run, because DVC deletes a stage's outputs before
it runs the stage. The cache folder must therefore lie outside the stage outputs
(or be marked ``persist``) for reuse to work.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from glr import __version__
from glr.io import atomic_path, write_json

logger = logging.getLogger(__name__)

GLDV2_BASE_URL = "https://s3.amazonaws.com/google-landmark"
# Number of image shards per split in the official bucket.
SHARD_COUNTS: dict[str, int] = {"train": 500, "index": 100, "test": 20}
SPLITS: tuple[str, ...] = tuple(SHARD_COUNTS)
GROUND_TRUTH_FILE = "recognition_solution_v2.1.csv"
DEFAULT_METADATA_FILES: tuple[str, ...] = ("train.csv", "train_label_to_category.csv", "test.csv")
# The metadata file that lists the image ids of each split.
SPLIT_LISTS: dict[str, str] = {"train": "train.csv", "index": "index.csv", "test": "test.csv"}
# Columns that must be present in the known CSV files. Unknown files are copied unchecked.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "train.csv": ("id", "url", "landmark_id"),
    "index.csv": ("id",),
    "test.csv": ("id",),
    "train_clean.csv": ("landmark_id", "images"),
    "train_label_to_category.csv": ("landmark_id", "category"),
    "train_attribution.csv": ("id",),
    GROUND_TRUTH_FILE: ("id", "landmarks", "Usage"),
}

_IMAGE_ID = re.compile(r"[0-9a-f]{16}")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_IMAGE_MEMBER = re.compile(r"([0-9a-f])/([0-9a-f])/([0-9a-f])/([0-9a-f]{16})\.jpg")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CHUNK_BYTES = 1 << 20
_TRANSIENT_HTTP_CODES = frozenset({408, 429})

T = TypeVar("T")


class DownloadError(RuntimeError):
    """A file could not be fetched from the mirror."""


class ChecksumError(DownloadError):
    """A shard still failed md5 verification after the last attempt."""

    def __init__(self, message: str, *, shard: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.shard = shard
        self.expected = expected
        self.actual = actual


class ArchiveError(RuntimeError):
    """A shard is not a readable tar file or contains an unsafe member."""


class MetadataError(ValueError):
    """A metadata CSV file has a missing column or an invalid value."""


# --------------------------------------------------------------------------- shard specs


def parse_shards(spec: object, split: str) -> list[int]:
    """Turn the ``download.<split>_shards`` parameter into a sorted list of shard numbers.

    An int N selects shards 0..N-1. A list selects exactly those shard numbers.
    Raises ValueError that names the parameter, the value and the allowed forms.
    """
    if split not in SHARD_COUNTS:
        raise ValueError(f"Unknown split {split!r}. Expected one of {', '.join(SPLITS)}.")
    param = f"download.{split}_shards"
    count = SHARD_COUNTS[split]
    allowed = (
        f"use a shard count from 0 to {count} or a list of distinct shard numbers "
        f"from 0 to {count - 1}"
    )

    if isinstance(spec, bool):
        raise ValueError(f"{param} = {spec!r} is invalid: {allowed}.")
    if isinstance(spec, int):
        if not 0 <= spec <= count:
            raise ValueError(
                f"{param} = {spec} is out of range because GLDv2 has {count} {split} shards: "
                f"{allowed}."
            )
        return list(range(spec))
    if not isinstance(spec, list | tuple):
        raise ValueError(f"{param} = {spec!r} ({type(spec).__name__}) is invalid: {allowed}.")

    shards: list[int] = []
    for item in spec:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{param} contains {item!r}, which is not an integer: {allowed}.")
        if not 0 <= item < count:
            raise ValueError(f"{param} contains shard {item}, which is out of range: {allowed}.")
        if item in shards:
            raise ValueError(f"{param} lists shard {item} twice: {allowed}.")
        shards.append(item)
    return sorted(shards)


def shard_name(shard: int) -> str:
    """Return the file name of a shard in the bucket, such as ``images_007.tar``."""
    return f"images_{shard:03d}.tar"


# --------------------------------------------------------------------------- remote access


class _RetryableError(Exception):
    """A failure that another attempt may fix.

    `final_error` returns the exception raised after the last attempt.
    """

    def final_error(self, attempts: int) -> Exception:
        raise NotImplementedError


class _TransientError(_RetryableError):
    """A timeout, a dropped connection or a 5xx response."""

    def __init__(self, url: str, cause: BaseException | str) -> None:
        super().__init__(f"{cause} ({url})")
        self.url = url
        self.cause = cause

    def final_error(self, attempts: int) -> Exception:
        return DownloadError(
            f"Failed to download {self.url} after {attempts} attempts: {self.cause}. "
            "Check the network connection and that the base URL points to a reachable "
            "GLDv2 mirror, or raise download.retries or download.timeout_seconds."
        )


class _Cancelled(Exception):
    """Another shard failed, so this worker stops early."""


@dataclass
class RemoteFile:
    """An open byte stream from a mirror file, starting at byte `start` of the file."""

    stream: IO[bytes]
    start: int
    size: int | None
    url: str

    def read(self, size: int = _CHUNK_BYTES) -> bytes:
        """Read up to `size` bytes. A dropped connection or a timeout raises _TransientError."""
        try:
            return self.stream.read(size)
        except (http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as error:
            raise _TransientError(self.url, error) from error

    def __enter__(self) -> RemoteFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stream.close()


class Mirror:
    """A GLDv2 file tree at an ``http(s)://`` URL, a ``file://`` URL or a local folder."""

    def __init__(self, base_url: str | os.PathLike[str], timeout_seconds: float = 60.0) -> None:
        text = os.fspath(base_url)
        scheme = urllib.parse.urlsplit(text).scheme.lower()
        self.timeout_seconds = timeout_seconds
        self.root: Path | None = None
        self.base = text.rstrip("/")

        if scheme in ("http", "https"):
            # Built here, so proxy settings are read from the environment of this call.
            self._opener = urllib.request.build_opener()
        elif scheme == "file":
            parts = urllib.parse.urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(
                    f"Unsupported file URL {text!r}: the host must be empty or localhost, "
                    "as in file:///data/gldv2."
                )
            self.root = Path(urllib.request.url2pathname(parts.path))
        elif "://" in text:
            raise ValueError(
                f"Unsupported base URL {text!r}: use an https://, http:// or file:// URL "
                "or a filesystem path."
            )
        else:
            self.root = Path(text).resolve()

    def location(self, relative: str) -> str:
        """Return the URL or path of a file in the mirror, for messages."""
        if self.root is not None:
            return str(self.root / relative)
        return f"{self.base}/{urllib.parse.quote(relative)}"

    def open(self, relative: str, offset: int = 0) -> RemoteFile:
        """Open a mirror file, asking for the bytes from `offset` on.

        The returned `start` is `offset` when the source honoured it and 0 when it
        sends the whole file again (an HTTP 200 response to a Range request).
        """
        if self.root is not None:
            return self._open_local(self.root / relative, offset)
        return self._open_http(relative, offset)

    def _open_local(self, path: Path, offset: int) -> RemoteFile:
        try:
            # The returned RemoteFile owns the handle and closes it.
            handle = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError as error:
            raise DownloadError(
                f"File not found: {path}. Check the base path ({self.base}) and that the "
                "requested shard numbers exist in this mirror."
            ) from error
        size = os.fstat(handle.fileno()).st_size
        start = offset if offset <= size else 0
        handle.seek(start)
        return RemoteFile(stream=handle, start=start, size=size, url=str(path))

    def _open_http(self, relative: str, offset: int) -> RemoteFile:
        url = self.location(relative)
        request = urllib.request.Request(url, headers={"User-Agent": f"glr/{__version__}"})
        if offset > 0:
            request.add_header("Range", f"bytes={offset}-")

        try:
            response = self._opener.open(request, timeout=self.timeout_seconds)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 416 and offset > 0:
                # The partial file is at least as long as the remote one, so start over.
                return self._open_http(relative, 0)
            raise _http_error(url, error, self.base) from error
        except urllib.error.URLError as error:
            raise _connection_error(url, error.reason, self.base) from error
        except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
            raise _TransientError(url, error) from error

        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                response.close()
                logger.warning(
                    "%s: invalid Content-Range in a 206 response, downloading from the start", url
                )
                return self._open_http(relative, 0)
            total = None if match.group(3) == "*" else int(match.group(3))
            return RemoteFile(stream=response, start=offset, size=total, url=url)

        length = response.headers.get("Content-Length")
        size = int(length) if length is not None and length.isdigit() else None
        if offset > 0:
            logger.info("%s: the server ignored the Range request, downloading from the start", url)
        return RemoteFile(stream=response, start=0, size=size, url=url)


def _http_error(url: str, error: urllib.error.HTTPError, base: str) -> Exception:
    message = f"HTTP {error.code} {error.reason}"
    if error.code >= 500 or error.code in _TRANSIENT_HTTP_CODES:
        return _TransientError(url, message)
    return DownloadError(
        f"Failed to download {url}: {message}. Check the base URL ({base}) and that the "
        "requested shard numbers exist in this mirror."
    )


def _connection_error(url: str, reason: object, base: str) -> Exception:
    if isinstance(reason, TimeoutError | ConnectionResetError | ConnectionAbortedError):
        return _TransientError(url, reason)
    host = urllib.parse.urlsplit(url).netloc
    return DownloadError(
        f"Failed to connect to {host} for {url}: {reason}. Check the base URL ({base}) "
        "and the network connection."
    )


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """Number of retries and the backoff between them for a file that failed to download."""

    retries: int = 3
    backoff_seconds: float = 1.0

    def delay(self, attempt: int) -> float:
        """Return the backoff in seconds after failed attempt `attempt` (1-based)."""
        return float(self.backoff_seconds * 2 ** (attempt - 1))


def _call_with_retries(
    action: Callable[[], T], label: str, policy: RetryPolicy, cancel: threading.Event
) -> T:
    """Run `action` up to 1 + `policy.retries` times while it raises _RetryableError."""
    attempts = policy.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _RetryableError as error:
            if attempt == attempts:
                raise error.final_error(attempt) from error
            delay = policy.delay(attempt)
            logger.warning(
                "%s: %s (attempt %d of %d), retrying in %.2f s",
                label,
                error,
                attempt,
                attempts,
                delay,
            )
            if cancel.wait(delay):
                raise _Cancelled from error
    raise AssertionError("unreachable")


@dataclass
class _Transfer:
    """Bytes received for one file, summed over all attempts."""

    bytes_received: int = 0


def _stream_to_file(
    mirror: Mirror,
    relative: str,
    destination: Path,
    transfer: _Transfer,
    cancel: threading.Event,
    *,
    label: str,
    show_progress: bool,
) -> str:
    """Append the rest of a mirror file to `destination` and return the md5 of the whole file.

    The request starts at the current size of `destination`. If the source sends
    the file from the start instead, `destination` is truncated first.
    """
    offset = destination.stat().st_size if destination.exists() else 0
    # The partial file is hashed before the request, so that hashing a large
    # prefix does not leave the connection idle.
    prefix_hasher = hashlib.md5(usedforsecurity=False)
    if offset > 0:
        _hash_file(destination, prefix_hasher)

    with mirror.open(relative, offset) as remote:
        if remote.start > 0:
            logger.info("%s: resuming at byte %d", label, remote.start)
            hasher = prefix_hasher
        else:
            hasher = hashlib.md5(usedforsecurity=False)
        mode = "ab" if remote.start > 0 else "wb"
        with (
            open(destination, mode) as output,
            tqdm(
                total=remote.size,
                initial=remote.start,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                disable=not show_progress,
            ) as progress,
        ):
            while chunk := remote.read():
                if cancel.is_set():
                    raise _Cancelled
                output.write(chunk)
                hasher.update(chunk)
                transfer.bytes_received += len(chunk)
                progress.update(len(chunk))

    written = destination.stat().st_size
    if remote.size is not None and written != remote.size:
        raise _TransientError(
            remote.url, f"connection closed after {written} of {remote.size} bytes"
        )
    return hasher.hexdigest()


def _hash_file(path: Path, hasher: hashlib._Hash) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            hasher.update(chunk)


def _md5_of_file(path: Path) -> str:
    hasher = hashlib.md5(usedforsecurity=False)
    _hash_file(path, hasher)
    return hasher.hexdigest()


def _read_text(mirror: Mirror, relative: str, policy: RetryPolicy, cancel: threading.Event) -> str:
    """Fetch a small mirror file, such as an md5 file, into memory."""

    def attempt() -> str:
        with mirror.open(relative) as remote:
            data = b""
            while chunk := remote.read():
                data += chunk
        if remote.size is not None and len(data) != remote.size:
            raise _TransientError(remote.url, f"received {len(data)} of {remote.size} bytes")
        return data.decode("utf-8")

    return _call_with_retries(attempt, relative, policy, cancel)


# --------------------------------------------------------------------------- shards


@dataclass
class ShardResult:
    """Outcome of fetching and extracting one shard."""

    split: str
    shard: int
    reused: bool
    bytes_downloaded: int
    image_ids: list[str] = field(default_factory=list)
    skipped_members: int = 0


class _ChecksumMismatch(_RetryableError):
    def __init__(self, label: str, url: str, expected: str, actual: str) -> None:
        super().__init__(f"md5 mismatch: expected {expected}, got {actual}")
        self.label = label
        self.url = url
        self.expected = expected
        self.actual = actual

    def final_error(self, attempts: int) -> Exception:
        return ChecksumError(
            f"Shard {self.label} from {self.url} failed md5 verification after {attempts} "
            f"attempts: expected {self.expected}, got {self.actual}. The mirror's copy is "
            "damaged or its md5 file is out of date.",
            shard=self.label,
            expected=self.expected,
            actual=self.actual,
        )


def _parse_md5_file(text: str, location: str) -> str:
    tokens = text.split()
    digest = tokens[0].lower() if tokens else ""
    if not _MD5_HEX.fullmatch(digest):
        raise DownloadError(
            f"Invalid md5 file {location}: expected '<32 hex digits>  images_NNN.tar', "
            f"got {text[:80]!r}."
        )
    return digest


def _cached_shard_is_valid(archive: Path, marker: Path, expected_md5: str) -> bool:
    """Check a cached shard against `expected_md5`, deleting it if it does not match."""
    if not archive.exists():
        return False
    size = archive.stat().st_size
    try:
        record = json.loads(marker.read_text())
    except (FileNotFoundError, ValueError):
        record = None
    if (
        isinstance(record, dict)
        and record.get("md5") == expected_md5
        and record.get("size") == size
    ):
        return True

    actual = _md5_of_file(archive)
    if actual == expected_md5:
        write_json(marker, {"md5": actual, "size": size})
        return True
    logger.warning(
        "Cached shard %s has md5 %s but the mirror expects %s, so it is downloaded again",
        archive,
        actual,
        expected_md5,
    )
    archive.unlink()
    marker.unlink(missing_ok=True)
    return False


def _fetch_shard(
    mirror: Mirror,
    split: str,
    shard: int,
    cache_dir: Path,
    policy: RetryPolicy,
    cancel: threading.Event,
    show_progress: bool,
) -> tuple[Path, bool, int]:
    """Make sure a verified copy of a shard is in the cache.

    Returns the cached path, whether the cache already contained it, and the bytes received.
    """
    name = shard_name(shard)
    label = f"{split}/{name}"
    md5_relative = f"md5sum/{split}/md5.{Path(name).stem}.txt"
    expected = _parse_md5_file(
        _read_text(mirror, md5_relative, policy, cancel), mirror.location(md5_relative)
    )

    folder = cache_dir / split
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / name
    marker = folder / f"{name}.verified"
    if _cached_shard_is_valid(archive, marker, expected):
        return archive, True, 0

    part = folder / f"{name}.part"
    transfer = _Transfer()

    def attempt() -> None:
        actual = _stream_to_file(
            mirror, label, part, transfer, cancel, label=label, show_progress=show_progress
        )
        if actual != expected:
            part.unlink(missing_ok=True)
            raise _ChecksumMismatch(label, mirror.location(label), expected, actual)

    _call_with_retries(attempt, label, policy, cancel)
    os.replace(part, archive)
    write_json(marker, {"md5": expected, "size": archive.stat().st_size})
    return archive, False, transfer.bytes_received


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Describe why a member is unsafe to extract, or return None if it is safe."""
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "path outside the destination ('..')"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if member.isdev():
        return "device or FIFO"
    if not (member.isfile() or member.isdir()):
        return "unsupported member type"
    return None


def _select_images(
    members: Sequence[tarfile.TarInfo], label: str
) -> tuple[list[tuple[tarfile.TarInfo, str]], int]:
    """Check every member and pick the images named ``a/b/c/<id>.jpg``.

    Raises ArchiveError on the first unsafe member, before anything is extracted.
    Returns (member, image id) pairs and the number of other regular files skipped.
    """
    images: list[tuple[tarfile.TarInfo, str]] = []
    skipped: list[str] = []
    for member in members:
        problem = _member_problem(member)
        if problem is not None:
            raise ArchiveError(
                f"Unsafe member {member.name!r} in shard {label}: {problem}. "
                "Nothing from this shard was extracted. Check the mirror's copy of the shard."
            )
        if member.isdir():
            continue
        normalized = str(PurePosixPath(member.name))
        match = _IMAGE_MEMBER.fullmatch(normalized)
        if match is None or "".join(match.group(1, 2, 3)) != match.group(4)[:3]:
            skipped.append(member.name)
            continue
        images.append((member, match.group(4)))

    if skipped:
        logger.warning(
            "%s: skipped %d members not named a/b/c/<16 hex id>.jpg, such as %r",
            label,
            len(skipped),
            skipped[0],
        )
    return images, len(skipped)


def _extract(tar: tarfile.TarFile, folder: Path, members: list[tarfile.TarInfo]) -> None:
    """Extract `members` into `folder` with tarfile's ``data`` filter where it exists."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(folder, members=members, filter="data")
    else:
        # Python before 3.11.4 has no extraction filters. `_select_images` has already
        # rejected every absolute path, '..', link and device among the members.
        tar.extractall(folder, members=members)


def _extract_shard(archive: Path, label: str, destination: Path) -> tuple[list[str], int]:
    """Extract the images of a shard into `destination` and return their ids.

    Extraction goes to a temporary folder beside `destination` (with tarfile's ``data``
    filter where Python has it), and the images are moved into place only after it
    succeeded, so a failed shard leaves no images behind. Returns the ids and the number
    of skipped members.
    """
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}-{archive.stem}.", dir=destination.parent)
    )
    try:
        try:
            with tarfile.open(archive) as tar:
                images, skipped = _select_images(tar.getmembers(), label)
                _extract(tar, staging, [member for member, _ in images])
        except tarfile.TarError as error:
            if hasattr(tarfile, "FilterError") and isinstance(error, tarfile.FilterError):
                name = error.tarinfo.name if error.tarinfo is not None else "?"
                raise ArchiveError(
                    f"Unsafe member {name!r} in shard {label}: {error}. "
                    "Nothing from this shard was extracted."
                ) from error
            raise ArchiveError(f"Cannot read shard {label} ({archive}): {error}") from error

        for member, _ in images:
            target = destination / PurePosixPath(member.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / member.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [image_id for _, image_id in images], skipped


def _process_shard(
    mirror: Mirror,
    split: str,
    shard: int,
    out_dir: Path,
    cache_dir: Path,
    policy: RetryPolicy,
    cancel: threading.Event,
    show_progress: bool,
) -> ShardResult:
    """Fetch one shard into the cache (or reuse it) and extract its images."""
    label = f"{split}/{shard_name(shard)}"
    started = time.monotonic()
    archive, reused, received = _fetch_shard(
        mirror, split, shard, cache_dir, policy, cancel, show_progress
    )
    if reused:
        logger.info("%s: reused verified copy from %s", label, archive)
    else:
        logger.info(
            "%s: downloaded %s in %.1f s, md5 verified",
            label,
            _format_bytes(received),
            time.monotonic() - started,
        )

    if cancel.is_set():
        raise _Cancelled
    image_ids, skipped = _extract_shard(archive, label, out_dir / split)
    logger.info("%s: extracted %d images", label, len(image_ids))
    return ShardResult(
        split=split,
        shard=shard,
        reused=reused,
        bytes_downloaded=received,
        image_ids=image_ids,
        skipped_members=skipped,
    )


def _format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# --------------------------------------------------------------------------- metadata


def validate_metadata(path: Path, name: str) -> pd.DataFrame | None:
    """Check a metadata CSV file against `REQUIRED_COLUMNS` and return its contents.

    `name` is the file's path in the mirror, used for the rule lookup and in
    messages. Ids must be 16 lowercase hex characters and landmark ids
    non-negative integers. Returns None for files without rules.
    Raises MetadataError naming the file, the row and the column.
    """
    required = REQUIRED_COLUMNS.get(PurePosixPath(name).name)
    if required is None:
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"Cannot parse {name} as CSV: {error}") from error

    header = list(frame.columns)
    for column in required:
        if column not in header:
            raise MetadataError(
                f"{name}: missing column {column!r} in the header (line 1), which has "
                f"{', '.join(map(str, header)) or 'no columns'}. "
                f"Expected columns: {', '.join(required)}."
            )

    if "id" in required:
        _check_column(frame, name, "id", _IMAGE_ID, "an image id of 16 lowercase hex characters")
    if "landmark_id" in required:
        _check_column(frame, name, "landmark_id", re.compile(r"\d+"), "a non-negative integer")
    return frame


def _check_column(
    frame: pd.DataFrame, name: str, column: str, pattern: re.Pattern[str], expected: str
) -> None:
    values = frame[column].astype(str)
    valid = values.str.fullmatch(pattern.pattern).to_numpy(dtype=bool)
    if valid.all():
        return
    index = int(np.flatnonzero(~valid)[0])
    raise MetadataError(
        f"{name}: invalid value {values.iloc[index]!r} in column {column!r} at data row "
        f"{index + 1} (1-based, header not counted). Expected {expected}."
    )


def _check_relative_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"Invalid metadata file name {name!r}: use a path relative to metadata/ "
            "in the mirror, such as 'train.csv'."
        )


def _fetch_metadata(
    mirror: Mirror,
    relative: str,
    target: Path,
    policy: RetryPolicy,
    show_progress: bool,
) -> pd.DataFrame | None:
    """Download one metadata file to `target` atomically after it passed validation."""
    cancel = threading.Event()
    transfer = _Transfer()
    with atomic_path(target) as temporary:

        def attempt() -> None:
            _stream_to_file(
                mirror,
                relative,
                temporary,
                transfer,
                cancel,
                label=relative,
                show_progress=show_progress,
            )

        _call_with_retries(attempt, relative, policy, cancel)
        frame = validate_metadata(temporary, relative)
    logger.info("%s: downloaded %s", relative, _format_bytes(transfer.bytes_received))
    return frame


# --------------------------------------------------------------------------- entry point


def download_gldv2(
    base_url: str | os.PathLike[str],
    out_dir: Path,
    shards: Mapping[str, Sequence[int]],
    *,
    cache_dir: Path,
    metadata_files: Sequence[str] = DEFAULT_METADATA_FILES,
    workers: int = 4,
    retries: int = 3,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 60.0,
    show_progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Download GLDv2 metadata and image shards from a mirror and extract the images.

    Writes ``out_dir/metadata/<name>`` for each of `metadata_files`,
    ``out_dir/ground_truth/recognition_solution_v2.1.csv`` and the images as
    ``out_dir/{split}/a/b/c/<id>.jpg``. `shards` maps a split (train, index, test)
    to its shard numbers, as returned by `parse_shards`. Up to `workers` shards
    are fetched in parallel. A file is tried up to 1 + `retries` times, waiting
    `backoff_seconds` * 2**(n-1) after failure n, on timeouts, dropped
    connections, 5xx responses and md5 mismatches. `timeout_seconds` limits
    each connect and each socket read.

    Returns counts per split: ``shards``, ``shards_reused`` (taken from the
    cache), ``bytes_downloaded`` (received over all attempts), ``images_extracted``,
    ``members_skipped`` (files in the shards not named like an image). When the
    split's list (train.csv, index.csv, test.csv) is among `metadata_files`, also
    ``images_not_downloaded`` (listed but absent from the fetched shards, expected
    for a subset) and ``images_not_listed`` (extracted but not in the list).

    Raises DownloadError (ChecksumError for a bad md5), ArchiveError and
    MetadataError with messages that name the file and what to check.
    """
    _check_arguments(shards, workers, retries, backoff_seconds, timeout_seconds)
    for name in metadata_files:
        _check_relative_name(name)
    started = time.monotonic()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir)
    mirror = Mirror(base_url, timeout_seconds)
    policy = RetryPolicy(retries=retries, backoff_seconds=backoff_seconds)
    logger.info(
        "Downloading GLDv2 from %s to %s (cache %s): %s",
        mirror.base,
        out_dir,
        cache_dir,
        ", ".join(f"{len(shards.get(split, []))} {split} shards" for split in SPLITS),
    )

    listed_ids: dict[str, pd.Series] = {}
    for name in metadata_files:
        frame = _fetch_metadata(
            mirror, f"metadata/{name}", out_dir / "metadata" / name, policy, show_progress
        )
        for split, list_name in SPLIT_LISTS.items():
            if name == list_name and frame is not None:
                listed_ids[split] = frame["id"].copy()
    _fetch_metadata(
        mirror,
        f"ground_truth/{GROUND_TRUTH_FILE}",
        out_dir / "ground_truth" / GROUND_TRUTH_FILE,
        policy,
        show_progress,
    )

    results = _process_shards(mirror, shards, out_dir, cache_dir, policy, workers, show_progress)
    counts = _count_results(shards, results, listed_ids)
    for split, split_counts in counts.items():
        logger.info(
            "%s: %s", split, ", ".join(f"{key}={value}" for key, value in split_counts.items())
        )
    logger.info("GLDv2 download finished in %.1f s", time.monotonic() - started)
    return counts


def _check_arguments(
    shards: Mapping[str, Sequence[int]],
    workers: int,
    retries: int,
    backoff_seconds: float,
    timeout_seconds: float,
) -> None:
    for split, numbers in shards.items():
        parse_shards(list(numbers), split)
    if workers < 1:
        raise ValueError(f"download.workers = {workers} is invalid: use 1 or more.")
    if retries < 0:
        raise ValueError(f"download.retries = {retries} is invalid: use 0 or more.")
    if backoff_seconds < 0:
        raise ValueError(f"download.backoff_seconds = {backoff_seconds} is invalid: use 0 or more.")
    if timeout_seconds <= 0:
        raise ValueError(
            f"download.timeout_seconds = {timeout_seconds} is invalid: use a positive number."
        )


def _process_shards(
    mirror: Mirror,
    shards: Mapping[str, Sequence[int]],
    out_dir: Path,
    cache_dir: Path,
    policy: RetryPolicy,
    workers: int,
    show_progress: bool,
) -> list[ShardResult]:
    """Run `_process_shard` for every shard on a thread pool; the first error stops the rest."""
    cancel = threading.Event()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gldv2-shard")
    futures: list[Future[ShardResult]] = []
    try:
        for split in SPLITS:
            for shard in shards.get(split, []):
                futures.append(
                    executor.submit(
                        _process_shard,
                        mirror,
                        split,
                        shard,
                        out_dir,
                        cache_dir,
                        policy,
                        cancel,
                        show_progress,
                    )
                )
        wait(futures, return_when=FIRST_EXCEPTION)
        errors = [future.exception() for future in futures if future.done()]
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None:
            raise first_error
        return [future.result() for future in futures]
    finally:
        # Stops the running workers at their next chunk and drops the queued ones.
        cancel.set()
        executor.shutdown(wait=True, cancel_futures=True)


def _count_results(
    shards: Mapping[str, Sequence[int]],
    results: Sequence[ShardResult],
    listed_ids: Mapping[str, pd.Series],
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        if split not in shards:
            continue
        split_results = [result for result in results if result.split == split]
        extracted = pd.Index([i for result in split_results for i in result.image_ids])
        split_counts = {
            "shards": len(split_results),
            "shards_reused": sum(result.reused for result in split_results),
            "bytes_downloaded": sum(result.bytes_downloaded for result in split_results),
            "images_extracted": len(extracted),
            "members_skipped": sum(result.skipped_members for result in split_results),
        }
        listed = listed_ids.get(split)
        if listed is not None:
            split_counts["images_not_downloaded"] = int((~listed.isin(extracted)).sum())
            split_counts["images_not_listed"] = int((~extracted.isin(listed)).sum())
        elif split_results:
            logger.info(
                "%s: %s is not among the metadata files, so listed images are not counted",
                split,
                SPLIT_LISTS[split],
            )
        counts[split] = split_counts
    return counts
