"""A tiny Hydra app the sweeper tests launch: returns (x - 2)^2 + y, or fails on request."""

import time

import hydra
from omegaconf import DictConfig


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
    first = (cfg.x - 2.0) ** 2 + cfg.y
    return [first, (cfg.x + 2.0) ** 2] if cfg.two else first


if __name__ == "__main__":
    main()
