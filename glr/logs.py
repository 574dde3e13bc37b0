"""Logging set-up shared by the stage scripts and the command-line interface."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    """Send log records to stderr with a timestamp; the level comes from GLR_LOG_LEVEL."""
    chosen = (level or os.environ.get("GLR_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=chosen,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
