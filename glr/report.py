"""The reference report's numbers beside this run's, as one Markdown table.

The reference is G. Baiocchi's student report on the Kaggle Google Landmark Recognition
challenge (Politecnico di Torino): a ResNet-50 landmark gate and a ResNet-152 Siamese net
trained on 21 GLDv2 train shards and tested on 29,930 GLDv2 test images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Metrics = Mapping[str, Any]


@dataclass(frozen=True)
class Row:
    """One number of the report: where this run's value comes from and which params set it."""

    section: str
    description: str
    reported: str
    # Metrics file stem and dotted key inside it, or a function of all metrics files.
    source: tuple[str, str] | Callable[[Mapping[str, Metrics]], Any]
    params: tuple[str, ...]
    unit: str = ""


def _ratio(
    numerator: tuple[str, str], denominator: Sequence[tuple[str, str]]
) -> Callable[[Mapping[str, Metrics]], float | None]:
    """Build a row source: one metric divided by the sum of others."""

    def compute(metrics: Mapping[str, Metrics]) -> float | None:
        top = lookup(metrics, *numerator)
        bottom = sum(lookup(metrics, *item) or 0 for item in denominator)
        return None if top is None or not bottom else top / bottom

    return compute


ROWS: tuple[Row, ...] = (
    Row(
        "Data",
        "train shards downloaded",
        "21",
        ("download", "train.shards"),
        ("download.train_shards",),
    ),
    Row(
        "Data",
        "train images found in those shards",
        "66,173",
        ("data", "train_images_found"),
        ("download.train_shards",),
    ),
    Row(
        "Data",
        "landmark classes of those images",
        "32,770",
        ("data", "train_classes_found"),
        ("download.train_shards",),
    ),
    Row(
        "Data",
        "classes with at least 2 images",
        "13,417",
        ("data", "train_classes_kept"),
        ("filter.min_images", "filter.max_classes"),
    ),
    Row(
        "Data",
        "images of those classes",
        "46,820",
        ("data", "train_images_kept"),
        ("filter.min_images", "filter.max_classes"),
    ),
    Row(
        "Data",
        "share of kept classes held out to validate the Siamese net",
        "20 %",
        _ratio(
            ("split", "siamese_val_classes"),
            [("split", "siamese_val_classes"), ("split", "siamese_train_classes")],
        ),
        ("split.val_fraction",),
        "%",
    ),
    Row(
        "Data",
        "share of images held out to validate the gate",
        "20 %",
        _ratio(
            ("split", "gate_val_images"),
            [("split", "gate_val_images"), ("split", "gate_train_images")],
        ),
        ("split.gate_val_fraction",),
        "%",
    ),
    Row(
        "Data",
        "test images available",
        "117,577",
        ("split", "test_images_available"),
        ("download.test_shards",),
    ),
    Row(
        "Data",
        "test images used as queries",
        "29,930",
        ("split", "test_images_used"),
        ("split.test_fraction",),
    ),
    Row(
        "Data",
        "share of queries that show a landmark",
        "1.592 %",
        ("split", "test_landmark_share"),
        ("split.test_fraction",),
        "%",
    ),
    Row(
        "Gate",
        "parameters, Keras convention",
        "23,589,761",
        ("gate", "keras_parameters_total"),
        ("gate.backbone",),
    ),
    Row(
        "Gate",
        "trainable parameters, Keras convention",
        "22,086,657",
        ("gate", "keras_parameters_trainable"),
        ("gate.backbone", "gate.frozen_blocks"),
    ),
    Row(
        "Gate",
        "parameters, PyTorch convention",
        "23,510,081 (same model)",
        ("gate", "parameters_total"),
        ("gate.backbone",),
    ),
    Row(
        "Gate",
        "trainable parameters, PyTorch convention",
        "22,065,153 (same model)",
        ("gate", "parameters_trainable"),
        ("gate.backbone", "gate.frozen_blocks"),
    ),
    Row(
        "Gate",
        "validation accuracy, last epoch",
        "about 0.5",
        ("train_gate/metrics", "val.acc"),
        ("gate.epochs", "gate.lr", "gate.batch_size"),
    ),
    Row(
        "Gate",
        "precision on the test queries",
        "0.01573",
        ("evaluation", "gate.precision"),
        ("gate.threshold",),
    ),
    Row(
        "Gate",
        "recall on the test queries",
        "0.66239",
        ("evaluation", "gate.recall"),
        ("gate.threshold",),
    ),
    Row(
        "Siamese",
        "training pair accuracy, last epoch",
        "about 0.7",
        ("train_siamese/metrics", "train.acc"),
        ("siamese.epochs", "siamese.lr"),
    ),
    Row(
        "Siamese",
        "pair precision on test pairs",
        "0.00819",
        ("evaluation", "siamese_pairs.precision"),
        ("siamese.backbone", "siamese.lr"),
    ),
    Row(
        "Siamese",
        "pair recall on test pairs",
        "0.27962",
        ("evaluation", "siamese_pairs.recall"),
        ("siamese.backbone", "siamese.lr"),
    ),
    Row(
        "System",
        "gate over all queries",
        "332.75",
        ("evaluation", "system.seconds_gate"),
        ("gate.backbone", "base.image_size"),
        "s",
    ),
    Row(
        "System",
        "retrieval of the queries the gate passes",
        "46.375",
        ("evaluation", "system.seconds_retrieval_gated"),
        ("retrieval.top_k",),
        "s",
    ),
    Row(
        "System",
        "total with the gate",
        "379.125",
        ("evaluation", "system.seconds_with_gate"),
        ("retrieval.top_k",),
        "s",
    ),
    Row(
        "System",
        "total without the gate (every query retrieved)",
        "7,975.232",
        ("evaluation", "system.seconds_without_gate"),
        ("retrieval.top_k",),
        "s",
    ),
    Row(
        "System",
        "speed-up from the gate",
        "21x",
        ("evaluation", "system.speedup"),
        ("gate.threshold",),
        "x",
    ),
    Row(
        "System",
        "GAP with the gate",
        "0",
        ("score_gated", "gap"),
        ("retrieval.scoring", "retrieval.threshold", "retrieval.query_expansion"),
    ),
    Row(
        "System",
        "precision with the gate",
        "0",
        ("score_gated", "precision"),
        ("retrieval.threshold",),
    ),
    Row("System", "recall with the gate", "0", ("score_gated", "recall"), ("retrieval.threshold",)),
    Row(
        "System",
        "GAP without the gate",
        "0",
        ("score_all", "gap"),
        ("retrieval.scoring", "retrieval.threshold", "retrieval.query_expansion"),
    ),
    Row(
        "System",
        "precision without the gate",
        "0",
        ("score_all", "precision"),
        ("retrieval.threshold",),
    ),
    Row(
        "System", "recall without the gate", "0", ("score_all", "recall"), ("retrieval.threshold",)
    ),
    Row(
        "System",
        "mean rank of the first true-landmark index image, before QE",
        "15,687",
        ("score_all", "mean_rank_before_qe"),
        ("siamese.dim",),
    ),
    Row(
        "System",
        "mean rank of the first true-landmark index image, after QE",
        "16,994",
        ("score_all", "mean_rank_after_qe"),
        ("retrieval.query_expansion", "retrieval.top_k"),
    ),
)

FIGURES = (
    ("Landmark gate: accuracy and loss per epoch", "figures/gate_curves.png"),
    ("Siamese net: accuracy and loss per epoch", "figures/siamese_curves.png"),
    ("Siamese training pairs (anchor, positive, negative)", "figures/siamese_pairs.png"),
    ("Training augmentation", "figures/augmentations.png"),
)


def lookup(metrics: Mapping[str, Metrics], stem: str, key: str) -> Any:
    """Return metrics[stem] at a dotted key such as `gate.precision`, or None when absent."""
    value: Any = metrics.get(stem)
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def load_metrics(folder: Path, stems: Sequence[str]) -> dict[str, Metrics]:
    """Read `folder/<stem>.json` for each stem that exists."""
    loaded = {}
    for stem in stems:
        path = folder / f"{stem}.json"
        if path.is_file():
            loaded[stem] = json.loads(path.read_text())
    return loaded


def format_value(value: Any, unit: str) -> str:
    """Format a metric for the table: thousands separators, 4 significant digits, units."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{100 * float(value):.3g} %"
    if unit == "x":
        return f"{float(value):.3g}x"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        text = f"{int(value):,}"
    else:
        text = f"{float(value):.4g}"
    return f"{text} s" if unit == "s" else text


def render_report(metrics: Mapping[str, Metrics], params: Mapping[str, Any]) -> str:
    """Build the Markdown page: one table row per report number, then the figures."""
    lines = [
        "# The reference report's numbers, regenerated",
        "",
        "Each row is a number of the reference report (ResNet-50 gate, ResNet-152 Siamese net, "
        "21 GLDv2 train shards, 29,930 test images) beside the value this run of "
        "`dvc repro` produced, and the params that produced it. "
        "Timings depend on the machine: "
        f"{format_value(lookup(metrics, 'evaluation', 'system.cpu_count'), '')} CPUs, "
        f"{format_value(lookup(metrics, 'evaluation', 'system.torch_threads'), '')} torch threads.",
        "",
        "| section | what | report | this run | params |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        value = row.source(metrics) if callable(row.source) else lookup(metrics, *row.source)
        reported = f"{row.reported} s" if row.unit == "s" else row.reported
        settings = ", ".join(f"`{key}={_param(params, key)}`" for key in row.params)
        lines.append(
            f"| {row.section} | {row.description} | {reported} | "
            f"{format_value(value, row.unit)} | {settings} |"
        )

    lines += ["", "## Figures", ""]
    for title, path in FIGURES:
        lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines)


def _param(params: Mapping[str, Any], key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


METRIC_STEMS = (
    "download",
    "data",
    "split",
    "gate",
    "train_gate/metrics",
    "train_siamese/metrics",
    "evaluation",
    "score_gated",
    "score_all",
)
