"""A tiny Hydra app the sweeper tests launch: returns (x - 2)^2 + y, or fails on request."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    """The objective; ``fail=true`` raises and ``nan=true`` returns NaN (failed trials)."""
    if cfg.fail:
        raise RuntimeError("asked to fail")
    if cfg.nan:
        return float("nan")
    return (cfg.x - 2.0) ** 2 + cfg.y


if __name__ == "__main__":
    main()
