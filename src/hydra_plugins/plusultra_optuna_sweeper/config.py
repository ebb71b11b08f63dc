"""The sweeper's config schema, registered as ``hydra/sweeper=plusultra_optuna``.

Keys follow hydra-optuna-sweeper 1.3 so lightning-hydra-template-style search spaces work with
only the ``override hydra/sweeper:`` line changed; ``storage_dir``, ``heartbeat_interval`` and
``grace_period`` are ours. No ``from __future__ import annotations``: Hydra execs plugin modules
outside sys.modules, where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class PlusUltraOptunaSweeperConf:
    """What the sweeper is built from (one line per key in docs/sweeps.md)."""

    _target_: str = "hydra_plugins.plusultra_optuna_sweeper.sweeper.PlusUltraOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (seed offset on resume)
    # {_target_: optuna.samplers.<Class>, seed, ...}; null: TPESampler(); a rerun offsets the seed
    sampler: Any = None
    # minimize | maximize, or a list of them (one per value the job returns)
    direction: Any = "minimize"
    # null: sqlite:///<storage_dir>/<study_name>.db; else a SQLAlchemy URL or journal:///<file>
    storage: Any = None
    # where the default SQLite file lives; relative paths are from the launch directory
    storage_dir: str = "${oc.select:paths.output_dir,outputs}/optuna"
    # null: <job name>-<hash of the search space and the command's overrides>, stable across reruns
    study_name: str | None = None
    # the study's total of finished trials (complete or failed by the job); a rerun tops it up
    n_trials: int = 20
    # trials asked and launched together in one batch
    n_jobs: int = 2
    # a batch whose failed share of this run's trials exceeds it stops the sweep with an error
    max_failure_rate: float = 0.0
    # the older dict form: {name: {type: float|int|categorical, low, high, step, log, choices}}
    search_space: Any = None
    # "module.function" called as fn(cfg, trial) to suggest conditional parameters
    custom_search_space: str | None = None
    # {override key: sweep expression}: choice(...), range(...), interval(...), tag(log, ...)
    params: Any = None
    # {_target_: optuna.pruners.<Class>, ...}: jobs report each validation epoch and a job the
    # pruner stops ends its trial PRUNED; null: no pruning (NopPruner)
    pruner: Any = None
    # seconds between heartbeats of the trials this process runs (several processes, one study)
    heartbeat_interval: float = 10.0
    # seconds without a heartbeat after which a RUNNING trial's process counts as gone
    grace_period: float = 60.0


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="plusultra_optuna",
    node=PlusUltraOptunaSweeperConf,
    provider="plusultra_optuna_sweeper",
)
