"""Differentiable portfolio kernels for the risk losses (``plusultra.models.losses``).

A portfolio batch (``plusultra.data.datasets.sampler``) holds every symbol's sample for a block
of consecutive decision dates. Each sample ``i`` carries its decision bar ``date[i]``, its symbol
index ``symbol[i]``, the position ``p[i]`` the model takes and its execution-aligned simple
return ``ret[i]`` (``plusultra.execution.execution_returns``: decided at close t, filled at
t + 1's open by default). ``portfolio_series`` arranges them into a (D, S) book, D dates in
calendar order and S symbols of the batch, and returns the block's portfolio return series:

    W = cap_exposure(P, gross, net)                      # (D, S), the backtest's caps
    R[d] = sum_s W[d, s] * r[d, s] - cost * turnover[d]  # (D,)
    turnover[d] = sum_s |W[d, s] - W[d - 1, s]|, turnover[0] = 0

A (date, symbol) without a sample holds 0. The first date of a block pays no turnover: the
book before the block is not in the batch (a block is a slice of a continuing book, not a fresh
start from cash). Turnover is measured between target weights, not against the weights after
drift, so it is the simulator's turnover to first order in the returns. Without costs, ``R`` is
exactly ``FrictionlessSimulator.run(W, r).portfolio_returns`` (tests check).

The risk measures below take such a series ``r`` (D,) in time order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Portfolio(NamedTuple):
    """A block's book: ``returns`` (D,) net of costs, ``weights`` (D, S) after the caps,
    ``turnover`` (D,), ``dates`` (D,) and ``symbols`` (S,) the batch's bars and symbol ids."""

    returns: torch.Tensor
    weights: torch.Tensor
    turnover: torch.Tensor
    dates: torch.Tensor
    symbols: torch.Tensor


def cap_exposure(w: torch.Tensor, gross: float, net: float | None = None) -> torch.Tensor:
    """Scale each row of ``w`` (D, S) down, never up: ``sum|w| <= gross``, ``|sum w| <= net``.

    ``w[d] / max(1, sum|w[d]| / gross, |sum w[d]| / net)``, the torch twin of
    ``plusultra.evaluation.backtest.positions.cap_exposure``; differentiable almost everywhere.
    """
    factor = torch.clamp((w.abs().sum(dim=1) / gross), min=1.0)  # (D,)
    if net is not None:
        factor = torch.maximum(factor, w.sum(dim=1).abs() / net)
    return w / factor[:, None]


def portfolio_series(
    p: torch.Tensor,
    ret: torch.Tensor,
    date: torch.Tensor,
    symbol: torch.Tensor,
    gross: float = 1.0,
    net: float | None = None,
    cost: float = 0.0,
) -> Portfolio:
    """The block's portfolio return series (module docstring).

    Args:
        p: (B,) positions, one per sample (before the caps).
        ret: (B,) execution returns, simple, per bar.
        date: (B,) decision bar of each sample; symbol: (B,) symbol index of each sample.
        gross: gross cap; net: net cap (None: none beyond gross).
        cost: cost per unit of turnover, a fraction (``cost_bps / 1e4``).

    Returns:
        A ``Portfolio`` with D distinct dates (sorted) and S distinct symbols of the batch.
    """
    dates, row = torch.unique(date, return_inverse=True)  # (D,), (B,)
    symbols, col = torch.unique(symbol, return_inverse=True)  # (S,), (B,)
    shape = (len(dates), len(symbols))
    book = p.new_zeros(shape).index_put((row, col), p)  # (D, S)
    r = p.new_zeros(shape).index_put((row, col), ret.to(p.dtype))  # (D, S)
    w = cap_exposure(book, gross, net)  # (D, S)
    turnover = torch.cat([w.new_zeros(1), (w[1:] - w[:-1]).abs().sum(dim=1)])  # (D,)
    returns = (w * r).sum(dim=1) - cost * turnover  # (D,)
    return Portfolio(returns, w, turnover, dates, symbols)


def neg_sharpe(r: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """-mean(r) / sqrt(var(r) + eps), population variance (finite for a series of 1)."""
    mean = r.mean()
    return -mean / torch.sqrt((r - mean).pow(2).mean() + eps)


def neg_sortino(r: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """-mean(r) / sqrt(mean(min(r, 0)^2) + eps): only losses count as risk."""
    return -r.mean() / torch.sqrt(r.clamp(max=0).pow(2).mean() + eps)


def max_drawdown(r: torch.Tensor, smooth: float = 0.0) -> torch.Tensor:
    """Largest fall of the cumulative return path (starting at 0) from its running peak.

    ``r`` must be in time order. The running peak is an exact ``cummax`` and, with
    ``smooth == 0``, so is the max over time: both are piecewise linear, so the result is
    differentiable almost everywhere (the gradient reaches the returns between the peak and the
    trough). With ``smooth > 0`` the max over time is ``smooth * logsumexp(drawdown / smooth)``,
    which spreads the gradient over all deep drawdowns and lies within ``smooth * log(D + 1)``
    above the exact max.
    """
    path = torch.cat([r.new_zeros(1), r.cumsum(dim=0)])  # (D + 1,) wealth, starting at 0
    drawdown = path.cummax(dim=0).values - path  # (D + 1,) >= 0
    if smooth > 0:
        return smooth * torch.logsumexp(drawdown / smooth, dim=0)
    return drawdown.max()


def cvar(r: torch.Tensor, alpha: float = 0.95) -> torch.Tensor:
    """Conditional value at risk of the losses -r at level alpha (Rockafellar-Uryasev).

    ``z`` is the empirical alpha-quantile of the losses (inverse CDF: the k-th smallest with
    k = ceil(alpha * D)), detached; CVaR = z + mean(relu(-r - z)) / (1 - alpha). At this z the
    R-U objective is at its minimum, so the value is the exact empirical CVaR; the gradient
    flows through the losses strictly above z (exact when (1 - alpha) * D is an integer; the
    sample at z gets no gradient otherwise). Equal losses give zero gradient, never NaN.
    """
    loss = -r  # (D,)
    k = min(max(math.ceil(alpha * loss.numel() - 1e-9), 1), loss.numel())
    z = loss.detach().kthvalue(k).values  # () the alpha-quantile (VaR)
    return z + F.relu(loss - z).mean() / (1 - alpha)
