"""Process-wide settings: seeds, torch threads and DataLoader worker counts."""

from __future__ import annotations

import dataclasses
import logging
import os
import random

import numpy as np
import torch

from glr.logs import setup_logging
from glr.params import Params, load_params

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run with the same params repeats on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_torch(threads: int) -> None:
    """Set torch's intra-op threads (0 keeps torch's default) and log the machine."""
    if threads > 0:
        torch.set_num_threads(threads)
    log.info("CPUs: %s, torch threads: %d", os.cpu_count(), torch.get_num_threads())


def resolve_workers(num_workers: int) -> int:
    """Return the DataLoader worker count: -1 means one per CPU."""
    if num_workers >= 0:
        return num_workers
    return os.cpu_count() or 1


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
    configure_torch(params.base.threads)
    return params


def training_fingerprint(params: Params, section: object) -> dict[str, object]:
    """Collect the params that determine a training run, to tell a matching checkpoint apart."""
    return {
        "seed": params.base.seed,
        "image_size": params.base.image_size,
        "augment": dataclasses.asdict(params.augment),
        "model": dataclasses.asdict(section),  # type: ignore[call-overload]
    }
