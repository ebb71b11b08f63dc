"""A finished run directory, loaded: the one input of every report step.

Reads only the run directory (`metrics.json`, `backtest.parquet`, `predictions.parquet`,
`data.json`, optionally `walk_forward.parquet`, `run_id.txt`, `.hydra/overrides.yaml` and
`.hydra/hydra.yaml`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plusultra.data.datasets.calendar import periods_per_year
from plusultra.errors import DataError
from plusultra.evaluation.report.summary import BASELINE_LABELS

COST_TYPES = ("commission", "spread", "impact", "borrow", "funding")
REQUIRED = ("metrics.json", "backtest.parquet", "predictions.parquet", "data.json")


@dataclass
class RunArtifacts:
    """What a finished run directory holds, loaded.

    Attributes:
        run_dir: the run directory.
        metrics: flat `split_metric` dict (NaN where null).
        backtest: per test bar (index `timestamp`): strategy/baseline returns and equity, costs.
        predictions: one row per (symbol, timestamp): forecasts, `position`, `realized_return`
            (with guardrails on, `position` is the traded `guarded_position`).
        sectors: symbol -> sector (None when unknown).
        segment_dates: segment -> [first, last] decision date.
        run_id: the catalogue id from `run_id.txt`, if any.
        choices: Hydra config-group choices (`backbone=...`) in the order of the root defaults
            list, if `.hydra/hydra.yaml` exists.
        overrides: the command line's overrides as typed, in order (`.hydra/overrides.yaml`).
        walk_forward: one row per walk-forward block (`walk_forward.parquet`), if written.
    """

    run_dir: Path
    metrics: dict[str, float]
    backtest: pd.DataFrame
    predictions: pd.DataFrame
    sectors: dict[str, str | None] = field(default_factory=dict)
    segment_dates: dict[str, list[str]] = field(default_factory=dict)
    run_id: str | None = None
    choices: dict[str, str] = field(default_factory=dict)
    walk_forward: pd.DataFrame | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def periods_per_year(self) -> float:
        """Bars a year the run annualised with (`metrics.json`); runs older than that metric:
        derived from the test calendar by the same rule (`data.datasets.calendar`)."""
        value = self.metrics.get("periods_per_year", math.nan)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return float(value)
        return float(periods_per_year(self.backtest.index))

    @property
    def baselines(self) -> list[str]:
        """Baselines with a `<b>_return` column, in display order."""
        return [b for b in BASELINE_LABELS if f"{b}_return" in self.backtest.columns]

    @property
    def cost_columns(self) -> list[str]:
        """`cost_*` columns present (empty with the frictionless simulator)."""
        return [f"cost_{c}" for c in COST_TYPES if f"cost_{c}" in self.backtest.columns]


def _hydra_yaml(run_dir: Path, name: str):
    """The parsed `.hydra/<name>`, or None when it is missing or unreadable."""
    path = run_dir / ".hydra" / name
    if not path.is_file():
        return None
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None


def _choices(run_dir: Path) -> dict[str, str]:
    """Group choices in the order of the root defaults list (Hydra stores them reversed)."""
    cfg = _hydra_yaml(run_dir, "hydra.yaml")
    try:
        choices = cfg.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
    except AttributeError:
        return {}
    items = [(str(k), v) for k, v in choices.items() if not str(k).startswith("hydra")]
    return {k: str(v) for k, v in reversed(items) if v is not None}


def _overrides(run_dir: Path) -> list[str]:
    """The task overrides as typed, in command-line order."""
    raw = _hydra_yaml(run_dir, "overrides.yaml")
    return [str(o) for o in raw] if isinstance(raw, list) else []


def load_run(run_dir: str | os.PathLike, metrics: dict[str, float] | None = None) -> RunArtifacts:
    """Load a finished run directory.

    Args:
        run_dir: the run directory.
        metrics: the run's metrics, in memory: a run renders its reports before it writes
            `metrics.json` (the last file, which marks it complete); None reads the file.

    Raises:
        DataError: `run_dir` is not a directory or lacks a file of a finished run (named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: not a directory")
    needed = REQUIRED if metrics is None else [n for n in REQUIRED if n != "metrics.json"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a finished run: missing {', '.join(missing)} "
            "(metrics.json is written last, when a run completes)"
        )
    raw = json.loads((run_dir / "metrics.json").read_text()) if metrics is None else metrics
    metrics = {k: (math.nan if v is None else v) for k, v in raw.items()}
    data = json.loads((run_dir / "data.json").read_text())
    backtest = pd.read_parquet(run_dir / "backtest.parquet")
    if "timestamp" in backtest.columns:
        backtest = backtest.set_index("timestamp")
    backtest.index = pd.DatetimeIndex(backtest.index, name="timestamp")
    if "strategy_return" not in backtest.columns:
        raise DataError(f"{run_dir / 'backtest.parquet'}: no strategy_return column")
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    for col in ("symbol", "timestamp", "position"):
        if col not in preds.columns:
            raise DataError(f"{run_dir / 'predictions.parquet'}: no {col} column")
    preds["timestamp"] = pd.to_datetime(preds["timestamp"])
    if "guarded_position" in preds.columns:  # guardrails on: report what was traded
        preds["position"] = preds["guarded_position"]
    if "realized_return" not in preds.columns:
        preds["realized_return"] = np.nan
    run_id_path = run_dir / "run_id.txt"
    blocks_path = run_dir / "walk_forward.parquet"
    return RunArtifacts(
        run_dir=run_dir,
        metrics=metrics,
        backtest=backtest.sort_index(),
        predictions=preds,
        sectors=dict(data.get("sectors") or {}),
        segment_dates=dict(data.get("segment_dates") or {}),
        run_id=run_id_path.read_text().strip() if run_id_path.is_file() else None,
        choices=_choices(run_dir),
        overrides=_overrides(run_dir),
        walk_forward=pd.read_parquet(blocks_path) if blocks_path.is_file() else None,
    )
