"""Evaluation as record steps: signal -> positions -> simulated P&L -> metrics, with baselines.

Timing (``plusultra.execution``): a forecast made at the close of bar ``t`` sets target weights that
the simulator fills at bar ``t + 1``'s open (``next_open``, the default where the data has opens)
or close (``next_close``, the default without opens), or at the decision close itself
(``same_close``, optimistic), and holds until the next fill. The model and every baseline go
through the same simulator with the same mode, recorded on ``BacktestResult.execution``.

A symbol is tradable at ``t`` when it has a bar at ``t`` and ``t`` is before its delisting date
(delisting dates are treated as announced). A decision at ``t`` also needs bars up to its exit
fill, ``t + lag + 1`` (``lag`` = 1 for the next-bar modes, 0 for ``same_close``), so a symbol
takes no new position in its last ``lag`` tradable bars and the backtest's last decision bar is
``T - 2 - lag``: the exit of every position fills on a listed bar. A held symbol whose bars stop
without a delisting date is a data error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest import baselines as strategies
from plusultra.evaluation.backtest.positions import POSITION_METHODS, positions_from_signal
from plusultra.evaluation.metrics.performance import compute_metrics, ic_summary
from plusultra.evaluation.metrics.risk import information_ratio, ir_benchmark, risk_metrics
from plusultra.execution import (
    carry_prices,
    execution_returns,
    fill_lag,
    has_opens,
    resolve_execution,
)
from plusultra.guardrails import GuardrailConfig
from plusultra.guardrails.segment import event_counts, guard_segment
from plusultra.sim.realistic import MarketData, RealisticSimulator

log = logging.getLogger("plusultra")


@dataclass
class MarketContext:
    """Full-calendar (T, S) arrays the baselines and simulators may need.

    Attributes:
        close: adjusted close; open: adjusted open (None or NaN for close-only data; the fill
        price of ``next_open``); volume: split-adjusted shares (NaN: unknown); volatility:
        per-bar return std known at t; features: (T, S, F) normalised model inputs; targets:
        (T, S) scaled labels of
        the traded step; label_end: last bar whose label is known at the end of training;
        refits: walk-forward blocks ``(fit_lo, fit_hi, lo, hi)``, when the model is refitted
        (the ridge baseline is then refitted on the same samples before the same blocks);
        sectors: symbol -> sector (the assets table's ``sector``), for the guardrails' sector
        caps; factors: name -> (T,) market-wide return series known at each bar's close (the
        run's market-wide alternative-data columns), for the guardrails' factor caps.
    """

    close: np.ndarray
    open: np.ndarray | None = None
    volume: np.ndarray | None = None
    volatility: np.ndarray | None = None
    features: np.ndarray | None = None
    targets: np.ndarray | None = None
    label_end: int | None = None
    refits: list[tuple[int, int, int, int]] | None = None
    sectors: dict[str, str] | None = None
    factors: dict[str, np.ndarray] | None = None
    _carried: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def carried(self, name: str) -> np.ndarray:
        """`close` or `open` with a missing bar inside a symbol's life carrying the last price
        (NaN outside its life), computed once per array: the model and every baseline are
        simulated on the same fill prices. Assigning a new array recomputes it; the arrays are
        not to be changed in place."""
        raw = getattr(self, name)
        cached = self._carried.get(name)
        if cached is None or cached[0] is not raw:
            cached = self._carried[name] = (raw, carry_prices(raw))
        return cached[1]

    def earned(self, mode: str) -> np.ndarray:
        """(T, S) simple return a position decided at ``t`` earns under `mode`, from the
        carried fill prices."""
        opens = self.carried("open") if mode == "next_open" else None
        return execution_returns(mode, opens, self.carried("close"))


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
        metrics: strategy metrics (see `compute_metrics` and `risk_metrics`); besides numbers,
            ``information_ratio_benchmark`` names the benchmark of the information ratio
            (``cash`` or ``buyhold``).
        baselines: baseline name -> its metrics on the same bars (turnover and information
            ratio included).
        daily: one row per decision date: strategy/baseline returns and equity (start 1.0),
            turnover and gross exposure of the strategy. The return of row ``t`` is earned from
            the fill of the decision at ``t`` to the next fill.
        execution: the execution mode used (``next_open``, ``next_close`` or ``same_close``).
        earned: (T, S) full-calendar return a position decided at ``t`` earns under that mode
            (NaN where it cannot be held), for attribution (`Backtest.with_positions`).
        guardrail_events: the guardrails' interventions on the model's positions (columns of
            `plusultra.guardrails.events_frame`); None when every guardrail is off.
        guarded: (T, S) full-calendar weights the model traded after the guardrails (NaN
            outside the backtested bars); None when every guardrail is off.
    """

    metrics: dict[str, float | str]
    baselines: dict[str, dict[str, float | str]] = field(default_factory=dict)
    daily: pd.DataFrame | None = None
    execution: str = "next_open"
    earned: np.ndarray | None = None
    guardrail_events: pd.DataFrame | None = None
    guarded: np.ndarray | None = None


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
    lo: int,
    hi: int,
    tradable: np.ndarray,
    context: MarketContext,
    mode: str,
) -> _Run:
    """Run `simulator` on decision bars lo..hi with execution `mode` (already resolved).

    Both simulators get the prices of bars ``lo .. hi + 1 + lag``: the fill bars and the bar
    after the last fill. The frictionless one gets prices in which a missing bar inside a
    symbol's life carries the last price; the realistic one gets the raw prices, volume,
    volatility and tradable flags (costs, impact and participation use the fill bar's).
    """
    bars = slice(lo, hi + 2 + fill_lag(mode))
    open_ = context.open[bars] if mode == "next_open" else None
    if not isinstance(simulator, RealisticSimulator):
        sim = simulator.run(
            weights,
            close=context.carried("close")[bars],
            open=None if open_ is None else context.carried("open")[bars],
        )
        return _Run(sim.portfolio_returns, sim.turnover, sim.gross_exposure)
    if context.volume is None or context.volatility is None:
        raise DataError("simulator=realistic needs close, volume and volatility for the backtest")
    # Orders fill where the symbol is tradable, and on its delisting bar (the first bar with a
    # price after its last tradable one), so that the exit decided before it can fill there.
    was = np.vstack([np.zeros_like(tradable[:1]), tradable[:-1]])
    fillable = tradable | (np.isfinite(context.close) & was)
    market = MarketData(
        close=context.close[bars],
        volume=context.volume[bars],
        volatility=np.nan_to_num(context.volatility[bars], nan=0.0),
        tradable=fillable[bars],
        open=open_,
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


def execution_mode(simulator, context: MarketContext) -> str:
    """The simulator's ``execution`` setting resolved against the data's opens (logged)."""
    asked = getattr(simulator, "execution", None)
    mode = resolve_execution(asked, context.open, context.close)
    if asked is None and not has_opens(context.open, context.close):
        log.warning(
            "execution: the data has no open prices; orders fill at the next bar's close "
            "(simulator.execution=next_close)"
        )
    else:
        log.info("execution: %s", mode)
    return mode


def decision_mask(tradable: np.ndarray, lag: int) -> np.ndarray:
    """(T, S) bool: a position may be decided at ``t``: tradable at ``t`` and, for a symbol
    whose tradable bars end before the calendar does (delisted), its exit fill, bar
    ``t + lag + 1``, at most one bar after its last tradable bar (the delisting bar). A symbol
    still tradable on the calendar's last bar is not restricted (its future is unknown)."""
    tr = np.asarray(tradable, dtype=bool)
    n_t = tr.shape[0]
    rows = np.arange(n_t)[:, None]
    last = np.where(tr.any(axis=0), n_t - 1 - np.argmax(tr[::-1], axis=0), -1)  # (S,)
    last = np.where(last == n_t - 1, n_t + lag, last)  # listed to the end: no cap
    return tr & (rows + lag <= last[None, :])


class Backtest:
    """Turns forecasts into cross-sectional positions and evaluates them.

    Args:
        signal_step: which forecast step drives positions (1..horizon; `pred_<k>` column);
            None: the last one the model predicts (the full horizon; 1 for a policy head).
        position_method: how a cross-section of signals becomes weights (rank, zscore, sign).
        gross: gross exposure (sum of absolute weights) per bar.
        net: cap on the net exposure ``|sum w|`` per bar (rows scaled down to it); None: none
            beyond the gross cap. The portfolio losses read the same cap.
        periods_per_year: bars per year, for annualisation (252 for daily bars).
        baselines: strategies run on the same simulator beside the model (see `BASELINES`).
        bootstrap: stationary-bootstrap replicates for the 95% intervals of Sharpe and annual
            return (0: no intervals).
        seed: seed of the bootstrap.
        guardrails: risk limits applied to the model's positions after `position_method` and
            the caps, before the simulator (`plusultra.guardrails`); the baselines are not
            guarded. None or every rule off: the positions are traded as they are.
    """

    def __init__(
        self,
        signal_step: int | None = None,
        position_method: str = "rank",
        gross: float = 1.0,
        periods_per_year: int = 252,
        baselines: list[str] | None = None,
        net: float | None = None,
        bootstrap: int = 1000,
        seed: int = 0,
        guardrails: GuardrailConfig | None = None,
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
        if net is not None and not (isinstance(net, int | float) and net > 0):
            raise ConfigError(f"evaluation.net={net!r} must be a number > 0 or null")
        self.net = None if net is None else float(net)
        self.bootstrap, self.seed = bootstrap, seed
        self.signal_step, self.method = signal_step, position_method
        self.gross, self.periods_per_year = gross, periods_per_year
        if guardrails is not None and not isinstance(guardrails, GuardrailConfig):
            raise ConfigError(f"guardrails must be a GuardrailConfig, got {type(guardrails)}")
        self.guardrails = guardrails if guardrails and guardrails.active_rules else None

    def signal_matrix(
        self, preds: pd.DataFrame, dates: np.ndarray, symbols: list[str]
    ) -> np.ndarray:
        """(T, S) forecast of step `signal_step`; NaN where there is no prediction."""
        steps = sorted(int(c[5:]) for c in preds.columns if c.startswith("pred_"))
        col = f"pred_{steps[-1] if self.signal_step is None else self.signal_step}"
        if col not in preds.columns:
            self._no_step(sum(c.startswith("pred_") for c in preds.columns))
        out = np.full((len(dates), len(symbols)), np.nan)
        rows = pd.DatetimeIndex(dates).get_indexer(preds["timestamp"])
        cols = pd.Index(symbols).get_indexer(preds["symbol"])
        out[rows, cols] = preds[col].to_numpy()
        return out

    def _no_step(self, horizon: int) -> None:
        raise ConfigError(
            f"evaluation.signal_step={self.signal_step} but the model forecasts "
            f"{horizon} step(s); choose 1..{horizon}"
        )

    def positions_at(
        self,
        forecasts: np.ndarray,
        cols: np.ndarray,
        tradable: np.ndarray,
        execution: str | None = None,
    ) -> np.ndarray:
        """`with_positions` for the rows of one bar, the calendar's last, from arrays (the
        service's per-request path, without building frames; a test checks they agree).

        Args:
            forecasts: (K, H) forecasts ``pred_1 .. pred_H`` of the symbols at columns `cols`.
            cols: (K,) distinct column indices of those symbols among the S of `tradable`.
            tradable: (S,) bool, tradable at that bar.
            execution: the backtest's execution mode (see `with_positions`).

        Returns:
            (K,) the weights decided at that bar's close.
        """
        forecasts = np.asarray(forecasts, dtype=np.float64)
        horizon = forecasts.shape[1]
        step = horizon if self.signal_step is None else self.signal_step
        if not 1 <= step <= horizon:
            self._no_step(horizon)
        ok = np.asarray(tradable, dtype=bool)[None, :]
        if execution is not None:
            ok = decision_mask(ok, fill_lag(execution))
        signal = np.full(ok.shape, np.nan)
        signal[0, cols] = forecasts[:, step - 1]
        signal[~ok] = np.nan
        return positions_from_signal(signal, self.method, self.gross, self.net)[0, cols]

    def weights(
        self, preds: pd.DataFrame, dates: np.ndarray, symbols: list[str], tradable: np.ndarray
    ) -> np.ndarray:
        """(T, S) target weights from forecasts; zero where not tradable or not predicted."""
        signal = self.signal_matrix(preds, dates, symbols)
        signal[~tradable] = np.nan
        return positions_from_signal(signal, self.method, self.gross, self.net)

    def with_positions(
        self,
        preds: pd.DataFrame,
        dates: np.ndarray,
        symbols: list[str],
        tradable: np.ndarray,
        returns: np.ndarray | None = None,
        execution: str | None = None,
    ) -> pd.DataFrame:
        """`preds` with `position` (the weight decided at that bar's close) and, given the
        (T, S) `returns` that decision earns (`BacktestResult.earned` of a backtest),
        `realized_return` (for attribution). Given the backtest's `execution` mode the positions
        are exactly those it traded: no new position in a delisted symbol's last `lag` tradable
        bars, where it could not be exited on a listed bar (without it: the model's targets,
        as `plusultra-predict` writes them)."""
        if execution is not None:
            tradable = decision_mask(tradable, fill_lag(execution))
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
        """Backtest decision bars lo..hi (hi is capped so that every decision has its exit fill).

        Args:
            returns: (T, S) close-to-close returns; only used for prices when `context` is
                None (closes rebuilt from them, no opens: next_close).
            context: the market (prices, volume, volatility, features ...).

        Raises:
            DataError: an empty range, or a position held in a symbol whose bars stop before
                its exit fill without a delisting date.
        """
        if context is None:
            context = MarketContext(close=_closes_from_returns(returns))
        mode = execution_mode(simulator, context)
        lag = fill_lag(mode)
        hi = min(hi, len(dates) - 2 - lag)
        if hi < lo:
            raise DataError(f"backtest range is empty (bars {lo}..{hi}, execution {mode})")
        decide = decision_mask(tradable, lag)
        signal = self.signal_matrix(preds, dates, symbols)
        signal[~decide] = np.nan
        w = positions_from_signal(signal, self.method, self.gross, self.net)[lo : hi + 1]
        proposed, events, guarded = w, None, None
        if self.guardrails is not None:
            w, events = guard_segment(
                self.guardrails, w, lo, context.carried("close"), decide, dates, symbols,
                context.sectors, self.periods_per_year, context.factors,
            )  # fmt: skip
            guarded = np.full((len(dates), len(symbols)), np.nan)
            guarded[lo : hi + 1] = w
        earned = context.earned(mode)  # (T, S)
        r = earned[lo : hi + 1]
        held = (w != 0) & np.isnan(r)
        if held.any():
            t, s = np.argwhere(held)[0]
            has = np.flatnonzero(np.isfinite(context.close[:, s]))
            end = pd.Timestamp(dates[has[-1]]).date() if has.size else "its start"
            raise DataError(
                f"series: symbol {symbols[s]} has no bar after {end} but assets.delisted is not "
                f"set to that date; a position decided on {pd.Timestamp(dates[lo + t]).date()} "
                f"cannot be valued at its exit fill (execution {mode})"
            )
        sim = simulate(simulator, w, lo, hi, tradable, context, mode)
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
        runs: dict[str, tuple[np.ndarray, _Run]] = {}
        if events is not None:  # the model's own positions, unguarded: what the rules changed
            unguarded = simulate(simulator, proposed, lo, hi, tradable, context, mode)
            runs["unguarded"] = (proposed, unguarded)
        for name in self.baselines:
            if name == "ridge" and (context.features is None or context.targets is None):
                continue  # no features to fit on (e.g. a backtest of external forecasts)
            wb = BASELINES[name](context, decide, earned, lo, hi)
            runs[name] = (wb, simulate(simulator, wb, lo, hi, tradable, context, mode))
        bench = self._buyhold(runs, simulator, decide, earned, (lo, hi), tradable, context, mode)
        baselines = {}
        for name, (wb, b) in runs.items():
            ret = b.portfolio_returns
            baselines[name] = compute_metrics(ret, self.periods_per_year, b.turnover)
            baselines[name].update(self._ir(ret, wb, bench))
            daily[f"{name}_return"] = ret
            daily[f"{name}_equity"] = np.cumprod(1 + ret)
        ir = self._ir(sim.portfolio_returns, w, bench)
        metrics.update(
            risk_metrics(
                sim.portfolio_returns,
                weights=w,
                benchmark=None,
                gross_pnl=sim.gross_pnl,
                costs=sim.costs,
                trade_pnl=sim.trade_pnl,
                periods_per_year=self.periods_per_year,
                n_boot=self.bootstrap,
                seed=self.seed,
            )
        )
        metrics.update(ir)
        if events is not None:
            metrics.update(event_counts(self.guardrails, events))
        return BacktestResult(
            metrics, baselines, daily, mode, earned, guardrail_events=events, guarded=guarded
        )

    def _buyhold(
        self, runs, simulator, decide, earned, bars, tradable, context, mode
    ) -> np.ndarray:
        """(T,) buy-and-hold returns on the same simulator: the benchmark of net-long books."""
        if "buyhold" in runs:
            return runs["buyhold"][1].portfolio_returns
        wb = BASELINES["buyhold"](context, decide, earned, *bars)
        return simulate(simulator, wb, *bars, tradable, context, mode).portfolio_returns

    def _ir(self, returns: np.ndarray, weights: np.ndarray, bh: np.ndarray) -> dict:
        """Information ratio against the book's like-for-like benchmark (`ir_benchmark`)."""
        name = ir_benchmark(weights)
        bench = np.zeros_like(returns) if name == "cash" else bh
        value = information_ratio(returns, bench, self.periods_per_year)
        return {"information_ratio": value, "information_ratio_benchmark": name}


def _closes_from_returns(returns: np.ndarray) -> np.ndarray:
    """(T, S) closes rebuilt from close-to-close returns: 1.0 at the start, a close at ``t``
    where ``returns[t - 1]`` or ``returns[t]`` is finite."""
    r = np.asarray(returns, dtype=float)
    has = np.isfinite(r)
    pad = np.zeros((1, r.shape[1]), dtype=bool)
    has_bar = has | np.vstack([pad, has[:-1]])
    growth = np.where(has, 1.0 + r, 1.0)[:-1]
    level = np.vstack([np.ones((1, r.shape[1])), np.cumprod(growth, axis=0)])
    return np.where(has_bar, level, np.nan)
