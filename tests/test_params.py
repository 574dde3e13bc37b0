"""Tests for glr.params: loading params.yaml, type coercion and collected validation errors."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from glr.params import ParamsError, load_params, parse_params

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def shipped_raw() -> dict[str, Any]:
    """Read the shipped params.yaml as a plain mapping, to copy and change per test."""
    return YAML(typ="safe", pure=True).load(PARAMS_YAML.read_text())


def with_changes(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of `raw` with "section.key" entries set; a value of ... removes one."""
    result = copy.deepcopy(raw)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if value is ...:
            del result[section][key]
        else:
            result[section][key] = value
    return result


def replace_value(text: str, section: str, key: str, value: str) -> str:
    """Return params.yaml text with `section.key` set to the literal YAML `value`."""
    pattern = re.compile(rf"^({section}:\n(?:[ #].*\n|\n)*?  {key}:)[^\n#]*", re.MULTILINE)
    # The space after the value keeps an inline comment a comment.
    replaced, count = pattern.subn(rf"\g<1> {value} ", text)
    assert count == 1, f"{section}.{key} not found in params.yaml"
    return replaced


def error_message(raw: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    return str(caught.value)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def test_load_shipped_params_yaml(shipped_raw: dict[str, Any]) -> None:
    params = load_params(PARAMS_YAML)

    for section, values in shipped_raw.items():
        for key, value in values.items():
            assert getattr(getattr(params, section), key) == value, f"{section}.{key}"
    assert isinstance(params.siamese.lr, float)
    assert isinstance(params.gate.lr, float)
    assert isinstance(params.base.seed, int)


def test_load_missing_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(ParamsError) as caught:
        load_params(missing)

    assert "not found" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_load_dvc_exponent_float(tmp_path: Path) -> None:
    # `dvc exp run -S siamese.lr=1e-5` writes `lr: 1e-05`. A YAML 1.1 loader (PyYAML)
    # reads that as the string "1e-05", because its float pattern needs a dot.
    path = tmp_path / "params.yaml"
    path.write_text(replace_value(PARAMS_YAML.read_text(), "siamese", "lr", "1e-05"))
    assert "  lr: 1e-05 \n" in path.read_text()

    params = load_params(path)

    assert isinstance(params.siamese.lr, float)
    assert params.siamese.lr == 1e-05


def test_pyyaml_reads_exponent_as_string() -> None:
    # Shows that the previous test feeds the input that a YAML 1.1 loader gets wrong.
    yaml = pytest.importorskip("yaml")

    assert yaml.safe_load("lr: 1e-05") == {"lr": "1e-05"}


def test_load_quoted_float_string(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(replace_value(PARAMS_YAML.read_text(), "siamese", "lr", '"1e-05"'))

    params = load_params(path)

    assert isinstance(params.siamese.lr, float)
    assert params.siamese.lr == 1e-05


def test_load_collects_errors(tmp_path: Path) -> None:
    text = replace_value(PARAMS_YAML.read_text(), "siamese", "lr", "0")
    text = replace_value(text, "retrieval", "top_k", "0")
    path = tmp_path / "params.yaml"
    path.write_text(text)

    with pytest.raises(ParamsError) as caught:
        load_params(path)

    message = str(caught.value)
    assert str(path) in message
    assert "siamese.lr: must be > 0.0, got 0" in message
    assert "retrieval.top_k: must be >= 1, got 0" in message


def test_load_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")

    with pytest.raises(ParamsError) as caught:
        load_params(path)

    assert "expected a mapping" in str(caught.value)


# ---------------------------------------------------------------------------
# Coercion
# ---------------------------------------------------------------------------


def test_parse_string_float_coerced(shipped_raw: dict[str, Any]) -> None:
    params = parse_params(with_changes(shipped_raw, {"siamese.lr": "1e-05"}))

    assert isinstance(params.siamese.lr, float)
    assert params.siamese.lr == 1e-05


def test_parse_int_for_float_coerced(shipped_raw: dict[str, Any]) -> None:
    params = parse_params(with_changes(shipped_raw, {"siamese.margin": 2}))

    assert isinstance(params.siamese.margin, float)
    assert params.siamese.margin == 2.0


def test_parse_string_int_coerced(shipped_raw: dict[str, Any]) -> None:
    params = parse_params(with_changes(shipped_raw, {"embed.batch_size": "16"}))

    assert isinstance(params.embed.batch_size, int)
    assert params.embed.batch_size == 16


def test_parse_boundary_values_accepted(shipped_raw: dict[str, Any]) -> None:
    changes = {
        "gate.threshold": 0.0,
        "retrieval.threshold": 1.0,
        "retrieval.top_k": 1,
        "split.test_fraction": 1.0,
        "base.num_workers": -1,
    }
    params = parse_params(with_changes(shipped_raw, changes))

    assert params.gate.threshold == 0.0
    assert params.retrieval.threshold == 1.0
    assert params.retrieval.top_k == 1
    assert params.split.test_fraction == 1.0
    assert params.base.num_workers == -1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(3, 3), (0, 0), ([0, 5], [0, 5]), ([], []), ("4", 4), (["1", 2], [1, 2])],
)
def test_shard_spec_int_or_list(shipped_raw: dict[str, Any], spec: Any, expected: Any) -> None:
    params = parse_params(with_changes(shipped_raw, {"download.train_shards": spec}))

    assert params.download.train_shards == expected
    assert type(params.download.train_shards) is type(expected)


@pytest.mark.parametrize("spec", [True, 1.5, "two", [1, "x"], [1.5], {"a": 1}])
def test_shard_spec_invalid(shipped_raw: dict[str, Any], spec: Any) -> None:
    message = error_message(with_changes(shipped_raw, {"download.train_shards": spec}))

    assert "download.train_shards: expected an integer or a list of an integer" in message
    assert f"got {spec!r}" in message


# ---------------------------------------------------------------------------
# Validation errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("base.seed", True, "expected an integer"),
        ("base.seed", 1.5, "expected an integer"),
        ("gate.backbone", ["a"], "expected a string"),
        ("gate.weights", 3, "expected a string"),
        ("siamese.lr", False, "expected a number"),
        ("siamese.lr", "fast", "expected a number"),
        ("siamese.lr", "nan", "expected a number"),
        ("download.metadata", "train.csv", "expected a list of a string"),
        ("siamese.lr", 0, "must be > 0.0"),
        ("siamese.lr", -1e-5, "must be > 0.0"),
        ("gate.lr", 0.0, "must be > 0.0"),
        ("gate.threshold", 1.5, "must be <= 1.0"),
        ("gate.threshold", -0.1, "must be >= 0.0"),
        ("retrieval.threshold", 1.01, "must be <= 1.0"),
        ("retrieval.top_k", 0, "must be >= 1"),
        ("split.test_fraction", 0, "must be > 0.0"),
        ("split.test_fraction", 1.5, "must be <= 1.0"),
        ("base.image_size", 16, "must be >= 32"),
        ("gate.pooling", "mean", "must be one of avg, max"),
        ("retrieval.query_expansion", "median", "must be one of none, average"),
    ],
)
def test_parse_invalid_value(
    shipped_raw: dict[str, Any], key: str, value: Any, problem: str
) -> None:
    message = error_message(with_changes(shipped_raw, {key: value}))

    assert f"{key}: {problem}" in message
    assert f"got {value!r}" in message


def test_parse_unknown_key(shipped_raw: dict[str, Any]) -> None:
    message = error_message(with_changes(shipped_raw, {"gate.learning_rate": 0.1}))

    assert "gate.learning_rate: unknown key" in message
    assert "lr" in message


def test_parse_unknown_section(shipped_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(shipped_raw)
    raw["extras"] = {"a": 1}

    message = error_message(raw)

    assert "extras: unknown key" in message


def test_parse_missing_key(shipped_raw: dict[str, Any]) -> None:
    message = error_message(with_changes(shipped_raw, {"embed.batch_size": ...}))

    assert "embed.batch_size: missing" in message


def test_parse_missing_section(shipped_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(shipped_raw)
    del raw["retrieval"]

    message = error_message(raw)

    assert "retrieval: missing" in message


def test_parse_section_not_mapping(shipped_raw: dict[str, Any]) -> None:
    raw = copy.deepcopy(shipped_raw)
    raw["embed"] = 64

    message = error_message(raw)

    assert "embed: expected a mapping, got 64" in message


def test_parse_all_errors_together(shipped_raw: dict[str, Any]) -> None:
    changes = {
        "base.seed": True,
        "gate.backbone": ["a"],
        "gate.learning_rate": 0.1,
        "embed.batch_size": ...,
        "siamese.lr": 0,
        "gate.threshold": 1.5,
        "retrieval.top_k": 0,
        "split.test_fraction": 0,
        "gate.pooling": "mean",
        "retrieval.query_expansion": "median",
    }

    message = error_message(with_changes(shipped_raw, changes))

    assert "base.seed: expected an integer, got True" in message
    assert "gate.backbone: expected a string, got ['a']" in message
    assert "gate.learning_rate: unknown key" in message
    assert "embed.batch_size: missing" in message
    assert "siamese.lr: must be > 0.0, got 0" in message
    assert "gate.threshold: must be <= 1.0, got 1.5" in message
    assert "retrieval.top_k: must be >= 1, got 0" in message
    assert "split.test_fraction: must be > 0.0, got 0" in message
    assert "gate.pooling: must be one of avg, max, got 'mean'" in message
    assert "retrieval.query_expansion: must be one of none, average, alpha, got 'median'" in message


def test_params_error_is_value_error(shipped_raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_params(with_changes(shipped_raw, {"retrieval.top_k": 0}))


def test_unknown_backbone_reported_with_others(shipped_raw: dict[str, Any]) -> None:
    raw = with_changes(shipped_raw, {"gate.backbone": "resnet5O", "retrieval.top_k": 0})

    message = error_message(raw)

    assert "gate.backbone: unknown timm model 'resnet5O'" in message
    assert "retrieval.top_k: must be >= 1, got 0" in message


def test_known_backbones_accepted(shipped_raw: dict[str, Any]) -> None:
    raw = with_changes(shipped_raw, {"gate.backbone": "resnet50", "siamese.backbone": "resnet152"})

    params = parse_params(raw)

    assert params.gate.backbone == "resnet50"
    assert params.siamese.backbone == "resnet152"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"retrieval.index": " "}, 'retrieval.index: must be "Flat" or a faiss'),
        ({"retrieval.index_search": "nprobe=8"}, "retrieval.index_search: 'nprobe=8' needs"),
        (
            {
                "retrieval.index": "IVF64,Flat",
                "retrieval.scoring": "pair_head",
                "siamese.loss": "contrastive",
                "embed.untrained_weight": 0.0,
            },
            "retrieval.index: pair_head scoring searches exactly",
        ),
    ],
)
def test_index_settings_checked(
    shipped_raw: dict[str, Any], changes: dict[str, Any], problem: str
) -> None:
    message = error_message(with_changes(shipped_raw, changes))

    assert problem in message


def test_approximate_index_accepted(shipped_raw: dict[str, Any]) -> None:
    changes = {"retrieval.index": "IVF4096,Flat", "retrieval.index_search": "nprobe=64"}

    params = parse_params(with_changes(shipped_raw, changes))

    assert params.retrieval.index == "IVF4096,Flat"
    assert params.retrieval.index_search == "nprobe=64"
