"""Deflated Sharpe ratios across the trials of every multirun sweep in the catalogue.

Picking the best of ``N`` configurations by test Sharpe inflates that Sharpe: even ``N`` trials
without skill produce a best Sharpe near ``SR0``, the expected maximum of ``N`` draws. The
deflated Sharpe ratio (Bailey and Lopez de Prado 2014, ``evaluation.deflated.deflated_sharpe``) is
the probability that a trial's true Sharpe exceeds ``SR0``, given the length and the skewness
and kurtosis of its returns.

A sweep is the set of completed multirun rows whose ``run_dir`` shares a parent directory: in
Hydra multirun a job's directory is ``<hydra.sweep.dir>/<hydra.sweep.subdir>``, the subdir
being the job number by default. Its trials are the completed rows of the sweep with a finite
``test_sharpe``; failed jobs, completed jobs without a test Sharpe, and single runs are left
out. Per sweep and trial ``i``:

- ``N`` (``n_trials``): the number of trials in the sweep.
- ``SR_i = test_sharpe_i / sqrt(P_i)``: the per-period Sharpe, ``P_i`` the run's
  ``periods_per_year`` metric (older rows: ``evaluation.periods_per_year``; 252 when neither).
- ``V`` (``sharpe_variance``): the sample variance (``ddof=1``) of the ``SR_i`` across the
  sweep, per period (squared per-period Sharpe units); 0 for a one-trial sweep.
- ``SR0`` (``expected_max_sharpe``): ``evaluation.deflated.expected_max_sharpe(N, V)``, reported
  annualised (times ``sqrt(P_i)``) like ``test_sharpe``.
- ``deflated_sharpe``: ``deflated_sharpe(SR_i, N, V, T_i, skew_i, kurtosis_i)``, a probability,
  with ``T_i = test_n_periods``; null when ``T_i`` is missing or < 2 or the variance term of the
  formula is <= 0. ``skew_i`` and ``kurtosis_i`` are ``test_skew`` and ``test_kurtosis``
  (kurtosis NOT excess); where either is missing (runs recorded before they existed) the normal
  values 0 and 3 are used and ``normal_moments_assumed`` is true.
- ``is_best``: the trial with the highest ``test_sharpe`` in its sweep (ties: the lowest
  ``job_num``), exactly one per sweep.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from plusultra.evaluation.metrics.deflated import deflated_sharpe, expected_max_sharpe

DEFAULT_PERIODS_PER_YEAR = 252
"""Used for a run without a ``periods_per_year`` value (catalogues older than that metric)."""

INPUT_COLUMNS = (
    "run_id",
    "run_dir",
    "status",
    "multirun",
    "job_num",
    "test_sharpe",
    "test_n_periods",
    "test_skew",
    "test_kurtosis",
    "periods_per_year",
    "evaluation.periods_per_year",
)
"""Catalogue columns ``sweep_table`` reads; all but the first five (core columns) may be absent."""

SWEEP_COLUMNS: dict[str, str] = {
    "sweep": "VARCHAR",  # the sweep directory, parent of run_dir
    "run_id": "VARCHAR",
    "run_dir": "VARCHAR",
    "job_num": "BIGINT",
    "n_trials": "BIGINT",  # N: completed trials with a finite test_sharpe in the sweep
    "test_sharpe": "DOUBLE",  # annualised, as in runs
    "sharpe_variance": "DOUBLE",  # V: variance of the per-period Sharpes across the sweep
    "expected_max_sharpe": "DOUBLE",  # SR0, annualised like test_sharpe
    "deflated_sharpe": "DOUBLE",  # probability that the true Sharpe exceeds SR0
    "is_best": "BOOLEAN",  # highest test_sharpe of its sweep
    "periods_per_year": "DOUBLE",  # P used to de-annualise test_sharpe
    "n_periods": "DOUBLE",  # T: test_n_periods
    "skew": "DOUBLE",  # test_skew, or 0 when assumed
    "kurtosis": "DOUBLE",  # test_kurtosis (not excess), or 3 when assumed
    "normal_moments_assumed": "BOOLEAN",  # skew/kurtosis missing: 0 and 3 used
}
"""Columns of ``sweep_table`` (and of the DuckDB table ``sweeps``) with their DuckDB types."""

_REQUIRED = INPUT_COLUMNS[:5]


def _numeric(runs: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as floats; NaN where it is absent, null, infinite or not a number."""
    if name not in runs.columns:
        return pd.Series(np.nan, index=runs.index, dtype=float)
    values = pd.to_numeric(runs[name], errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def _sweep_dir(run_dir: str) -> str:
    return os.path.dirname(os.path.normpath(run_dir))


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series([], dtype=object) for name in SWEEP_COLUMNS})
    return frame.astype(_pandas_dtypes())


def _pandas_dtypes() -> dict[str, str]:
    kinds = {"VARCHAR": "object", "BIGINT": "Int64", "DOUBLE": "float64", "BOOLEAN": "bool"}
    return {name: kinds[typ] for name, typ in SWEEP_COLUMNS.items()}


def _dsr(
    sharpe: float, n_trials: int, variance: float, n_periods: float, skew: float, kurtosis: float
) -> float:
    """``deflated_sharpe`` with per-period inputs; NaN when ``n_periods`` is unknown."""
    if not math.isfinite(n_periods):
        return math.nan
    return deflated_sharpe(sharpe, n_trials, variance, int(n_periods), skew, kurtosis)


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-trial deflated Sharpe ratios of every sweep (definitions in the module docstring).

    Args:
        runs: Catalogue rows, e.g. ``SELECT * FROM runs``; needs ``run_id``, ``run_dir``,
            ``status``, ``multirun`` and ``job_num``, and reads the other ``INPUT_COLUMNS``
            where present.

    Returns:
        One row per trial with the columns of ``SWEEP_COLUMNS`` in that order, sorted by sweep
        and ``job_num``; empty (same columns) when no multirun row has a finite test Sharpe.

    Raises:
        ValueError: If a required column is missing.
    """
    missing = [name for name in _REQUIRED if name not in runs.columns]
    if missing:
        raise ValueError(f"sweep_table needs the catalogue columns {missing}")
    runs = runs.reset_index(drop=True)
    sharpe = _numeric(runs, "test_sharpe")
    multirun = runs["multirun"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    has_dir = runs["run_dir"].map(lambda d: isinstance(d, str) and d != "").to_numpy(dtype=bool)
    completed = (runs["status"] == "completed").to_numpy(dtype=bool, na_value=False)
    keep = completed & multirun & has_dir
    keep &= sharpe.notna().to_numpy()
    if not keep.any():
        return _empty()

    # the metric the run annualised with; older catalogues only have the config key
    ppy = _numeric(runs, "periods_per_year").fillna(_numeric(runs, "evaluation.periods_per_year"))
    skew, kurtosis = _numeric(runs, "test_skew"), _numeric(runs, "test_kurtosis")
    trials = pd.DataFrame(
        {
            "sweep": runs["run_dir"].map(lambda d: _sweep_dir(d) if isinstance(d, str) else None),
            "run_id": runs["run_id"],
            "run_dir": runs["run_dir"],
            "job_num": pd.to_numeric(runs["job_num"], errors="coerce").astype("Int64"),
            "test_sharpe": sharpe,
            "periods_per_year": ppy.where(ppy > 0, DEFAULT_PERIODS_PER_YEAR),  # NaN > 0 is False
            "n_periods": _numeric(runs, "test_n_periods"),
            "normal_moments_assumed": (skew.isna() | kurtosis.isna()).to_numpy(),
            "skew": skew.fillna(0.0),
            "kurtosis": kurtosis.fillna(3.0),
        }
    )[keep]
    trials = trials.sort_values(["sweep", "job_num", "run_id"], na_position="last")
    trials = trials.reset_index(drop=True)

    per_period = trials["test_sharpe"] / np.sqrt(trials["periods_per_year"])  # SR_i
    groups = per_period.groupby(trials["sweep"], sort=False)
    trials["n_trials"] = groups.transform("size").astype("Int64")
    trials["sharpe_variance"] = groups.transform("var").fillna(0.0)  # ddof=1; 0 when N = 1
    sr0 = [
        expected_max_sharpe(int(n), float(v))
        for n, v in zip(trials["n_trials"], trials["sharpe_variance"], strict=True)
    ]
    trials["expected_max_sharpe"] = np.asarray(sr0) * np.sqrt(trials["periods_per_year"])
    trials["deflated_sharpe"] = [
        _dsr(sr, int(n), v, t, sk, ku)
        for sr, n, v, t, sk, ku in zip(
            per_period,
            trials["n_trials"],
            trials["sharpe_variance"],
            trials["n_periods"],
            trials["skew"],
            trials["kurtosis"],
            strict=True,
        )
    ]
    best = trials.groupby("sweep", sort=False)["test_sharpe"].idxmax()  # first of equals
    trials["is_best"] = trials.index.isin(best.to_numpy())
    return trials[list(SWEEP_COLUMNS)].astype(_pandas_dtypes())


def summary_line(trials: pd.DataFrame, sweep: str) -> str:
    """One line on the best trial of ``sweep``, for the log at the end of a multirun.

    Args:
        trials: From ``sweep_table``.
        sweep: The sweep directory, as in the ``sweep`` column.

    Returns:
        e.g. ``sweep <dir>: best of 8 trials is job 3 (<run_id>): test_sharpe 1.42, deflated
        Sharpe 0.913 (expected max Sharpe of 8 unskilled trials 0.87)``.
    """
    rows = trials[(trials["sweep"] == sweep) & trials["is_best"]]
    if rows.empty:
        return f"sweep {sweep}: no completed trial with a finite test_sharpe"
    best = rows.iloc[0]
    job = "?" if pd.isna(best["job_num"]) else int(best["job_num"])
    dsr = "n/a" if pd.isna(best["deflated_sharpe"]) else f"{best['deflated_sharpe']:.3f}"
    n = int(best["n_trials"])
    return (
        f"sweep {sweep}: best of {n} trials is job {job} ({best['run_id']}): "
        f"test_sharpe {best['test_sharpe']:.2f}, deflated Sharpe {dsr} "
        f"(expected max Sharpe of {n} unskilled trials {best['expected_max_sharpe']:.2f})"
    )
