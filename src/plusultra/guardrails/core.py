"""Risk guardrails on a book's target weights, one decision bar at a time.

`Guardrails.step` takes the weights proposed at bar ``t``'s close and returns the weights
allowed, using only data known at that close: the asset returns of bars up to ``t`` and the
guarded weights of earlier bars. The service calls `step` for every request; a backtest calls
`apply_path`, the same loop over a whole path, so both apply the rules identically.

Order of the rules at one bar (`RULES`), and why:

1. ``drawdown_kill``: the guarded book, marked to close before costs, is first revalued with
   bar ``t``'s returns; once its drawdown from the peak reaches the limit the book is flat for
   good (flattening ignores the turnover cap: a kill switch that trades slowly is no kill).
2. ``vol_target`` then 3. ``cvar_cap``: scale the whole book down to the risk budget. They come
   first because they size the book; the caps after them only cut further.
4. ``symbol_cap``, 5. ``sector_cap``: clip names, then scale over-weight sectors down.
6. ``factor_cap``, 7. ``net_cap``, 8. ``gross_cap``: scale the whole book; after the name and
   sector cuts, which can raise a factor exposure (clipping a name whose beta offsets the
   rest), so those cuts are not undone and the book-level limits hold for the final book.
   Scaling the book by k <= 1 scales every exposure, net and gross by k, so none of the three
   breaks another or a name or sector cap. The factor cap scales rather than hedging along
   the betas: a hedge tilt would move single names and could break the caps before it.
9. ``turnover_cap`` last, so that the limit holds for what is actually traded: the trade from
   the previous guarded targets is shortened to the budget. The previous and the capped
   targets both satisfy the symbol, sector, net and gross caps, which are convex, so every
   point between them does too; the risk scalings (2, 3) and the factor caps, whose betas
   move from bar to bar, are reached over several bars when the turnover budget is smaller
   than the cut they ask for (each factor cap is a convex slab ``|w . beta| <= cap``, so the
   shortened trade's exposure is at most the larger of the cap and the previous book's,
   after any forced exits).

Every intervention yields a `GuardrailEvent` and a log record on the logger
``plusultra.guardrails`` carrying the event's dict as ``extra={"guardrail_event": ...}``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from plusultra.errors import ConfigError, DataError
from plusultra.guardrails.config import ANY_SECTOR, MARKET, GuardrailConfig
from plusultra.guardrails.factors import exposure, market_returns, rolling_betas
from plusultra.guardrails.state import GuardrailEvent, GuardrailState, stamp

log = logging.getLogger("plusultra.guardrails")
_TOL = 1e-12  # relative slack before a cap counts as breached (float noise is no breach)


class Guardrails:
    """The rules of a `GuardrailConfig` over a fixed list of symbols.

    Args:
        config: the limits.
        symbols: the book's symbols, in the column order of every weight vector.
        sectors: symbol -> sector (the assets table's ``sector``); needed by ``sector_caps``.
        periods_per_year: bars a year, to annualise ``vol_target``.
        log_level: level of the per-event log records (a backtest logs them at DEBUG).

    Raises:
        ConfigError: ``sector_caps`` without sectors, or a bad `periods_per_year`.
    """

    def __init__(
        self,
        config: GuardrailConfig,
        symbols: list[str],
        sectors: dict[str, str] | None = None,
        periods_per_year: float = 252.0,
        log_level: int = logging.INFO,
    ) -> None:
        if not (isinstance(periods_per_year, int | float) and periods_per_year > 0):
            raise ConfigError(f"periods_per_year={periods_per_year!r} must be a number > 0")
        self.config, self.symbols = config, list(symbols)
        self.periods_per_year, self.log_level = float(periods_per_year), log_level
        self.rules = config.active_rules
        self.active = bool(self.rules)
        self.sector_groups = self._sector_groups(sectors or {})
        lookbacks = [config.vol_lookback if config.vol_target is not None else 0]
        lookbacks.append(config.cvar_lookback if config.cvar_cap is not None else 0)
        if config.factor_caps:
            lookbacks.append(config.factor_lookback + max(config.factor_lags.values(), default=0))
        self.history = max(lookbacks)  # trailing bars of returns the state keeps
        self.factor_series = config.factor_series  # the F columns of `factor_returns`

    def _sector_groups(self, sectors: dict[str, str]) -> list[tuple[str, float, np.ndarray]]:
        """(sector, cap, column indices) of every capped sector that has symbols."""
        caps = self.config.sector_caps
        if not caps:
            return []
        if not sectors:
            raise ConfigError(
                "guardrails.sector_caps needs each symbol's sector (the assets table's sector "
                "column), and the data has none"
            )
        members: dict[str, list[int]] = {}
        for i, s in enumerate(self.symbols):
            if sectors.get(s) is not None:
                members.setdefault(str(sectors[s]), []).append(i)
        unknown = sorted(set(caps) - set(members) - {ANY_SECTOR})
        if unknown:
            log.warning("guardrails.sector_caps: no symbol is in sector(s) %s", unknown)
        groups = []
        for name, idx in sorted(members.items()):
            cap = caps.get(name, caps.get(ANY_SECTOR))
            if cap is not None:
                groups.append((name, cap, np.asarray(idx)))
        return groups

    def new_state(self) -> GuardrailState:
        """A flat book at equity 1.0 with no return history."""
        n, f = len(self.symbols), len(self.factor_series)
        return GuardrailState(
            weights=np.zeros(n), returns=np.zeros((0, n)), factors=np.zeros((0, f))
        )

    def warm_up(
        self,
        state: GuardrailState,
        asset_returns: np.ndarray,
        factor_returns: np.ndarray | None = None,
    ) -> None:
        """Add (K, S) past asset returns (oldest first) and the (K, F) factor returns of the
        same bars to the history, without marking the book: a service starting mid-stream
        fills the vol, CVaR and beta lookbacks with them (factor returns not given: unknown,
        NaN)."""
        r = self._vector(asset_returns, "asset_returns", ndim=2, allow_nan=True)
        f = self._factor_rows(factor_returns, (len(r), len(self.factor_series)), required=False)
        self._remember(state, r, f)

    def _remember(self, state: GuardrailState, r: np.ndarray, f: np.ndarray) -> None:
        """Append (K, S) asset and (K, F) factor returns to the trailing history."""
        if self.history:
            state.returns = np.vstack([state.returns, r])[-self.history :]
            state.factors = np.vstack([state.factors, f])[-self.history :]

    def _factor_rows(self, x, shape: tuple[int, ...], required: bool) -> np.ndarray:
        """Factor returns of `shape` ((F,) or (K, F)) checked (NaN allowed, inf not) as a
        (K, F) array; None: NaN, or a DataError when `required` and a supplied factor is
        capped."""
        names, rows = self.factor_series, 1 if len(shape) == 1 else shape[0]
        if x is None:
            if required and names:
                raise DataError(
                    f"guardrails: factor_returns of {list(names)} (guardrails.factor_caps) are "
                    "needed at every step and were not given"
                )
            return np.full((rows, len(names)), np.nan)
        a = np.asarray(x, dtype=float)
        if a.shape != shape:
            want = "(F,)" if len(shape) == 1 else "(K, F)"
            raise DataError(
                f"guardrails: factor_returns must have shape {want} with F = {len(names)}, one "
                f"column per factor of {list(names)}, got {a.shape}"
            )
        if np.isinf(a).any():
            j = int(np.argwhere(np.isinf(a))[0][-1])
            raise DataError(f"guardrails: factor_returns of {names[j]} is not finite")
        return a.reshape(rows, len(names)).copy()

    def _vector(self, x, name: str, ndim: int = 1, allow_nan: bool = False) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.ndim != ndim or a.shape[-1] != len(self.symbols):
            want = "(S,)" if ndim == 1 else "(K, S)"
            raise DataError(
                f"guardrails: {name} must have shape {want} with S = {len(self.symbols)} "
                f"symbols, got {a.shape}"
            )
        bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
        if bad.any():
            j = np.argwhere(bad)[0][-1]
            raise DataError(f"guardrails: {name} of {self.symbols[j]} is not finite")
        return a.copy()

    def step(
        self,
        state: GuardrailState,
        proposed: np.ndarray,
        asset_returns: np.ndarray,
        tradable: np.ndarray,
        timestamp: str | None = None,
        *,
        factor_returns: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[GuardrailEvent]]:
        """Guard one decision bar and update `state`.

        Args:
            state: the book's state (`new_state`), updated in place.
            proposed: (S,) target weights decided at bar t's close, fraction of equity; 0
                where not tradable.
            asset_returns: (S,) close-to-close returns of bar t (close t-1 -> close t), known
                at t's close; NaN where unknown (counts as 0).
            tradable: (S,) bool, whether each symbol can be traded at t; the weight of one
                that cannot is 0 (its exit is forced, even past the turnover cap).
            timestamp: the bar, for the events.
            factor_returns: (F,) this bar's values of the supplied factors, in the order of
                `GuardrailConfig.factor_series` (the capped factors but ``market``), known at
                t's close; NaN where unknown. None when no such factor is capped.

        Returns:
            (S,) guarded weights and the events of this bar, in rule order.

        Raises:
            DataError: wrong shapes, non-finite weights or returns, a weight on a symbol
                that is not tradable, or no `factor_returns` while a supplied factor is capped.
        """
        w = self._vector(proposed, "proposed")
        r = self._vector(asset_returns, "asset_returns", allow_nan=True)
        f = self._factor_rows(factor_returns, (len(self.factor_series),), required=True)  # (1, F)
        tr = np.asarray(tradable, dtype=bool)
        if tr.shape != w.shape:
            raise DataError(f"guardrails: tradable must have shape {w.shape}, got {tr.shape}")
        if (w[~tr] != 0).any():
            j = int(np.flatnonzero(~tr & (w != 0))[0])
            raise DataError(
                f"guardrails: proposed weight {w[j]:g} on {self.symbols[j]}, which is not "
                f"tradable at {timestamp or 'this bar'}"
            )
        # the book held over bar t, marked at t's close; then bar t's returns join the history
        state.equity *= 1.0 + float(state.weights @ np.nan_to_num(r))
        state.peak = max(state.peak, state.equity)
        self._remember(state, r[None], f)
        state.steps += 1
        if not self.active:
            state.weights = w.copy()
            return w, []
        events: list[GuardrailEvent] = []
        if self._kill(state, w, timestamp, events):
            w = np.zeros_like(w)
        else:
            prev = state.weights
            w = self._risk(state, w, timestamp, events)
            w = self._names(w, timestamp, events)
            w = self._factors(state, w, timestamp, events)
            w = self._book(w, timestamp, events)
            w = self._turnover(prev, w, tr, timestamp, events)
        state.weights = w.copy()
        for event in events:
            log.log(
                self.log_level,
                "guardrail %s%s at %s: %.6g -> %.6g (%s)",
                event.rule,
                "" if event.symbol is None else f" {event.symbol}",
                event.timestamp,
                event.before,
                event.after,
                event.detail,
                extra={"guardrail_event": event.as_dict()},
            )
        return w, events

    def _kill(self, state, w, ts, events) -> bool:
        """The drawdown kill switch: True when the book must be flat at this bar."""
        limit = self.config.drawdown_kill
        if limit is None:
            return False
        drawdown = 1.0 - state.equity / state.peak
        fired = not state.killed and drawdown >= limit * (1 - _TOL)
        if fired:
            state.killed, state.killed_at = True, ts
        gross = float(np.abs(w).sum())
        if fired or (state.killed and gross > 0):
            why = (
                f"drawdown {drawdown:.2%} reached the kill limit {limit:.2%}; book flattened"
                if fired
                else f"kill switch fired at {state.killed_at}; book held flat"
            )
            events.append(GuardrailEvent(ts, None, "drawdown_kill", gross, 0.0, why))
        return state.killed

    def _book_history(self, state, w, lookback: int) -> np.ndarray | None:
        """(L,) returns the weights `w` would have earned over the last `lookback` bars;
        None until that many bars of history are known."""
        if len(state.returns) < lookback:
            return None
        return np.nan_to_num(state.returns[-lookback:]) @ w

    def _risk(self, state, w, ts, events) -> np.ndarray:
        """Vol target, then CVaR cap: the whole book scaled down, never up."""
        cfg = self.config
        if cfg.vol_target is not None:
            book = self._book_history(state, w, cfg.vol_lookback)
            if book is not None:
                vol = float(book.std(ddof=1)) * math.sqrt(self.periods_per_year)
                if vol > cfg.vol_target * (1 + _TOL):
                    w = w * (cfg.vol_target / vol)
                    why = f"ex-ante vol over {cfg.vol_lookback} bars above the target; book scaled"
                    events.append(GuardrailEvent(ts, None, "vol_target", vol, cfg.vol_target, why))
        if cfg.cvar_cap is not None:
            book = self._book_history(state, w, cfg.cvar_lookback)
            if book is not None:
                tail = max(1, math.ceil(cfg.cvar_alpha * len(book)))
                cvar = -float(np.sort(book)[:tail].mean())  # mean loss of the worst bars
                if cvar > cfg.cvar_cap * (1 + _TOL):
                    w = w * (cfg.cvar_cap / cvar)
                    why = (
                        f"historical CVaR {1 - cfg.cvar_alpha:.0%} over {cfg.cvar_lookback} bars "
                        "above the cap; book scaled"
                    )
                    events.append(GuardrailEvent(ts, None, "cvar_cap", cvar, cfg.cvar_cap, why))
        return w

    def _names(self, w, ts, events) -> np.ndarray:
        """Symbol then sector caps."""
        cfg = self.config
        if cfg.symbol_cap is not None:
            for j in np.flatnonzero(np.abs(w) > cfg.symbol_cap * (1 + _TOL)):
                after = math.copysign(cfg.symbol_cap, w[j])
                why = f"|weight| above the symbol cap {cfg.symbol_cap:g}; clipped"
                events.append(GuardrailEvent(ts, self.symbols[j], "symbol_cap", w[j], after, why))
                w[j] = after
        for name, cap, idx in self.sector_groups:
            gross = float(np.abs(w[idx]).sum())
            if gross > cap * (1 + _TOL):
                w[idx] = w[idx] * (cap / gross)
                why = f"sector {name}: gross above its cap {cap:g}; its symbols scaled"
                events.append(GuardrailEvent(ts, None, "sector_cap", gross, cap, why))
        return w

    def betas(self, state: GuardrailState) -> dict[str, np.ndarray]:
        """factor -> (S,) betas of every symbol known at the state's last bar (NaN where
        undefined), for every capped factor in config order."""
        cfg, out = self.config, {}
        for name in cfg.factor_caps:
            if name == MARKET:
                series = market_returns(state.returns)
            else:
                series = state.factors[:, self.factor_series.index(name)]
            lag = cfg.factor_lags.get(name, 0)
            out[name] = rolling_betas(state.returns, series, cfg.factor_lookback, lag)
        return out

    def _factors(self, state, w, ts, events) -> np.ndarray:
        """Factor caps, in config order: the whole book scaled down to each breached cap."""
        caps = self.config.factor_caps
        if not caps or not w.any():
            return w
        for name, beta in self.betas(state).items():
            before = exposure(w, beta)
            if abs(before) > caps[name] * (1 + _TOL):
                k = caps[name] / abs(before)
                w = w * k
                why = (
                    f"factor {name}: |beta exposure| above its cap {caps[name]:g} (betas over "
                    f"{self.config.factor_lookback} bars); book scaled by {k:.4g}"
                )
                after = math.copysign(caps[name], before)
                events.append(GuardrailEvent(ts, None, "factor_cap", before, after, why))
        return w

    def _book(self, w, ts, events) -> np.ndarray:
        """Net then gross cap: the whole book scaled down."""
        cfg = self.config
        if cfg.net_cap is not None:
            net = float(w.sum())
            if abs(net) > cfg.net_cap * (1 + _TOL):
                w = w * (cfg.net_cap / abs(net))
                after = math.copysign(cfg.net_cap, net)
                why = f"|net exposure| above the cap {cfg.net_cap:g}; book scaled"
                events.append(GuardrailEvent(ts, None, "net_cap", net, after, why))
        if cfg.gross_cap is not None:
            gross = float(np.abs(w).sum())
            if gross > cfg.gross_cap * (1 + _TOL):
                w = w * (cfg.gross_cap / gross)
                why = f"gross exposure above the cap {cfg.gross_cap:g}; book scaled"
                events.append(GuardrailEvent(ts, None, "gross_cap", gross, cfg.gross_cap, why))
        return w

    def _turnover(self, prev, w, tr, ts, events) -> np.ndarray:
        """The trade from `prev` shortened to the turnover budget, forced exits first.

        The exits of symbols that cannot be traded (``~tr``) are forced and spend the budget
        first; the rest moves from ``prev`` (those exits done) toward `w` by the largest step
        the remaining budget allows. Both ends satisfy the symbol, sector and gross caps, so
        the step does; the net cap can only break when a forced exit moved the net, and then
        the step is lengthened to meet it (exposure limits win; the event says so)."""
        cap = self.config.turnover_cap
        if cap is None:
            return w
        start = np.where(tr, prev, 0.0)  # (S,) prev after the forced exits
        forced = float(np.abs(prev[~tr]).sum())
        trade = w - start  # zero where not tradable (w is 0 there)
        wanted = float(np.abs(trade).sum())
        budget = max(cap - forced, 0.0)
        if wanted <= budget * (1 + _TOL) + _TOL:
            return w
        k = budget / wanted
        why = f"turnover above the cap {cap:g} a step; trade moved part way to the target"
        net_cap, n0, n1 = self.config.net_cap, float(start.sum()), float(w.sum())
        if net_cap is not None and abs(n0) > net_cap and abs(n0 + k * (n1 - n0)) > net_cap:
            k = min(1.0, (abs(n0) - net_cap) / abs(n0 - n1))  # the shortest step inside net_cap
            why += "; lengthened to meet the net cap after forced exits"
        if forced > cap:
            why += f" (forced exits alone trade {forced:.4g})"
        events.append(
            GuardrailEvent(ts, None, "turnover_cap", forced + wanted, forced + k * wanted, why)
        )
        return start + k * trade

    def apply_path(
        self,
        weights: np.ndarray,
        close: np.ndarray,
        tradable: np.ndarray,
        dates=None,
        factor_returns: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[GuardrailEvent]]:
        """Guard a whole path: `step` at every bar from a new state (what a backtest trades).

        Args:
            weights: (T, S) proposed target weights, row t decided at bar t's close.
            close: (T, S) closes (NaN where a symbol has no bar); bar t's asset returns are
                ``close[t] / close[t - 1] - 1`` (NaN on row 0 and next to a missing close).
            tradable: (T, S) bool.
            dates: (T,) bar timestamps for the events, or None.
            factor_returns: (T, F) the supplied factors' series (`step`'s
                ``factor_returns`` of every bar); None when no such factor is capped.

        Returns:
            (T, S) guarded weights and every event, in bar then rule order.
        """
        w = np.asarray(weights, dtype=float)
        c = np.asarray(close, dtype=float)
        tr = np.asarray(tradable, dtype=bool)
        if not (w.shape == c.shape == tr.shape) or w.ndim != 2:
            raise DataError(
                f"guardrails: weights {w.shape}, close {c.shape} and tradable {tr.shape} must "
                "be (T, S) panels of one shape"
            )
        if dates is not None and len(dates) != len(w):
            raise DataError(f"guardrails: {len(dates)} dates for {len(w)} bars")
        f = None
        if factor_returns is not None or self.factor_series:
            f = self._factor_rows(factor_returns, (len(w), len(self.factor_series)), True)  # (T, F)
        returns = np.full_like(c, np.nan)  # (T, S)
        with np.errstate(divide="ignore", invalid="ignore"):
            returns[1:] = c[1:] / c[:-1] - 1.0
        returns[~np.isfinite(returns)] = np.nan
        state, out, events = self.new_state(), np.zeros_like(w), []
        for t in range(len(w)):
            ts = None if dates is None else stamp(dates[t])
            ft = None if f is None else f[t]
            out[t], found = self.step(state, w[t], returns[t], tr[t], ts, factor_returns=ft)
            events += found
        return out, events
