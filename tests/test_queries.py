"""Saved queries (``plusultra-catalogue --query NAME``, experiments/queries/*.sql) and export."""

from __future__ import annotations

import io
import math
import re
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from plusultra.catalogue import rows
from plusultra.catalogue.query import QUERIES_DIR, CatalogueError, saved_queries, saved_query
from plusultra.cli import catalogue as cli

T0 = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
SWEEP = "/out/multiruns/2025-05-06/07-08-09"
# job, backbone, seed, val_sharpe, val_max_drawdown, test_sharpe: validation and test orders
# differ, so a query ranking on test would pick other runs.
TRIALS = (
    (0, "tcn", 1, 1.0, -0.10, 0.2),
    (1, "tcn", 2, 0.5, -0.05, 1.5),  # best tcn on test
    (2, "hybrid", 1, 0.8, -0.20, 0.1),
    (3, "hybrid", 2, 1.2, -0.30, -0.4),
    (4, "hybrid", 3, 0.3, -0.25, 2.0),  # best of all on test
)


def _row(
    job: int,
    backbone: str,
    seed: int,
    metrics: dict,
    status: str = "completed",
    multirun: bool = True,
) -> dict:
    return rows.build_row(
        run_id=f"20250506-070809-{job:08x}",
        run_dir=f"{SWEEP}/{job}",
        status=status,
        error=None if status == "completed" else "RuntimeError: diverged",
        started_at=T0 + timedelta(seconds=job),
        finished_at=T0 + timedelta(seconds=job + 1),
        git_rev="abc",
        overrides=[f"backbone={backbone}", f"seed={seed}"],
        choices={"backbone": backbone, "head": "regression", "loss": "mse", "data": "synthetic"}
        | {"simulator": "frictionless", "curriculum": "supervised", "evaluation": "weights"},
        config={
            "seed": seed,
            "depth": 2,
            "d_model": 16,
            "window": 16,
            "horizon": 2,
            "optimized_metric": "val_sharpe",
            "optimized_direction": None,
            "evaluation": {"periods_per_year": 252},
        },
        metrics=metrics,
        multirun=multirun,
        job_num=job if multirun else None,
        study="backbones" if multirun else None,
    )


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """Five completed trials of one study (TRIALS) and a failed one."""
    cat = tmp_path / "catalogue"
    for job, backbone, seed, val_sharpe, val_mdd, test_sharpe in TRIALS:
        metrics = {
            "val_loss": 0.5 - 0.1 * job,
            "val_sharpe": val_sharpe,
            "val_max_drawdown": val_mdd,
            "test_sharpe": test_sharpe,
            "test_max_drawdown": -0.2,
            "test_loss": 0.3,
            "test_n_periods": 250.0,
            "n_params": 1000,
            "supervised_best_val_loss": 0.5 - 0.1 * job,
            "ppo_best_epoch": -1 if job % 2 else 0,
            "test_sharpe_lo": test_sharpe - 1.0,
            "test_sharpe_hi": test_sharpe + 1.0,
            **{f"{seg}_turnover": 0.3 for seg in ("val", "test")},
            "test_gross_exposure": 0.5,
            **{  # the baselines' columns (rl_vs_supervised sets them beside the arms)
                f"{seg}_{b}_{m}": v
                for seg in ("val", "test")
                for b in ("buyhold", "equal_weight")
                for m, v in (("sharpe", 0.4), ("max_drawdown", -0.3), ("turnover", 0.01))
            },
        }
        rows.write_row(cat, _row(job, backbone, seed, metrics))
    rows.write_row(cat, _row(5, "tcn", 3, {}, status="failed"))
    return cat


def _query(catalogue: Path, name: str, capsys) -> pd.DataFrame:
    assert cli.main(["--query", name, "--catalogue", str(catalogue), "--format", "csv"]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_every_saved_query_is_headed_by_what_it_shows_and_its_launch_command():
    queries = saved_queries()
    expected = {"leaderboard", "best_per_backbone", "variance_over_seeds", "sweep_trials"}
    assert expected | {"pareto_front"} <= set(queries)
    for name, about in queries.items():
        assert about, name
        text = saved_query(name)
        launch = rf"-- Launch: plusultra-catalogue (--catalogue \S+ )?--query {name}"
        assert re.fullmatch(launch, text.splitlines()[1]), name


# The results recipe's queries read a results catalogue (its parts' sweep_name, the variant
# columns); tests/test_results_report.py and test_results_recipe.py run them on one.
GENERIC = sorted(q for q in saved_queries() if not q.startswith("results_"))


@pytest.mark.parametrize("name", GENERIC)
def test_every_saved_query_runs_on_a_small_catalogue(catalogue, name, capsys):
    assert not _query(catalogue, name, capsys).empty


def test_leaderboard_ranks_completed_runs_by_validation_not_test(catalogue, capsys):
    board = _query(catalogue, "leaderboard", capsys)
    by_val = sorted(TRIALS, key=lambda t: -t[3])
    assert board["val_sharpe"].tolist() == [t[3] for t in by_val]
    assert board["test_sharpe"].tolist() == [t[5] for t in by_val]  # shown beside, not ranked
    assert board["rank"].tolist() == [1, 2, 3, 4, 5]
    assert board["test_sharpe"].tolist() != sorted(board["test_sharpe"], reverse=True)


def test_best_per_backbone_is_chosen_on_validation(catalogue, capsys):
    best = _query(catalogue, "best_per_backbone", capsys)
    assert best["backbone"].tolist() == ["hybrid", "tcn"]
    assert best["val_sharpe"].tolist() == [1.2, 1.0]  # not the best-on-test runs (4 and 1)
    assert best["n_runs"].tolist() == [3, 2]  # the failed tcn run is not counted


def test_variance_over_seeds_groups_the_config_minus_seed(catalogue, capsys):
    seeds = _query(catalogue, "variance_over_seeds", capsys)
    assert seeds["backbone"].tolist() == ["hybrid", "tcn"]  # by mean val Sharpe
    for backbone, got in seeds.set_index("backbone").iterrows():
        val = [t[3] for t in TRIALS if t[1] == backbone]
        test = [t[5] for t in TRIALS if t[1] == backbone]
        assert got["n_runs"] == got["n_seeds"] == len(val)
        assert math.isclose(got["val_sharpe_mean"], statistics.mean(val))
        assert math.isclose(got["val_sharpe_std"], statistics.stdev(val))
        assert math.isclose(got["test_sharpe_mean"], statistics.mean(test))
        assert math.isclose(got["test_sharpe_std"], statistics.stdev(test))


def test_sweep_trials_marks_the_best_on_the_validation_objective(catalogue, capsys):
    trials = _query(catalogue, "sweep_trials", capsys)
    assert trials["trial"].tolist() == [3, 0, 1, 2, 4, 5]  # the best first, then by trial
    assert trials["state"].tolist() == ["completed"] * 5 + ["failed"]  # every state
    assert trials["is_best"].tolist() == [True, False, False, False, False, False]
    done = trials[trials["state"] == "completed"]
    assert set(done["selected_by"]) == {"val_sharpe"} and set(done["n_trials"]) == {5}
    assert done["deflated_sharpe"].between(0, 1).all()
    assert done["objective"].tolist() == [1.2, 1.0, 0.5, 0.8, 0.3]  # val_sharpe


def test_pareto_front_of_val_sharpe_against_val_drawdown(catalogue, capsys):
    front = _query(catalogue, "pareto_front", capsys)
    assert front["val_sharpe"].tolist() == [1.2, 1.0, 0.5]  # trials 2 and 4 are dominated by 0


def test_export_csv_and_parquet(catalogue, tmp_path, capsys):
    expected = _query(catalogue, "leaderboard", capsys)
    base = ["--query", "leaderboard", "--catalogue", str(catalogue)]
    for args, path in (
        (["--export", "csv"], tmp_path / "board.txt"),
        (["--export", "parquet"], tmp_path / "board.bin"),
        ([], tmp_path / "board.parquet"),  # format from the suffix
        (["--format", "parquet"], tmp_path / "board2.pq"),
    ):
        assert cli.main([*base, *args, "--out", str(path)]) == 0, args
        parquet = "csv" not in args and path.suffix != ".txt"
        got = pd.read_parquet(path) if parquet else pd.read_csv(path)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert "wrote" in capsys.readouterr().err
    assert cli.main([*base, "--export", "parquet"]) == 2  # binary: needs --out
    assert "--out" in capsys.readouterr().err
    assert cli.main([*base, "--export", "csv", "--format", "json"]) == 2
    assert "disagree" in capsys.readouterr().err


def test_unknown_names_are_refused_with_the_list(catalogue, capsys):
    assert cli.main(["--query", "leaderbord", "--catalogue", str(catalogue)]) == 2
    err = capsys.readouterr().err
    assert "no saved query 'leaderbord'" in err and "did you mean 'leaderboard'" in err
    assert str(QUERIES_DIR) in err and "variance_over_seeds" in err and "Traceback" not in err
    with pytest.raises(CatalogueError, match="does not exist"):
        saved_queries(catalogue / "nowhere")


def test_listing_the_saved_queries(capsys):
    for args in (["--list-queries"], ["--query"]):
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        for name, about in saved_queries().items():
            assert f"{name}  " in out and about in out
    assert cli.main(["--query", "leaderboard", "SELECT 1"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_catalogue_without_the_columns_gets_a_clear_error(tmp_path, capsys):
    old = tmp_path / "old"  # recorded before validation backtests: no val_sharpe column
    metrics = {"val_loss": 0.2, "test_sharpe": 1.0}
    rows.write_row(old, _row(0, "tcn", 1, metrics, multirun=False))
    assert cli.main(["--query", "leaderboard", "--catalogue", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plusultra-catalogue: error: saved query 'leaderboard'")
    assert "lacks" in err and "val_sharpe" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["--query", "sweep_trials", "--catalogue", str(old)]) == 0  # no sweep: empty
    assert "(0 rows)" in capsys.readouterr().out
