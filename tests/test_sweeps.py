"""Studies: selection on the validation objective, deflated Sharpe across every invocation of a
study (``sweep_table``, the DuckDB table ``sweeps``, CLI, callback)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from plusultra.catalogue import rows
from plusultra.catalogue.callback import CatalogueCallback, study_of
from plusultra.catalogue.query import connect, query
from plusultra.catalogue.sweeps import (
    SWEEP_COLUMNS,
    objective_direction,
    objective_value,
    sweep_table,
)
from plusultra.cli import catalogue as cli
from plusultra.errors import ConfigError
from plusultra.evaluation.metrics.deflated import deflated_sharpe, expected_max_sharpe

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
SWEEP_A, SWEEP_B = "/out/multiruns/2025-03-04/05-06-07", "/out/multiruns/2025-03-04/09-00-00"
_counter = iter(range(10_000))


def trial(
    run_dir: str,
    sharpe: float | None,
    *,
    job_num: int | None = None,
    status: str = "completed",
    multirun: bool = True,
    metrics: dict | None = None,
    periods_per_year: int | None = 252,
    val_loss: float | None = None,
    study: str | None = None,
    objective: str = "val_loss",
    direction: str | None = None,
) -> dict[str, object]:
    """A catalogue row as the callback writes it; ``metrics`` replaces the default metrics."""
    n = next(_counter)
    if metrics is None:
        metrics = {
            "val_loss": val_loss,
            "test_sharpe": sharpe,
            "test_n_periods": 500.0,
            "test_skew": -0.5 + 0.1 * n,
            "test_kurtosis": 4.0 + 0.2 * n,
        }
    config = {"seed": n, "optimized_metric": objective, "optimized_direction": direction}
    if periods_per_year is not None:
        config["evaluation"] = {"periods_per_year": periods_per_year}
    return rows.build_row(
        run_id=f"20250304-050607-{n:08x}",
        run_dir=run_dir,
        status=status,
        error=None if status == "completed" else "RuntimeError: diverged",
        started_at=T0 + timedelta(seconds=n),
        finished_at=T0 + timedelta(seconds=n + 1),
        git_rev="abc",
        overrides=[f"seed={n}"],
        choices={"backbone": "hybrid"},
        config=config,
        metrics=metrics if status == "completed" else {},
        multirun=multirun,
        job_num=job_num if multirun else None,
        study=study,
    )


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """Sweep A: 3 trials + a failed job + a NaN Sharpe; sweep B: 2 weekly trials; a single run.

    Rows without a study (recorded before the column existed) form one study per sweep dir. In
    both sweeps the trial best on validation is not the one best on test.
    """
    cat = tmp_path / "catalogue"
    for row in (
        trial(f"{SWEEP_A}/0", 1.0, job_num=0, val_loss=0.30),
        trial(f"{SWEEP_A}/1", 2.0, job_num=1, val_loss=0.50),  # best on test
        trial(f"{SWEEP_A}/2", 0.5, job_num=2, val_loss=0.20),  # best on validation
        trial(f"{SWEEP_A}/3", None, job_num=3, status="failed"),
        trial(f"{SWEEP_A}/4", None, job_num=4, val_loss=0.01),  # completed, Sharpe NaN
        trial(f"{SWEEP_B}/0", 0.3, job_num=0, periods_per_year=52, val_loss=0.4),
        trial(f"{SWEEP_B}/1", -0.2, job_num=1, periods_per_year=52, val_loss=0.1),
        trial("/out/runs/2025-03-04/05-06-07", 9.0, multirun=False, val_loss=0.0),  # no sweep
    ):
        rows.write_row(cat, row)
    return cat


def _sweeps(cat: Path, sql: str = "SELECT * FROM sweeps ORDER BY study, job_num") -> pd.DataFrame:
    return query(cat, sql)


def test_trials_exclude_failed_nan_and_single_runs(catalogue: Path) -> None:
    df = _sweeps(catalogue)
    assert list(df.columns) == list(SWEEP_COLUMNS)
    assert df["study"].tolist() == [SWEEP_A] * 3 + [SWEEP_B] * 2
    assert df["sweep_dir"].tolist() == df["study"].tolist() and (df["n_sweeps"] == 1).all()
    assert df["job_num"].tolist() == [0, 1, 2, 0, 1]
    assert df["n_trials"].tolist() == [3, 3, 3, 2, 2]
    assert df["test_sharpe"].tolist() == [1.0, 2.0, 0.5, 0.3, -0.2]
    assert df["periods_per_year"].tolist() == [252.0] * 3 + [52.0] * 2
    assert not df["normal_moments_assumed"].any()
    runs = query(catalogue, "SELECT run_id, run_dir FROM runs")
    by_dir = dict(zip(runs["run_dir"], runs["run_id"], strict=True))
    assert df["run_id"].tolist() == [by_dir[d] for d in df["run_dir"]]


def test_variance_sr0_and_dsr_match_hand_computation(catalogue: Path) -> None:
    df = _sweeps(catalogue).set_index("run_dir")
    per_period = [s / math.sqrt(252) for s in (1.0, 2.0, 0.5)]
    var_a = statistics.variance(per_period)  # ddof=1
    var_b = statistics.variance([0.3 / math.sqrt(52), -0.2 / math.sqrt(52)])
    assert df.loc[f"{SWEEP_A}/0", "sharpe_variance"] == pytest.approx(var_a, rel=1e-12)
    assert df.loc[f"{SWEEP_B}/1", "sharpe_variance"] == pytest.approx(var_b, rel=1e-12)

    best = df.loc[f"{SWEEP_A}/1"]
    sr0 = expected_max_sharpe(3, var_a)
    assert best["expected_max_sharpe"] == pytest.approx(sr0 * math.sqrt(252), rel=1e-12)
    expected = deflated_sharpe(2.0 / math.sqrt(252), 3, var_a, 500, best["skew"], best["kurtosis"])
    assert 0.0 < expected < 1.0
    assert best["deflated_sharpe"] == pytest.approx(expected, rel=1e-12)
    # The skew and kurtosis are the trial's own test_skew / test_kurtosis.
    raw = query(
        catalogue, f"SELECT test_skew, test_kurtosis FROM runs WHERE run_id = '{best.run_id}'"
    )
    assert (best["skew"], best["kurtosis"]) == (raw["test_skew"][0], raw["test_kurtosis"][0])
    # A worse trial of the same sweep is deflated more.
    assert df.loc[f"{SWEEP_A}/2", "deflated_sharpe"] < best["deflated_sharpe"]


def test_is_best_is_chosen_on_validation_not_on_test(catalogue: Path) -> None:
    best = _sweeps(
        catalogue,
        "SELECT study, job_num, test_sharpe, selected_by, direction, objective FROM sweeps "
        "WHERE is_best ORDER BY study",
    )
    assert best.to_dict("list") == {
        "study": [SWEEP_A, SWEEP_B],
        "job_num": [2, 1],  # the lowest val_loss; the highest test Sharpe is job 1 / job 0
        "test_sharpe": [0.5, -0.2],
        "selected_by": ["val_loss", "val_loss"],
        "direction": ["minimize", "minimize"],
        "objective": [0.2, 0.1],
    }


def test_cli_queries_sweeps(catalogue: Path, capsys) -> None:
    sql = (
        "SELECT study, n_trials, test_sharpe, deflated_sharpe FROM sweeps WHERE is_best "
        "ORDER BY study"
    )
    assert cli.main(["--catalogue", str(catalogue), "--format", "json", sql]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["study"], r["n_trials"], r["test_sharpe"]) for r in records] == [
        (SWEEP_A, 3, 0.5),
        (SWEEP_B, 2, -0.2),
    ]
    assert all(0.0 <= r["deflated_sharpe"] <= 1.0 for r in records)
    assert cli.main(["--catalogue", str(catalogue), "SELECT * FROM sweeps WHERE is_best"]) == 0
    out = capsys.readouterr().out
    assert "deflated_sharpe" in out and SWEEP_B in out


def test_sweeps_is_empty_with_typed_columns(tmp_path: Path) -> None:
    con = connect(tmp_path)  # no parquet file at all
    try:
        types = {name: typ for name, typ, *_ in con.sql("DESCRIBE sweeps").fetchall()}
        assert con.sql("SELECT count(*) FROM sweeps").fetchall() == [(0,)]
    finally:
        con.close()
    assert types == SWEEP_COLUMNS
    rows.write_row(tmp_path, trial("/out/runs/a", 1.0, multirun=False))  # single runs only
    rows.write_row(tmp_path, trial("/out/multiruns/x/0", None, job_num=0, status="failed"))
    df = _sweeps(tmp_path)
    assert df.empty and list(df.columns) == list(SWEEP_COLUMNS)
    assert sweep_table(query(tmp_path, "SELECT * FROM runs")).empty


def test_rows_without_moments_or_periods_use_defaults(tmp_path: Path) -> None:
    """Rows recorded before test_skew / test_kurtosis existed: the columns are absent."""
    old = {"test_sharpe": 1.5, "test_n_periods": 300.0}
    rows.write_row(tmp_path, trial("/m/s/0", None, job_num=0, metrics=old))
    rows.write_row(tmp_path, trial("/m/s/1", None, job_num=1, metrics={"test_sharpe": 0.5}))
    rows.write_row(tmp_path, trial("/m/t/0", None, job_num=0, metrics=old, periods_per_year=None))
    runs = query(tmp_path, "SELECT * FROM runs")
    assert "test_skew" not in runs.columns and "test_kurtosis" not in runs.columns
    df = _sweeps(tmp_path)
    assert df["normal_moments_assumed"].all()
    assert df["skew"].tolist() == [0.0] * 3 and df["kurtosis"].tolist() == [3.0] * 3
    assert df["periods_per_year"].tolist() == [252.0] * 3  # t/0 has no such config key
    var = statistics.variance([1.5 / math.sqrt(252), 0.5 / math.sqrt(252)])
    expected = deflated_sharpe(1.5 / math.sqrt(252), 2, var, 300, 0.0, 3.0)
    assert df["deflated_sharpe"][0] == pytest.approx(expected, rel=1e-12)
    assert pd.isna(df["deflated_sharpe"][1])  # no test_n_periods: T unknown
    # A one-trial sweep: no variance, SR0 = 0, the DSR is the probabilistic Sharpe ratio.
    lone = df.iloc[2]
    assert (lone["n_trials"], lone["sharpe_variance"], lone["expected_max_sharpe"]) == (1, 0, 0)
    assert lone["deflated_sharpe"] == pytest.approx(
        deflated_sharpe(1.5 / math.sqrt(252), 1, 0.0, 300, 0.0, 3.0), rel=1e-12
    )
    assert not lone["is_best"]  # no val_loss recorded: nothing to select on


def test_sweep_table_without_any_metric_column() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["r0"],
            "run_dir": ["/m/s/0"],
            "status": ["completed"],
            "multirun": [True],
            "job_num": [0],
        }
    )
    assert sweep_table(runs).empty
    with pytest.raises(ValueError, match="job_num"):
        sweep_table(runs.drop(columns="job_num"))


# --------------------------------------------------------------------------- callback


def multirun_config(tmp_path: Path, sweep_dir: str) -> object:
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "MULTIRUN",
                "sweep": {"dir": sweep_dir, "subdir": "${hydra.job.num}"},
                "runtime": {"cwd": str(tmp_path), "output_dir": "???"},
                "job": {"num": "???"},
            },
        }
    )


def test_on_multirun_end_logs_the_best_trial(tmp_path: Path, caplog) -> None:
    sweep = tmp_path / "multiruns" / "day" / "time"
    for job, (sharpe, loss) in enumerate(((0.4, 0.1), (1.2, 0.2))):
        row = trial(str(sweep / str(job)), sharpe, job_num=job, val_loss=loss, study="(defaults)")
        rows.write_row(tmp_path / "cat", row)
    config = multirun_config(tmp_path, "multiruns/day/time")  # relative to runtime.cwd
    with caplog.at_level(logging.INFO, logger="plusultra.catalogue.callback"):
        CatalogueCallback("cat").on_multirun_end(config)
    (line,) = [r.getMessage() for r in caplog.records if "study" in r.getMessage()]
    best = query(tmp_path / "cat", "SELECT * FROM sweeps WHERE is_best").iloc[0]
    assert line.startswith(
        f"catalogue: study (defaults): best of 2 trials (1 sweep) by val_loss (minimize) is "
        f"job 0 of {sweep} ({best.run_id}): val_loss 0.1"
    )
    assert "test_sharpe 0.40" in line and f"deflated Sharpe {best.deflated_sharpe:.3f}" in line


def test_on_multirun_end_never_raises(tmp_path: Path, caplog) -> None:
    config = multirun_config(tmp_path, "multiruns/x")
    with caplog.at_level(logging.WARNING):
        CatalogueCallback("cat").on_multirun_end(config)  # no catalogue directory at all
    assert "could not summarise the sweep" in caplog.text
    (tmp_path / "cat").mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        CatalogueCallback("cat").on_multirun_end(config)
    assert "no completed trial with a finite test_sharpe" in caplog.text


def test_periods_per_year_metric_wins_over_the_old_config_key(tmp_path: Path) -> None:
    """Runs record the bars a year they annualised with as a metric; older rows have only the
    config key evaluation.periods_per_year, which is still read."""
    cat = tmp_path / "catalogue"
    base = {"test_n_periods": 500.0, "test_skew": 0.0, "test_kurtosis": 3.0}
    for i, (metric, config) in enumerate([(12, None), (12, 252), (None, 52), (None, None)]):
        metrics = (
            base | {"test_sharpe": 1.0} | ({} if metric is None else {"periods_per_year": metric})
        )
        rows.write_row(
            cat, trial(f"/m/s/{i}", 1.0, job_num=i, metrics=metrics, periods_per_year=config)
        )
    df = _sweeps(cat)
    assert df["periods_per_year"].tolist() == [12.0, 12.0, 52.0, 252.0]


# --------------------------------------------------------------------------- studies


def test_deflated_sharpe_counts_every_invocation_of_a_study(tmp_path: Path) -> None:
    """Two `plusultra -m` invocations of one study (two sweep dirs): one study of 4 trials."""
    first, second = "/o/multiruns/d/10-00-00_1-aa", "/o/multiruns/d/11-00-00_2-bb"
    for d, job, sharpe, loss in (
        (first, 0, 1.0, 0.4),
        (first, 1, 0.2, 0.3),
        (second, 0, 1.4, 0.6),
        (second, 1, 0.6, 0.2),
    ):
        row = trial(f"{d}/{job}", sharpe, job_num=job, val_loss=loss, study="data=sp500")
        rows.write_row(tmp_path, row)
    rows.write_row(tmp_path, trial("/o/multiruns/d/12/0", 3.0, job_num=0, study="other"))
    df = _sweeps(tmp_path, "SELECT * FROM sweeps WHERE study = 'data=sp500'")
    assert df["n_trials"].tolist() == [4] * 4 and df["n_sweeps"].tolist() == [2] * 4
    per_period = [s / math.sqrt(252) for s in (1.0, 0.2, 1.4, 0.6)]
    var = statistics.variance(per_period)
    assert df["sharpe_variance"].tolist() == pytest.approx([var] * 4, rel=1e-12)
    assert df["expected_max_sharpe"][0] == pytest.approx(
        expected_max_sharpe(4, var) * math.sqrt(252), rel=1e-12
    )
    (best,) = df[df["is_best"]].itertuples()
    assert (best.sweep_dir, best.job_num, best.objective) == (second, 1, 0.2)  # lowest val_loss
    other = _sweeps(tmp_path, "SELECT * FROM sweeps WHERE study = 'other'")
    assert other["n_trials"].tolist() == [1]


def test_objective_direction_and_maximised_metrics(tmp_path: Path) -> None:
    assert objective_direction("val_loss") == "minimize"
    assert objective_direction("val_naive_loss") == "minimize"
    assert objective_direction("val_sharpe") == "maximize"
    assert objective_direction("val_max_drawdown") == "maximize"  # a negative fraction
    assert objective_direction("val_max_drawdown_duration") == "minimize"
    assert objective_direction("val_sharpe_lo", "maximize") == "maximize"
    for metric, direction, message in (
        ("test_sharpe", None, "validation segment"),
        ("val_sharpe", "up", "optimized_direction='up'"),
        ("val_sharpe_lo", None, "set optimized_direction"),
    ):
        with pytest.raises(ConfigError, match=message):
            objective_direction(metric, direction)
    assert objective_value({"val_sharpe": 1.5}, "val_sharpe") == 1.5
    with pytest.raises(ConfigError, match=r"val_sortino.*\['val_sharpe'\]"):
        objective_value({"val_sharpe": 1.5, "test_sharpe": 2.0}, "val_sortino")
    # A study selected on val_sharpe (maximised); the latest trial's objective is the study's.
    for job, (val, test) in enumerate(((0.5, 2.0), (1.5, 0.1), (None, 9.0))):
        metrics = {"val_sharpe": val, "test_sharpe": test, "test_n_periods": 100.0}
        row = trial(f"/m/s/{job}", None, job_num=job, metrics=metrics, objective="val_sharpe")
        rows.write_row(tmp_path, row)
    df = _sweeps(tmp_path)
    assert df["selected_by"].tolist() == ["val_sharpe"] * 3
    assert df["direction"].tolist() == ["maximize"] * 3
    assert df["is_best"].tolist() == [False, True, False]  # NaN objective is never best
    rows.write_row(tmp_path, trial("/m/u/0", 1.0, job_num=0, val_loss=0.1, objective="val_x"))
    undecided = _sweeps(tmp_path, "SELECT * FROM sweeps WHERE study = '/m/u'")
    assert undecided["direction"].isna().all() and not undecided["is_best"].any()


def test_study_of_drops_swept_hydra_and_paths_overrides() -> None:
    overrides = ["seed=1,2", "data=sp500", "lr=range(1,3)", "hydra.run.dir=x", "paths.output_dir=y"]
    assert study_of([*overrides, "+extra=1", "sweep_name=z"]) == "+extra=1 data=sp500"
    assert study_of(["seed=1,2"]) == study_of([]) == "(defaults)"
