"""Params profiles: partial params files merged into params.yaml, keeping its comments."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from glr.io import atomic_open
from glr.params import Params, parse_params


def merge(
    target: MutableMapping[str, Any], overrides: MutableMapping[str, Any], prefix: str = ""
) -> None:
    """Copy `overrides` into `target` key by key, descending into nested sections.

    A key that `target` lacks raises KeyError naming it, so a typo in a profile is caught
    rather than added as a new, unused param.
    """
    for key, value in overrides.items():
        if key not in target:
            raise KeyError(f"profile key {prefix}{key} is not in params.yaml")
        if isinstance(value, MutableMapping) and isinstance(target[key], MutableMapping):
            merge(target[key], value, f"{prefix}{key}.")
        else:
            target[key] = value


def apply_profile(
    profile: str | os.PathLike[str], params_path: str | os.PathLike[str] = "params.yaml"
) -> Params:
    """Merge a profile into the params file, validate the result, and write it atomically."""
    round_trip = YAML()
    round_trip.preserve_quotes = True
    params = round_trip.load(Path(params_path).read_text())
    overrides = YAML(typ="safe", pure=True).load(Path(profile).read_text()) or {}

    merge(params, overrides)
    validated = parse_params(params, source=f"{params_path} with {profile}")
    with atomic_open(params_path) as handle:
        round_trip.dump(params, handle)
    return validated
