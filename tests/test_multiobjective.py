"""Multi-objective sweeps (val Sharpe against val max drawdown) and the trial columns of the
catalogue: objectives, the Pareto front (fast and reference), sweeps' is_best, saved queries."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plusultra.catalogue import rows
from plusultra.catalogue.objective import (
    check_sweeper_directions,
    objective_directions,
    objective_metrics,
    objective_value,
    pareto_front,
    pareto_front_ref,
)
from plusultra.catalogue.query import query
from plusultra.catalogue.sweeps import summary_line
from plusultra.catalogue.trials import TRIAL_COLUMNS, trial_columns
from plusultra.cli import catalogue as cli
from plusultra.errors import ConfigError

PAIR = ["val_sharpe", "val_max_drawdown"]
T0 = datetime(2025, 7, 1, 9, 0, 0, tzinfo=UTC)
# trial, val_sharpe, val_max_drawdown, test_sharpe: front = 0 (best Sharpe), 2 (shallowest
# drawdown), 3 (between); 1 is dominated by 0, 4 by 3; 5 failed.
TRIALS = ((0, 1.5, -0.30, 0.1), (1, 1.0, -0.35, 2.0), (2, 0.2, -0.05, -0.3), (3, 0.9, -0.10, 0.4))
TRIALS += ((4, 0.8, -0.12, 1.9),)
FRONT = {0, 2, 3}


def test_objectives_are_val_metrics_with_one_direction_each():
    assert objective_metrics("val_loss") == ["val_loss"]
    assert objective_metrics(PAIR) == PAIR
    assert objective_metrics(json.dumps(PAIR)) == PAIR  # as the catalogue stores the list
    assert objective_directions(PAIR) == ["maximize", "maximize"]  # drawdown: closer to 0
    assert objective_directions(["val_loss", "val_sharpe"], [None, "minimize"]) == [
        "minimize",
        "minimize",
    ]
    assert objective_directions("val_loss", "maximize") == ["maximize"]
    for metric, direction, message in (
        (["val_sharpe", "test_max_drawdown"], None, "'test_max_drawdown'.*validation segment"),
        ([], None, "at least one"),
        (["val_sharpe", "val_sharpe"], None, "listed twice"),
        (PAIR, ["maximize"], "1 entries"),
        (PAIR, "maximize", "one direction \\(or null\\) per metric"),
    ):
        with pytest.raises(ConfigError, match=message):
            objective_directions(metric, direction)
    metrics = {"val_sharpe": 1.2, "val_max_drawdown": -0.1, "test_sharpe": 3.0}
    assert objective_value(metrics, PAIR) == [1.2, -0.1]
    assert objective_value(metrics, "val_sharpe") == 1.2
    with pytest.raises(ConfigError, match="val_sortino"):
        objective_value(metrics, ["val_sharpe", "val_sortino"])


def test_sweeper_direction_must_match_the_objective():
    check_sweeper_directions(["maximize", "maximize"], ["maximize", "maximize"])
    check_sweeper_directions(["minimize"], "minimize")
    check_sweeper_directions(["minimize"], None)  # Hydra's basic sweeper: nothing to check
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=\\['minimize'\\]"):
        check_sweeper_directions(["maximize"], "minimize")
    with pytest.raises(ConfigError, match="one entry per metric"):
        check_sweeper_directions(["maximize", "maximize"], "maximize")


def test_pareto_front_matches_the_reference():
    rng = np.random.default_rng(0)
    for n, k in ((1, 2), (7, 2), (40, 2), (30, 3)):
        values = rng.integers(0, 5, size=(n, k)).astype(float)  # small ints: ties and repeats
        values[rng.random((n, k)) < 0.1] = np.nan
        for directions in (["maximize"] * k, ["minimize"] + ["maximize"] * (k - 1)):
            fast = pareto_front(values, directions)
            assert fast.tolist() == pareto_front_ref(values.tolist(), directions)
    same = pareto_front(np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), ["maximize"] * 2)
    assert same.tolist() == [True, True, False]  # identical points are all on the front


def _row(trial: int, metrics: dict, status: str = "completed", study: str = "risk") -> dict:
    config = {
        "seed": 1,
        "optim": {"lr": 0.001 * (trial + 1)},
        "optimized_metric": PAIR,
        "optimized_direction": ["maximize", None],
        "optuna": {"study": "run-abc", "trial": trial, "params": ["optim.lr", "++backbone"]},
    }
    return rows.build_row(
        run_id=f"20250701-090000-{trial:08x}",
        run_dir=f"/out/multiruns/{study}/{trial}",
        status=status,
        error=None if status == "completed" else "RuntimeError: diverged",
        started_at=T0 + timedelta(seconds=trial),
        finished_at=T0 + timedelta(seconds=trial + 1),
        git_rev="abc",
        overrides=[],
        choices={"backbone": "tcn", "head": "regression", "loss": "risk_aware"},
        config=config,
        metrics=metrics,
        multirun=True,
        job_num=trial,
        study=study,
    )


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A multi-objective study (TRIALS, a failed trial 5) and a one-trial study beside it."""
    cat = tmp_path / "catalogue"
    for trial, sharpe, mdd, test in TRIALS:
        metrics = {"val_sharpe": sharpe, "val_max_drawdown": mdd, "test_sharpe": test}
        metrics["test_max_drawdown"] = -0.2
        rows.write_row(cat, _row(trial, metrics | {"test_n_periods": 200.0}))
    rows.write_row(cat, _row(5, {}, status="failed"))
    other = {"val_sharpe": 0.1, "val_max_drawdown": -0.9, "test_sharpe": 0.0}
    other["test_max_drawdown"] = -0.5
    rows.write_row(cat, _row(6, other | {"test_n_periods": 200.0}, study="other"))
    return cat


def test_a_trial_row_carries_its_params_state_and_objectives():
    row = _row(2, {"val_sharpe": 0.2, "val_max_drawdown": float("nan"), "test_sharpe": 1.0})
    assert row["optuna.study"] == "run-abc" and row["optuna.trial"] == 2
    assert json.loads(row["optuna.params"]) == {"optim.lr": 0.003, "backbone": "tcn"}
    assert row["objective"] == 0.2 and json.loads(row["objectives"]) == [0.2, None]
    failed = _row(5, {}, status="failed")
    assert failed["status"] == "failed" and np.isnan(failed["objective"])
    assert "objectives" not in failed  # no metric at all: no list
    single = rows.build_row(**{**_args(), "config": {"optimized_metric": "val_loss"}})
    assert single["objective"] == 0.4 and single["objectives"] == "[0.4]"
    assert "optuna.params" not in single  # not a sweep job
    pruned = trial_columns({"optimized_metric": "val_sharpe"}, {}, {"pruned_value": 0.7})
    assert pruned == {"objective": 0.7, "objectives": "[0.7]"}  # its last reported value


def _args() -> dict:
    return dict(
        run_id="20250701-090000-ffffffff",
        run_dir="/out/runs/x",
        status="completed",
        error=None,
        started_at=T0,
        finished_at=T0,
        git_rev="abc",
        overrides=[],
        choices={},
        config={},
        metrics={"val_loss": 0.4},
    )


def test_sweeps_marks_the_validation_pareto_front_per_study(catalogue, capsys):
    table = query(catalogue, "SELECT * FROM sweeps ORDER BY study, trial")
    risk = table[table["study"] == "risk"]
    assert set(risk.loc[risk["is_best"], "trial"]) == FRONT  # not test_sharpe's winners (1, 4)
    assert set(risk["selected_by"]) == {"pareto(val_sharpe,val_max_drawdown)"}
    assert set(risk["direction"]) == {"maximize,maximize"}
    assert risk["objective"].tolist() == [t[1] for t in TRIALS]
    assert [json.loads(o) for o in risk["objectives"]] == [[t[1], t[2]] for t in TRIALS]
    assert json.loads(risk["params"].iloc[0]) == {"optim.lr": 0.001, "backbone": "tcn"}
    other = table[table["study"] == "other"]
    assert other["is_best"].tolist() == [True]  # its own front, not dominated by trial 0
    line = summary_line(table, "risk")
    assert line.startswith("study risk: 3 of 5 trials (1 sweep) on the validation Pareto front")

    front = _query(catalogue, "pareto_front", capsys)
    assert set(front.loc[front["study"] == "risk", "trial"]) == FRONT  # same front in SQL
    assert front.loc[front["study"] == "other", "trial"].tolist() == [6]

    trials = _query(catalogue, "sweep_trials", capsys)
    risk = trials[trials["study"] == "risk"]
    assert risk["trial"].tolist() == [0, 2, 3, 1, 4, 5]  # the front first, then by number
    assert risk["state"].tolist() == ["completed"] * 5 + ["failed"]
    assert json.loads(risk["params"].iloc[-1]) == {"optim.lr": 0.006, "backbone": "tcn"}
    assert json.loads(risk["objectives"].iloc[0]) == [1.5, -0.3]


def test_old_catalogues_without_trial_columns_still_answer(tmp_path, capsys):
    row = rows.build_row(**{**_args(), "multirun": True, "job_num": 0, "study": "s"})
    for name in TRIAL_COLUMNS:
        row.pop(name, None)
    rows.write_row(tmp_path, row)
    trials = _query(tmp_path, "sweep_trials", capsys)
    assert trials["trial"].tolist() == [0] and trials["params"].isna().all()


def _query(catalogue: Path, name: str, capsys) -> pd.DataFrame:
    assert cli.main(["--query", name, "--catalogue", str(catalogue), "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


@pytest.mark.slow
def test_risk_pareto_search_runs_end_to_end(tmp_path):
    """`plusultra -m hparams_search=risk_pareto` with 2 tiny trials: two values per trial, the
    catalogue rows carry the trial columns, and sweeps marks the front."""
    import optuna

    from tests.conftest import TINY, run_cli

    res = run_cli(
        ["plusultra.run", "-m", "hparams_search=risk_pareto", "hydra.sweeper.n_trials=2", *TINY],
        tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (db,) = (tmp_path / "optuna").glob("*.db")
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(len(t.values) == 2 for t in study.trials)
    runs = query(tmp_path / "catalogue", 'SELECT * FROM runs ORDER BY "optuna.trial"')
    assert runs["optuna.trial"].tolist() == [0, 1]
    assert set(runs["optuna.study"]) == {summary.study_name}
    for (_, run), trial in zip(runs.iterrows(), study.trials, strict=True):
        assert json.loads(run["objectives"]) == pytest.approx(trial.values)
        params = json.loads(run["optuna.params"])
        assert params == pytest.approx(trial.params)
    sweeps = query(tmp_path / "catalogue", "SELECT * FROM sweeps")
    on_front = {t.number for t in study.best_trials}
    assert set(sweeps.loc[sweeps["is_best"], "trial"]) == on_front
