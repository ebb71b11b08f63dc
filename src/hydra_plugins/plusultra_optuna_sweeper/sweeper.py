"""The ask/tell loop: ask a batch of trials, launch it with Hydra's launcher, tell the values.

Resume rules (docs/sweeps.md): ``n_trials`` is the study's total of finished trials; a rerun
loads the study, marks trials left RUNNING by a killed process FAIL (user attr ``interrupted``),
asks their parameters again first, and stops when the total is reached. Several processes may
sweep one study at once: trials RUNNING in a live process (fresh heartbeat, concurrency.py)
count toward the total and are left alone; only stale ones are failed and asked again.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Sequence
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .concurrency import (
    SURPLUS,
    Heartbeat,
    TrialSeededSampler,
    claim,
    is_stale,
    mark_failed,
    rank_within_total,
)
from .job import build_pruner
from .search_space import (
    RawText,
    dict_distribution,
    format_value,
    params_lines,
    split_overrides,
)
from .storage import default_study_name, describe, open_storage, resolve_storage

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attr of a RUNNING trial found at start, marked FAIL
DIRECTIONS = ("minimize", "maximize")


def is_raw(distribution: BaseDistribution) -> bool:
    """A categorical whose choices are override text (lists, dicts), not scalars."""
    return isinstance(distribution, CategoricalDistribution) and any(
        isinstance(c, RawText) for c in distribution.choices
    )


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Complete, pruned and job-failed trials count; interrupted ones (asked again) and surplus
    ones (asked past the total by racing processes, never launched) do not."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not (
        trial.user_attrs.get(INTERRUPTED, False) or trial.user_attrs.get(SURPLUS, False)
    )


class PlusUltraOptunaSweeper(Sweeper):
    """Hydra sweeper on Optuna >= 4; see config.py for the keys."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        storage_dir: str,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Any,
        custom_search_space: str | None,
        params: Any,
        pruner: Any = None,
        heartbeat_interval: float = 10.0,
        grace_period: float = 60.0,
    ) -> None:
        directions = (
            list(direction)
            if OmegaConf.is_list(direction) or isinstance(direction, list | tuple)
            else [direction]
        )
        for d in directions:
            if str(d) not in DIRECTIONS:
                raise ValueError(f"hydra.sweeper.direction: {d!r}; expected minimize or maximize")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({n_trials}) and n_jobs ({n_jobs}) >= 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate: {max_failure_rate} not in [0, 1]")
        self.pruner_cfg = OmegaConf.to_container(pruner) if OmegaConf.is_config(pruner) else pruner
        if self.pruner_cfg is not None and len(directions) > 1:
            raise ValueError(
                "hydra.sweeper.pruner: Optuna prunes single-objective studies only; "
                "set it to null for a list of directions"
            )
        if not 0 < heartbeat_interval < grace_period:
            raise ValueError(
                f"hydra.sweeper: need 0 < heartbeat_interval ({heartbeat_interval}) < "
                f"grace_period ({grace_period})"
            )
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.sampler_cfg = sampler
        self.directions = [str(d) for d in directions]
        self.storage, self.storage_dir = storage, storage_dir
        self.study_name = study_name
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.search_space = OmegaConf.to_container(search_space) if search_space else {}
        self.custom_search_space = get_method(custom_search_space) if custom_search_space else None
        self.params = OmegaConf.to_container(params) if params else {}
        self.config: DictConfig | None = None
        self.launcher = None
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the config and build Hydra's launcher (Hydra calls this before ``sweep``)."""
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def build_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
        """``params``, then ``search_space``, then sweeps on the command line (last one wins)."""
        space, fixed = split_overrides(params_lines(self.params))
        for name, spec in self.search_space.items():
            space[name] = dict_distribution(name, spec)
        cli_space, cli_fixed = split_overrides(list(arguments))
        space.update(cli_space)
        return space, fixed + cli_fixed

    def build_sampler(self, n_stored: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; its seed is offset by the trials already in the study."""
        if self.sampler_cfg is None:
            return optuna.samplers.TPESampler()
        cfg = (
            OmegaConf.to_container(self.sampler_cfg)
            if OmegaConf.is_config(self.sampler_cfg)
            else dict(self.sampler_cfg)
        )
        if cfg.get("seed") is not None:
            cfg["seed"] = int(cfg["seed"]) + n_stored  # a rerun does not redraw the same points
        return instantiate(cfg)

    def open_study(self, arguments: list[str]) -> optuna.Study:
        """Create or load the study; mark interrupted trials FAIL and enqueue their params."""
        assert self.config is not None
        name = self.study_name or default_study_name(
            self.config.hydra.job.name, params_lines(self.params) + list(arguments)
        )
        url = resolve_storage(self.storage, self.storage_dir, name)
        storage = open_storage(url)
        try:
            stored = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            stored = []
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=self.study_sampler(len(stored)),
            pruner=build_pruner(self.pruner_cfg),  # the jobs build the same one (job.py)
            directions=self.directions,
            load_if_exists=True,
        )
        wanted = [optuna.study.StudyDirection[d.upper()] for d in self.directions]
        if list(study.directions) != wanted:
            raise ValueError(
                f"study {name!r} in {describe(url)} was created with directions "
                f"{[d.name.lower() for d in study.directions]}, not {self.directions}"
            )
        self.reap_stale(study)
        log.info("Study %s in %s (%d trials stored)", name, describe(url), len(stored))
        return study

    # --- several processes on one study (concurrency.py, docs/sweeps.md) ---

    def study_sampler(self, n_stored: int) -> optuna.samplers.BaseSampler:
        """With a seed: reseeded per trial (seed + trial number), so concurrent processes draw
        distinct points; QMC keeps one seed (its sequence needs it); no seed: as configured."""
        cfg = self.sampler_cfg
        seeded = cfg is not None and cfg.get("seed") is not None
        if seeded and "QMCSampler" not in str(cfg.get("_target_", "")):
            return TrialSeededSampler(self.build_sampler)
        return self.build_sampler(n_stored)

    def reap_stale(self, study: optuna.Study) -> list[FrozenTrial]:
        """Fail the RUNNING trials whose sweeper is gone (``interrupted``), enqueue their params
        again; trials of live processes are left alone. Returns the study's trials after."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_stale(trial, self.grace_period) and mark_failed(
                study._storage, trial._trial_id, INTERRUPTED
            ):
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                log.warning("trial %d was left RUNNING: marked FAIL, asked again", trial.number)
        return study.get_trials(deepcopy=False)

    def ask_batch(
        self, study: optuna.Study, space: dict[str, BaseDistribution], n: int
    ) -> list[optuna.Trial]:
        """Ask ``n`` trials and claim them; a trial ranked past ``n_trials`` (another process
        asked the last ones at the same moment) is marked FAIL ``surplus`` and not launched."""
        asked = []
        for _ in range(n):
            trial = study.ask(space)
            claim(study._storage, trial._trial_id)
            asked.append(trial)
        stored = study.get_trials(deepcopy=False)
        kept = []
        for trial in asked:
            if rank_within_total(stored, trial.number, counts_toward_total) <= self.n_trials:
                kept.append(trial)
            elif mark_failed(study._storage, trial._trial_id, SURPLUS):
                log.info("trial %d: the total is reached by other processes; not run", trial.number)
        return kept

    def wait_for_others(self, running: int, waited: bool) -> None:
        """Sleep one heartbeat interval while other processes run the last trials."""
        if not waited:
            log.info("%d trial(s) running in other processes; waiting for them", running)
        time.sleep(self.heartbeat_interval)

    def finished_elsewhere(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """True (with a warning) when another process failed our trial as stale meanwhile."""
        state = study._storage.get_trial(trial._trial_id).state
        if state.is_finished():
            log.warning(
                "trial %d was marked %s by another process (no heartbeat for grace_period=%gs):"
                " its result is dropped; raise hydra.sweeper.grace_period",
                trial.number,
                state.name,
                self.grace_period,
            )
        return state.is_finished()

    def sweep(self, arguments: list[str]) -> list[Any]:
        """Run trials until the study holds ``n_trials`` finished ones."""
        assert self.config is not None and self.launcher is not None
        space, fixed = self.build_space(arguments)
        study = self.open_study(arguments)
        raw = {k for k, d in space.items() if is_raw(d)}  # list/dict choices: override text
        log.info("Search space: %s", ", ".join(f"{k}: {v}" for k, v in space.items()))
        results, ran, failed, waited = [], 0, 0, False
        while True:
            stored = self.reap_stale(study)  # before each batch: others may have died
            done = sum(counts_toward_total(t) for t in stored)
            running = sum(t.state == TrialState.RUNNING for t in stored)
            if done >= self.n_trials:
                break
            left = self.n_trials - done - running  # RUNNING here: in other live processes
            if left <= 0:
                self.wait_for_others(running, waited)
                waited = True
                continue
            trials = self.ask_batch(study, space, min(self.n_jobs, left))
            if not trials:
                continue
            overrides = [self.trial_overrides(trial, fixed, raw) for trial in trials]
            self.validate_batch_is_legal(overrides)
            ids = [trial._trial_id for trial in trials]
            with Heartbeat(study._storage, ids, self.heartbeat_interval):
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns, strict=True):
                ran += 1
                if self.finished_elsewhere(study, trial):
                    continue
                if isinstance(ret._return_value, optuna.TrialPruned):
                    # the job's pruner stopped it: Optuna keeps its last reported value; it
                    # counts toward n_trials and is not a failure
                    told = self.tell(study, trial, state=TrialState.PRUNED)
                    log.info("trial %d pruned (last value %s)", trial.number, told.value)
                    continue
                if ret.status != JobStatus.COMPLETED:
                    self.tell(study, trial, state=TrialState.FAIL)
                    log.warning("trial %d failed: %r", trial.number, ret._return_value)
                    failed += 1
                    continue
                try:
                    values = self.values_of(ret.return_value, trial.number)
                except ValueError:
                    self.tell(study, trial, state=TrialState.FAIL)  # not left RUNNING
                    raise
                # Optuna itself fails a trial whose value is NaN
                told = self.tell(study, trial, values, skip_if_finished=False)
                failed += told.state == TrialState.FAIL
                results.append(values)
            if failed / ran > self.max_failure_rate:
                raise RuntimeError(
                    f"{failed} of {ran} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}; the study keeps them as FAIL"
                )
            if study._stop_flag:  # GridSampler / BruteForceSampler: every point has been tried
                log.info("The sampler has no point left to try: the sweep ends here")
                break
        self.report(study)
        return results

    @staticmethod
    def tell(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> FrozenTrial:
        """``study.tell``, as inside ``study.optimize``: samplers that run out of points
        (GridSampler, BruteForceSampler) call ``study.stop()`` from ``after_trial``, which
        Optuna allows only in an optimize loop; here it sets the flag the sweep loop reads."""
        local = study._thread_local
        inside = getattr(local, "in_optimize_loop", False)
        local.in_optimize_loop = True
        try:
            return study.tell(trial, *args, **kwargs)
        finally:
            local.in_optimize_loop = inside

    def trial_overrides(self, trial: optuna.Trial, fixed: list[str], raw: set[str]) -> list[str]:
        """Fixed overrides, every sampled value (custom search space included), the trial's id."""
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        sampled = [f"{k}={v if k in raw else format_value(v)}" for k, v in trial.params.items()]
        # which trial the job is (its catalogue row and pruning read them); ++: any app takes them
        study = format_value(trial.study.study_name)
        identity = [f"++optuna.study={study}", f"++optuna.trial={trial.number}"]
        # the sampled keys, so the job's catalogue row can record their values (optuna.params)
        keys = "[" + ",".join(format_value(k) for k in trial.params) + "]"
        return fixed + sampled + identity + [f"++optuna.params={keys}"]

    def values_of(self, value: Any, number: int) -> float | list[float]:
        """The job's return value as one float per direction."""
        values = list(value) if isinstance(value, Sequence) else [value]
        if len(values) != len(self.directions) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"trial {number}: the job returned {value!r}; the sweeper needs "
                f"{len(self.directions)} number(s), one per hydra.sweeper.direction"
            )
        floats = [float(v) for v in values]
        return floats[0] if len(floats) == 1 else floats

    def report(self, study: optuna.Study) -> None:
        """Log the best trial(s)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            log.warning("Study %s has no complete trial", study.study_name)
        elif len(self.directions) == 1:
            best = study.best_trial
            log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        else:
            front = study.best_trials
            log.info("%d trials on the Pareto front of %s", len(front), self.directions)
            for best in front:
                log.info("  trial %d: values %s, params %s", best.number, best.values, best.params)
