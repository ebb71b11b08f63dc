"""Reward shaping of the trading environment: each option a switch (a weight; 0 = off).

The environment hands the shaper each step's net return ``r`` (P&L after costs as a fraction of
the equity at the decision) and turnover ``u`` (traded notional / equity); the reward is

    reward = pnl_weight * r
           + sharpe_weight * D            (differential Sharpe ratio, Moody & Saffell 1998)
           - drawdown_weight * dMDD       (increase of the episode's max drawdown)
           - cvar_weight * CVaR           (expected shortfall of the episode's returns so far)
           + entropic_weight * U(r)       (exponential utility, risk aversion lambda)
           - turnover_weight * u          (on top of the simulated costs)

* ``D_k = (B_{k-1} dA - A_{k-1} dB / 2) / (B_{k-1} - A_{k-1}^2)^{3/2}`` with ``dA = r - A_{k-1}``,
  ``dB = r^2 - B_{k-1}``, then ``A_k = A_{k-1} + eta dA``, ``B_k = B_{k-1} + eta dB`` (``A``, ``B``
  start at 0 each episode); ``D_k = 0`` while the variance ``B - A^2`` is below ``1e-12``.
* ``dMDD_k = MDD_k - MDD_{k-1}``, ``MDD_k = max_{j<=k} (1 - equity_j / max_{i<=j} equity_i)``
  with equity starting at 1: over an episode the penalties sum to its max drawdown.
* ``CVaR_k = max(0, -mean of the ceil(alpha k) lowest of r_1..r_k)``: a rolling tail-loss level
  over the episode so far (loss as a positive fraction of equity).
* ``U(r) = (1 - exp(-lambda r)) / lambda`` (``~ r - lambda r^2 / 2``): concave, a loss weighs
  more than a gain of the same size. ``pnl_weight=0, entropic_weight=1`` replaces the P&L by it.

All state is per environment, ``(E,)`` or ``(E, L)`` tensors, reset per row at episode start.
``shape_reference`` is a per-env, per-step loop of the same formulas (tests compare the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plusultra.errors import ConfigError

VAR_EPS = 1e-12  # variance below which the differential Sharpe ratio is 0 (undefined)
TOL = 1e-9  # ceil(alpha * n) tolerance, so that 0.05 * 20 is a tail of 1
TERMS = ("pnl", "sharpe", "drawdown", "cvar", "entropic", "turnover")


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms (0 turns a term off) and their parameters.

    Raises:
        ConfigError: a weight that is negative or not finite, eta or alpha outside (0, 1], a
            risk aversion <= 0; the message names ``reward.<key>``.
    """

    pnl_weight: float = 1.0  # net P&L after costs, fraction of equity
    sharpe_weight: float = 0.0  # differential Sharpe ratio (Moody & Saffell)
    sharpe_eta: float = 0.01  # its moving-average rate (about 1 / its memory in steps)
    drawdown_weight: float = 0.0  # increase of the episode's max drawdown (penalty)
    cvar_weight: float = 0.0  # expected shortfall of the episode's returns so far (penalty)
    cvar_alpha: float = 0.05  # its tail fraction
    entropic_weight: float = 0.0  # exponential utility of the step's net return
    risk_aversion: float = 1.0  # lambda of the exponential utility
    turnover_weight: float = 0.0  # traded notional / equity (penalty beyond the costs)

    def __post_init__(self) -> None:
        for key in (
            "pnl_weight",
            "sharpe_weight",
            "drawdown_weight",
            "cvar_weight",
            "entropic_weight",
            "turnover_weight",
        ):
            _check(key, getattr(self, key), 0.0, math.inf, low_open=False)
        _check("sharpe_eta", self.sharpe_eta, 0.0, 1.0)
        _check("cvar_alpha", self.cvar_alpha, 0.0, 1.0)
        _check("risk_aversion", self.risk_aversion, 0.0, math.inf)


def _check(key: str, value, low: float, high: float, low_open: bool = True) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if math.isinf(high) else f" and <= {high:g}"
        raise ConfigError(f"reward.{key} must be a finite number {lo}{hi}, got {value!r}")


class RewardShaper:
    """Turns net returns and turnover into shaped rewards for E environments.

    Args:
        config: the weights.
        n_envs: E.
        episode_len: L, steps per episode (the CVaR buffer).
        device: where the state lives.
    """

    def __init__(
        self, config: RewardConfig, n_envs: int, episode_len: int, device: torch.device
    ) -> None:
        self.config = config
        self.n_envs, self.episode_len = n_envs, episode_len
        z = torch.zeros(n_envs, device=device)
        self.a, self.b = z.clone(), z.clone()  # differential Sharpe moments
        self.equity, self.peak, self.mdd = z + 1.0, z + 1.0, z.clone()
        self.k = torch.zeros(n_envs, dtype=torch.long, device=device)  # steps taken
        self.history = torch.zeros(n_envs, episode_len, device=device)  # r_1..r_k (CVaR)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Restart the state of ``rows`` ((K,) long; None: every env) for a new episode."""
        rows = slice(None) if rows is None else rows
        for x in (self.a, self.b, self.mdd, self.history):
            x[rows] = 0.0
        self.equity[rows], self.peak[rows] = 1.0, 1.0
        self.k[rows] = 0

    def __call__(
        self, ret: torch.Tensor, turnover: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reward (E,) of one step from net returns ``ret`` (E,) and turnover (E,); also the
        unweighted terms by name (``TERMS``; only the enabled ones)."""
        c = self.config
        terms: dict[str, torch.Tensor] = {"pnl": ret}
        reward = c.pnl_weight * ret
        if c.sharpe_weight:
            d_a, d_b = ret - self.a, ret * ret - self.b
            var = self.b - self.a * self.a
            ok = var > VAR_EPS
            dsr = torch.where(
                ok, (self.b * d_a - 0.5 * self.a * d_b) / var.clamp(min=VAR_EPS) ** 1.5, 0.0
            )
            self.a, self.b = self.a + c.sharpe_eta * d_a, self.b + c.sharpe_eta * d_b
            terms["sharpe"] = dsr
            reward = reward + c.sharpe_weight * dsr
        if c.drawdown_weight:
            self.equity = self.equity * (1.0 + ret)
            self.peak = torch.maximum(self.peak, self.equity)
            mdd = torch.maximum(self.mdd, 1.0 - self.equity / self.peak)
            terms["drawdown"] = mdd - self.mdd
            self.mdd = mdd
            reward = reward - c.drawdown_weight * terms["drawdown"]
        if c.cvar_weight:
            k = self.k.clamp(max=self.episode_len - 1)
            self.history.scatter_(1, k[:, None], ret[:, None])
            n = (self.k + 1).clamp(max=self.episode_len)  # (E,) returns seen
            filled = torch.arange(self.episode_len, device=ret.device)[None, :] < n[:, None]
            ordered = torch.where(filled, self.history, torch.inf).sort(dim=1).values
            m = torch.ceil(c.cvar_alpha * n.double() - TOL).long().clamp(min=1)  # (E,) tail size
            tail = torch.arange(self.episode_len, device=ret.device)[None, :] < m[:, None]
            es = -(torch.where(tail, ordered, 0.0).sum(1) / m)
            terms["cvar"] = es.clamp(min=0.0)
            reward = reward - c.cvar_weight * terms["cvar"]
        if c.entropic_weight:
            lam = c.risk_aversion
            terms["entropic"] = -torch.expm1(-lam * ret) / lam
            reward = reward + c.entropic_weight * terms["entropic"]
        if c.turnover_weight:
            terms["turnover"] = turnover
            reward = reward - c.turnover_weight * turnover
        self.k = self.k + 1
        return reward, terms


def shape_reference(config: RewardConfig, returns: list[float], turnover: list[float]) -> list:
    """Rewards of one episode's steps by a plain loop over the formulas (tests only)."""
    c = config
    a = b = mdd = 0.0
    equity = peak = 1.0
    out = []
    for k, (r, u) in enumerate(zip(returns, turnover, strict=True)):
        total = c.pnl_weight * r
        var = b - a * a
        dsr = (b * (r - a) - 0.5 * a * (r * r - b)) / var**1.5 if var > VAR_EPS else 0.0
        a, b = a + c.sharpe_eta * (r - a), b + c.sharpe_eta * (r * r - b)
        total += c.sharpe_weight * dsr
        equity *= 1.0 + r
        peak = max(peak, equity)
        new_mdd = max(mdd, 1.0 - equity / peak)
        total -= c.drawdown_weight * (new_mdd - mdd)
        mdd = new_mdd
        seen = sorted(returns[: k + 1])
        m = max(1, math.ceil(c.cvar_alpha * (k + 1) - TOL))
        total -= c.cvar_weight * max(0.0, -sum(seen[:m]) / m)
        total += c.entropic_weight * (1.0 - math.exp(-c.risk_aversion * r)) / c.risk_aversion
        total -= c.turnover_weight * u
        out.append(total)
    return out
