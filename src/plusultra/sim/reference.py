"""Naive reference of the realistic simulator: a loop over environments, bars, symbols and orders.

``simulate_realistic_reference`` follows the order of events of ``sim.realistic`` one order at a
time with Python floats: every order is an object ``(symbol, shares, due bar)`` in a list, and
each bar sums the open orders of a symbol instead of keeping a ring buffer of netted amounts.
Execution timing is its own: every order carries the calendar bar at which it is due (the
decision bar, plus one for a next-bar mode, plus its latency), and each step picks the open or
the close of that bar as the price. It shares only the input checks and the resolution of the
mode (``prepare_inputs``) and the latency draws (``draw_latencies``) with the vectorised
simulator, so that the two see the same data and the same random latencies; the tests compare
the two on random scenarios for every execution mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from plusultra.sim.realistic import (
    COST_NAMES,
    DUST,
    TRADE_COLUMNS,
    Array,
    MarketData,
    RealisticResult,
    SimulatorConfig,
    draw_latencies,
    prepare_inputs,
)


@dataclass
class _Order:
    symbol: int
    shares: float  # signed: > 0 buys
    due: int  # calendar bar at whose fill price it is executed


@dataclass
class _Trade:
    env: int
    symbol: int
    side: int
    entry_bar: int
    exit_bar: int = -1
    quantity: float = 0.0
    pnl: float = 0.0
    open: bool = False


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def simulate_realistic_reference(
    weights: Array,
    returns: Array | None = None,
    market: MarketData | None = None,
    config: SimulatorConfig | None = None,
) -> RealisticResult:
    """Per-order, per-bar loop with the contract of ``RealisticSimulator.run`` (float64, CPU).

    Args:
        weights: ``(T, S)`` or ``(E, T, S)`` target weights, fraction of equity; NaN = 0.
        returns: ``(T, S)`` or ``(E, T, S)`` returns, used when there is no ``market``.
        market: ``T + 1`` bars of market data.
        config: the settings; ``None`` takes the defaults.

    Returns:
        A ``RealisticResult`` with the same definitions as the vectorised simulator.

    Raises:
        DataError: on bad inputs.
    """
    cfg = config or SimulatorConfig()
    x = prepare_inputs(weights, returns, market, torch.float64, "cpu", cfg.execution)
    n_env, n_t, n_s = x.weights.shape
    lat = draw_latencies(cfg.latency_probs, n_env, n_t, n_s, cfg.seed).tolist()
    # Fill timing: a decision at close t is executed at calendar bar t + delay (+ latency), at
    # that bar's open for next_open and at its close otherwise.
    delay = 0 if x.mode is None or x.mode == "same_close" else 1
    at_open = x.mode == "next_open"
    w_all = x.weights.tolist()
    close_all = (x.open if at_open else x.close).tolist()  # the price of a fill at each bar
    vol_all, sig_all = x.volume.tolist(), x.volatility.tolist()
    trad_all, hold_all = x.tradable.tolist(), x.holdable.tolist()
    borrow_rate = cfg.borrow_bps_annual / 1e4 / cfg.periods_per_year
    funding_rate = cfg.funding_bps_annual / 1e4 / cfg.periods_per_year

    keys = ("portfolio_returns", "cash", "turnover", *COST_NAMES)
    per_step = {k: [[0.0] * n_t for _ in range(n_env)] for k in keys}
    equity_path = [[0.0] * (n_t + 1) for _ in range(n_env)]
    grid = {
        k: [[[0.0] * n_s for _ in range(n_t)] for _ in range(n_env)]
        for k in ("positions", "fills", "weights_held", "trade_cost")
    }
    trades: list[_Trade] = []

    for e in range(n_env):
        close, vol, sig = close_all[e], vol_all[e], sig_all[e]
        # Marking prices by calendar bar: the last finite fill price, 0 before the first one.
        mark = []
        last = [0.0] * n_s
        for u in range(len(close)):
            for s in range(n_s):
                if not math.isnan(close[u][s]):
                    last[s] = close[u][s]
            mark.append(list(last))

        cash = cfg.initial_cash
        q = [0.0] * n_s
        orders: list[_Order] = []
        equity_path[e][0] = cash
        for t in range(n_t):
            b = t + delay  # the calendar bar where this decision's orders (k = 0) fill
            # 1. mark
            equity = cash
            for s in range(n_s):
                equity += q[s] * mark[b][s]
            # 2. targets, capped
            w = [w_all[e][t][s] if hold_all[e][b][s] else 0.0 for s in range(n_s)]
            gross = sum(abs(v) for v in w)
            net = abs(sum(w))
            scale = 1.0
            if gross > cfg.max_gross_leverage:
                scale = cfg.max_gross_leverage / gross
            if net > cfg.max_net_leverage:
                scale = min(scale, cfg.max_net_leverage / net)
            # 3. new orders
            for s in range(n_s):
                if not trad_all[e][b][s]:
                    continue
                target = w[s] * scale * max(equity, 0.0) / close[b][s]
                pending = 0.0
                for o in orders:
                    if o.symbol == s:
                        pending += o.shares
                shares = target - (q[s] + pending)
                if abs(shares) > DUST * (abs(target) + abs(q[s]) + abs(pending)):
                    orders.append(_Order(s, shares, b + lat[e][t][s]))
            # 4. + 5. execution and settlement at bar b, symbol by symbol
            traded = 0.0
            for s in range(n_s):
                due_orders = [o for o in orders if o.symbol == s and o.due == b]
                if not due_orders:
                    continue
                orders = [o for o in orders if not (o.symbol == s and o.due == b)]
                due = 0.0
                for o in due_orders:
                    due += o.shares
                room = 0.0
                if trad_all[e][b][s] and vol[b][s] > 0:
                    room = cfg.participation_cap * vol[b][s]
                fill = _sign(due) * min(abs(due), room)
                rest = due - fill
                if cfg.unfilled == "carry" and rest != 0.0:
                    orders.append(_Order(s, rest, b + 1))
                if fill == 0.0:
                    continue
                new_q = q[s] + fill
                q[s] = 0.0 if abs(new_q) <= DUST * abs(q[s]) else new_q
                price = close[b][s]
                notional = abs(fill) * price
                commission = max(notional * cfg.commission_bps / 1e4, cfg.min_commission)
                spread = notional * cfg.half_spread_bps / 1e4
                impact = notional * cfg.impact_coef * sig[b][s] * math.sqrt(abs(fill) / vol[b][s])
                cash -= fill * price + commission + spread + impact
                traded += notional
                grid["fills"][e][t][s] = fill
                grid["trade_cost"][e][t][s] = commission + spread + impact
                per_step["commission"][e][t] += commission
                per_step["spread"][e][t] += spread
                per_step["impact"][e][t] += impact
            # 6. carry over b -> b + 1
            post = cash
            short_value = 0.0
            for s in range(n_s):
                post += q[s] * mark[b][s]
                short_value += max(-q[s] * mark[b][s], 0.0)
            borrow = borrow_rate * short_value
            funding = funding_rate * max(-cash, 0.0)
            cash -= borrow + funding
            # 7. mark at the next bar
            new_equity = cash
            for s in range(n_s):
                new_equity += q[s] * mark[b + 1][s]
                grid["positions"][e][t][s] = q[s]
                grid["weights_held"][e][t][s] = q[s] * mark[b][s] / post if post != 0 else 0.0
            equity_path[e][t + 1] = new_equity
            per_step["cash"][e][t] = cash
            per_step["borrow"][e][t] = borrow
            per_step["funding"][e][t] = funding
            per_step["turnover"][e][t] = traded / abs(equity) if equity != 0 else 0.0
            per_step["portfolio_returns"][e][t] = new_equity / equity - 1 if equity != 0 else 0.0

        # Round trips, symbol by symbol.
        pos, cost = grid["positions"][e], grid["trade_cost"][e]
        for s in range(n_s):
            trade = None
            for t in range(n_t):
                before = pos[t - 1][s] if t > 0 else 0.0
                now = pos[t][s]
                left = cost[t][s]  # cost of the fill at t still to allocate
                if trade is not None and _sign(now) != trade.side:  # this fill ends the trade
                    share = abs(before) / (abs(before) + abs(now))
                    trade.pnl -= left * share
                    left -= left * share
                    trade.exit_bar = t
                    trades.append(trade)
                    trade = None
                if now != 0.0:
                    if trade is None:
                        trade = _Trade(e, s, _sign(now), t)
                    trade.pnl -= left
                    trade.quantity = max(trade.quantity, abs(now))
                    trade.pnl += now * (mark[t + delay + 1][s] - mark[t + delay][s])
                    trade.pnl -= borrow_rate * max(-now * mark[t + delay][s], 0.0)
            if trade is not None:
                trade.exit_bar, trade.open = n_t, True
                trades.append(trade)

    def tensor(v: list) -> torch.Tensor:
        out = torch.tensor(v, dtype=torch.float64)
        return out[0] if x.squeeze else out

    rows = [
        (t.env, t.symbol, t.side, t.entry_bar, t.exit_bar, t.exit_bar - t.entry_bar)
        + (t.quantity, t.pnl, t.open)
        for t in sorted(trades, key=lambda t: (t.env, t.symbol, t.entry_bar))
    ]
    frame = pd.DataFrame(rows, columns=list(TRADE_COLUMNS)).astype(
        {c: "int64" for c in TRADE_COLUMNS[:6]} | {"quantity": float, "pnl": float, "open": bool}
    )
    held = grid["weights_held"]
    gross = [[sum(abs(v) for v in row) for row in env] for env in held]
    net = [[sum(row) for row in env] for env in held]
    return RealisticResult(
        portfolio_returns=tensor(per_step["portfolio_returns"]),
        equity=tensor(equity_path),
        cash=tensor(per_step["cash"]),
        positions=tensor(grid["positions"]),
        weights_held=tensor(held),
        fills=tensor(grid["fills"]),
        costs={k: tensor(per_step[k]) for k in COST_NAMES},
        turnover=tensor(per_step["turnover"]),
        gross_exposure=tensor(gross),
        net_exposure=tensor(net),
        trades=frame,
        execution=x.mode,
    )
