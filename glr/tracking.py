"""Per-epoch training logs through dvclive, in files that dvc.yaml declares as plots."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live


class EpochLogger:
    """Write each epoch's metrics with dvclive under `folder` (plots/metrics/*.tsv)."""

    def __init__(self, folder: str | Path) -> None:
        # dvc.yaml already declares these files, so dvclive must not edit it.
        self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None)
        self.history: list[dict[str, float]] = []

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.history.append(dict(metrics))
        for name, value in metrics.items():
            split = "val" if name.startswith("val_") else "train"
            self.live.log_metric(f"{split}/{name.removeprefix('val_')}", value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
