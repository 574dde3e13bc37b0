"""Shared pieces of the benchmarks: machine description, timing, peak memory, tables."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata

# glibc malloc settings without which torch on CPU spends much of its time in page faults.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description(torch_threads: int | None = None, faiss_threads: int | None = None) -> str:
    """Describe the CPU, core count, load, thread settings and versions as a Markdown list."""
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, load average {load_average()}",
        f"- Python {platform.python_version()}, "
        + ", ".join(
            f"{name} {package_version(name)}"
            for name in ("torch", "timm", "faiss-cpu", "numpy", "Pillow", "dvc")
        ),
        f"- GLIBC_TUNABLES set for torch: {os.environ.get('GLIBC_TUNABLES') == MALLOC_TUNABLES}",
    ]
    if torch_threads is not None:
        lines.append(f"- torch threads: {torch_threads}")
    if faiss_threads is not None:
        lines.append(f"- faiss threads: {faiss_threads}")
    return "\n".join(lines)


def timed(function: Callable[[], object]) -> float:
    """Run `function` once and return its wall-clock seconds."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def best_of_alternating(
    functions: dict[str, Callable[[], object]], rounds: int
) -> dict[str, float]:
    """Time each function `rounds` times, alternating between them; keep each one's minimum.

    Alternating spreads the load of other jobs on a shared machine over all candidates,
    and the minimum is the run least disturbed by them.
    """
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            best[name] = min(best[name], timed(function))
    return best


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def check_malloc_setting() -> None:
    """Warn on stderr when torch benchmarks run without the glibc malloc setting."""
    if os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        print(
            f"warning: GLIBC_TUNABLES is not {MALLOC_TUNABLES}; torch on CPU runs up to 2x "
            "slower without it. Set it before starting Python.",
            file=sys.stderr,
        )
