"""The plusultra_optuna Hydra sweeper: schema, search-space mapping, storage and resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.plusultra_optuna_sweeper.search_space import format_value, split_overrides
from hydra_plugins.plusultra_optuna_sweeper.sweeper import INTERRUPTED, PlusUltraOptunaSweeper

APP = Path(__file__).resolve().parent / "sweeper_app"
SRC = Path(__file__).resolve().parents[1] / "src"


def sweeper_from(cfg) -> PlusUltraOptunaSweeper:
    """The sweeper built from a composed ``hydra.sweeper`` node, as Hydra passes it."""
    keys = {k: cfg.hydra.sweeper[k] for k in cfg.hydra.sweeper if not k.startswith("_")}
    return PlusUltraOptunaSweeper(**keys)


def run_app(root: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """Sweep the test app with the plusultra_optuna sweeper, storage under ``root``."""
    env = {**os.environ, "SWEEP_ROOT": str(root), "PYTHONPATH": str(SRC)}
    cmd = [
        sys.executable,
        str(APP / "app.py"),
        "-m",
        "hydra/sweeper=plusultra_optuna",
        f"hydra.sweeper.storage_dir={root / 'optuna'}",
        "+hydra.sweeper.params.x='interval(-5, 5)'",
        "y=choice(0, 1)",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def only_study(root: Path) -> optuna.Study:
    """The one study stored under ``root/optuna``."""
    (db,) = (root / "optuna").glob("*.db")
    url = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def trial_states(root: Path) -> list[str]:
    """Trial states read with plain sqlite3 (opening an RDBStorage while the sweep creates the
    schema races on alembic's version table)."""
    dbs = list((root / "optuna").glob("*.db"))
    if not dbs:
        return []
    try:
        with closing(sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True)) as con:
            return [s for (s,) in con.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.OperationalError:  # tables not created yet, or locked
        return []


def test_registered_under_its_own_name():
    found = {c.__name__ for c in Plugins.instance().discover(Sweeper)}  # scans hydra_plugins
    assert "PlusUltraOptunaSweeper" in found
    names = ConfigStore.instance().list("hydra/sweeper")
    # upstream hydra-optuna-sweeper registers optuna.yaml; ours must not take that name
    assert "plusultra_optuna.yaml" in names and "plusultra_optuna.yaml" != "optuna.yaml"


def test_template_style_search_space_composes_to_distributions():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(APP), version_base="1.3"):
        cfg = compose("config", ["+hparams_search=template"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/acc_best"
    sweeper = sweeper_from(cfg)
    assert sweeper.directions == ["maximize"] and sweeper.n_trials == 20
    space, fixed = sweeper.build_space([])
    assert space == {
        "model.optimizer.lr": FloatDistribution(0.0001, 0.1),
        "data.batch_size": CategoricalDistribution([32, 64, 128, 256]),
        "model.net.lin1_size": CategoricalDistribution([64, 128, 256]),
        "model.net.lin2_size": IntDistribution(64, 448, step=64),
        "model.net.lin3_size": FloatDistribution(1e-5, 1e-2, log=True),
        "model.net.depth": IntDistribution(1, 8),
        "model.net.act": CategoricalDistribution(["relu", "gelu"]),
    }
    assert fixed == ["seed=7"]
    sampler = sweeper.build_sampler(n_stored=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 10


def test_override_mapping_and_formatting():
    space, fixed = split_overrides(
        ["a=range(0.0, 1.0, 0.25)", "b=1,2,3", "c=tag(int, log, interval(1, 64))", "d=x"]
    )
    assert space["a"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert space["b"] == CategoricalDistribution([1, 2, 3])
    assert space["c"] == IntDistribution(1, 64, log=True)
    assert fixed == ["d=x"]
    assert [format_value(v) for v in (None, True, 0.5, "relu", "a b")] == [
        "null",
        "true",
        "0.5",
        "relu",
        "'a b'",
    ]
    with pytest.raises(ValueError, match="hydra.sweeper.direction"):
        PlusUltraOptunaSweeper(None, "up", None, ".", None, 1, 1, 0.0, None, None, None)


def test_seed_is_offset_on_resume():
    sweeper = PlusUltraOptunaSweeper(
        {"_target_": "optuna.samplers.RandomSampler", "seed": 3},
        "minimize", None, ".", None, 1, 1, 0.0, None, None, None,
    )  # fmt: skip
    a = sweeper.build_sampler(0)._rng.rng.random()
    b = sweeper.build_sampler(4)._rng.rng.random()
    assert a == optuna.samplers.RandomSampler(seed=3)._rng.rng.random() and a != b


def test_sweep_stores_and_resumes_without_repeating(tmp_path):
    run_app(tmp_path, "hydra.sweeper.n_trials=3")
    study = only_study(tmp_path)
    first = [(t.number, t.params) for t in study.trials]
    assert len(first) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)
    run_app(tmp_path, "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=3")
    trials = only_study(tmp_path).trials
    assert [(t.number, t.params) for t in trials[:3]] == first  # kept, not re-run
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # topped up to the total, no more
    xs = [t.params["x"] for t in trials]
    assert len(set(xs)) == 5
    assert all(t.value == pytest.approx((t.params["x"] - 2) ** 2 + t.params["y"]) for t in trials)


def test_running_trials_are_failed_and_asked_again(tmp_path):
    run_app(tmp_path, "hydra.sweeper.n_trials=1")
    study = only_study(tmp_path)
    orphan = study.ask({"x": FloatDistribution(-5, 5), "y": CategoricalDistribution([0, 1])})
    orphan_params = dict(orphan.params)  # left RUNNING, as by a SIGKILLed sweep
    run_app(tmp_path, "hydra.sweeper.n_trials=3")
    trials = only_study(tmp_path).trials
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs[INTERRUPTED] is True
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == orphan_params
    assert retried[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_failed_jobs_are_told_fail_and_stop_the_sweep(tmp_path):
    proc = run_app(tmp_path, "hydra.sweeper.n_trials=2", "fail=true", check=False)
    assert proc.returncode != 0 and "max_failure_rate" in proc.stderr
    assert [t.state for t in only_study(tmp_path).trials] == [TrialState.FAIL] * 2


def test_nan_values_fail_and_count_toward_the_total(tmp_path):
    run_app(tmp_path, "hydra.sweeper.n_trials=2", "nan=true", "hydra.sweeper.max_failure_rate=1.0")
    trials = only_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # failed by the job: no retry
    assert not any(t.user_attrs.get(INTERRUPTED) for t in trials)


def test_custom_search_space_and_dict_form(tmp_path):
    run_app(
        tmp_path,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.custom_search_space=space.suggest",
        "+hydra.sweeper.search_space={w: {type: int, low: 1, high: 3}}",
        "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 0}",
    )
    trials = only_study(tmp_path).trials
    assert {t.params["y"] for t in trials} == {0, 1}  # both branches (seeded draws)
    for t in trials:
        assert ("z" in t.params) == (t.params["y"] == 1) and t.params["w"] in (1, 2, 3)
        assert t.params.get("z", 5) in (5, 6)


def test_journal_storage_and_named_study(tmp_path):
    log = tmp_path / "nfs" / "study.log"
    for _ in range(2):  # the second run finds the total reached and runs nothing
        run_app(
            tmp_path,
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage=journal:///{log}",
            "hydra.sweeper.study_name=demo",
            "hydra.sweeper.direction=maximize",
        )
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    study = optuna.load_study(study_name="demo", storage=storage)
    assert len(study.trials) == 2 and study.direction.name == "MAXIMIZE"
    assert not (tmp_path / "optuna").exists()


@pytest.mark.slow
def test_real_sweep_killed_mid_way_resumes_to_its_total(tmp_path):
    """`plusultra -m` with 3 trials, SIGKILLed during trial 1, rerun: 3 complete, none repeated."""
    from tests.conftest import REPO, TINY

    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(tmp_path), "PYTHONPATH": str(SRC)}
    cmd = [
        sys.executable,
        "-m",
        "plusultra.run",
        "-m",
        "hydra/sweeper=plusultra_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 0}",
        "optim.lr=tag(log, interval(1e-4, 1e-2))",
        "d_model=choice(16, 32)",
        *[a for a in TINY if not a.startswith("d_model=")],
    ]
    err = tmp_path / "killed.log"
    with err.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if trial_states(tmp_path)[:2] == ["COMPLETE", "RUNNING"]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, err.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [t.state for t in only_study(tmp_path).trials] == [
        TrialState.COMPLETE,
        TrialState.RUNNING,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = only_study(tmp_path).trials
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs[INTERRUPTED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4  # the planned total, one interrupted
    assert complete[1].user_attrs["retry_of"] == 1 and complete[1].params == trials[1].params
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == 3  # no trial repeated
