"""Realistic execution simulator: orders, costs, partial fills, latency, carry and capital caps.

Vectorised in torch over a batch of ``E`` environments and ``S`` symbols; the recursion over the
``T`` decision bars is a Python loop. ``sim.reference.simulate_realistic_reference`` is a naive
per-order, per-bar loop with the same contract, and the tests compare the two.

Inputs (shared conventions of the package, see ``sim.frictionless`` and ``plusultra.execution``):

- ``weights[t, s]``: target position in ``s`` as a fraction of equity, decided at close ``t``
  (``t = 0 .. T - 1``). NaN means 0.
- ``execution`` (setting): the order decided at close ``t`` is due at the fill bar
  ``f = t + lag`` (``lag = 1`` for ``next_open`` / ``next_close``, 0 for ``same_close``), plus its
  latency ``k``; it fills at that bar's open (``next_open``) or close (the other two). ``None``
  picks ``next_open`` where the market has opens, else ``next_close``. Below, ``P_u`` is the fill
  price of bar ``u`` (its open or its close) and ``mark_u`` the last known ``P`` at or before
  ``u`` (a missing bar carries its last price): the book is valued at fill prices.
- Market data (``MarketData``) has ``T + 1 + lag`` bars: bars ``lag .. T - 1 + lag`` are fill
  bars, the last one only marks the final book. A symbol trades at bar ``u`` only when
  ``tradable[u]`` (inside its listed life, has a bar). Unknown (NaN) volume means no
  participation cap and no impact there (logged).
- Without ``market``, ``returns`` ``(T, S)`` (earned by the position decided at ``t``, already
  aligned to the execution timing; NaN = cannot be held) stand for it with lag 0: prices are
  ``1 * prod(1 + r)``, a symbol has a bar at ``t`` when ``r[t - 1]`` or ``r[t]`` is finite (it
  can sell after its last return), it can be held over ``t -> t + 1`` only where ``r[t]`` is
  finite, volume is unlimited and volatility 0 (so no participation cap and no impact).

Order of events at step ``t``, fill bar ``f = t + lag`` (all environments and symbols at once;
``q`` = shares held, ``P`` = pending orders):

1. Mark: ``equity[t] = cash + sum_s q * mark_f``. (The previous interval's borrow and funding
   were debited from cash at the end of step ``t - 1``.)
2. Targets: ``w = weights[t]`` with NaN -> 0, set to 0 where the symbol cannot be held at ``f``,
   then scaled by ``c = min(1, max_gross / sum|w|, max_net / |sum w|)``.
3. Orders: for symbols tradable at ``f``: ``target = c * w * max(equity[t], 0) / P_f`` and
   ``order = target - (q + sum P)`` (shares). An order smaller than
   ``1e-9 * (|target| + |q| + |sum P|)`` is floating-point dust and is not placed. The order
   gets a latency ``k ~ latency_probs`` (drawn for every ``(t, s)``, see ``draw_latencies``)
   and is due at step ``t + k``, i.e. at bar ``f + k``.
4. Execution: ``due = sum`` of the pending orders due at ``f`` (earlier orders whose latency
   expires now, remainders carried from the step before, this step's ``k = 0`` order), netted
   per symbol. ``fill = sign(due) * min(|due|, participation_cap * volume_f)``, and 0 where the
   symbol is not tradable at ``f`` or the bar's volume is 0. The remainder ``due - fill`` is due
   again at ``f + 1`` (``unfilled="carry"``) or dropped (``"cancel"``).
5. Settlement at ``P_f``: ``q += fill`` (a fill that leaves less than ``1e-9`` of the previous
   position closes it exactly); ``cash -= fill * P_f + commission + spread + impact`` with,
   per nonzero fill of notional ``n = |fill| * P_f``:
   ``commission = max(n * commission_bps / 1e4, min_commission)``,
   ``spread = n * half_spread_bps / 1e4``,
   ``impact = n * impact_coef * volatility_f * sqrt(|fill| / volume_f)``: the volume and
   volatility of the bar where the fill happens.
6. Carry over ``f -> f + 1``, debited from cash now:
   ``borrow = borrow_bps_annual / 1e4 / periods_per_year * sum_s max(-q, 0) * mark_f`` and
   ``funding = funding_bps_annual / 1e4 / periods_per_year * max(-cash, 0)`` (cash after 5).
7. ``equity[t + 1] = cash + sum_s q * mark_{f + 1}``.

Orders still pending after the last fill bar are never filled. A position in a symbol that stops
being tradable is frozen (marked at its last price, still paying borrow) until it trades again;
set its weight to 0 early enough that the exit fills on its last listed bar. Leverage caps apply
to the targets at the decision equity and fill prices; a book with ``equity <= 0`` only unwinds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError
from plusultra.execution import check_execution
from plusultra.sim.market import (  # noqa: F401  (MarketData is part of this module's API)
    Array,
    MarketData,
    PreparedInputs,
    draw_latencies,
    forward_fill,
    prepare_inputs,
)

UNFILLED_MODES = {"carry": "the remainder is due again at the next bar", "cancel": "dropped"}
DUST = 1e-9  # relative size below which an order or a leftover position is rounding noise
COST_NAMES = ("commission", "spread", "impact", "borrow", "funding")
TRADE_COLUMNS = (
    "env",
    "symbol",
    "side",
    "entry_bar",
    "exit_bar",
    "holding_bars",
    "quantity",
    "pnl",
    "open",
)


def _number(key: str, value, *, low: float = 0.0, strict: bool = False, inf: bool = False):
    """``value`` as a float checked against ``low``; raises ``ConfigError`` naming the key."""
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    x = float(value) if ok else math.nan
    ok = ok and not math.isnan(x) and (inf or math.isfinite(x))
    ok = ok and (x > low if strict else x >= low)
    if not ok:
        rel = ">" if strict else ">="
        kind = "a number" if inf else "a finite number"
        raise ConfigError(f"simulator.{key} must be {kind} {rel} {low:g}, got {value!r}")
    return x


@dataclass(frozen=True)
class SimulatorConfig:
    """Settings of the realistic simulator (the ``simulator`` config group); checked on creation.

    Attributes:
        initial_cash: starting equity, currency.
        commission_bps: commission, basis points of traded notional.
        min_commission: minimum commission per order (a nonzero fill of one symbol at one bar),
            currency.
        half_spread_bps: half the bid-ask spread paid on traded notional, basis points.
        impact_coef: square-root impact: cost return ``impact_coef * volatility *
            sqrt(|fill| / volume)`` on the fill's notional.
        participation_cap: most of a bar's volume filled per symbol per bar (fraction); ``None``
            or ``inf``: no cap.
        unfilled: ``"carry"`` (the unfilled rest is due again next bar) or ``"cancel"``.
        execution: fill timing of an order decided at close ``t``: ``next_open`` (bar
            ``t + 1``'s open), ``next_close`` (its close) or ``same_close`` (the decision close,
            optimistic); None: ``next_open`` where the data has opens, else ``next_close``.
        latency_probs: ``latency_probs[k]`` = probability that an order is due ``k`` bars after
            its fill bar (``k = 0``: fills at the fill bar of ``execution``); sums to 1.
        borrow_bps_annual: cost of short positions, basis points a year of short notional.
        funding_bps_annual: cost of borrowed cash (``cash < 0``), basis points a year.
        max_gross_leverage: cap on ``sum|w|`` of targets (scaled down); ``None``/``inf``: none.
        max_net_leverage: cap on ``|sum w|`` of targets (scaled down); ``None``/``inf``: none.
        periods_per_year: bars a year, to turn annual rates into per-bar rates.
        seed: seeds the latency draws (environment ``e`` of a batch uses ``seed + e``).

    Raises:
        ConfigError: on an invalid value; the message names ``simulator.<key>``.
    """

    initial_cash: float = 1_000_000.0
    commission_bps: float = 1.0
    min_commission: float = 0.0
    half_spread_bps: float = 2.0
    impact_coef: float = 0.1
    participation_cap: float | None = 0.1
    unfilled: str = "carry"
    execution: str | None = None
    latency_probs: tuple[float, ...] = (1.0,)
    borrow_bps_annual: float = 50.0
    funding_bps_annual: float = 0.0
    max_gross_leverage: float | None = 1.0
    max_net_leverage: float | None = 1.0
    periods_per_year: int = 252
    seed: int = 0

    def __post_init__(self) -> None:
        def put(key: str, value) -> None:
            object.__setattr__(self, key, value)

        put("initial_cash", _number("initial_cash", self.initial_cash, strict=True))
        for key in (
            "commission_bps",
            "min_commission",
            "half_spread_bps",
            "impact_coef",
            "borrow_bps_annual",
            "funding_bps_annual",
        ):
            put(key, _number(key, getattr(self, key)))
        for key in ("participation_cap", "max_gross_leverage", "max_net_leverage"):
            value = getattr(self, key)
            put(key, math.inf if value is None else _number(key, value, strict=True, inf=True))
        if self.unfilled not in UNFILLED_MODES:
            raise ConfigError(
                f"simulator.unfilled must be one of {sorted(UNFILLED_MODES)}, got {self.unfilled!r}"
            )
        check_execution(self.execution)
        probs = self.latency_probs  # a list, tuple or Hydra ListConfig (a MutableSequence)
        if isinstance(probs, str) or not isinstance(probs, Sequence) or len(probs) == 0:
            raise ConfigError(
                "simulator.latency_probs must be a non-empty list of probabilities "
                f"(P(k) for k = 0, 1, ...), got {probs!r}"
            )
        probs = tuple(_number(f"latency_probs[{k}]", p) for k, p in enumerate(probs))
        if abs(sum(probs) - 1.0) > 1e-9:
            raise ConfigError(
                f"simulator.latency_probs must sum to 1, got {list(probs)} (sum {sum(probs):.12g})"
            )
        put("latency_probs", probs)
        for key in ("periods_per_year", "seed"):
            value = getattr(self, key)
            integral = isinstance(value, int | np.integer) and not isinstance(value, bool)
            if not integral or value < (1 if key == "periods_per_year" else 0):
                low = "an integer > 0" if key == "periods_per_year" else "an integer >= 0"
                raise ConfigError(f"simulator.{key} must be {low}, got {value!r}")
            put(key, int(value))


@dataclass
class RealisticResult:
    """Outcome of ``RealisticSimulator.run`` over ``T`` steps.

    Tensors are ``(E, T, ...)``, with ``E`` squeezed away when neither the weights nor the market
    had it. Step ``t`` is the decision at close ``t``, its fill bar ``f = t + lag`` and the
    holding over ``f -> f + 1`` (see the module docstring).

    Attributes:
        portfolio_returns: ``(E, T)`` ``equity[t + 1] / equity[t] - 1`` (0 where equity[t] = 0).
        equity: ``(E, T + 1)`` equity marked at fill prices, currency; ``equity[0]`` is the
            initial cash and ``equity[t + 1] = cash[t] + sum_s positions[t] * mark_{f + 1}``.
        cash: ``(E, T)`` cash after the fills of step ``t`` and the carry of ``f -> f + 1``.
        positions: ``(E, T, S)`` shares held over ``f -> f + 1`` (negative = short).
        weights_held: ``(E, T, S)`` ``positions * mark_f`` / equity after the fills of step ``t``.
        fills: ``(E, T, S)`` shares filled at step ``t``'s fill bar (negative = sold).
        costs: ``{name: (E, T)}`` currency for ``commission``, ``spread``, ``impact`` (at the
            fill) and ``borrow``, ``funding`` (over ``f -> f + 1``).
        turnover: ``(E, T)`` traded notional at ``t`` / ``|equity[t]|`` (0 where equity is 0).
        gross_exposure: ``(E, T)`` ``sum_s |weights_held|``.
        net_exposure: ``(E, T)`` ``sum_s weights_held``.
        trades: one row per round trip (a run of bars holding one side of one symbol):
            ``env``, ``symbol`` (index), ``side`` (+1 long / -1 short), ``entry_bar`` (the fill
            that opened it), ``exit_bar`` (the fill that closed or flipped it; ``T`` if still
            open), ``holding_bars = exit_bar - entry_bar``, ``quantity`` (largest ``|shares|``
            held), ``pnl`` (currency: mark-to-market of its bars, less its borrow and its
            fills' trading costs; a flipping fill's costs are split by shares closed / opened;
            funding is a portfolio cost, not in any trade) and ``open``.
    """

    portfolio_returns: torch.Tensor
    equity: torch.Tensor
    cash: torch.Tensor
    positions: torch.Tensor
    weights_held: torch.Tensor
    fills: torch.Tensor
    costs: dict[str, torch.Tensor]
    turnover: torch.Tensor
    gross_exposure: torch.Tensor
    net_exposure: torch.Tensor
    trades: pd.DataFrame
    execution: str | None = None


class RealisticSimulator:
    """Simulates target weights with orders, costs, partial fills, latency, carry and caps.

    Args:
        config: the settings; ``None`` takes the defaults.
        **kwargs: fields of ``SimulatorConfig`` (how Hydra builds it), overriding ``config``.

    Raises:
        ConfigError: on an unknown key or an invalid value.
    """

    def __init__(self, config: SimulatorConfig | None = None, **kwargs) -> None:
        known = {f.name for f in fields(SimulatorConfig)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"simulator.{unknown[0]} is not a setting of the realistic simulator; "
                f"valid keys: {sorted(known)}"
            )
        self.config = replace(config or SimulatorConfig(), **kwargs)

    @property
    def execution(self) -> str | None:
        """The ``execution`` setting (None: by data; ``plusultra.execution.resolve_execution``)."""
        return self.config.execution

    def run(
        self,
        weights: Array,
        returns: Array | None = None,
        market: MarketData | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> RealisticResult:
        """Simulate the targets bar by bar (order of events in the module docstring).

        Args:
            weights: ``(T, S)`` or ``(E, T, S)`` target weights, fraction of equity; NaN = 0.
            returns: ``(T, S)`` or ``(E, T, S)`` returns earned by each decision's position
                (aligned to the execution timing), used when there is no ``market``
                (unlimited volume, zero volatility).
            market: ``T + 1 + lag`` bars of market data; a 2-D market is shared by all
                environments.
            dtype: floating dtype of the computation.
            device: where to compute; default the weights' device (CPU for numpy).

        Returns:
            The ``RealisticResult``.

        Raises:
            DataError: on bad inputs (see ``prepare_inputs``).
        """
        cfg = self.config
        x = prepare_inputs(weights, returns, market, dtype, device, cfg.execution)
        n_env, n_t, n_s = x.weights.shape
        dev = x.weights.device
        lag = 1 if x.mode in ("next_open", "next_close") else 0  # decision t fills at bar t + lag
        price = x.open if x.mode == "next_open" else x.close  # (E, B, S) fill price of each bar
        mark = forward_fill(price)[:, lag:]  # (E, T + 1, S) marks of fill bars lag .. T + lag
        price, tradable, holdable = price[:, lag:], x.tradable[:, lag:], x.holdable[:, lag:]
        volume, volatility = x.volume[:, lag:], x.volatility[:, lag:]  # of the fill bars
        lat = draw_latencies(cfg.latency_probs, n_env, n_t, n_s, cfg.seed).to(dev)  # (E, T, S)
        n_slots = max(len(cfg.latency_probs), 2)  # ring buffer of pending orders by due bar
        carry = cfg.unfilled == "carry"
        bps = 1e-4
        borrow_rate = cfg.borrow_bps_annual * bps / cfg.periods_per_year
        funding_rate = cfg.funding_bps_annual * bps / cfg.periods_per_year

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=dev)

        q = zeros(n_env, n_s)  # shares held
        pending = zeros(n_env, n_slots, n_s)  # shares due at bar u in slot u % n_slots
        cash = torch.full((n_env,), cfg.initial_cash, dtype=dtype, device=dev)
        equity = zeros(n_env, n_t + 1)
        equity[:, 0] = cash
        out = {k: zeros(n_env, n_t, n_s) for k in ("positions", "fills", "weights_held")}
        out |= {k: zeros(n_env, n_t, n_s) for k in ("commission", "spread", "impact")}
        cash_path, turnover, borrow, funding = (zeros(n_env, n_t) for _ in range(4))

        for t in range(n_t):  # step t: decision at close t, fill bar t + lag (index t below)
            tr = tradable[:, t]  # (E, S)
            px = torch.where(tr, price[:, t], 0.0)  # (E, S) fill price, 0 if none
            vol = volume[:, t]  # (E, S)
            eq = equity[:, t]  # (E,)  1. mark (carry of the previous step already paid)
            # 2. targets, zero where not holdable, scaled to the leverage caps
            w = torch.where(holdable[:, t], x.weights[:, t], 0.0)  # (E, S)
            gross, net = w.abs().sum(-1), w.sum(-1).abs()  # (E,)
            scale = torch.ones_like(eq)
            scale = torch.where(
                gross > cfg.max_gross_leverage, cfg.max_gross_leverage / gross, scale
            )
            scale = torch.minimum(
                scale, torch.where(net > cfg.max_net_leverage, cfg.max_net_leverage / net, 1.0)
            )
            # 3. orders in shares net of holdings and pending orders, due after their latency
            target = w * scale[:, None] * eq.clamp(min=0.0)[:, None] / torch.where(tr, px, 1.0)
            held = pending.sum(1)  # (E, S) net pending shares
            order = target - (q + held)
            size = target.abs() + q.abs() + held.abs()
            order = torch.where(tr & (order.abs() > DUST * size), order, 0.0)
            due_slot = (t + lat[:, t]) % n_slots  # (E, S)
            pending.scatter_add_(1, due_slot.unsqueeze(1), order.unsqueeze(1))
            # 4. execution of everything due now, capped by participation of the bar's volume
            slot = t % n_slots
            due = pending[:, slot].clone()  # (E, S)
            pending[:, slot] = 0.0
            fillable = torch.where(tr & (vol > 0), cfg.participation_cap * vol, 0.0)
            fill = torch.sign(due) * torch.minimum(due.abs(), fillable)
            if carry:
                pending[:, (t + 1) % n_slots] += due - fill
            # 5. settlement at the fill price, with trading costs per fill
            q_new = q + fill
            q = torch.where(q_new.abs() <= DUST * q.abs(), 0.0, q_new)
            notional = fill.abs() * px
            commission = torch.where(
                fill != 0, (notional * cfg.commission_bps * bps).clamp(min=cfg.min_commission), 0.0
            )
            spread = notional * cfg.half_spread_bps * bps
            depth = fill.abs() / torch.where(vol > 0, vol, 1.0)
            impact = notional * cfg.impact_coef * volatility[:, t] * depth.sqrt()
            cash = cash - (fill * px + commission + spread + impact).sum(-1)
            value = q * mark[:, t]  # (E, S)
            post = cash + value.sum(-1)  # (E,) equity after the trades
            # 6. carry over the fill bar to the next one
            borrow[:, t] = borrow_rate * (-value).clamp(min=0.0).sum(-1)
            funding[:, t] = funding_rate * (-cash).clamp(min=0.0)
            cash = cash - borrow[:, t] - funding[:, t]
            # 7. mark at the next fill bar
            equity[:, t + 1] = cash + (q * mark[:, t + 1]).sum(-1)
            cash_path[:, t] = cash
            turnover[:, t] = torch.where(eq != 0, notional.sum(-1) / eq.abs(), 0.0)
            out["positions"][:, t] = q
            out["fills"][:, t] = fill
            nonzero = (post != 0)[:, None]
            safe_post = torch.where(post != 0, post, 1.0)[:, None]
            out["weights_held"][:, t] = torch.where(nonzero, value / safe_post, 0.0)
            out["commission"][:, t], out["spread"][:, t], out["impact"][:, t] = (
                commission,
                spread,
                impact,
            )

        prev = equity[:, :-1]
        port_ret = torch.where(prev != 0, equity[:, 1:] / torch.where(prev != 0, prev, 1.0) - 1, 0)
        trade_cost = out["commission"] + out["spread"] + out["impact"]  # (E, T, S)
        borrow_by_symbol = borrow_rate * (-out["positions"] * mark[:, :-1]).clamp(min=0.0)
        trades = trade_list(out["positions"], mark, trade_cost, borrow_by_symbol)
        costs = {k: out[k].sum(-1) for k in ("commission", "spread", "impact")}
        costs |= {"borrow": borrow, "funding": funding}

        def sq(v: torch.Tensor) -> torch.Tensor:
            return v[0] if x.squeeze else v

        held = out["weights_held"]
        return RealisticResult(
            portfolio_returns=sq(port_ret),
            equity=sq(equity),
            cash=sq(cash_path),
            positions=sq(out["positions"]),
            weights_held=sq(held),
            fills=sq(out["fills"]),
            costs={k: sq(v) for k, v in costs.items()},
            turnover=sq(turnover),
            gross_exposure=sq(held.abs().sum(-1)),
            net_exposure=sq(held.sum(-1)),
            trades=trades,
            execution=x.mode,
        )


def trade_list(
    positions: torch.Tensor,
    mark: torch.Tensor,
    trade_cost: torch.Tensor,
    borrow: torch.Tensor,
) -> pd.DataFrame:
    """Round trips from the position paths, vectorised over environments, symbols and bars.

    Args:
        positions: ``(E, T, S)`` shares held over ``t -> t + 1``.
        mark: ``(E, T + 1, S)`` marking closes, currency per share.
        trade_cost: ``(E, T, S)`` commission + spread + impact of the fill at ``t``, currency.
        borrow: ``(E, T, S)`` borrow paid over ``t -> t + 1``, currency.

    Returns:
        The ``RealisticResult.trades`` frame (columns ``TRADE_COLUMNS``), ordered by env, symbol
        and entry bar.
    """
    q = positions.detach().cpu().double().numpy().transpose(0, 2, 1)  # (E, S, T)
    m = mark.detach().cpu().double().numpy().transpose(0, 2, 1)  # (E, S, T + 1)
    cost = trade_cost.detach().cpu().double().numpy().transpose(0, 2, 1)
    bor = borrow.detach().cpu().double().numpy().transpose(0, 2, 1)
    n_env, n_s, n_t = q.shape
    side = np.sign(q)
    prev_q = np.concatenate([np.zeros_like(q[..., :1]), q[..., :-1]], axis=-1)
    prev_side = np.sign(prev_q)
    start = (side != 0) & (side != prev_side)  # (E, S, T) a trade opens at this fill
    ids = np.cumsum(start.ravel()).reshape(q.shape) - 1  # id of the trade held over t -> t + 1
    prev_ids = np.concatenate([np.full_like(ids[..., :1], -1), ids[..., :-1]], axis=-1)
    n_trades = int(start.sum())
    active = side != 0

    # P&L over each held interval, minus its borrow, to the trade held then.
    carry_pnl = q * (m[..., 1:] - m[..., :-1]) - bor
    pnl = np.bincount(ids[active], weights=carry_pnl[active], minlength=n_trades)
    # Fill costs: the closing share to the trade held before, the rest to the one held after.
    flip = (prev_side != 0) & (side != 0) & (side != prev_side)
    denom = np.where(flip, np.abs(prev_q) + np.abs(q), 1.0)
    frac_close = np.where(flip, np.abs(prev_q) / denom, ((prev_side != 0) & (side == 0)) * 1.0)
    close_part = (prev_side != 0) & (frac_close > 0)
    open_part = active & (frac_close < 1)
    pnl -= np.bincount(prev_ids[close_part], (cost * frac_close)[close_part], n_trades)
    pnl -= np.bincount(ids[open_part], (cost * (1 - frac_close))[open_part], n_trades)

    env, sym, entry = np.nonzero(start)
    lengths = np.bincount(ids[active], minlength=n_trades)  # bars held
    exit_bar = entry + lengths  # the fill that ended it, or T if still held
    seg_starts = np.flatnonzero(start[active])  # active elements are contiguous per trade
    quantity = np.maximum.reduceat(np.abs(q[active]), seg_starts) if n_trades else np.zeros(0)
    return pd.DataFrame(
        {
            "env": env.astype(np.int64),
            "symbol": sym.astype(np.int64),
            "side": side[env, sym, entry].astype(np.int64),
            "entry_bar": entry.astype(np.int64),
            "exit_bar": exit_bar.astype(np.int64),
            "holding_bars": lengths.astype(np.int64),
            "quantity": quantity.astype(np.float64),
            "pnl": pnl.astype(np.float64),
            "open": exit_bar >= n_t,
        },
        columns=list(TRADE_COLUMNS),
    )
