"""conf/hparams_search/*: each file composes, every swept key exists, objectives are val_*."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from hydra_plugins.plusultra_optuna_sweeper.sweeper import PlusUltraOptunaSweeper
from plusultra.catalogue.objective import check_sweeper_directions, objective_directions
from plusultra.catalogue.trials import trial_columns
from plusultra.run import CONF_DIR
from tests.conftest import compose_config

FILES = sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml"))


def test_the_planned_search_spaces_exist():
    assert FILES == ["architecture", "optim", "risk", "risk_pareto", "rl"]


@pytest.mark.parametrize("name", FILES)
def test_search_space_composes_onto_existing_keys(name):
    cfg = compose_config([f"hparams_search={name}"])
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "plusultra_optuna"
    directions = objective_directions(cfg.optimized_metric, cfg.optimized_direction)  # val_*
    sweeper_cfg = cfg.hydra.sweeper
    check_sweeper_directions(directions, sweeper_cfg.direction)  # the sweeper and the run agree
    assert sweeper_cfg.sampler.constant_liar is True  # several processes on one study
    sweeper = PlusUltraOptunaSweeper(
        **{k: sweeper_cfg[k] for k in sweeper_cfg if not k.startswith("_")}
    )
    space, fixed = sweeper.build_space([])
    assert space, name
    keys = list(space) + [line.split("=", 1)[0] for line in fixed]
    for key in keys:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{name}: {key}"
    assert sweeper.build_sampler(0) is not None
    # every sampled value must compose: the first and last choice of each categorical
    for pick in (0, -1):
        overrides = [f"hparams_search={name}", *fixed]
        for key, dist in space.items():
            if hasattr(dist, "choices"):
                overrides.append(f"{key}={dist.choices[pick]}")
        compose_config(overrides)


def test_optim_space_fits_every_backbone():
    """docs/sweeps.md compares backbones with hparams_search=optim: its keys exist in all."""
    for backbone in sorted(p.stem for p in (Path(CONF_DIR) / "backbone").glob("*.yaml")):
        cfg = compose_config(["hparams_search=optim", f"backbone={backbone}"])
        keys = [k for k in cfg.hydra.sweeper.params if k.startswith("backbone.")]
        assert keys
        for key in keys:
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", (backbone, key)


@pytest.mark.slow
def test_optim_search_runs_end_to_end(tmp_path):
    """`plusultra -m hparams_search=optim` with 2 trials on the tiny settings: 2 complete."""
    import optuna

    from tests.conftest import TINY, run_cli

    res = run_cli(
        ["plusultra.run", "-m", "hparams_search=optim", "hydra.sweeper.n_trials=2", *TINY],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (db,) = (tmp_path / "optuna").glob("*.db")
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert set(study.trials[0].params) == {
        "optim.lr",
        "optim.weight_decay",
        "data.batch_size",
        "backbone.dropout",
    }
    assert len(list((tmp_path / "catalogue").glob("*.parquet"))) == 2


def test_rl_space_sweeps_the_ppo_stage_of_curriculum_rl():
    """A list index in a dotted key (curriculum.stages.1) reaches the PPO stage: in the composed
    config, in a trial's overrides, and in the catalogue's optuna.params."""
    cfg = compose_config(["hparams_search=rl"])
    assert cfg.hydra.runtime.choices["curriculum"] == "rl"
    assert cfg.hydra.runtime.choices["evaluation"] == "weights"  # rl's own override survives
    assert cfg.hydra.sweeper.pruner is None  # no per-epoch value of the policy to prune on
    assert cfg.curriculum.stages[1].kind == "ppo"
    stage_keys = [k for k in cfg.hydra.sweeper.params if k.startswith("curriculum.")]
    assert {k.split(".")[3] for k in stage_keys} == {"ppo", "reward", "env"}
    assert all(k.startswith("curriculum.stages.1.") for k in stage_keys)
    # a sampled value lands in stage 1 only
    lr = "curriculum.stages.1.ppo.lr"
    picked = compose_config(["hparams_search=rl", f"{lr}=1.5e-05"])
    assert picked.curriculum.stages[1].ppo.lr == 1.5e-05
    assert picked.curriculum.stages[0].kind == "supervised"
    # the catalogue reads the sampled value back through the list index
    plain = OmegaConf.to_container(picked, resolve=False)
    plain["optuna"]["params"] = [lr, "curriculum.stages.1.env.action_kind", "curriculum.stages.7.x"]
    params = json.loads(trial_columns(plain, {}, {})["optuna.params"])
    assert params == {
        lr: 1.5e-05,
        "curriculum.stages.1.env.action_kind": "continuous",
        "curriculum.stages.7.x": None,  # past the list's end: absent, not an error
    }


@pytest.mark.slow
def test_rl_search_runs_end_to_end(tiny_db, tmp_path):
    """`plusultra -m hparams_search=rl` with 2 trials on the tiny settings: 2 catalogue rows of
    curriculum=rl, each with its own sampled PPO lr and a finite validation Sharpe."""
    from plusultra.catalogue.query import query
    from tests.conftest import TINY, run_cli
    from tests.test_rl_stage import SMALL_OVERRIDES

    args = ["plusultra.run", "-m", "hparams_search=rl", "hydra.sweeper.n_trials=2", *TINY]
    args += ["data=sqlite", f"data.path={tiny_db}", "evaluation.bootstrap=0", *SMALL_OVERRIDES]
    res = run_cli(args, tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = query(
        tmp_path / "catalogue",
        'SELECT curriculum, "optuna.params" AS params, val_sharpe, objective, '
        "ppo_best_val_sharpe FROM runs",
    )
    assert rows["curriculum"].tolist() == ["rl", "rl"]
    lrs = [json.loads(p)["curriculum.stages.1.ppo.lr"] for p in rows["params"]]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs) and lrs[0] != lrs[1]
    assert np.isfinite(rows["val_sharpe"]).all() and np.isfinite(rows["ppo_best_val_sharpe"]).all()
    np.testing.assert_allclose(rows["objective"], rows["val_sharpe"])  # selected on validation
