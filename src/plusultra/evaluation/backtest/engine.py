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
from plusultra.evaluation.backtest.books import (
    BASELINES,
    DEFAULT_BASELINES,
    LEARNED,
    BaselineSettings,
    Book,
    MarketContext,
    baseline_book,
)
from plusultra.evaluation.backtest.learned import LightGBMParams, require_lightgbm
from plusultra.evaluation.backtest.positions import POSITION_METHODS, positions_from_signal
from plusultra.evaluation.metrics.bootstrap import sharpe_interval
from plusultra.evaluation.metrics.performance import compute_metrics, ic_summary
from plusultra.evaluation.metrics.risk import (
    cost_drag,
    excess_annual_return,
    gross_returns,
    information_ratio,
    ir_benchmark,
    risk_metrics,
)
from plusultra.execution import (
    fill_lag,
    has_opens,
    resolve_execution,
)
from plusultra.guardrails import GuardrailConfig
from plusultra.guardrails.segment import event_counts, guard_segment
from plusultra.sim.realistic import MarketData, RealisticSimulator

log = logging.getLogger("plusultra")


@dataclass
class BacktestResult:
    """Metrics of the strategy and its baselines, and the daily record.

    Attributes:
        metrics: strategy metrics (see `compute_metrics` and `risk_metrics`); besides numbers,
            ``information_ratio_benchmark`` names the benchmark of the information ratio
            (``cash`` or ``buyhold``).
        baselines: baseline name -> its metrics on the same bars (`Backtest._book_metrics`:
            turnover, information ratio, excess return, cost drag, the Sharpe interval; the IC
            metrics, ``alpha`` or ``best_iteration`` of the learned ones).
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
    equity: np.ndarray | None = None  # (T + 1,) currency, with costs (realistic only)

    def gross_returns(self) -> np.ndarray:
        """(T,) returns before costs (the returns themselves without costs)."""
        return gross_returns(self.portfolio_returns, self.costs, self.equity)


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
        equity=equity,
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
        baselines: strategies run on the same simulator beside the model (see
            `books.BASELINES`); None: `books.DEFAULT_BASELINES`.
        bootstrap: stationary-bootstrap replicates for the 95% intervals of Sharpe and annual
            return (0: no intervals).
        seed: seed of the bootstrap and of the LightGBM baseline.
        guardrails: risk limits applied to the model's positions after `position_method` and
            the caps, before the simulator (`plusultra.guardrails`); the baselines are not
            guarded. None or every rule off: the positions are traded as they are.
        ridge_alphas: penalties of the ridge baseline, each fitted on train; with several, the
            best validation IC is kept (`learned.select_ridge_alpha`). None: ``[1.0]``.
        lightgbm: booster settings of the ``lightgbm`` baseline; None: the defaults.
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
        ridge_alphas: list[float] | None = None,
        lightgbm: LightGBMParams | None = None,
    ) -> None:
        if position_method not in POSITION_METHODS:
            raise ConfigError(
                f"evaluation.position_method={position_method!r}; valid: {sorted(POSITION_METHODS)}"
            )
        if signal_step is not None and signal_step < 1:
            raise ConfigError(f"evaluation.signal_step={signal_step} must be >= 1")
        if periods_per_year < 1:
            raise ConfigError(f"evaluation.periods_per_year={periods_per_year} must be >= 1")
        self.baselines = list(DEFAULT_BASELINES if baselines is None else baselines)
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"evaluation.baselines: unknown {unknown}; valid: {list(BASELINES)}")
        if "lightgbm" in self.baselines:
            require_lightgbm()
        alphas = [1.0] if ridge_alphas is None else list(ridge_alphas)
        bad = [a for a in alphas if isinstance(a, bool) or not isinstance(a, int | float)]
        if not alphas or bad or not all(np.isfinite(a) and a >= 0 for a in alphas):
            raise ConfigError(
                f"evaluation.ridge_alphas={ridge_alphas!r} must be a non-empty list of finite "
                "numbers >= 0"
            )
        if lightgbm is not None and not isinstance(lightgbm, LightGBMParams):
            raise ConfigError(f"evaluation.lightgbm must be a LightGBMParams, got {type(lightgbm)}")
        self.learned = BaselineSettings(
            tuple(float(a) for a in alphas), lightgbm or LightGBMParams(), int(seed)
        )
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
        metrics["cost_drag"] = cost_drag(
            sim.portfolio_returns, sim.gross_returns(), self.periods_per_year
        )
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
        runs: dict[str, tuple[Book, _Run]] = {}
        if events is not None:  # the model's own positions, unguarded: what the rules changed
            unguarded = simulate(simulator, proposed, lo, hi, tradable, context, mode)
            runs["unguarded"] = (Book(proposed), unguarded)
        for name in self.baselines:
            if name in LEARNED and (context.features is None or context.targets is None):
                continue  # no features to fit on (e.g. a backtest of external forecasts)
            book = baseline_book(name, context, decide, earned, lo, hi, self.learned)
            runs[name] = (book, simulate(simulator, book.weights, lo, hi, tradable, context, mode))
        bench = self._buyhold(runs, simulator, decide, earned, (lo, hi), tradable, context, mode)
        baselines = {}
        for name, (book, b) in runs.items():
            baselines[name] = self._book_metrics(book, b, bench, r)
            daily[f"{name}_return"] = b.portfolio_returns
            daily[f"{name}_equity"] = np.cumprod(1 + b.portfolio_returns)
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
        wb = baseline_book("buyhold", context, decide, earned, *bars, self.learned).weights
        return simulate(simulator, wb, *bars, tradable, context, mode).portfolio_returns

    def _book_metrics(self, book: Book, run: _Run, bench: np.ndarray, earned: np.ndarray) -> dict:
        """A baseline's metrics: those of `compute_metrics`, the information ratio and excess
        return (`_ir`), cost drag, the Sharpe interval (with `bootstrap` > 0), the IC metrics of
        a learned baseline's forecasts against `earned` (``(n, S)``, as the model's), and its
        fit's `extra`."""
        ret, p = run.portfolio_returns, self.periods_per_year
        out: dict[str, float | str] = compute_metrics(ret, p, run.turnover)
        out.update(self._ir(ret, book.weights, bench))
        out["cost_drag"] = cost_drag(ret, run.gross_returns(), p)
        if self.bootstrap > 0:
            _, out["sharpe_lo"], out["sharpe_hi"] = sharpe_interval(
                ret, p, n_boot=self.bootstrap, seed=self.seed
            )
        if book.signal is not None:
            out.update(ic_summary(book.signal, earned))
        return out | book.extra

    def _ir(self, returns: np.ndarray, weights: np.ndarray, bh: np.ndarray) -> dict:
        """Information ratio and annual excess return against the book's like-for-like
        benchmark (`ir_benchmark`): the same active returns, so IR = excess / tracking error."""
        name = ir_benchmark(weights)
        bench = np.zeros_like(returns) if name == "cash" else bh
        p = self.periods_per_year
        return {
            "information_ratio": information_ratio(returns, bench, p),
            "excess_annual_return": excess_annual_return(returns, bench, p),
            "information_ratio_benchmark": name,
        }


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
