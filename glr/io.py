"""Atomic file output: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temporary file is removed if the block raises, so `path` is either the
    previous complete file or the new complete file, never a partial one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file readable by its owner only; give it the usual mode instead.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` when closed without error."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV without its index, atomically."""
    with atomic_open(path, "w") as handle:
        frame.to_csv(handle, index=False)


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an array in .npy format, atomically."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)
