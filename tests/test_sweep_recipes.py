"""The sweep recipes in experiments/sweeps, and a 4-trial Optuna sweep of plusultra end to end."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from plusultra.catalogue.compact import compact
from plusultra.catalogue.query import connect
from tests.conftest import REPO, TINY, compose_config, run_cli

RECIPES = REPO / "experiments" / "sweeps"
SEARCHPATH = f"hydra.searchpath=[file://{RECIPES}]"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("backbone_comparison", {"backbone", "seed"}),
        (
            "risk_sp500_stocks",
            {"loss.sharpe_weight", "loss.drawdown_weight", "loss.cvar_weight", "loss.cost_bps"},
        ),
    ],
)
def test_recipes_compose_on_real_data_selected_on_validation(name, params):
    cfg = compose_config([SEARCHPATH, f"hparams_search={name}"])
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.runtime.choices["data"] == "sp500_stocks"
    assert cfg.hydra.runtime.choices["simulator"] == "realistic"
    assert cfg.optimized_metric.startswith("val_")
    assert sweeper.direction == cfg.optimized_direction == "maximize"
    assert sweeper.study_name == name.replace("_comparison", "_comparison_sp500_stocks")
    assert cfg.sweep_name == sweeper.study_name  # one name for the catalogue and the study
    assert params <= {k for k, v in sweeper.params.items() if "(" in str(v)}
    head = (RECIPES / "hparams_search" / f"{name}.yaml").read_text().splitlines()
    launch = next(line for line in head if line.startswith("# Launch:"))
    assert f"hparams_search={name}" in launch and "--config-dir experiments/sweeps" in launch


def only_study(root: Path) -> optuna.Study:
    (db,) = (root / "optuna").glob("*.db")
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")


@pytest.mark.slow
def test_four_trial_backbone_sweep_end_to_end(tmp_path):
    """The backbone recipe, 4 trials on the synthetic data at the tiny size: the study, one
    catalogue row per trial naming it, selection on validation, and a rerun that adds nothing."""
    args = [
        "plusultra.run",
        "-m",
        "--config-dir",
        str(RECIPES),
        "hparams_search=backbone_comparison",
        "data=synthetic",
        "simulator=frictionless",
        "hydra.sweeper.n_trials=4",
        *TINY,
    ]
    res = run_cli(args, tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    study = only_study(tmp_path)
    assert study.study_name == "backbone_comparison_sp500_stocks"
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    pairs = {(t.params["backbone"], t.params["seed"]) for t in study.trials}
    assert len(pairs) == 4  # the brute-force sampler never repeats a point

    con = connect(tmp_path / "catalogue")
    try:
        rows = con.sql(
            'SELECT "optuna.study" AS study, "optuna.trial" AS trial, backbone, seed, '
            "val_sharpe, test_sharpe, status FROM runs ORDER BY trial"
        ).df()
        best = con.sql("SELECT run_id, objective FROM sweeps WHERE is_best").df()
        objective = con.execute("SELECT max(val_sharpe) FROM runs").fetchone()[0]
    finally:
        con.close()
    assert list(rows["trial"]) == [0, 1, 2, 3]
    assert set(rows["study"]) == {study.study_name}
    assert set(rows["status"]) == {"completed"}
    by_trial = {t.number: t for t in study.trials}
    for row in rows.itertuples():
        trial = by_trial[row.trial]
        assert (row.backbone, row.seed) == (trial.params["backbone"], trial.params["seed"])
        assert row.val_sharpe == pytest.approx(trial.value)  # the job returned val_sharpe
    assert len(best) == 1 and best["objective"].iloc[0] == pytest.approx(objective)

    again = run_cli(args, tmp_path, timeout=300)  # the same command: the study is complete
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(only_study(tmp_path).trials) == 4
    before = sorted(p.name for p in (tmp_path / "catalogue").glob("*.parquet"))
    assert len(before) == 4
    compact(tmp_path / "catalogue")
    con = connect(tmp_path / "catalogue")
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
    finally:
        con.close()
