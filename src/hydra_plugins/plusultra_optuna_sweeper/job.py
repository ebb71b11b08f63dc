"""What a job launched by the sweeper uses to report to its own trial (pruning).

The sweeper passes each job ``++optuna.study=<name> ++optuna.trial=<number>``; the storage and
the pruner are read from the sweeper's config (``hydra.sweeper``, which the job sees through
``HydraConfig``), never from the command line, so a storage URL with a password stays off it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import optuna
from hydra.utils import instantiate
from optuna.trial import TrialState

from .storage import describe, open_storage, resolve_storage


def build_pruner(cfg: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    """``hydra.sweeper.pruner`` as an Optuna pruner; null is ``NopPruner`` (never prunes).

    Raises:
        ValueError: the config builds something that is not an Optuna pruner.
    """
    if cfg is None:
        return optuna.pruners.NopPruner()  # not None: Optuna would default to MedianPruner
    pruner = instantiate(dict(cfg))
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ValueError(
            f"hydra.sweeper.pruner: {cfg.get('_target_')!r} built {type(pruner).__name__}, "
            "not an optuna.pruners.BasePruner"
        )
    return pruner


def storage_url(sweeper: Mapping[str, Any], study_name: str, cwd: str | None = None) -> str:
    """The study's storage URL as the sweeper resolved it (``storage``, else the SQLite file
    under ``storage_dir``; a relative ``storage_dir`` is taken from ``cwd``, the launch dir)."""
    storage_dir = str(sweeper.get("storage_dir") or "outputs/optuna")
    if cwd is not None and not os.path.isabs(storage_dir):
        storage_dir = os.path.join(cwd, storage_dir)
    return resolve_storage(sweeper.get("storage"), storage_dir, study_name)


def open_trial(
    sweeper: Mapping[str, Any], study_name: str, number: int, cwd: str | None = None
) -> optuna.Trial:
    """The RUNNING trial ``number`` of ``study_name``, with the sweeper's pruner.

    Args:
        sweeper: the sweeper's resolved config as plain values (``storage``, ``storage_dir``,
            ``pruner``).
        study_name: ``optuna.study`` as passed by the sweeper.
        number: ``optuna.trial`` as passed by the sweeper.
        cwd: the launch directory (``hydra.runtime.cwd``), for a relative ``storage_dir``.

    Raises:
        ValueError: the study or the trial is not in the storage, or the trial is not
            RUNNING (only the job the sweeper launched for it may report to it).
    """
    url = storage_url(sweeper, study_name, cwd)
    try:
        study = optuna.load_study(
            study_name=study_name,
            storage=open_storage(url),
            pruner=build_pruner(sweeper.get("pruner")),
            sampler=optuna.samplers.RandomSampler(),  # the job never samples
        )
    except KeyError:
        raise ValueError(f"optuna.study={study_name!r} is not in {describe(url)}") from None
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise ValueError(f"optuna.trial={number} is not a trial of study {study_name!r}")
    if found[0].state != TrialState.RUNNING:
        raise ValueError(
            f"optuna.trial={number} of study {study_name!r} is {found[0].state.name}, not "
            "RUNNING: only the job the sweeper launched for a trial reports to it"
        )
    return optuna.Trial(study, found[0]._trial_id)
