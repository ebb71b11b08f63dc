"""A run's drift: its train-segment reference sample and the drift of validation and test.

The rows compared are the model's inputs at each decision bar: the normalised (train-segment
statistics, clipped) feature vector ``features[t, s, :]`` of every (decision bar t, symbol s)
whose input window is complete, i.e. exactly the decisions ``inference_dataset(segment)``
serves. Each segment is sampled (seeded, without replacement, kept in time order) to at most
`MAX_ROWS` rows, which bounds the cost on large universes.

A run writes (`write_drift`):

- ``drift_reference.parquet``: the train sample: ``timestamp``, ``symbol``, then one float
  column per feature in model order (what `drift.load_reference` and the service read);
- ``drift.parquet``: one `drift.drift_table` row per (segment, feature) for ``val`` and
  ``test`` against that reference (what the report's drift section reads);

and its metrics get ``<segment>_max_psi``, ``<segment>_drift_features`` (features at level
``major``) and ``<segment>_drift_warnings`` (regime-shift warnings, `drift.regime_warnings`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plusultra.evaluation.drift import LEVELS, REFERENCE_FILE, drift_table, regime_warnings
from plusultra.io import write_parquet_atomic

MAX_ROWS = 10_000  # rows sampled per segment (the reference and each compared segment)
TABLE_FILE = "drift.parquet"  # in a run dir: drift of val and test against the reference
SEGMENTS = ("val", "test")  # compared against the train reference


@dataclass
class RunDrift:
    """A run's drift.

    Attributes:
        reference: the train sample: ``timestamp``, ``symbol``, one column per feature.
        table: ``segment`` then the `drift_table` columns, for val and test.
        metrics: ``<segment>_max_psi``, ``<segment>_drift_features``,
            ``<segment>_drift_warnings``.
    """

    reference: pd.DataFrame
    table: pd.DataFrame
    metrics: dict[str, float]


def sample_decisions(
    ok: np.ndarray, lo: int, hi: int, max_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(t, s) of at most `max_rows` decisions with ``ok[t, s]`` and lo <= t <= hi, drawn
    without replacement by `rng` and kept in (t, s) order.

    Args:
        ok: (T, S) bool, a complete input window at (t, s).
        lo, hi: the segment's first and last decision bar (inclusive).
        max_rows: most decisions returned.
        rng: the sampling generator (seeded by the caller).
    """
    t, s = np.nonzero(ok[lo : hi + 1])
    if len(t) > max_rows:
        keep = np.sort(rng.choice(len(t), size=max_rows, replace=False))
        t, s = t[keep], s[keep]
    return t + lo, s


def compute_drift(
    features: np.ndarray,
    ok: np.ndarray,
    segments: dict[str, tuple[int, int]],
    dates: np.ndarray,
    symbols: list[str],
    names: list[str],
    seed: int,
    max_rows: int = MAX_ROWS,
) -> RunDrift:
    """The train reference sample and the drift of every other segment against it.

    Args:
        features: (T, S, F) normalised model inputs.
        ok: (T, S) bool, complete input windows.
        segments: segment name -> (first, last) decision bar; needs ``train``.
        dates: (T,) bar timestamps.
        symbols: the S symbols.
        names: the F feature names.
        seed: seeds the samples (one generator, train first, then the others in order).
        max_rows: rows sampled per segment.
    """
    rng = np.random.default_rng(seed)
    rows = {}
    for name, (lo, hi) in segments.items():
        t, s = sample_decisions(ok, lo, hi, max_rows, rng)
        rows[name] = (t, s, features[t, s])  # (n, F)
    t, s, ref = rows["train"]
    reference = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex(dates)[t],
            "symbol": np.asarray(symbols, dtype=object)[s],
            **{n: ref[:, j].astype(np.float32) for j, n in enumerate(names)},
        }
    )
    tables, metrics = [], {}
    for name, (_, _, cur) in rows.items():
        if name == "train":
            continue
        table = drift_table(ref, cur, names)
        tables.append(table.assign(segment=name))
        psi = table["psi"].to_numpy()
        metrics[f"{name}_max_psi"] = float(np.nanmax(psi)) if np.isfinite(psi).any() else math.nan
        metrics[f"{name}_drift_features"] = int((table["level"] == LEVELS[2]).sum())
        metrics[f"{name}_drift_warnings"] = len(regime_warnings(table))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    columns = ["segment", *[c for c in table.columns if c != "segment"]]
    return RunDrift(reference, table[columns] if tables else table, metrics)


def datamodule_drift(datamodule, seed: int, max_rows: int = MAX_ROWS) -> RunDrift:
    """`compute_drift` of a set-up `SQLiteDataModule`: train reference, val and test compared."""
    seg = datamodule.segments
    return compute_drift(
        datamodule.features,
        datamodule.input_ok,
        {"train": seg.train, **{name: getattr(seg, name) for name in SEGMENTS}},
        datamodule.panel.dates,
        list(datamodule.panel.symbols),
        list(datamodule.feature_names),
        seed,
        max_rows,
    )


def write_drift(run_dir: str | os.PathLike, drift: RunDrift) -> None:
    """Write ``drift_reference.parquet`` and ``drift.parquet`` into `run_dir` (atomically)."""
    run_dir = Path(run_dir)
    write_parquet_atomic(run_dir / REFERENCE_FILE, drift.reference)
    write_parquet_atomic(run_dir / TABLE_FILE, drift.table)
