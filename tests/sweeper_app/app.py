"""A tiny Hydra app the sweeper tests launch: returns (x - 2)^2 + y, or fails on request.

With ``epochs=N`` inside a sweep it behaves like a training job under a pruner: it opens its
trial (``optuna.study``/``optuna.trial`` from the sweeper, storage and pruner from
``hydra.sweeper``), reports a curve falling to the objective, ``value + N - 1 - epoch`` for
epoch 0..N-1, and raises ``optuna.TrialPruned`` when the pruner says so.
"""

import time

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.plusultra_optuna_sweeper.job import open_trial


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    """The objective; ``fail=true`` raises and ``nan=true`` returns NaN (failed trials);
    ``two=true`` returns two conflicting values, ``[(x - 2)^2 + y, (x + 2)^2]`` (their Pareto
    front is x in [-2, 2] with y = 0); ``sleep`` seconds are spent first (a trial that runs a
    while, for the several-processes test)."""
    time.sleep(cfg.sleep)
    if cfg.fail:
        raise RuntimeError("asked to fail")
    if cfg.nan:
        return float("nan")
    value = (cfg.x - 2.0) ** 2 + cfg.y
    if cfg.epochs and cfg.optuna.trial is not None:
        hc = HydraConfig.get()
        sweeper = OmegaConf.to_container(hc.sweeper, resolve=True)
        trial = open_trial(sweeper, cfg.optuna.study, cfg.optuna.trial, hc.runtime.cwd)
        for epoch in range(cfg.epochs):
            trial.report(value + cfg.epochs - 1 - epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    return [value, (cfg.x + 2.0) ** 2] if cfg.two else value


if __name__ == "__main__":
    main()
