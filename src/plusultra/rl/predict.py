"""A PPO run's policy on any database: its saved weights, and its positions from one rollout.

`RLStage.run` saves the policy it hands to evaluation (the selected epoch's weights, whatever
candidate the selection kept) as ``checkpoints/<stage>-policy.pt`` (`save_policy`); that file,
not a Lightning checkpoint, is what `plusultra-predict` loads (`load_policy`), so it always holds
the weights the run's own validation and test backtests traded.

`policy_positions` is `plusultra-predict`'s rollout: one sequential greedy rollout
(`rl.rollout.segment_rollout`) of one environment over every symbol, starting flat at its first
decision bar, through the same `TradingEnv` (costs, fill timing, holdable mask, gross cap) as the
run's evaluation, so on the run's own database from the test segment's first bar on it gives the
positions the run traded. Past the last bar whose holding return is in the data (the last
``lag + 1`` bars, which a backtest cannot score) it goes on "live" (`live_market`): a target is
held where the symbol is observable at the decision bar and, when the fill bar is in the data,
tradable there, so the newest bar has the position to fill at the next one.

`run_policy` (the run's actor-critic with its handed weights) and `rollout_positions` (that
rollout over a data module) are what `plusultra-predict` and `plusultra-serve` both call.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError, DataError
from plusultra.io import write_bytes_atomic
from plusultra.rl.env import EnvConfig
from plusultra.rl.market import EnvMarket
from plusultra.rl.policy import ActorCritic
from plusultra.rl.rollout import decision_bars, positions_frame, segment_rollout

log = logging.getLogger(__name__)

POLICY_SUFFIX = "-policy.pt"  # checkpoints/<stage>-policy.pt: the policy evaluation traded


def save_policy(policy: ActorCritic, handed: str, path: str | Path) -> Path:
    """Write ``{"state_dict": <policy's weights, on the CPU>, "handed": handed}`` atomically.

    Args:
        policy: the actor-critic as the stage hands it to evaluation.
        handed: which epoch it is (``best`` or ``last``), recorded for the log.
        path: ``checkpoints/<stage>-policy.pt``.
    """
    state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "handed": str(handed)}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_policy(policy: ActorCritic, checkpoint_dir: Path, stage: str) -> Path:
    """Load ``<checkpoint_dir>/<stage>-policy.pt`` into `policy` (``weights_only``, strict).

    Raises:
        DataError: the file is missing (naming it and the stage) or does not fit the policy
            rebuilt from the run's config.
    """
    path = Path(checkpoint_dir) / f"{stage}{POLICY_SUFFIX}"
    if not path.is_file():
        raise DataError(
            f"{path}: no policy file for PPO stage {stage!r} (RLStage.run writes the policy it "
            "hands to evaluation there; a run without checkpointing or from before this file "
            "existed has none, rerun it)"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    try:
        policy.load_state_dict(saved["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise DataError(f"{path}: does not fit the policy of the run's config: {exc}") from None
    log.info("Policy of stage %s: %s (the %s epoch)", stage, path, saved.get("handed", "?"))
    return path


def live_market(market: EnvMarket, tradable: np.ndarray) -> EnvMarket:
    """`market` extended so a rollout can decide at every bar up to the last one.

    The last ``lag + 1`` decision bars have no holding return in the data (their fill or exit
    bar is missing), so the environment would force them flat. Here a target there is held
    where the symbol is observable at the bar and, if its fill bar is in the data, tradable at
    it (nothing past the data is read); its return is 0. ``lag + 1`` empty bars (not observable)
    are appended so the environment's episode may reach the last real bar.

    Args:
        market: the environment's market over T bars.
        tradable: (T, S) bool, the data's tradable mask (its ``tradable`` panel).
    """
    n, lag = market.n_bars, market.lag
    first = max(n - 1 - lag, 0)  # first decision bar without a holding return in the data
    at_fill = np.ones((n - first, tradable.shape[1]), dtype=bool)
    inside = max(n - (first + lag), 0)  # of those bars, how many fill inside the data
    at_fill[:inside] = tradable[first + lag : first + lag + inside]
    holdable = market.holdable.clone()
    holdable[first:] = market.observable[first:] & torch.as_tensor(at_fill, device=holdable.device)

    def pad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = lag + 1
        return torch.cat([x, x.new_zeros(shape)], dim=dim)

    return dataclasses.replace(
        market,
        features=pad(market.features, dim=1),  # (S, T + lag + 1, F)
        observable=pad(market.observable),
        returns=pad(market.returns),
        holdable=pad(holdable),
        impact=pad(market.impact),
    )


def policy_positions(
    policy: ActorCritic,
    market: EnvMarket,
    tradable: np.ndarray,
    config: EnvConfig,
    dates: np.ndarray,
    symbols: list[str],
    first_bar: int = 0,
) -> pd.DataFrame:
    """The policy's greedy positions from decision bar `first_bar` on (see the module docstring).

    Args:
        policy: the actor-critic, on the market's device (a "-mixed" precision: call this
            inside its autocast).
        market: the environment's market over the T bars of ``dates`` (`EnvMarket.build`).
        tradable: (T, S) bool, the data's tradable mask.
        config: the run's environment settings (its costs, gross cap and action kind).
        dates: (T,) the calendar; symbols: the S symbols.
        first_bar: where the rollout starts flat (moved up to the first complete window).

    Returns:
        ``symbol, timestamp, pred_1`` (the position decided at that bar's close, a fraction of
        equity in [-1, 1]) for every observable (bar, symbol) from the first decision bar on.

    Raises:
        DataError: no bar from `first_bar` on has a complete window.
    """
    live = live_market(market, tradable)
    n = market.n_bars
    if max(int(first_bar), market.window - 1) > n - 1:
        raise DataError(
            f"rollout: no bar from {pd.Timestamp(dates[min(first_bar, n - 1)]).date()} on has "
            f"a complete {market.window}-bar window"
        )
    lo, hi = decision_bars(live, (int(first_bar), n - 1))
    rollout = segment_rollout(policy, live, (lo, hi), config)
    return positions_frame(rollout, dates, symbols)


def run_policy(model, stage, dm, run_dir: Path, target) -> ActorCritic:
    """The run's policy: the actor-critic of PPO `stage` (`RLStage.make_policy`) on `model`'s
    architecture, with the weights the stage handed to evaluation (`load_policy`).

    Args:
        model: the run's `ForecastModule` (`run_model.build_module`), untrained.
        stage: the run's last curriculum stage (`run_model.policy_stage`).
        dm: a data module of the run's inputs (its train-segment ``norm.target_scale``).
        run_dir: the run directory (its ``checkpoints/<stage>-policy.pt``).
        target: the `InferenceDevice` the rollout runs on.

    Raises:
        ConfigError: `target` is a "-true" precision other than 32-true.
        DataError: no policy file, or one that does not fit.
    """
    if target.autocast_dtype is None and target.dtype != torch.float32:
        raise ConfigError(
            f"--precision {target.precision}: a policy's rollout runs in float32 (32-true) or "
            "under autocast (a -mixed precision)"
        )
    policy = stage.make_policy(model, dm)
    load_policy(policy, Path(run_dir) / "checkpoints", stage.name)
    return policy


def rollout_positions(policy: ActorCritic, stage, dm, target, first_bar: int = 0) -> pd.DataFrame:
    """`policy_positions` over data module `dm`: its market (`EnvMarket.from_datamodule`, the
    stage's fill timing and impact) on `target`, under `target`'s precision.

    Returns:
        ``symbol, timestamp, pred_1`` (the position) from decision bar `first_bar` on.
    """
    market = EnvMarket.from_datamodule(
        dm, stage._env.execution, stage._env.impact_coef, device=target.device
    )
    with target.context():
        return policy_positions(
            policy, market, dm.tradable, stage._env, dm.panel.dates, dm.panel.symbols, first_bar
        )
