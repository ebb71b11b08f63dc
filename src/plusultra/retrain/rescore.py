"""The champion re-scored on the challenger's segments of the new database.

The champion's forecasts (or, for a PPO run, its policy's positions) come from
`plusultra-predict`'s code path (`plusultra.cli.predict.predict`: the champion's own features,
normalisation and model, rebuilt on the new database). They are backtested on the challenger's
validation and test decision bars, with the challenger's simulator and evaluation settings
(costs, fills, annualisation, baselines, bootstrap) and the champion's own position rule
(signal step, position method, gross and net caps: how its forecasts become a book), through
the same `Backtest.run` that produced the challenger's own `val_*` / `test_*` metrics. Re-scoring
a run against itself reproduces its metrics.json (a test).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plusultra.errors import DataError
from plusultra.evaluation.backtest.engine import BacktestResult

# evaluation keys that belong to a model's strategy: how its forecasts become weights
POSITION_KEYS = ("signal_step", "position_method", "gross", "net")


@dataclass
class Rescored:
    """The champion's backtests on the challenger's segments.

    Attributes:
        val, test: the backtests of the validation and test decision bars.
        segments: first and last decision date of each segment (ISO).
        predictions: the champion's predictions on the new database (every scored bar).
    """

    val: BacktestResult
    test: BacktestResult
    segments: dict[str, list[str]]
    predictions: pd.DataFrame


def challenger_market(challenger_dir: Path, db: str):
    """The challenger's data module on `db` with its recorded segments (as its run split them).

    Raises:
        DataError: the rebuilt calendar does not put the segments on the recorded dates.
    """
    from plusultra.data.datasets.datamodule import SQLiteDataModule
    from plusultra.data.datasets.windows import Segments

    meta = json.loads((challenger_dir / "data.json").read_text())
    seg = meta.get("segments")
    if not seg:
        raise DataError(f"{challenger_dir}/data.json: no segments recorded")
    dm = SQLiteDataModule.for_inference(db, challenger_dir)
    dm.segments = Segments(
        train=tuple(seg["train"]),
        val=tuple(seg["val"]),
        test=tuple(seg["test"]),
        train_end=seg["train_end"],
        val_end=seg["val_end"],
        embargo=seg["embargo"],
    )
    try:
        dates = dm.segment_dates()
    except IndexError:
        dates = None
    if dates != meta["segment_dates"]:
        raise DataError(
            f"{db}: the challenger {challenger_dir} was not trained on this database (its "
            f"segments {meta['segment_dates']} fall on {dates} here)"
        )
    return dm


def rescore(
    champion_dir: Path, challenger_dir: Path, db: str, workdir: Path, progress: bool = False
) -> Rescored:
    """Backtest the champion on the challenger's validation and test segments of `db`.

    Args:
        champion_dir: the champion's run dir (a finished run).
        challenger_dir: the challenger's run dir (trained on `db`).
        db: the new database.
        workdir: where the champion's raw predictions are written (scratch parquet files).
        progress: show inference progress bars.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from plusultra.cli.predict import policy_stage, predict
    from plusultra.evaluation.backtest.engine import MarketContext

    dm = challenger_market(challenger_dir, db)
    challenger_cfg = OmegaConf.load(challenger_dir / "config.yaml")
    champion_cfg = OmegaConf.load(champion_dir / "config.yaml")
    evaluation = OmegaConf.merge(
        challenger_cfg.evaluation,
        {k: champion_cfg.evaluation[k] for k in POSITION_KEYS if k in champion_cfg.evaluation},
    )
    backtest = instantiate(evaluation, _convert_="all")
    simulator = instantiate(challenger_cfg.simulator, _convert_="all")
    segments = dm.segment_dates()
    policy = policy_stage(champion_cfg) is not None
    preds = {}
    for name in ("val", "test"):
        # a policy reads its own position: one rollout per segment, starting flat at its start
        if policy or not preds:
            out = workdir / f"champion_predictions_{name if policy else 'all'}.parquet"
            start = segments[name][0] if policy else None
            predict(champion_dir, db, out, 1024, None, None, progress, rollout_start=start)
            frame = pd.read_parquet(out)
        preds[name] = frame.drop(columns=["position", "realized_return"], errors="ignore")
    panel = dm.panel
    context = MarketContext(**dm.context())
    market = (panel.dates, panel.symbols, dm.tradable, dm.returns, simulator)
    results = {}
    for name, frame in preds.items():
        known = frame["symbol"].isin(panel.symbols) & frame["timestamp"].isin(panel.dates)
        results[name] = backtest.run(
            frame[known], *market, *getattr(dm.segments, name), context=context
        )
    return Rescored(results["val"], results["test"], segments, pd.concat(preds.values()))
