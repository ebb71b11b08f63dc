"""Evaluation as record steps: signal -> positions -> simulated P&L -> metrics, with baselines.

Timing: a forecast made at the close of bar ``t`` sets the target weights held from ``t`` to
``t + 1``; the simulator earns ``returns[t]`` (close ``t`` -> close ``t + 1``) on them. A symbol
is tradable at ``t`` when it has a bar at ``t`` and ``t`` is before its delisting date
(delisting dates are treated as announced, so positions are closed on the last listed bar).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest import baselines as strategies
from plusultra.evaluation.backtest.positions import POSITION_METHODS, positions_from_signal
from plusultra.evaluation.metrics.performance import compute_metrics, ic_summary
from plusultra.evaluation.metrics.risk import risk_metrics
from plusultra.sim.realistic import MarketData, RealisticSimulator


@dataclass
class MarketContext:
    """Full-calendar (T, S) arrays the baselines and simulators may need.

    Attributes:
        close: adjusted close; volume: split-adjusted shares; volatility: per-bar return std
        known at t; features: (T, S, F) normalised model inputs; targets: (T, S) scaled labels of
        the traded step; label_end: last bar whose label is known at the end of training;
        refits: walk-forward blocks ``(fit_lo, fit_hi, lo, hi)``, when the model is refitted
        (the ridge baseline is then refitted on the same samples before the same blocks).
    """

    close: np.ndarray
    volume: np.ndarray | None = None
    volatility: np.ndarray | None = None
    features: np.ndarray | None = None
    targets: np.ndarray | None = None
    label_end: int | None = None
    refits: list[tuple[int, int, int, int]] | None = None


# Baseline weights on the full calendar (momentum needs history before the test segment);
# buy-and-hold starts at the first test bar, so it is computed on the segment alone.
BASELINES = {
    "buyhold": lambda c, tr, r, lo, hi: strategies.buy_and_hold_weights(
        r[lo : hi + 1], tr[lo : hi + 1]
    ),
    "equal_weight": lambda c, tr, r, lo, hi: strategies.equal_weight_weights(tr)[lo : hi + 1],
    "momentum": lambda c, tr, r, lo, hi: strategies.momentum_weights(c.close, tr)[lo : hi + 1],
    "mean_reversion": lambda c, tr, r, lo, hi: strategies.mean_reversion_weights(c.close, tr)[
        lo : hi + 1
    ],
    "ridge": lambda c, tr, r, lo, hi: _ridge(c, tr)[lo : hi + 1],
}


def _ridge(c: MarketContext, tradable: np.ndarray) -> np.ndarray:
    """Ridge fitted once on the train labels, or refitted per walk-forward block."""
    if c.refits and len(c.refits) > 1:
        return strategies.walk_forward_ridge_weights(c.features, c.targets, tradable, c.refits)
    return strategies.ridge_weights(c.features, c.targets, tradable, c.label_end)


@dataclass
class BacktestResult:
    """Metrics of the strategy and its baselines, and the daily record.

    Attributes:
        metrics: strategy metrics (see `compute_metrics`).
        baselines: baseline name -> its metrics on the same bars.
        daily: one row per decision date: strategy/baseline returns and equity (start 1.0),
            turnover and gross exposure of the strategy.
    """

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    daily: pd.DataFrame | None = None


@dataclass
class _Run:
    """A simulator's result as numpy arrays, whichever simulator produced it."""

    portfolio_returns: np.ndarray
    turnover: np.ndarray
    gross_exposure: np.ndarray
    costs: np.ndarray | None = None  # (T,) total costs per bar, currency
    gross_pnl: np.ndarray | None = None  # (T,) P&L before costs per bar, currency
    trade_pnl: np.ndarray | None = None  # P&L of each closed trade, currency
    costs_by_type: dict[str, np.ndarray] | None = None  # name -> (T,) currency


def simulate(
    simulator,
    weights: np.ndarray,
    returns: np.ndarray,
    lo: int,
    hi: int,
    tradable: np.ndarray,
    context: MarketContext | None,
) -> _Run:
    """Run `simulator` on decision bars lo..hi; a realistic simulator gets the market data.

    The realistic simulator executes at each bar's close with spread, impact (volatility and
    volume) and participation caps, so it receives close, volume, volatility and tradable for
    bars lo..hi + 1 (the last one only marks the book).
    """
    if not isinstance(simulator, RealisticSimulator):
        sim = simulator.run(weights, returns)
        return _Run(sim.portfolio_returns, sim.turnover, sim.gross_exposure)
    if context is None or context.volume is None or context.volatility is None:
        raise DataError("simulator=realistic needs close, volume and volatility for the backtest")
    bars = slice(lo, hi + 2)
    market = MarketData(
        close=context.close[bars],
        volume=context.volume[bars],
        volatility=np.nan_to_num(context.volatility[bars], nan=0.0),
        tradable=tradable[bars],
    )
    res = simulator.run(weights, market=market)
    costs = sum(c.numpy() for c in res.costs.values())  # (T,)
    equity = res.equity.numpy()
    return _Run(
        res.portfolio_returns.numpy(),
        res.turnover.numpy(),
        res.gross_exposure.numpy(),
        costs=costs,
        gross_pnl=np.diff(equity) + costs,
        trade_pnl=res.trades.loc[~res.trades["open"], "pnl"].to_numpy(),
        costs_by_type={k: v.numpy() for k, v in res.costs.items()},
    )


class Backtest:
    """Turns forecasts into cross-sectional positions and evaluates them.

    Args:
        signal_step: which forecast step drives positions (1..horizon; `pred_<k>` column);
            None: the last one the model predicts (the full horizon; 1 for a policy head).
        position_method: how a cross-section of signals becomes weights (rank, zscore, sign).
        gross: gross exposure (sum of absolute weights) per bar.
        periods_per_year: bars per year, for annualisation (252 for daily bars).
        baselines: strategies run on the same simulator beside the model (see `BASELINES`).
        bootstrap: stationary-bootstrap replicates for the 95% intervals of Sharpe and annual
            return (0: no intervals).
        seed: seed of the bootstrap.
    """

    def __init__(
        self,
        signal_step: int | None = None,
        position_method: str = "rank",
        gross: float = 1.0,
        periods_per_year: int = 252,
        baselines: list[str] | None = None,
        bootstrap: int = 1000,
        seed: int = 0,
    ) -> None:
        if position_method not in POSITION_METHODS:
            raise ConfigError(
                f"evaluation.position_method={position_method!r}; valid: {sorted(POSITION_METHODS)}"
            )
        if signal_step is not None and signal_step < 1:
            raise ConfigError(f"evaluation.signal_step={signal_step} must be >= 1")
        if periods_per_year < 1:
            raise ConfigError(f"evaluation.periods_per_year={periods_per_year} must be >= 1")
        self.baselines = list(BASELINES if baselines is None else baselines)
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"evaluation.baselines: unknown {unknown}; valid: {list(BASELINES)}")
        if bootstrap < 0:
            raise ConfigError(f"evaluation.bootstrap={bootstrap} must be >= 0")
        self.bootstrap, self.seed = bootstrap, seed
        self.signal_step, self.method = signal_step, position_method
        self.gross, self.periods_per_year = gross, periods_per_year

    def signal_matrix(
        self, preds: pd.DataFrame, dates: np.ndarray, symbols: list[str]
    ) -> np.ndarray:
        """(T, S) forecast of step `signal_step`; NaN where there is no prediction."""
        steps = sorted(int(c[5:]) for c in preds.columns if c.startswith("pred_"))
        col = f"pred_{steps[-1] if self.signal_step is None else self.signal_step}"
        if col not in preds.columns:
            horizon = sum(c.startswith("pred_") for c in preds.columns)
            raise ConfigError(
                f"evaluation.signal_step={self.signal_step} but the model forecasts "
                f"{horizon} step(s); choose 1..{horizon}"
            )
        out = np.full((len(dates), len(symbols)), np.nan)
        rows = pd.DatetimeIndex(dates).get_indexer(preds["timestamp"])
        cols = pd.Index(symbols).get_indexer(preds["symbol"])
        out[rows, cols] = preds[col].to_numpy()
        return out

    def weights(
        self, preds: pd.DataFrame, dates: np.ndarray, symbols: list[str], tradable: np.ndarray
    ) -> np.ndarray:
        """(T, S) target weights from forecasts; zero where not tradable or not predicted."""
        signal = self.signal_matrix(preds, dates, symbols)
        signal[~tradable] = np.nan
        return positions_from_signal(signal, self.method, self.gross)

    def with_positions(
        self,
        preds: pd.DataFrame,
        dates: np.ndarray,
        symbols: list[str],
        tradable: np.ndarray,
        returns: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """`preds` with `position` (the weight held from that bar to the next) and, given the
        (T, S) next-bar `returns`, `realized_return` (known one bar later; for attribution)."""
        w = self.weights(preds, dates, symbols, tradable)
        rows = pd.DatetimeIndex(dates).get_indexer(preds["timestamp"])
        cols = pd.Index(symbols).get_indexer(preds["symbol"])
        out = preds.assign(position=w[rows, cols])
        if returns is not None:
            out["realized_return"] = returns[rows, cols]
        return out

    def run(
        self,
        preds: pd.DataFrame,
        dates: np.ndarray,
        symbols: list[str],
        tradable: np.ndarray,
        returns: np.ndarray,
        simulator,
        lo: int,
        hi: int,
        context: MarketContext | None = None,
    ) -> BacktestResult:
        """Backtest decision bars lo..hi (hi is capped so that every bar has a next bar)."""
        hi = min(hi, len(dates) - 2)
        if hi < lo:
            raise DataError(f"backtest range is empty (bars {lo}..{hi})")
        signal = self.signal_matrix(preds, dates, symbols)
        signal[~tradable] = np.nan
        w = positions_from_signal(signal, self.method, self.gross)[lo : hi + 1]
        r = returns[lo : hi + 1]
        held = (w != 0) & np.isnan(r)
        if held.any():
            t, s = np.argwhere(held)[0]
            raise DataError(
                f"series: symbol {symbols[s]} has no bar after {pd.Timestamp(dates[lo + t]).date()}"
                " but assets.delisted is not set to that date; a position cannot be valued"
            )
        sim = simulate(simulator, w, r, lo, hi, tradable, context)
        metrics = compute_metrics(sim.portfolio_returns, self.periods_per_year, sim.turnover)
        metrics.update(ic_summary(signal[lo : hi + 1], r))
        daily = pd.DataFrame(
            {
                "strategy_return": sim.portfolio_returns,
                "strategy_equity": np.cumprod(1 + sim.portfolio_returns),
                "turnover": sim.turnover,
                "gross_exposure": sim.gross_exposure,
            },
            index=pd.DatetimeIndex(dates[lo : hi + 1], name="timestamp"),
        )
        for name, cost in (sim.costs_by_type or {}).items():
            daily[f"cost_{name}"] = cost  # currency per bar, realistic simulator only
        baselines = {}
        for name in self.baselines:
            if name == "ridge" and (context is None or context.features is None):
                continue  # no features to fit on (e.g. a backtest of external forecasts)
            wb = BASELINES[name](context, tradable, returns, lo, hi)
            b = simulate(simulator, wb, r, lo, hi, tradable, context).portfolio_returns
            baselines[name] = compute_metrics(b, self.periods_per_year)
            daily[f"{name}_return"] = b
            daily[f"{name}_equity"] = np.cumprod(1 + b)
        bench = daily["buyhold_return"].to_numpy() if "buyhold" in baselines else None
        metrics.update(
            risk_metrics(
                sim.portfolio_returns,
                weights=w,
                benchmark=bench,
                gross_pnl=sim.gross_pnl,
                costs=sim.costs,
                trade_pnl=sim.trade_pnl,
                periods_per_year=self.periods_per_year,
                n_boot=self.bootstrap,
                seed=self.seed,
            )
        )
        return BacktestResult(metrics, baselines, daily)
