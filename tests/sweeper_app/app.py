"""A tiny Hydra app the sweeper tests launch: returns (x - 2)^2 + y, or fails on request."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    """The objective; ``fail=true`` raises to exercise failed trials."""
    if cfg.fail:
        raise RuntimeError("asked to fail")
    return (cfg.x - 2.0) ** 2 + cfg.y


if __name__ == "__main__":
    main()
