"""Inputs of the realistic simulator: market data, input checks and latency draws.

`prepare_inputs` brings weights and either market data or returns to ``(E, T, S)`` tensors and
checks them, and resolves the execution mode (``plusultra.execution``); `draw_latencies` draws each
order's latency bucket deterministically by seed. Market arrays stay in bar indexing: the order
decided at close ``t`` fills at bar ``t + lag`` (+ its latency), and each engine (the vectorised
simulator and the reference loop) maps decisions to fill bars itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from plusultra.errors import DataError
from plusultra.execution import resolve_execution

Array = np.ndarray | torch.Tensor
log = logging.getLogger("plusultra")


@dataclass(frozen=True)
class MarketData:
    """Market inputs over ``T + 1 + lag`` bars, each ``(E, B, S)`` or ``(B, S)`` (one shape).

    ``lag`` is the fill lag of the execution mode: 1 for ``next_open`` / ``next_close`` (bars
    ``0 .. T - 1`` are decision bars, ``1 .. T`` fill bars, bar ``T + 1`` only marks the final
    book), 0 for ``same_close`` (decision and fill bars ``0 .. T - 1``, bar ``T`` marks).

    Attributes:
        close: each bar's close, currency per share; NaN where no bar.
        volume: shares traded in the bar (``inf``: unlimited; NaN: unknown, treated as
            unlimited with a logged warning: no participation cap and no impact there).
        volatility: per-bar return volatility known at the bar (e.g. 20-bar std of returns).
        tradable: bool, inside the symbol's listed life and has a bar; where true, the fill
            price must be finite and > 0, ``volume`` >= 0 or NaN and ``volatility`` finite
            and >= 0.
        open: each bar's open (the fill price of ``next_open``); None (or all NaN) for
            close-only data.

    Raises:
        DataError: if the arrays are not 2-D or 3-D of one shape.
    """

    close: Array
    volume: Array
    volatility: Array
    tradable: Array
    open: Array | None = None

    def __post_init__(self) -> None:
        shapes = {
            f.name: tuple(getattr(self, f.name).shape)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        if len(set(shapes.values())) != 1 or len(shapes["close"]) not in (2, 3):
            raise DataError(
                f"market arrays must share one (E, T + 1, S) or (T + 1, S) shape, got {shapes}"
            )


@dataclass
class PreparedInputs:
    """Validated inputs (shared by both engines); market arrays in bar indexing, ``B`` bars.

    ``B = T + 1 + lag`` with a market, ``T + 1`` with returns (which are already aligned to the
    execution timing, so they fill at the synthetic close of the decision step: lag 0).

    Attributes:
        weights: ``(E, T, S)`` targets with NaN -> 0.
        close: ``(E, B, S)`` closes, NaN where no bar; None under ``next_open``, where no
            engine needs them after the checks (saves one panel of memory).
        open: ``(E, B, S)`` opens, or None (close-only data, or returns input).
        volume: ``(E, B, S)`` bar volume, 0 where not tradable, ``inf`` where unknown.
        volatility: ``(E, B, S)`` per-bar volatility, 0 where not tradable.
        tradable: ``(E, B, S)`` bool, an order can fill at bar ``u``.
        holdable: ``(E, B, S)`` bool, a position can be taken at fill bar ``u``.
        mode: the resolved execution mode; None with returns input.
        squeeze: whether the caller passed no ``E`` axis.
    """

    weights: torch.Tensor
    close: torch.Tensor | None
    open: torch.Tensor | None
    volume: torch.Tensor
    volatility: torch.Tensor
    tradable: torch.Tensor
    holdable: torch.Tensor
    mode: str | None
    squeeze: bool


def _tensor(x: Array, dtype: torch.dtype | None, device) -> torch.Tensor:
    """``x`` as a tensor of ``dtype`` (``None``: bool); numpy input is copied, as it may be a
    read-only broadcast view."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype or torch.bool)
    arr = np.array(x, dtype=None if dtype is not None else bool)
    return torch.tensor(arr, dtype=dtype, device=device)


def _first_bad(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def prepare_inputs(
    weights: Array,
    returns: Array | None,
    market: MarketData | None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    execution: str | None = None,
) -> PreparedInputs:
    """Check the inputs and bring them to tensors (see ``PreparedInputs``).

    Args:
        execution: the ``simulator.execution`` setting, resolved against the market's opens
            (None: ``next_open`` where it has opens, else ``next_close``).

    Raises:
        ConfigError: an unknown execution mode.
        DataError: on missing or doubled market inputs, bad shapes, infinite weights or returns,
            returns <= -1, ``next_open`` without opens, or a tradable bar without a positive
            fill price, a volume >= 0 (or NaN) and a finite volatility >= 0 (the message names
            the first ``(e, t, s)``).
    """
    if device is None:
        device = weights.device if isinstance(weights, torch.Tensor) else "cpu"
    w = _tensor(weights, dtype, device)
    if w.ndim not in (2, 3):
        raise DataError(f"weights must be (T, S) or (E, T, S), got shape {tuple(w.shape)}")
    if torch.isinf(w).any():
        raise DataError(f"weights must be finite or NaN; weights{list(_first_bad(torch.isinf(w)))}")
    if (returns is None) == (market is None):
        raise DataError("pass exactly one of `returns` (T, S) or `market` (MarketData)")
    if market is None:
        r = _tensor(returns, dtype, device)
        same_env = r.ndim < 3 or w.ndim < 3 or r.shape[0] == w.shape[0]
        if r.ndim not in (2, 3) or r.shape[-2:] != w.shape[-2:] or not same_env:
            raise DataError(
                f"returns.shape={tuple(r.shape)} does not match weights.shape={tuple(w.shape)}"
            )
        if torch.isinf(r).any() or (r <= -1).any():
            bad = torch.isinf(r) | (r <= -1)
            raise DataError(f"returns must be finite and > -1 or NaN; bad at {_first_bad(bad)}")
        ok = ~torch.isnan(r)  # (.., T, S) holdable over t -> t + 1
        pad = torch.zeros_like(ok[..., :1, :])
        has_bar = torch.cat([ok, pad], dim=-2) | torch.cat([pad, ok], dim=-2)  # (.., T + 1, S)
        growth = torch.cat([torch.ones_like(r[..., :1, :]), 1.0 + r.nan_to_num(0.0)], dim=-2)
        close = torch.where(has_bar, growth.cumprod(dim=-2), torch.nan)
        tradable = has_bar
        holdable = torch.cat([ok, pad], dim=-2)
        volume = torch.where(tradable, torch.inf, 0.0).to(dtype)
        volatility = torch.zeros_like(volume)
        open_, mode = None, None
    else:
        close = _tensor(market.close, dtype, device)
        open_ = None if market.open is None else _tensor(market.open, dtype, device)
        vol_all = _tensor(market.volume, dtype, device)
        sig_all = _tensor(market.volatility, dtype, device)
        tradable = _tensor(market.tradable, None, device)
        mode = resolve_execution(
            execution,
            None if open_ is None else open_.detach().cpu().numpy(),
            close.detach().cpu().numpy(),
        )
        lag = 0 if mode == "same_close" else 1
        if close.shape[-2] != w.shape[-2] + 1 + lag or close.shape[-1] != w.shape[-1]:
            raise DataError(
                f"market arrays must have T + {1 + lag} bars for weights of T bars with "
                f"execution={mode} (the fill bar and the next one): market "
                f"{tuple(close.shape)} vs weights {tuple(w.shape)}"
            )
        if close.ndim == 3 and w.ndim == 3 and close.shape[0] != w.shape[0]:
            raise DataError(f"market has {close.shape[0]} environments, weights {w.shape[0]}")
        fill = open_ if mode == "next_open" else close
        name = "open" if mode == "next_open" else "close"
        checks = {
            "close must be > 0 where finite": (close <= 0) | torch.isinf(close),
            f"{name} must be finite where tradable": tradable & torch.isnan(fill),
            "volume must be >= 0 where tradable": tradable & (vol_all < 0),
            "volatility must be finite and >= 0 where tradable": tradable
            & ~(torch.isfinite(sig_all) & (sig_all >= 0)),
        }
        if open_ is not None:
            checks["open must be > 0 where finite"] = (open_ <= 0) | torch.isinf(open_)
        for what, bad in checks.items():
            if bad.any():
                raise DataError(f"market.{what}; first bad (e, t, s) / (t, s) {_first_bad(bad)}")
        unknown = tradable & torch.isnan(vol_all)
        if unknown.any():
            log.warning(
                "simulator: volume is missing on %d of %d tradable bars; fills there have no "
                "participation cap and no market impact (both need the bar's volume)",
                int(unknown.sum()),
                int(tradable.sum()),
            )
        holdable = tradable
        volume = torch.where(tradable, torch.where(torch.isnan(vol_all), torch.inf, vol_all), 0.0)
        volatility = torch.where(tradable, sig_all, 0.0)
    squeeze = w.ndim == 2 and close.ndim == 2
    n_env = max(w.shape[0] if w.ndim == 3 else 1, close.shape[0] if close.ndim == 3 else 1)

    def batch(x: torch.Tensor) -> torch.Tensor:
        return (x if x.ndim == 3 else x.unsqueeze(0)).expand(n_env, -1, -1).contiguous()

    return PreparedInputs(
        weights=batch(w.nan_to_num(0.0)),
        close=None if mode == "next_open" else batch(close),
        open=None if open_ is None else batch(open_),
        volume=batch(volume),
        volatility=batch(volatility),
        tradable=batch(tradable),
        holdable=batch(holdable),
        mode=mode,
        squeeze=squeeze,
    )


def draw_latencies(
    latency_probs: Sequence[float], n_env: int, n_t: int, n_s: int, seed: int
) -> torch.Tensor:
    """Latency ``k`` (bars) of the order of every ``(e, t, s)``: ``(E, T, S)`` int64 on CPU.

    Environment ``e`` draws ``u = torch.rand((T, S))`` (float64) from a CPU ``torch.Generator``
    seeded with ``seed + e`` and takes ``k = #{j : cdf[j] <= u}``, ``cdf = cumsum(latency_probs)``;
    so a batch's environment ``e`` equals a lone run with ``seed + e``, on any device.
    """
    n_k = len(latency_probs)
    if n_k == 1:
        return torch.zeros((n_env, n_t, n_s), dtype=torch.int64)
    cdf = torch.tensor(latency_probs, dtype=torch.float64).cumsum(0)
    out = []
    for e in range(n_env):
        gen = torch.Generator().manual_seed(seed + e)
        u = torch.rand((n_t, n_s), generator=gen, dtype=torch.float64)
        out.append(torch.searchsorted(cdf, u, right=True).clamp_(max=n_k - 1))
    return torch.stack(out)


def forward_fill(close: torch.Tensor) -> torch.Tensor:
    """``(E, T1, S)`` last finite close at or before each bar; 0 before a symbol's first bar."""
    n_t = close.shape[1]
    valid = ~torch.isnan(close)
    steps = torch.arange(n_t, device=close.device).view(1, n_t, 1)
    idx = torch.where(valid, steps, 0).cummax(dim=1).values
    return torch.gather(close.nan_to_num(0.0), 1, idx)
