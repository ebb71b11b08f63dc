"""Trial selection and deflated Sharpe ratios across the trials of every study in the catalogue.

Select on validation, report on test. A sweep's best trial is chosen by its objective, a
validation metric, and only then is its test Sharpe reported, deflated for the number of trials
tried.

A **study** is the set of completed multirun rows sharing the catalogue column ``study``, across
every invocation (``plusultra -m``) that contributed to it. The callback fills ``study`` with the
``sweep_name`` config key when set, else with the invocation's command-line overrides minus the
swept ones (and minus ``hydra.*`` / ``paths.*``), sorted: ``plusultra -m seed=1,2 data=sp500``
and a later ``plusultra -m seed=3,4 data=sp500`` form the study ``data=sp500`` of 4 trials; with
no fixed override the study is ``(defaults)``. Rows recorded before the column existed fall back
to their sweep directory (the parent of ``run_dir``). Its trials are the completed rows of the
study with a finite ``test_sharpe``; failed or interrupted jobs, completed jobs without a test
Sharpe, and single runs are left out. Per study and trial ``i``:

- ``n_trials`` (``N``): the number of trials of the study; ``n_sweeps``: the sweep directories
  (invocations) they come from.
- ``trial``, ``params``: the Optuna trial number and sampled parameters (catalogue columns
  ``optuna.trial``, ``optuna.params``); null for a multirun of another sweeper.
- ``selected_by``, ``direction``: the study's objective, the ``optimized_metric`` and
  ``optimized_direction`` recorded by its most recently started trial (a direction left null is
  derived from the metric's name, see ``objective.objective_direction``); ``objective``: the
  trial's value of that metric; ``objectives``: a JSON list of its values.
- ``is_best``: the trial with the lowest (``minimize``) or highest (``maximize``) finite
  ``objective`` of its study (ties: the first in ``sweep_dir``, ``job_num`` order), at most one
  per study and none when no trial has the objective. Never chosen by a test metric.
- A multi-objective study (``optimized_metric`` a list, e.g. ``[val_sharpe,
  val_max_drawdown]``): ``selected_by`` is ``pareto(val_sharpe,val_max_drawdown)``,
  ``direction`` the comma-joined directions, ``objective`` the first metric's value, and
  ``is_best`` marks every trial on the study's Pareto front of those validation metrics (a trial
  with a missing value is never on it).
- ``SR_i = test_sharpe_i / sqrt(P_i)``: the per-period test Sharpe, ``P_i`` the run's
  ``periods_per_year`` metric (older rows: ``evaluation.periods_per_year``; 252 when neither).
- ``V`` (``sharpe_variance``): the sample variance (``ddof=1``) of the ``SR_i`` across the
  study, per period (squared per-period Sharpe units); 0 for a one-trial study.
- ``SR0`` (``expected_max_sharpe``): ``evaluation.deflated.expected_max_sharpe(N, V)``, reported
  annualised (times ``sqrt(P_i)``) like ``test_sharpe``.
- ``deflated_sharpe``: ``deflated_sharpe(SR_i, N, V, T_i, skew_i, kurtosis_i)``, a probability,
  with ``T_i = test_n_periods``; null when ``T_i`` is missing or < 2 or the variance term of the
  formula is <= 0. ``skew_i`` and ``kurtosis_i`` are ``test_skew`` and ``test_kurtosis``
  (kurtosis NOT excess); where either is missing (runs recorded before they existed) the normal
  values 0 and 3 are used and ``normal_moments_assumed`` is true. It is about the reported
  (test) Sharpe of a trial; the selection itself never reads the test segment.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd

from plusultra.catalogue.objective import (  # noqa: F401 - objective_value: public here too
    as_list,
    objective_direction,
    objective_directions,
    objective_value,
    pareto_front,
)
from plusultra.errors import ConfigError
from plusultra.evaluation.metrics.deflated import deflated_sharpe_many

DEFAULT_PERIODS_PER_YEAR = 252
"""Used for a run without a ``periods_per_year`` value (catalogues older than that metric)."""
DEFAULT_OBJECTIVE = "val_loss"
"""Objective of rows recorded without an ``optimized_metric`` column."""
INPUT_COLUMNS = (
    "run_id",
    "run_dir",
    "status",
    "multirun",
    "job_num",
    "started_at",
    "study",
    "optimized_metric",
    "optimized_direction",
    "test_sharpe",
    "test_n_periods",
    "test_skew",
    "test_kurtosis",
    "periods_per_year",
    "evaluation.periods_per_year",
    "optuna.trial",
    "optuna.params",
)
"""Catalogue columns ``sweep_table`` reads (besides the objective columns the rows name); all but
the first five (core columns) may be absent."""

SWEEP_COLUMNS: dict[str, str] = {
    "study": "VARCHAR",  # the study identity (sweep_name, or fixed overrides, or sweep dir)
    "sweep_dir": "VARCHAR",  # this trial's sweep directory (one per invocation), parent of run_dir
    "run_id": "VARCHAR",
    "run_dir": "VARCHAR",
    "job_num": "BIGINT",
    "trial": "BIGINT",  # the Optuna trial number (optuna.trial); null outside an Optuna sweep
    "params": "VARCHAR",  # the trial's sampled parameters, JSON {key: value} (optuna.params)
    "n_trials": "BIGINT",  # N: completed trials with a finite test_sharpe in the study
    "n_sweeps": "BIGINT",  # sweep directories (invocations) those trials come from
    "selected_by": "VARCHAR",  # the validation metric (or pareto(m1,m2,...)) selecting the best
    "direction": "VARCHAR",  # minimize | maximize (comma-joined per metric; null: no best)
    "objective": "DOUBLE",  # this trial's value of (the first metric of) selected_by
    "objectives": "VARCHAR",  # JSON list: its value of every selected_by metric, in order
    "is_best": "BOOLEAN",  # best objective of its study, or on its validation Pareto front
    "test_sharpe": "DOUBLE",  # annualised, as in runs (reported, never selected on)
    "sharpe_variance": "DOUBLE",  # V: variance of the per-period Sharpes across the study
    "expected_max_sharpe": "DOUBLE",  # SR0, annualised like test_sharpe
    "deflated_sharpe": "DOUBLE",  # probability that the true Sharpe exceeds SR0
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


def _text(runs: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as strings; None where it is absent, null or empty."""
    if name not in runs.columns:
        return pd.Series(None, index=runs.index, dtype=object)
    return runs[name].map(lambda v: v if isinstance(v, str) and v != "" else None)


def _sweep_dir(run_dir: str) -> str:
    return os.path.dirname(os.path.normpath(run_dir))


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series([], dtype=object) for name in SWEEP_COLUMNS})
    return frame.astype(_pandas_dtypes())


def _pandas_dtypes() -> dict[str, str]:
    kinds = {"VARCHAR": "object", "BIGINT": "Int64", "DOUBLE": "float64", "BOOLEAN": "bool"}
    return {name: kinds[typ] for name, typ in SWEEP_COLUMNS.items()}


def _metric_names(text: str) -> list[str]:
    """The metric(s) of one ``optimized_metric`` cell: a name, or a JSON list of names."""
    listed = as_list(text)
    return [str(n) for n in listed] if listed else [text]


def objective_columns(runs: pd.DataFrame) -> list[str]:
    """Metric columns named by the rows' ``optimized_metric`` (and ``DEFAULT_OBJECTIVE``)."""
    names = {DEFAULT_OBJECTIVE}
    for text in _text(runs, "optimized_metric").dropna():
        names.update(_metric_names(text))
    return sorted(names)


def _json_values(values: np.ndarray) -> list[str]:
    """(N, K) values as one JSON list per row, NaN as null."""
    return [json.dumps([None if math.isnan(v) else float(v) for v in row]) for row in values]


def _select(trials: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Fills ``selected_by``, ``direction``, ``objective(s)`` and ``is_best`` per study, in place.

    One metric: ``is_best`` is the single best value. Several (a multi-objective study):
    ``selected_by`` is ``pareto(m1,m2,...)`` and ``is_best`` marks every trial on the study's
    Pareto front of those validation metrics (``objective.pareto_front``).
    """
    n = len(trials)  # trials has a RangeIndex: group indices are positions
    selected_by = np.full(n, None, dtype=object)
    direction = np.full(n, None, dtype=object)
    objective = np.full(n, np.nan)
    objectives = np.full(n, None, dtype=object)
    is_best = np.zeros(n, dtype=bool)
    numeric: dict[str, pd.Series] = {}  # metric columns as numbers, converted once
    for _, group in trials.groupby("study", sort=False):
        rows = group.index.to_numpy()
        latest = group.sort_values("_started", kind="stable").iloc[-1]
        metric = latest["_metric"] if isinstance(latest["_metric"], str) else DEFAULT_OBJECTIVE
        chosen = latest["_direction"] if isinstance(latest["_direction"], str) else None
        names = _metric_names(metric)
        multi = len(names) > 1
        selected_by[rows] = f"pareto({','.join(names)})" if multi else metric
        for name in names:
            if name not in numeric:
                numeric[name] = _numeric(runs, name)
        values = np.column_stack([numeric[name].loc[group["_row"]].to_numpy() for name in names])
        objective[rows] = values[:, 0]
        objectives[rows] = _json_values(values)
        try:
            directions = objective_directions(names if multi else metric, chosen)
        except ConfigError:
            continue  # an old row with an unusable objective: no best trial
        direction[rows] = ",".join(directions)
        if multi:
            is_best[rows] = pareto_front(values, directions)
            continue
        scores = values[:, 0]
        if np.isfinite(scores).any():
            pick = np.nanargmin(scores) if directions[0] == "minimize" else np.nanargmax(scores)
            is_best[rows[pick]] = True
    trials["selected_by"], trials["direction"] = selected_by, direction
    trials["objective"], trials["objectives"], trials["is_best"] = objective, objectives, is_best


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-trial selection and deflated Sharpe of every study (see the module docstring).

    Args:
        runs: Catalogue rows, e.g. ``SELECT * FROM runs``; needs ``run_id``, ``run_dir``,
            ``status``, ``multirun`` and ``job_num``, and reads the other ``INPUT_COLUMNS`` and
            the objective columns (``objective_columns``) where present.

    Returns:
        One row per trial with the columns of ``SWEEP_COLUMNS`` in that order, sorted by study,
        sweep directory and ``job_num``; empty (same columns) when no multirun row has a finite
        test Sharpe.

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
    sweep_dir = runs["run_dir"].map(lambda d: _sweep_dir(d) if isinstance(d, str) else None)
    started = (
        pd.to_datetime(runs["started_at"], utc=True, errors="coerce")
        if "started_at" in runs.columns
        else pd.Series(pd.NaT, index=runs.index, dtype="datetime64[ns, UTC]")
    )
    trials = pd.DataFrame(
        {
            "study": _text(runs, "study").fillna(sweep_dir),
            "sweep_dir": sweep_dir,
            "run_id": runs["run_id"],
            "run_dir": runs["run_dir"],
            "job_num": pd.to_numeric(runs["job_num"], errors="coerce").astype("Int64"),
            "trial": _numeric(runs, "optuna.trial").astype("Int64"),
            "params": _text(runs, "optuna.params"),
            "test_sharpe": sharpe,
            "periods_per_year": ppy.where(ppy > 0, DEFAULT_PERIODS_PER_YEAR),  # NaN > 0 is False
            "n_periods": _numeric(runs, "test_n_periods"),
            "normal_moments_assumed": (skew.isna() | kurtosis.isna()).to_numpy(),
            "skew": skew.fillna(0.0),
            "kurtosis": kurtosis.fillna(3.0),
            "_row": runs.index,
            "_started": started,
            "_metric": _text(runs, "optimized_metric"),
            "_direction": _text(runs, "optimized_direction"),
        }
    )[keep]
    trials = trials.sort_values(["study", "sweep_dir", "job_num", "run_id"], na_position="last")
    trials = trials.reset_index(drop=True)

    per_period = trials["test_sharpe"] / np.sqrt(trials["periods_per_year"])  # SR_i
    groups = per_period.groupby(trials["study"], sort=False)
    trials["n_trials"] = groups.transform("size").astype("Int64")
    trials["n_sweeps"] = trials.groupby("study")["sweep_dir"].transform("nunique").astype("Int64")
    trials["sharpe_variance"] = groups.transform("var").fillna(0.0)  # ddof=1; 0 when N = 1
    dsr, sr0 = deflated_sharpe_many(  # every trial of every study at once
        per_period.to_numpy(float),
        trials["n_trials"].to_numpy(float, na_value=np.nan),
        trials["sharpe_variance"].to_numpy(float),
        np.floor(trials["n_periods"].to_numpy(float)),
        trials["skew"].to_numpy(float),
        trials["kurtosis"].to_numpy(float),
    )
    trials["expected_max_sharpe"] = sr0 * np.sqrt(trials["periods_per_year"].to_numpy(float))
    trials["deflated_sharpe"] = dsr
    _select(trials, runs)
    return trials[list(SWEEP_COLUMNS)].astype(_pandas_dtypes())


def summary_line(trials: pd.DataFrame, study: str) -> str:
    """One line on the best trial of ``study``, for the log at the end of a multirun.

    Args:
        trials: From ``sweep_table``.
        study: The study, as in the ``study`` column.

    Returns:
        e.g. ``study data=sp500: best of 8 trials (2 sweeps) by val_loss (minimize) is job 3 of
        <sweep dir> (<run_id>): val_loss 0.4210; reported test_sharpe 1.42, deflated Sharpe
        0.913 (expected max Sharpe of 8 unskilled trials 0.87)``.
    """
    rows = trials[trials["study"] == study]
    if rows.empty:
        return f"study {study}: no completed trial with a finite test_sharpe"
    first = rows.iloc[0]
    n, sweeps, metric = int(first["n_trials"]), int(first["n_sweeps"]), first["selected_by"]
    best = rows[rows["is_best"]]
    if best.empty:
        return f"study {study}: {n} trials, none with a finite {metric} to select on"
    if isinstance(metric, str) and metric.startswith("pareto("):
        jobs = "; ".join(
            f"job {'?' if pd.isna(b['job_num']) else int(b['job_num'])} {b['objectives']} "
            f"(test_sharpe {b['test_sharpe']:.2f})"
            for _, b in best.iterrows()
        )
        return (
            f"study {study}: {len(best)} of {n} trials ({sweeps} sweep{'s' * (sweeps > 1)}) on "
            f"the validation Pareto front of {metric} ({first['direction']}): {jobs}"
        )
    best = best.iloc[0]
    job = "?" if pd.isna(best["job_num"]) else int(best["job_num"])
    dsr = "n/a" if pd.isna(best["deflated_sharpe"]) else f"{best['deflated_sharpe']:.3f}"
    return (
        f"study {study}: best of {n} trials ({sweeps} sweep{'s' * (sweeps > 1)}) by {metric} "
        f"({best['direction']}) is job {job} of {best['sweep_dir']} ({best['run_id']}): "
        f"{metric} {best['objective']:.4g}; reported test_sharpe {best['test_sharpe']:.2f}, "
        f"deflated Sharpe {dsr} (expected max Sharpe of {n} unskilled trials "
        f"{best['expected_max_sharpe']:.2f})"
    )
