"""The ask/tell loop: ask a batch of trials, launch it with Hydra's launcher, tell the values.

Resume rules (docs/sweeps.md): ``n_trials`` is the study's total of finished trials; a rerun
loads the study, marks trials left RUNNING by a killed process FAIL (user attr ``interrupted``),
asks their parameters again first, and stops when the total is reached.
"""

from __future__ import annotations

import logging
import numbers
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
    """Complete, pruned and job-failed trials count; interrupted ones are asked again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED, False)


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
            sampler=self.build_sampler(len(stored)),
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
        for trial in stored:
            if trial.state == TrialState.RUNNING:
                study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
                study.tell(trial.number, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                log.warning("trial %d was left RUNNING: marked FAIL, asked again", trial.number)
        log.info("Study %s in %s (%d trials stored)", name, describe(url), len(stored))
        return study

    def sweep(self, arguments: list[str]) -> list[Any]:
        """Run trials until the study holds ``n_trials`` finished ones."""
        assert self.config is not None and self.launcher is not None
        space, fixed = self.build_space(arguments)
        study = self.open_study(arguments)
        raw = {k for k, d in space.items() if is_raw(d)}  # list/dict choices: override text
        log.info("Search space: %s", ", ".join(f"{k}: {v}" for k, v in space.items()))
        results, ran, failed = [], 0, 0
        while True:
            done = sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))
            left = self.n_trials - done
            if left <= 0:
                break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            overrides = [self.trial_overrides(trial, fixed, raw) for trial in trials]
            self.validate_batch_is_legal(overrides)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns, strict=True):
                ran += 1
                if isinstance(ret._return_value, optuna.TrialPruned):
                    # the job's pruner stopped it: Optuna keeps its last reported value; it
                    # counts toward n_trials and is not a failure
                    told = study.tell(trial, state=TrialState.PRUNED)
                    log.info("trial %d pruned (last value %s)", trial.number, told.value)
                    continue
                if ret.status != JobStatus.COMPLETED:
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("trial %d failed: %r", trial.number, ret._return_value)
                    failed += 1
                    continue
                try:
                    values = self.values_of(ret.return_value, trial.number)
                except ValueError:
                    study.tell(trial, state=TrialState.FAIL)  # not left RUNNING
                    raise
                # Optuna itself fails a trial whose value is NaN
                told = study.tell(trial, values, skip_if_finished=False)
                failed += told.state == TrialState.FAIL
                results.append(values)
            if failed / ran > self.max_failure_rate:
                raise RuntimeError(
                    f"{failed} of {ran} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}; the study keeps them as FAIL"
                )
        self.report(study)
        return results

    def trial_overrides(self, trial: optuna.Trial, fixed: list[str], raw: set[str]) -> list[str]:
        """Fixed overrides, every sampled value (custom search space included), the trial's id."""
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        sampled = [f"{k}={v if k in raw else format_value(v)}" for k, v in trial.params.items()]
        # which trial the job is (its catalogue row and pruning read them); ++: any app takes them
        study = format_value(trial.study.study_name)
        identity = [f"++optuna.study={study}", f"++optuna.trial={trial.number}"]
        return fixed + sampled + identity

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
            log.info("%d trials on the Pareto front", len(study.best_trials))
