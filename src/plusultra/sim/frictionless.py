"""Frictionless execution simulator: rebalance to target weights at each close, no costs.

Conventions (shared by the whole package):

- A panel is a float array ``(T, S)``: ``T`` decision times (closes), ``S`` symbols.
- ``returns[t, s]`` is the simple return of symbol ``s`` from close ``t`` to close ``t + 1``,
  i.e. the return earned by a position held from decision time ``t``. NaN means the symbol cannot
  be held over that interval (not listed).
- ``weights[t, s]`` is the target position in symbol ``s`` as a fraction of equity, decided at
  close ``t`` and filled instantly at that close. NaN weights mean 0. The remainder
  ``1 - sum_s weights[t, s]`` is cash earning 0 (negative cash = borrowing for leverage, also at 0).

Two implementations with the same contract: ``FrictionlessSimulator.run`` (vectorised numpy) and
``simulate_reference`` (a naive per-bar, per-symbol loop over share holdings and cash in currency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plusultra.errors import ConfigError, DataError


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
    """

    portfolio_returns: np.ndarray
    equity: np.ndarray
    turnover: np.ndarray
    gross_exposure: np.ndarray
    net_exposure: np.ndarray


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
    if np.isinf(w).any():
        t, s = np.argwhere(np.isinf(w))[0]
        raise DataError(f"weights must be finite or NaN; weights[{t}, {s}] = {w[t, s]}")
    if np.isinf(r).any():
        t, s = np.argwhere(np.isinf(r))[0]
        raise DataError(f"returns must be finite or NaN; returns[{t}, {s}] = {r[t, s]}")
    w = np.where(np.isnan(w), 0.0, w)
    bad = (w != 0.0) & np.isnan(r)
    if bad.any():
        t, s = np.argwhere(bad)[0]  # row-major: earliest t, then lowest s
        raise DataError(
            f"nonzero weight where the return is NaN (symbol not holdable) at (t={t}, s={s}): "
            f"weights[{t}, {s}] = {w[t, s]}; set the weight to 0 or NaN"
        )
    return w, r


class FrictionlessSimulator:
    """Rebalances to target weights at each close with no costs, no slippage, instant fills.

    Args:
        initial_cash: starting equity in currency; must be > 0.

    Raises:
        ConfigError: if ``initial_cash <= 0`` or not finite.
    """

    def __init__(self, initial_cash: float = 1_000_000.0) -> None:
        self.initial_cash = _check_initial_cash(initial_cash)

    def run(self, weights: np.ndarray, returns: np.ndarray) -> SimResult:
        """Simulate holding ``weights[t]`` over each interval ``t -> t + 1``.

        Args:
            weights: ``(T, S)`` target weights, fraction of equity; NaN means 0.
            returns: ``(T, S)`` simple returns earned from close ``t`` to ``t + 1``; NaN means
                the symbol cannot be held (its weight must be 0 or NaN).

        Returns:
            The ``SimResult``; see its attributes for definitions. If equity reaches exactly 0
            the drifted weights after that interval are taken as 0.

        Raises:
            DataError: on non-2-D or mismatched shapes, infinite values, or a nonzero weight
                where the return is NaN (the message names the first ``(t, s)``).
        """
        w, r = _validate(weights, returns)
        r = np.where(np.isnan(r), 0.0, r)  # safe: every NaN return has weight 0
        n_t, n_s = w.shape

        port_ret = (w * r).sum(axis=1)  # (T,)
        growth = 1.0 + port_ret  # (T,) equity multiplier per interval
        equity = self.initial_cash * np.concatenate([[1.0], np.cumprod(growth)])  # (T + 1,)

        held_value = w[:-1] * (1.0 + r[:-1])  # (T - 1, S) position value / equity before
        denom = growth[:-1, None]  # (T - 1, 1)
        safe = np.where(denom == 0.0, 1.0, denom)
        drifted = np.where(denom == 0.0, 0.0, held_value / safe)  # (T - 1, S)
        prev = np.concatenate([np.zeros((min(n_t, 1), n_s)), drifted], axis=0)  # (T, S)
        turnover = np.abs(w - prev).sum(axis=1)  # (T,)

        return SimResult(
            portfolio_returns=port_ret,
            equity=equity,
            turnover=turnover,
            gross_exposure=np.abs(w).sum(axis=1),
            net_exposure=w.sum(axis=1),
        )


def simulate_reference(
    weights: np.ndarray, returns: np.ndarray, initial_cash: float = 1_000_000.0
) -> SimResult:
    """Naive per-bar, per-symbol loop over holdings and cash in currency: the reference.

    At each close ``t`` the book is marked to market (``equity = cash + sum of holdings``), each
    symbol is traded to ``weights[t, s] * equity`` in currency against cash, and then every holding
    grows by its return to close ``t + 1`` (cash earns 0). Nothing here reuses the vectorised
    formulas of ``FrictionlessSimulator.run``; the two are compared in the tests.

    Args:
        weights: ``(T, S)`` target weights, fraction of equity; NaN means 0.
        returns: ``(T, S)`` simple returns from close ``t`` to ``t + 1``; NaN means not holdable.
        initial_cash: starting equity in currency; must be > 0.

    Returns:
        A ``SimResult`` with the same contract as ``FrictionlessSimulator.run``. Once equity is
        exactly 0 every holding is 0, turnover is ``sum_s |w[t, s]|`` and the return is still
        ``sum_s w[t, s] * r[t, s]`` (a return on zero capital), matching ``run``.

    Raises:
        ConfigError: if ``initial_cash <= 0``.
        DataError: on the same bad inputs as ``FrictionlessSimulator.run``.
    """
    cash = _check_initial_cash(initial_cash)
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
        # Mark to market at close t.
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
        # Holdings earn their returns to close t + 1; a NaN return only meets a zero holding.
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
