"""Frictionless execution simulator: rebalance to target weights at each fill, no costs.

Conventions (shared by the whole package):

- A panel is a float array ``(T, S)``: ``T`` decision times (closes), ``S`` symbols.
- ``weights[t, s]`` is the target position in symbol ``s`` as a fraction of equity, decided at
  close ``t`` from data up to that close. NaN weights mean 0. The remainder
  ``1 - sum_s weights[t, s]`` is cash earning 0 (negative cash = borrowing for leverage, also at 0).
- Execution timing (``plusultra.execution``, the ``execution`` setting): the book is rebalanced to
  ``weights[t]`` at the fill price of the fill bar, bar ``t + 1``'s open (``next_open``, the
  default where the data has opens) or close (``next_close``, the default without opens), or the
  decision close itself (``same_close``, optimistic), and held until the next fill. So
  ``weights[t]`` earns ``execution_returns(mode, open, close)[t]``, never bar ``t``'s own move.
- ``returns[t, s]`` (the kernel's input) is the simple return earned by a position decided at
  ``t`` and held until the next fill, i.e. already aligned to the execution timing. NaN means the
  symbol cannot be held over that interval (not listed). Given prices instead (``close``,
  ``open``), the simulator derives them itself from its ``execution`` setting.

Two implementations with the same contract: ``FrictionlessSimulator.run`` (vectorised numpy) and
``simulate_reference`` (a naive per-bar, per-symbol loop over share holdings and cash in currency,
which, given prices, walks the fill bars and fill prices itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plusultra.errors import ConfigError, DataError
from plusultra.execution import check_execution, resolve_execution


@dataclass(frozen=True)
class SimResult:
    """Outcome of a simulation over ``T`` decision times.

    Attributes:
        portfolio_returns: ``(T,)`` simple return of the portfolio over interval ``t -> t + 1``.
        equity: ``(T + 1,)`` equity in currency; ``equity[0]`` is the initial cash and
            ``equity[t + 1] = equity[t] * (1 + portfolio_returns[t])``.
        turnover: ``(T,)`` traded fraction of equity at close ``t``:
            ``sum_s |w[t, s] - w_drift[t - 1, s]|``, where ``w_drift[t - 1]`` are the weights of
            ``t - 1`` after drifting with that interval's returns; ``turnover[0] = sum_s |w[0, s]|``
            (the book starts in cash).
        gross_exposure: ``(T,)`` ``sum_s |w[t, s]|``, fraction of equity.
        net_exposure: ``(T,)`` ``sum_s w[t, s]``, fraction of equity.
        execution: the execution mode used when the simulator was given prices; None when it
            was given aligned returns.
    """

    portfolio_returns: np.ndarray
    equity: np.ndarray
    turnover: np.ndarray
    gross_exposure: np.ndarray
    net_exposure: np.ndarray
    execution: str | None = None


def _check_initial_cash(initial_cash: float) -> float:
    cash = float(initial_cash)
    if not np.isfinite(cash) or cash <= 0:
        raise ConfigError(f"initial_cash must be a finite number > 0, got {initial_cash!r}")
    return cash


def _validate(weights: np.ndarray, returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes/values and return ``(w, r)`` as float arrays with NaN weights set to 0.

    ``r`` keeps its NaNs; after this check every NaN return has a zero weight.
    """
    w = np.asarray(weights, dtype=float)
    r = np.asarray(returns, dtype=float)
    if w.ndim != 2 or r.ndim != 2:
        raise DataError(
            f"weights and returns must be 2-D (T, S) panels, got weights.shape={w.shape} "
            f"and returns.shape={r.shape}"
        )
    if w.shape != r.shape:
        raise DataError(
            f"weights.shape={w.shape} does not match returns.shape={r.shape}; both must be (T, S)"
        )
    finite_w = np.isfinite(w)
    if not finite_w.all():  # the checks below only where something is not finite
        if np.isinf(w).any():
            t, s = np.argwhere(np.isinf(w))[0]
            raise DataError(f"weights must be finite or NaN; weights[{t}, {s}] = {w[t, s]}")
        w = np.where(finite_w, w, 0.0)
    finite_r = np.isfinite(r)
    if finite_r.all():
        return w, r
    if np.isinf(r).any():
        t, s = np.argwhere(np.isinf(r))[0]
        raise DataError(f"returns must be finite or NaN; returns[{t}, {s}] = {r[t, s]}")
    bad = (w != 0.0) & ~finite_r
    if bad.any():
        t, s = np.argwhere(bad)[0]  # row-major: earliest t, then lowest s
        raise DataError(
            f"nonzero weight where the return is NaN (symbol not holdable) at (t={t}, s={s}): "
            f"weights[{t}, {s}] = {w[t, s]}; set the weight to 0 or NaN"
        )
    return w, r


def _price_returns(
    mode: str | None, n_t: int, open_: np.ndarray | None, close: np.ndarray
) -> tuple[str, np.ndarray]:
    """The resolved mode and the ``(n_t, S)`` returns earned by decisions ``0 .. n_t - 1``:
    ``execution_returns(mode, open, close)[:n_t]``, computed here without its per-call checks
    (the simulator is called once per book in tight loops; a test compares the two)."""
    mode = resolve_execution(mode, open_, close)
    lag = 0 if mode == "same_close" else 1
    close = np.asarray(close, dtype=float)
    if close.ndim != 2 or close.shape[0] != n_t + 1 + lag:
        raise DataError(
            f"prices must have T + {1 + lag} bars for weights of T={n_t} bars with "
            f"execution={mode} (the fill bar and the next one), got shape {close.shape}"
        )
    if open_ is not None and np.shape(open_) != close.shape:
        raise DataError(f"open.shape={np.shape(open_)} does not match close.shape={close.shape}")
    price = np.asarray(open_, dtype=float) if mode == "next_open" else close
    start, end = price[lag : lag + n_t], price[lag + 1 : lag + 1 + n_t]  # fill, next fill
    if (start == 0.0).any():
        with np.errstate(divide="ignore", invalid="ignore"):
            out = end / start - 1.0
    else:
        out = end / start - 1.0
    if not np.isfinite(out).all():
        out[np.isinf(out)] = np.nan  # NaN where a price is missing, as execution_returns
    return mode, out


class FrictionlessSimulator:
    """Rebalances to target weights at each fill with no costs and no slippage.

    Args:
        initial_cash: starting equity in currency; must be > 0.
        execution: when a decision from close ``t`` fills: ``next_open``, ``next_close`` or
            ``same_close`` (optimistic); None picks ``next_open`` where the data has opens,
            else ``next_close`` (see ``plusultra.execution``).

    Raises:
        ConfigError: if ``initial_cash <= 0`` or not finite, or ``execution`` is unknown.
    """

    def __init__(self, initial_cash: float = 1_000_000.0, execution: str | None = None) -> None:
        self.initial_cash = _check_initial_cash(initial_cash)
        self.execution = check_execution(execution)

    def run(
        self,
        weights: np.ndarray,
        returns: np.ndarray | None = None,
        *,
        close: np.ndarray | None = None,
        open: np.ndarray | None = None,  # noqa: A002 - the market's name for it
    ) -> SimResult:
        """Simulate holding ``weights[t]`` from its fill until the next fill.

        Args:
            weights: ``(T, S)`` target weights, fraction of equity; NaN means 0.
            returns: ``(T, S)`` simple returns earned by a position decided at ``t`` (already
                aligned to the execution timing); NaN means the symbol cannot be held (its
                weight must be 0 or NaN). Or, instead:
            close: ``(T + 1 + lag, S)`` closes of the decision bars and the bars after, with
                ``lag`` = 1 (next-bar modes) or 0 (``same_close``); NaN = no price.
            open: the opens on the same bars (needed by ``next_open``); None or all NaN for
                close-only data.

        Returns:
            The ``SimResult``; see its attributes for definitions. If equity reaches exactly 0
            the drifted weights after that interval are taken as 0.

        Raises:
            DataError: on non-2-D or mismatched shapes, infinite values, a nonzero weight
                where the return is NaN (the message names the first ``(t, s)``), both or
                neither of returns and prices, or ``next_open`` without opens.
        """
        mode = None
        if (returns is None) == (close is None):
            raise DataError("pass exactly one of `returns` (T, S) or prices (`close`, `open`)")
        if close is not None:
            mode, returns = _price_returns(self.execution, np.shape(weights)[0], open, close)
        w, r = _validate(weights, returns)
        if np.isnan(r).any():
            r = np.where(np.isnan(r), 0.0, r)  # safe: every NaN return has weight 0
        n_t, n_s = w.shape

        port_ret = (w * r).sum(axis=1)  # (T,)
        growth = 1.0 + port_ret  # (T,) equity multiplier per interval
        equity = self.initial_cash * np.concatenate([[1.0], np.cumprod(growth)])  # (T + 1,)

        prev = np.zeros_like(w)  # (T, S) weights before the trade at t; the book starts in cash
        if n_t > 1:
            held_value = w[:-1] * (1.0 + r[:-1])  # (T - 1, S) position value / equity before
            denom = growth[:-1, None]  # (T - 1, 1)
            ruined = denom == 0.0
            if ruined.any():  # a ruined book holds nothing after that interval
                held_value = np.where(ruined, 0.0, held_value)
                denom = np.where(ruined, 1.0, denom)
            np.divide(held_value, denom, out=prev[1:])  # drifted weights
        turnover = np.abs(w - prev).sum(axis=1)  # (T,)

        return SimResult(
            portfolio_returns=port_ret,
            equity=equity,
            turnover=turnover,
            gross_exposure=np.abs(w).sum(axis=1),
            net_exposure=w.sum(axis=1),
            execution=mode,
        )


def _reference_fill_path(
    weights: np.ndarray,
    close: np.ndarray,
    open_: np.ndarray | None,
    mode: str,
    initial_cash: float,
) -> SimResult:
    """The reference loop given prices: shares bought at each fill bar's price, marked at the
    next fill bar's price. Nothing here calls ``execution_returns``."""
    w = np.where(np.isnan(np.asarray(weights, dtype=float)), 0.0, np.asarray(weights, float))
    if np.isinf(w).any():
        t, s = np.argwhere(np.isinf(w))[0]
        raise DataError(f"weights must be finite or NaN; weights[{t}, {s}] = {w[t, s]}")
    lag = 0 if mode == "same_close" else 1
    if mode == "next_open":
        price = np.asarray(open_, dtype=float)
    else:
        price = np.asarray(close, dtype=float)
    n_t, n_s = w.shape
    if price.shape != (n_t + 1 + lag, n_s):
        raise DataError(f"prices must have T + {1 + lag} bars, got shape {price.shape}")
    shares = [0.0] * n_s
    cash = initial_cash
    out = {k: np.zeros(n_t) for k in ("ret", "turnover", "gross", "net")}
    equity_path = np.zeros(n_t + 1)
    equity_path[0] = cash

    def ok(x: float) -> bool:
        return bool(np.isfinite(x)) and x != 0.0

    for t in range(n_t):
        fill = t + lag  # the bar whose price fills the order decided at close t
        for s in range(n_s):  # a position must be valued at this fill and the next one
            if w[t, s] != 0.0 and not (ok(price[fill, s]) and ok(price[fill + 1, s])):
                raise DataError(
                    f"nonzero weight where the return is NaN (symbol not holdable) at "
                    f"(t={t}, s={s}): weights[{t}, {s}] = {w[t, s]}; set the weight to 0 or NaN"
                )
        equity = cash
        for s in range(n_s):
            if shares[s] != 0.0:
                equity += shares[s] * price[fill, s]
        traded = 0.0
        for s in range(n_s):
            now = shares[s] * price[fill, s] if shares[s] != 0.0 else 0.0
            target = w[t, s] * equity
            traded += abs(target - now)
            cash -= target - now
            shares[s] = target / price[fill, s] if w[t, s] != 0.0 else 0.0
            out["gross"][t] += abs(w[t, s])
            out["net"][t] += w[t, s]
        out["turnover"][t] = traded / abs(equity) if equity != 0.0 else out["gross"][t]
        new_equity = cash
        for s in range(n_s):
            if shares[s] != 0.0:
                new_equity += shares[s] * price[fill + 1, s]
        if equity != 0.0:
            out["ret"][t] = new_equity / equity - 1.0
        else:  # a return on zero capital, as the vectorised simulator defines it
            out["ret"][t] = sum(
                w[t, s] * (price[fill + 1, s] / price[fill, s] - 1.0)
                for s in range(n_s)
                if w[t, s] != 0.0
            )
        equity_path[t + 1] = new_equity
    return SimResult(
        portfolio_returns=out["ret"],
        equity=equity_path,
        turnover=out["turnover"],
        gross_exposure=out["gross"],
        net_exposure=out["net"],
        execution=mode,
    )


def simulate_reference(
    weights: np.ndarray,
    returns: np.ndarray | None = None,
    initial_cash: float = 1_000_000.0,
    *,
    close: np.ndarray | None = None,
    open: np.ndarray | None = None,  # noqa: A002 - the market's name for it
    execution: str | None = None,
) -> SimResult:
    """Naive per-bar, per-symbol loop over holdings and cash in currency: the reference.

    Given returns, at each decision ``t`` the book is marked to market (``equity = cash + sum of
    holdings``), each symbol is traded to ``weights[t, s] * equity`` in currency against cash,
    and then every holding grows by its return to the next fill (cash earns 0). Nothing here
    reuses the vectorised
    formulas of ``FrictionlessSimulator.run``; the two are compared in the tests.

    Given prices (``close``, ``open``) instead of returns, the loop is over fill bars: the order
    decided at close ``t`` is filled at bar ``t + lag``'s open or close (per ``execution``) in
    shares at that price, and the book is marked at the next fill bar's price.

    Args:
        weights: ``(T, S)`` target weights, fraction of equity; NaN means 0.
        returns: ``(T, S)`` simple returns earned by a position decided at ``t``; NaN means not
            holdable. Or, instead, ``close`` / ``open`` as for ``FrictionlessSimulator.run``.
        initial_cash: starting equity in currency; must be > 0.
        execution: the execution mode (None: by data), used with prices.

    Returns:
        A ``SimResult`` with the same contract as ``FrictionlessSimulator.run``. Once equity is
        exactly 0 every holding is 0, turnover is ``sum_s |w[t, s]|`` and the return is still
        ``sum_s w[t, s] * r[t, s]`` (a return on zero capital), matching ``run``.

    Raises:
        ConfigError: if ``initial_cash <= 0``.
        DataError: on the same bad inputs as ``FrictionlessSimulator.run``.
    """
    cash = _check_initial_cash(initial_cash)
    if (returns is None) == (close is None):
        raise DataError("pass exactly one of `returns` (T, S) or prices (`close`, `open`)")
    if close is not None:
        mode = resolve_execution(execution, open, close)
        return _reference_fill_path(weights, close, open, mode, cash)
    w, r = _validate(weights, returns)
    n_t, n_s = w.shape

    holdings = [0.0] * n_s  # value of each position in currency (negative = short)
    port_ret = np.zeros(n_t)
    equity_path = np.zeros(n_t + 1)
    turnover = np.zeros(n_t)
    gross = np.zeros(n_t)
    net = np.zeros(n_t)
    equity_path[0] = cash

    for t in range(n_t):
        # Mark to market at the fill of decision t.
        equity = cash
        for s in range(n_s):
            equity += holdings[s]
        # Trade each symbol to its target value in currency, paying from / into cash.
        traded = 0.0
        for s in range(n_s):
            target = w[t, s] * equity
            trade = target - holdings[s]
            traded += abs(trade)
            cash -= trade
            holdings[s] = target
            gross[t] += abs(w[t, s])
            net[t] += w[t, s]
        if equity != 0.0:
            turnover[t] = traded / abs(equity)  # a fraction of |equity| if the book is negative
        else:  # ruined book: measure the trade in weights from an empty book
            turnover[t] = gross[t]
        # Holdings earn their returns to the next fill; a NaN return only meets a zero holding.
        for s in range(n_s):
            if holdings[s] != 0.0:
                holdings[s] = holdings[s] * (1.0 + r[t, s])
        new_equity = cash
        for s in range(n_s):
            new_equity += holdings[s]
        if equity != 0.0:
            port_ret[t] = new_equity / equity - 1.0
        else:
            port_ret[t] = sum(w[t, s] * r[t, s] for s in range(n_s) if w[t, s] != 0.0)
        equity_path[t + 1] = new_equity

    return SimResult(
        portfolio_returns=port_ret,
        equity=equity_path,
        turnover=turnover,
        gross_exposure=gross,
        net_exposure=net,
    )
