"""A finished run's model, rebuilt from its directory: one code path for `plusultra-predict`
and `plusultra-serve`.

A run directory holds its resolved config (config.yaml), what inference needs to rebuild its
inputs (data.json, normalisation.json) and, written last, metrics.json. The forecaster is the
run's `ForecastModule` rebuilt from its config, with the weights of its latest model (the last
walk-forward refit, else the best checkpoint), loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

from plusultra.errors import ConfigError, DataError

REQUIRED = ("config.yaml", "data.json", "normalisation.json", "metrics.json")


def check_finished(run_dir: Path) -> None:
    """Raise DataError unless `run_dir` holds every file of a finished run (`REQUIRED`)."""
    missing = [n for n in REQUIRED if not (Path(run_dir) / n).is_file()]
    if missing:
        raise DataError(
            f"{run_dir} is not a finished run: missing {', '.join(missing)} "
            "(metrics.json is written last, when a run completes)"
        )


def find_checkpoint(run_dir: Path) -> Path:
    """The run's latest model: the last walk-forward refit (walk_forward.ckpt) when the run
    refitted, else its best checkpoint (last.ckpt if no best was kept)."""
    for name in ("walk_forward.ckpt", "best.ckpt", "last.ckpt"):
        path = Path(run_dir) / "checkpoints" / name
        if path.is_file():
            return path
    raise DataError(f"{run_dir}: no checkpoints/best.ckpt or checkpoints/last.ckpt")


def policy_stage(cfg):
    """The run's last curriculum stage (an `RLStage`) when it is a PPO stage, else None; built
    from the run's config as the run built it (its simulator's costs, its policy settings)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from plusultra.training.curriculum import build_stage

    stages = OmegaConf.select(cfg, "curriculum.stages", default=None)
    if not stages or stages[-1].get("kind") != "ppo":
        return None
    return build_stage(len(stages) - 1, instantiate(stages[-1], _convert_="all"))


def inference_target(cfg, device: str | None, precision: str | None, policy: bool):
    """The `InferenceDevice` of the run's trainer.accelerator and trainer.precision (a policy:
    32-true, as its own rollouts), `device` and `precision` overriding them; sets the run's
    matmul_precision."""
    from omegaconf import OmegaConf

    from plusultra.training.device import InferenceDevice, set_matmul_precision

    run_precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    if policy:
        run_precision = "32-true"
    target = InferenceDevice.from_config(
        OmegaConf.select(cfg, "trainer.accelerator", default="cpu"),
        precision if precision is not None else run_precision,
        device,
    )
    set_matmul_precision(OmegaConf.select(cfg, "matmul_precision", default="highest"))
    return target


def build_module(cfg, n_features: int, condition_classes: list[int]):
    """The run's `ForecastModule` (untrained) from its config, for `n_features` input columns
    and the conditioning labels' class counts (empty: no market-state embedding); a
    `CrossAssetModule` for a run with ``cross_asset.enabled``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from plusultra.models.cross_asset import forecast_module

    embedding = (
        instantiate(cfg.market_state, n_classes=condition_classes) if condition_classes else None
    )
    n_inputs = n_features + (embedding.dim if embedding else 0)
    cross = OmegaConf.select(cfg, "cross_asset", default=None)  # absent in older runs
    return forecast_module(
        None if cross is None else instantiate(cross, _convert_="all"),
        embedding=embedding,
        backbone=instantiate(cfg.backbone, n_features=n_inputs, _convert_="all"),
        head=instantiate(cfg.head, _convert_="all"),
        loss=instantiate(cfg.loss, _convert_="all"),
        optim=instantiate(cfg.optim, _convert_="all"),
    )


def load_forecaster(run_dir: Path, model, dtype):
    """`model` with the weights of the run's latest checkpoint (``weights_only=True``), in
    `dtype` (float32, or the weights' dtype of a "-true" precision), in eval mode."""
    import torch

    state = torch.load(find_checkpoint(run_dir), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"{find_checkpoint(run_dir)}: does not fit the model of {run_dir}/config.yaml: {exc}"
        ) from None
    return model.to(dtype=dtype).eval()
