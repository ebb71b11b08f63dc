"""What a run's data was: dataset statistics for data.json and the catalogue, and the symbols
that dropped out of training with the reason why.

Every catalogue row carries the statistics of the data its run read (`n_symbols`,
`data_first_date`, `data_last_date`, `n_bars`, `n_features`, ...) and `data.path` names the
database file actually read (absolute), also where the config derived it (`data=synthetic`,
`data=sp500`). The data module writes them into the run's ``data.json`` under ``statistics``;
the catalogue callback merges them into the row with `with_dataset_statistics`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DATA_FILE = "data.json"


def _iso(stamp: pd.Timestamp) -> str:
    """``2018-12-31`` for a bar at midnight, else the full ISO timestamp."""
    return str(stamp.date()) if stamp == stamp.normalize() else stamp.isoformat()


def dataset_statistics(
    path: str, dates: np.ndarray, close: np.ndarray, n_features: int, n_dropped: int
) -> dict[str, int | str]:
    """Statistics of the data a run read.

    Args:
        path: the database file read.
        dates: (T,) the panel's calendar.
        close: (T, S) closes, NaN where a symbol has no bar.
        n_features: model input columns (conditioning labels not included).
        n_dropped: symbols without a complete train window (`dropped_symbols`).

    Returns:
        ``data_path`` (absolute), ``n_symbols``, ``n_dates`` (bars of the calendar),
        ``n_bars`` (symbol-bars with a close), ``data_first_date``, ``data_last_date``,
        ``n_features``, ``n_dropped_symbols``.
    """
    stamps = pd.DatetimeIndex(dates)
    return {
        "data_path": os.path.abspath(path),
        "n_symbols": int(close.shape[1]),
        "n_dates": int(len(stamps)),
        "n_bars": int(np.isfinite(close).sum()),
        "data_first_date": _iso(stamps[0]) if len(stamps) else "",
        "data_last_date": _iso(stamps[-1]) if len(stamps) else "",
        "n_features": int(n_features),
        "n_dropped_symbols": int(n_dropped),
    }


def dropped_symbols(
    features: np.ndarray,
    input_ok: np.ndarray,
    target_ok: np.ndarray,
    close: np.ndarray,
    train: tuple[int, int],
    feature_names: list[str],
    symbols: list[str],
    window: int,
) -> dict[str, str]:
    """Symbols with no complete window in the train segment, each with the reason, logged.

    Args:
        features: (T, S, F) normalised features, NaN where undefined.
        input_ok: (T, S) a complete input window ends at t.
        target_ok: (T, S) the label at t is known.
        close: (T, S) closes, NaN where a symbol has no bar.
        train: first and last decision bar of the train segment (inclusive).
        feature_names: the F column names.
        symbols: the S symbol names.
        window: bars per input window.

    Returns:
        symbol -> reason, in symbol order; empty when every symbol trains.
    """
    lo, hi = train
    trains = (input_ok[lo : hi + 1] & target_ok[lo : hi + 1]).any(axis=0)  # (S,)
    out: dict[str, str] = {}
    for s in np.flatnonzero(~trains):
        seen = features[: hi + 1, s]  # (t, F) every bar a train window can read
        if not np.isfinite(close[: hi + 1, s]).any():
            why = "no bar in the train segment"
        elif empty := [n for j, n in enumerate(feature_names) if not np.isfinite(seen[:, j]).any()]:
            why = f"feature(s) {empty} undefined on every bar up to the end of the train segment"
        elif not input_ok[lo : hi + 1, s].any():
            why = (
                f"no {window} consecutive bars with every feature defined in the train segment "
                "(feature warm-up, gaps or a short history)"
            )
        else:
            why = "no known label in the train segment"
        out[str(symbols[s])] = why
    if out:
        log.warning(
            "%d of %d symbol(s) have no complete window in the train segment and are left out "
            "of training: %s",
            len(out),
            len(symbols),
            "; ".join(f"{sym} ({why})" for sym, why in out.items()),
        )
    return out


def with_dataset_statistics(config: Mapping, run_dir: str | os.PathLike) -> dict:
    """A run's job config with its data.json statistics merged in, for its catalogue row.

    The statistics become root keys (catalogue columns ``n_symbols``, ``data_first_date`` ...)
    and ``data.path`` is replaced by the absolute path of the file read. The model's input
    columns, in order, become ``features.columns`` (a JSON list: which features the run used,
    also under ``features=full`` where ``features.names`` is null). Returns `config` unchanged
    (as a dict) when the run wrote no readable data.json (it failed before its data was loaded).
    """
    out = dict(config)
    try:
        data = json.loads((Path(run_dir) / DATA_FILE).read_text())
        stats = dict(data["statistics"])
    except (OSError, ValueError, KeyError, TypeError):
        return out
    path = stats.pop("data_path", None)
    out.update(stats)
    if path is not None:
        out["data"] = {**(out.get("data") or {}), "path": path}
    columns = (data.get("features") or {}).get("columns")
    if isinstance(columns, list):
        out["features"] = {**(out.get("features") or {}), "columns": list(columns)}
    return out
