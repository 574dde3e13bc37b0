"""Process-wide settings: seeds, torch and faiss threads, DataLoader worker counts."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from glr.index import set_faiss_threads
from glr.logs import setup_logging
from glr.params import Params, load_params

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run with the same params repeats on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def processes_per_node() -> int:
    """Processes that share this machine's CPUs: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cpus_per_process() -> int:
    """This machine's CPUs divided among the processes torchrun started on it (at least 1)."""
    return max(1, (os.cpu_count() or 1) // processes_per_node())


def configure_threads(threads: int) -> None:
    """Set torch's and faiss's threads and log the machine.

    0 keeps torch's default in a plain process and gives each torchrun process its share
    of the CPUs (torchrun would otherwise leave every process at one thread).
    """
    if threads == 0 and processes_per_node() > 1:
        threads = cpus_per_process()
    if threads > 0:
        torch.set_num_threads(threads)
        set_faiss_threads(threads)
    log.info("CPUs: %s, torch threads: %d", os.cpu_count(), torch.get_num_threads())


def resolve_workers(num_workers: int) -> int:
    """Return the DataLoader worker count: -1 means one per CPU (per torchrun process)."""
    if num_workers >= 0:
        return num_workers
    return cpus_per_process()


def loader_generator(seed: int) -> torch.Generator:
    """A seeded generator for DataLoader shuffling and worker seeds."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def start_stage(name: str, params_path: str = "params.yaml") -> Params:
    """Set up logging, read and validate params, seed every generator and set torch threads."""
    setup_logging()
    params = load_params(params_path)
    log.info("stage %s: start", name)
    seed_everything(params.base.seed)
    configure_threads(params.base.threads)
    return params


def training_arguments(description: str | None) -> argparse.Namespace:
    """Parse the command-line paths that both training stages take."""
    parser = argparse.ArgumentParser(description=description)
    for name, help_text in [
        ("--split", "split stage output folder"),
        ("--images", "train image folder"),
        ("--model", "output model file"),
        ("--live", "dvclive folder"),
        ("--metrics", "JSON metrics file"),
        ("--figures", "folder for PNG figures"),
        ("--checkpoint", "per-epoch checkpoint"),
        ("--skipped", "CSV of skipped images"),
    ]:
        parser.add_argument(name, type=Path, required=True, help=help_text)
    return parser.parse_args()


def training_fingerprint(params: Params, section: object) -> dict[str, object]:
    """Collect the params that determine a training run, to tell a matching checkpoint apart."""
    return {
        "seed": params.base.seed,
        "image_size": params.base.image_size,
        "augment": dataclasses.asdict(params.augment),
        "model": dataclasses.asdict(section),  # type: ignore[call-overload]
    }
