"""Typed, validated pipeline parameters read from params.yaml.

params.yaml is read with a YAML 1.2 loader, because `dvc exp run -S siamese.lr=1e-5`
writes `lr: 1e-05`, which YAML 1.1 loaders (PyYAML) read as a string. Numbers given as
strings are still coerced, so a value edited by another tool reaches the optimizer as a
float. Every problem found (unknown key, missing key, wrong type, value out of range) is
collected and raised together in one `ParamsError` before any stage does work.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

DEFAULT_PATH = Path("params.yaml")


class ParamsError(ValueError):
    """One or more invalid parameters; the message lists each key, value and what is allowed."""


def _spec(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    metadata = {"low": low, "high": high, "low_open": low_open, "choices": choices}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class BaseParams:
    """Settings shared by every stage."""

    seed: int = _spec(0)
    image_size: int = _spec(32)
    # DataLoader worker processes; 0 loads images in the main process, -1 uses one per CPU.
    num_workers: int = _spec(-1)
    # torch intra-op threads; 0 keeps torch's default (one per CPU).
    threads: int = _spec(0)
    # Images with more pixels are skipped before decoding (decompression bombs).
    max_image_pixels: int = _spec(1)
    # Continue an interrupted training run from its last epoch checkpoint.
    resume: bool = _spec(default=False)


@dataclass(frozen=True)
class DownloadParams:
    """Location of the GLDv2 mirror and the parts of it to fetch."""

    base_url: str
    # A count N (shards 000 .. N-1) or an explicit list of shard numbers.
    train_shards: int | list[int]
    test_shards: int | list[int]
    index_shards: int | list[int]
    metadata: list[str]
    workers: int = _spec(1)
    retries: int = _spec(0)
    backoff_seconds: float = _spec(0.0)
    timeout_seconds: float = _spec(0.0, low_open=True)


@dataclass(frozen=True)
class FilterParams:
    """Selection of the landmark classes kept for training and as the retrieval index."""

    min_images: int = _spec(2)
    # 0 keeps every class; N > 0 first keeps a seeded random subset of N classes (quick runs).
    max_classes: int = _spec(0)


@dataclass(frozen=True)
class SplitParams:
    """Train/validation splits and the test subset."""

    val_fraction: float = _spec(0.0, 1.0, low_open=True)
    gate_val_fraction: float = _spec(0.0, 1.0, low_open=True)
    test_fraction: float = _spec(0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation shared by both networks."""

    brightness: float = _spec(0.0, 1.0)
    contrast: float = _spec(0.0, 1.0)
    hflip: float = _spec(0.0, 1.0)
    # Zoom-in: a random square crop covering this fraction of the image area, or more.
    min_crop_area: float = _spec(0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class GateParams:
    """Landmark-present classifier."""

    backbone: str
    weights: str
    pooling: str = _spec(choices=("avg", "max"))
    frozen_blocks: int = _spec(0)
    lr: float = _spec(0.0, low_open=True)
    batch_size: int = _spec(1)
    epochs: int = _spec(1)
    # Probability at or above which a query counts as showing a landmark.
    threshold: float = _spec(0.0, 1.0)


@dataclass(frozen=True)
class SiameseParams:
    """Embedding network: the report's Siamese net (contrastive) or a margin-loss GeM net."""

    backbone: str
    weights: str
    pooling: str = _spec(choices=("avg", "max", "gem"))
    frozen_blocks: int = _spec(0)
    # Embedding size; 0 keeps the backbone's pooled features (margin losses only).
    dim: int = _spec(0)
    loss: str = _spec(choices=("contrastive", "arcface", "subcenter_arcface"))
    lr: float = _spec(0.0, low_open=True)
    epochs: int = _spec(1)
    # contrastive: margin on the distance 1 - similarity, and classes per batch (each class
    # gives one positive and one negative pair).
    margin: float = _spec(0.0, low_open=True)
    batch_classes: int = _spec(1)
    # Margin losses: images per batch, AdamW with a one-cycle schedule, separate learning
    # rate for the projection and the class weights, and ArcFace's angular margin and scale.
    batch_size: int = _spec(2)
    head_lr: float = _spec(0.0, low_open=True)
    weight_decay: float = _spec(0.0)
    arcface_margin_degrees: float = _spec(0.0, 90.0)
    arcface_scale: float = _spec(0.0, low_open=True)


@dataclass(frozen=True)
class EmbedParams:
    """Inference over the index and test images."""

    batch_size: int = _spec(1)
    # Input size for embeddings, in pixels (training uses base.image_size).
    image_size: int = _spec(32)
    # Weight of the untrained ImageNet GeM descriptor concatenated with the trained one
    # (cosine = weighted sum of both cosines); 0 uses the trained embedding alone.
    untrained_weight: float = _spec(0.0, 1.0)


@dataclass(frozen=True)
class RetrievalParams:
    """Nearest-neighbour search, query expansion, labelling and non-landmark handling."""

    # pair_head: the report's rule (L2 search, pair-head similarity >= threshold);
    # knn: cosine search and a similarity-weighted vote over the knn_k nearest images.
    scoring: str = _spec(choices=("pair_head", "knn"))
    top_k: int = _spec(1)
    query_expansion: str = _spec(choices=("none", "average", "alpha"))
    # Alpha query expansion and database-side augmentation: neighbours n and weight power.
    qe_n: int = _spec(1)
    qe_alpha: float = _spec(0.0)
    dba_n: int = _spec(0)
    dba_alpha: float = _spec(0.0)
    # PCA whitening learned on the index; shrinkage in [0, 1] blends it with the identity.
    whitening: bool = _spec(default=False)
    whitening_shrinkage: float = _spec(0.0, 1.0, default=0.5)
    knn_k: int = _spec(1, default=1)
    # knn only: "Flat" searches exactly (blocked, bounded memory); any other faiss
    # index_factory string (e.g. "IVF4096,Flat") builds an approximate index, searched with
    # the faiss ParameterSpace settings in index_search (e.g. "nprobe=64").
    index: str = _spec(default="Flat")
    index_search: str = _spec(default="")
    # Pair-head similarity at or above which a neighbour's class becomes a label.
    threshold: float = _spec(0.0, 1.0, default=0.9)
    # Confidence minus beta x the similarity to the most similar known non-landmark photo.
    # The pool is the test set's Public rows without a landmark, and then only Private rows
    # are scored; `none` switches the penalty off.
    non_landmark_pool: str = _spec(choices=("none", "public"), default="none")
    non_landmark_beta: float = _spec(0.0, default=0.0)
    non_landmark_top_m: int = _spec(1, default=1)


@dataclass(frozen=True)
class Params:
    """All sections of params.yaml."""

    base: BaseParams
    download: DownloadParams
    filter: FilterParams
    split: SplitParams
    augment: AugmentParams
    gate: GateParams
    siamese: SiameseParams
    embed: EmbedParams
    retrieval: RetrievalParams


def load_params(path: str | os.PathLike[str] = DEFAULT_PATH) -> Params:
    """Read and validate params.yaml; raise `ParamsError` listing every problem."""
    file = Path(path)
    if not file.is_file():
        raise ParamsError(f"params file not found: {file}; run from the project root")
    raw = YAML(typ="safe", pure=True).load(file.read_text())
    return parse_params(raw, source=str(file))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a params mapping (as loaded from YAML) into a `Params` object."""
    errors: list[str] = []
    params = _build(Params, raw, "", errors)
    errors += _check_backbones(raw)
    if params is not None:
        errors += _check_combinations(params)
    if errors:
        listing = "\n  ".join(errors)
        raise ParamsError(f"invalid parameters in {source}:\n  {listing}")
    assert isinstance(params, Params)  # _build returns None only when errors were recorded
    return params


def _check_combinations(params: Params) -> list[str]:
    """Report settings that are valid alone but do not work together."""
    errors = []
    if params.retrieval.scoring == "pair_head":
        if params.siamese.loss != "contrastive":
            errors.append(
                f"retrieval.scoring: pair_head needs siamese.loss contrastive (the net with a "
                f"pair head), got siamese.loss {params.siamese.loss!r}"
            )
        if params.embed.untrained_weight > 0:
            errors.append(
                "embed.untrained_weight: must be 0 with retrieval.scoring pair_head, got "
                f"{params.embed.untrained_weight}"
            )
    retrieval = params.retrieval
    if not retrieval.index.strip():
        errors.append('retrieval.index: must be "Flat" or a faiss index_factory string, got ""')
    elif retrieval.index != "Flat" and retrieval.scoring == "pair_head":
        errors.append(
            f"retrieval.index: pair_head scoring searches exactly, so it must be Flat, "
            f"got {retrieval.index!r}"
        )
    if retrieval.index == "Flat" and retrieval.index_search:
        errors.append(
            f"retrieval.index_search: {retrieval.index_search!r} needs an approximate "
            "retrieval.index (e.g. IVF4096,Flat); exact search takes no settings"
        )
    if params.siamese.loss == "contrastive" and params.siamese.dim < 1:
        errors.append("siamese.dim: must be >= 1 with siamese.loss contrastive, got 0")
    return errors


def _check_backbones(raw: Any) -> list[str]:
    """Report backbone names that timm does not know (timm is imported only if needed)."""
    names = {
        f"{section}.backbone": raw[section]["backbone"]
        for section in ("gate", "siamese")
        if isinstance(raw, dict)
        and isinstance(raw.get(section), dict)
        and isinstance(raw[section].get("backbone"), str)
    }
    if not names:
        return []
    import timm

    return [
        f"{key}: unknown timm model {name!r}; `timm.list_models()` lists the valid names"
        for key, name in names.items()
        if not timm.is_model(name)
    ]


def _build(cls: type, raw: Any, prefix: str, errors: list[str]) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping, got {raw!r}")
        return None

    hints = typing.get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(fields))})")

    values: dict[str, Any] = {}
    for name, item in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if item.default is not dataclasses.MISSING:
                values[name] = item.default
            else:
                errors.append(f"{key}: missing")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(typing.cast(type, hint), raw[name], key + ".", errors)
        else:
            values[name] = _coerce(key, raw[name], hint, item.metadata, errors)

    if len(values) != len(fields) or any(value is None for value in values.values()):
        return None
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any, spec: Any, errors: list[str]) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        converted = _convert(value, option)
        if converted is not None:
            break
    else:
        names = " or ".join(_type_name(option) for option in options)
        errors.append(f"{key}: expected {names}, got {value!r}")
        return None

    problem = _check_range(converted, spec)
    if problem:
        errors.append(f"{key}: {problem}, got {value!r}")
        return None
    return converted


def _convert(value: Any, target: Any) -> Any:
    """Return `value` as `target`, or None when it cannot be read as that type."""
    origin = typing.get_origin(target)
    if origin is list:
        (item_type,) = typing.get_args(target)
        if not isinstance(value, list):
            return None
        items = [_convert(item, item_type) for item in value]
        return None if any(item is None for item in items) else items
    if target is bool:
        return value if isinstance(value, bool) else None
    if target is int:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return None
        return None
    if target is float:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return None
        else:
            return None
        return number if math.isfinite(number) else None
    if target is str:
        return value if isinstance(value, str) else None
    return None


def _check_range(value: Any, spec: Any) -> str | None:
    choices = spec.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}"
    numbers = value if isinstance(value, list) else [value]
    if not all(isinstance(number, int | float) for number in numbers):
        return None
    low, high = spec.get("low"), spec.get("high")
    for number in numbers:
        if low is not None and spec.get("low_open") and number <= low:
            return f"must be > {low}"
        if low is not None and number < low:
            return f"must be >= {low}"
        if high is not None and number > high:
            return f"must be <= {high}"
    return None


def _type_name(target: Any) -> str:
    if typing.get_origin(target) is list:
        return f"a list of {_type_name(typing.get_args(target)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        target, str(target)
    )
