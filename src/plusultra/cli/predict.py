"""`plusultra-predict`: forecasts and positions of a finished run on any database.

  plusultra-predict outputs/runs/2026-11-21/10-00-00 --db market.sqlite --out predictions.parquet

Rebuilds the run's inputs from its data.json: the features, indicators and regime columns it
computed, its alternative data and market-state conditioning labels, its universe and first date
(overridable: --symbols, --start), with its normalisation statistics (fitted on its train
segment); uses its model (the last walk-forward refit when the run refitted, else the best
checkpoint) and the same prediction and position code the run used for its test segment. On the
run's own database the predictions equal the run's test predictions. Writes one row per
(symbol, timestamp) with a complete input window.

A run whose last curriculum stage is PPO (curriculum=rl, full) is served by its policy: the
actor-critic rebuilt from the run's config, with the weights the stage handed to evaluation
(checkpoints/<stage>-policy.pt). A policy reads its own previous position, so its positions
come from one sequential greedy rollout over the dates, starting flat at the first bar with a
complete window (--rollout-start: the first decision date), through the environment of the
run's simulator; pred_1 is the position. From the test segment's first date on, on the run's
own database, they are the positions the run traded in its test backtest.

Inference runs where and how the run trained: its trainer.accelerator (gpu: the current CUDA
device) under its trainer.precision (bf16-mixed: bf16 autocast; a policy: 32-true, as the run's
own rollouts) and matmul_precision; --device and --precision override them (e.g. --device cpu
--precision 32-true on a machine without CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plusultra.cli.common import fail
from plusultra.errors import ConfigError, DataError
from plusultra.training.run_model import (  # noqa: F401 - find_checkpoint: re-exported
    build_module,
    check_finished,
    find_checkpoint,
    inference_target,
    load_forecaster,
    policy_stage,
)


def predict(
    run_dir: Path,
    db: str,
    out: Path,
    batch_size: int,
    start: str | None,
    end: str | None,
    progress: bool = True,
    symbols: list[str] | None = None,
    device: str | None = None,
    precision: str | None = None,
    rollout_start: str | None = None,
) -> Path:
    """Write predictions of the run at `run_dir` on `db` to `out` (parquet, atomic).

    `start` and `symbols` default (None) to the run's own; `end` to the database's last bar;
    `device` (cpu, cuda, cuda:1, ...) and `precision` (a Lightning precision) to the run's
    ``trainer.accelerator`` and ``trainer.precision`` (a policy run: ``32-true``);
    `rollout_start` (a policy run only; ISO date) to the first bar with a complete window.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from plusultra.data.datasets.datamodule import SQLiteDataModule
    from plusultra.evaluation.backtest.engine import MarketContext
    from plusultra.io import write_parquet_atomic
    from plusultra.training.predict import predictions_frame

    check_finished(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    stage = policy_stage(cfg)  # the run's PPO stage, or None: a forecaster
    if stage is None and rollout_start is not None:
        raise ConfigError(
            f"--rollout-start applies to a run whose last curriculum stage is a PPO stage; "
            f"{run_dir} ({OmegaConf.select(cfg, 'curriculum.name')}) serves a forecaster"
        )
    target = inference_target(cfg, device, precision, policy=stage is not None)
    given = {"start": start, "end": end, "symbols": symbols}
    overrides = {k: v for k, v in given.items() if v is not None}
    dm = SQLiteDataModule.for_inference(db, run_dir, batch_size=batch_size, **overrides)
    model = build_module(cfg, dm.n_features, dm.condition_classes)
    panel = dm.panel
    if stage is not None:
        preds = policy_predictions(model, stage, dm, run_dir, target, rollout_start)
    else:
        model = load_forecaster(run_dir, model, target.dtype)
        preds = predictions_frame(
            model,
            dm.inference_dataset(),
            panel.dates,
            panel.symbols,
            dm.norm.target_scale,
            batch_size,
            progress,
            target,
        )
    if preds.empty:
        raise DataError(f"{db}: no symbol has {dm.window} consecutive complete bars to predict")
    backtest = instantiate(cfg.evaluation, _convert_="all")
    # the run's resolved fill timing: positions as it traded them, returns as they were earned
    mode = json.loads((run_dir / "metrics.json").read_text()).get("execution")
    earned = dm.returns if mode is None else MarketContext(**dm.context()).earned(mode)
    preds = backtest.with_positions(
        preds, panel.dates, panel.symbols, dm.tradable, earned, execution=mode
    )
    return write_parquet_atomic(out, preds)


def policy_predictions(model, stage, dm, run_dir: Path, target, rollout_start: str | None):
    """``symbol, timestamp, pred_1`` (the position) of the run's policy: the actor-critic of
    `stage` on `model`'s architecture with the handed weights, one greedy rollout on `target`.

    Raises:
        ConfigError: a "-true" precision other than 32-true, or a bad `rollout_start`.
        DataError: no policy file, or nothing to decide on.
    """
    import numpy as np
    import pandas as pd

    from plusultra.rl.predict import rollout_positions, run_policy

    policy = run_policy(model, stage, dm, run_dir, target)
    dates = dm.panel.dates
    first = 0
    if rollout_start is not None:
        try:
            when = np.datetime64(pd.Timestamp(rollout_start).tz_localize(None), "ns")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--rollout-start {rollout_start!r}: not a date ({exc})") from None
        first = int(np.searchsorted(dates.astype("datetime64[ns]"), when))
        if first >= len(dates):
            raise ConfigError(
                f"--rollout-start {rollout_start}: after the data's last bar "
                f"{pd.Timestamp(dates[-1]).date()}"
            )
    return rollout_positions(policy, stage, dm, target, first)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plusultra-predict",
        description="Forecasts and positions of a finished run on any contract database.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory (has metrics.json)")
    parser.add_argument("--db", required=True, help="SQLite database following the contract")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.parquet"),
        help="parquet file to write (default predictions.parquet)",
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="windows per batch")
    parser.add_argument(
        "--start",
        help="first date loaded (ISO; default: the run's data.start); history before the first "
        "prediction is needed to fill a window",
    )
    parser.add_argument(
        "--symbols",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        help="comma-separated universe (default: the run's data.symbols, else every symbol); "
        "the sector regime columns are computed across it",
    )
    parser.add_argument("--end", help="last date loaded (ISO)")
    parser.add_argument(
        "--rollout-start",
        help="a PPO run only: the first decision date (ISO); its policy starts flat there "
        "(default: the first bar with a complete window)",
    )
    parser.add_argument(
        "--device",
        help="cpu, cuda, cuda:1, ... (default: the run's trainer.accelerator; gpu = cuda)",
    )
    parser.add_argument(
        "--precision",
        help="a Lightning precision: 32-true, bf16-mixed, 16-mixed, ... (default: the run's "
        "trainer.precision)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        out = predict(
            args.run_dir,
            args.db,
            args.out,
            args.batch_size,
            args.start,
            args.end,
            progress=not args.quiet,
            symbols=args.symbols,
            device=args.device,
            precision=args.precision,
            rollout_start=args.rollout_start,
        )
    except Exception as exc:  # noqa: BLE001 - reported as one message
        fail("plusultra-predict", exc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
