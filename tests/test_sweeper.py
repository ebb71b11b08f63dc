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

from hydra_plugins.plusultra_optuna_sweeper.concurrency import (
    HEARTBEAT,
    SURPLUS,
    WORKER,
    TrialSeededSampler,
    is_stale,
    rank_within_total,
    worker_id,
)
from hydra_plugins.plusultra_optuna_sweeper.search_space import format_value, split_overrides
from hydra_plugins.plusultra_optuna_sweeper.sweeper import (
    INTERRUPTED,
    PlusUltraOptunaSweeper,
    counts_toward_total,
)
from plusultra.catalogue.objective import pareto_front_ref

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


def claimed(root: Path, number: int) -> bool:
    """Whether trial ``number`` carries its sweeper's ``worker`` attr (written just after the
    ask: a trial killed before it cannot be told from a live one until ``grace_period``)."""
    dbs = list((root / "optuna").glob("*.db"))
    if not dbs:
        return False
    query = (
        "SELECT count(*) FROM trial_user_attributes a JOIN trials t USING (trial_id)"
        " WHERE t.number = ? AND a.key = 'worker'"
    )
    try:
        with closing(sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True)) as con:
            return con.execute(query, (number,)).fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False


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
    # no heartbeat: stale once its start is grace_period old (the sweep waits for that)
    grace = ("hydra.sweeper.heartbeat_interval=0.2", "hydra.sweeper.grace_period=1")
    run_app(tmp_path, "hydra.sweeper.n_trials=3", *grace)
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


@pytest.mark.parametrize(
    "sampler",
    [
        "{_target_: optuna.samplers.GridSampler, search_space: {x: [1.0, 2.0], y: [0, 1]}}",
        "{_target_: optuna.samplers.BruteForceSampler, seed: 0}",
    ],
)
def test_exhausted_grid_ends_the_sweep(tmp_path, sampler):
    """Grid and brute-force samplers call study.stop() once every point is tried; the sweep
    ends there, with every point once, instead of crashing on it."""
    proc = run_app(
        tmp_path,
        "hydra.sweeper.params.x='choice(1.0, 2.0)'",  # a finite space for brute force
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.sampler={sampler}",
    )
    assert "no point left" in proc.stderr + proc.stdout
    trials = only_study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({(t.params["x"], t.params["y"]) for t in trials}) == 4


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
            if trial_states(tmp_path)[:2] == ["COMPLETE", "RUNNING"] and claimed(tmp_path, 1):
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
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == 1]
    assert retry.number == 2 and retry.params == trials[1].params  # asked again first
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == 3  # no trial repeated


def test_multi_objective_sweep_records_the_pareto_front(tmp_path):
    proc = run_app(
        tmp_path,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=3",
        "two=true",
        "hydra.sweeper.direction=[minimize,minimize]",
        "hydra.sweeper.sampler={_target_: optuna.samplers.NSGAIISampler, seed: 0}",
    )
    study = only_study(tmp_path)
    trials = study.trials
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        x, y = t.params["x"], t.params["y"]
        assert t.values == pytest.approx([(x - 2) ** 2 + y, (x + 2) ** 2])
    on_front = pareto_front_ref([t.values for t in trials], ["minimize", "minimize"])
    front = {t.number for t, f in zip(trials, on_front, strict=True) if f}
    assert {t.number for t in study.best_trials} == front
    logged = proc.stdout + proc.stderr
    assert f"{len(front)} trials on the Pareto front" in logged
    # one value for two directions: the sweep tells the trial FAIL and stops with this error
    two = PlusUltraOptunaSweeper(
        None, ["minimize", "minimize"], None, ".", None, 1, 1, 0.0, None, None, None
    )
    assert two.values_of((1.0, 2.0), 0) == [1.0, 2.0]
    with pytest.raises(ValueError, match="2 number\\(s\\), one per hydra.sweeper.direction"):
        two.values_of(1.0, 7)


def test_trial_overrides_name_the_sampled_keys():
    sweeper = PlusUltraOptunaSweeper(None, "minimize", None, ".", None, 1, 1, 0.0, None, None, None)
    study = optuna.create_study(study_name="s 1")
    trial = study.ask({"optim.lr": FloatDistribution(0.1, 0.2), "d": CategoricalDistribution([1])})
    lines = sweeper.trial_overrides(trial, ["seed=1"], set())
    assert lines[0] == "seed=1" and lines[2] == "d=1"
    assert lines[3:] == ["++optuna.study='s 1'", "++optuna.trial=0", "++optuna.params=[optim.lr,d]"]


def test_stale_trials_dead_process_old_heartbeat_or_none():
    study = optuna.create_study()
    trials = [study.ask() for _ in range(4)]
    storage = study._storage
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = worker_id().rpartition(":")[0]
    now = time.time()
    storage.set_trial_user_attr(trials[0]._trial_id, WORKER, f"{host}:{dead.pid}")  # gone
    storage.set_trial_user_attr(trials[0]._trial_id, HEARTBEAT, now)
    storage.set_trial_user_attr(trials[1]._trial_id, WORKER, f"{host}:{os.getppid()}")  # alive
    storage.set_trial_user_attr(trials[1]._trial_id, HEARTBEAT, now - 5)
    storage.set_trial_user_attr(trials[2]._trial_id, WORKER, f"other-host/1:{os.getpid()}")
    storage.set_trial_user_attr(trials[2]._trial_id, HEARTBEAT, now - 100)  # stopped beating
    frozen = study.get_trials(deepcopy=False)  # trials[3]: no heartbeat, started just now
    assert [is_stale(t, 60.0, now) for t in frozen] == [True, False, True, False]
    assert is_stale(frozen[1], 4.0, now) and is_stale(frozen[3], 60.0, now + 61)


def test_rank_within_total_drops_only_what_exceeds_it():
    study = optuna.create_study()
    space = {"x": FloatDistribution(0, 1)}
    first = study.ask(space)
    study.tell(first, 1.0)  # 0: complete
    interrupted = study.ask(space)  # 1: interrupted, does not count
    study._storage.set_trial_user_attr(interrupted._trial_id, INTERRUPTED, True)
    study.tell(interrupted, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})  # 2: waiting retry, counts
    running = [study.ask(space) for _ in range(2)]  # 2 (popped) and 3: running, count
    extra = study.ask(space)  # 4
    trials = study.get_trials(deepcopy=False)
    ranks = [rank_within_total(trials, t.number, counts_toward_total) for t in trials]
    assert ranks == [1, 1, 2, 3, 4]
    assert running[0].params == {"x": 0.5} and extra.number == 4


def test_a_batch_past_the_total_is_dropped_and_a_reaped_trial_not_told():
    sweeper = PlusUltraOptunaSweeper(None, "minimize", None, ".", None, 2, 2, 0.0, None, None, None)
    study = optuna.create_study()
    space = {"x": FloatDistribution(0, 1)}
    elsewhere = study.ask(space)  # running in another live process
    study._storage.set_trial_user_attr(elsewhere._trial_id, WORKER, "other-host/1:1")
    (kept,) = sweeper.ask_batch(study, space, 2)  # 2 asked, 1 fits the total of 2
    trials = study.get_trials(deepcopy=False)
    assert kept.number == 1 and trials[1].user_attrs[WORKER] == worker_id()
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs[SURPLUS] is True
    assert not counts_toward_total(trials[2])
    assert not sweeper.finished_elsewhere(study, kept)
    study._storage.set_trial_state_values(kept._trial_id, TrialState.FAIL)  # reaped by another
    assert sweeper.finished_elsewhere(study, kept)


def test_trial_seeded_sampler_draws_seed_plus_number():
    def build(n):
        return optuna.samplers.RandomSampler(seed=7 + n)

    study = optuna.create_study(sampler=TrialSeededSampler(build))
    xs = [study.ask({"x": FloatDistribution(0, 1)}).params["x"] for _ in range(3)]
    for number, x in enumerate(xs):
        alone = optuna.create_study(sampler=build(number))
        assert alone.ask({"x": FloatDistribution(0, 1)}).params["x"] == x
    assert len(set(xs)) == 3


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    """Two `app.py -m` processes started together on one SQLite study: the total exactly, no
    trial interrupted or repeated, both processes ran trials."""
    cmd = [
        sys.executable,
        str(APP / "app.py"),
        "-m",
        "hydra/sweeper=plusultra_optuna",
        f"hydra.sweeper.storage_dir={tmp_path / 'optuna'}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.heartbeat_interval=0.2",
        "hydra.sweeper.grace_period=5",
        "hydra.sweeper.sampler={_target_: optuna.samplers.TPESampler, seed: 0, "
        "n_startup_trials: 3, constant_liar: true}",
        "x=interval(-5, 5)",
        "sleep=1.0",
    ]
    env = {**os.environ, "SWEEP_ROOT": str(tmp_path), "PYTHONPATH": str(SRC)}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    trials = only_study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8  # the total, not 8 per process
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs.get(SURPLUS) for t in others)  # asked in a race, never launched
    assert not any(t.user_attrs.get(INTERRUPTED) for t in trials)
    xs = [t.params["x"] for t in complete]
    assert len(set(xs)) == 8  # no point drawn twice
    assert len({t.user_attrs[WORKER] for t in complete}) == 2  # both processes ran trials
