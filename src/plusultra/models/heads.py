"""Heads: map a backbone's tokens ``(B, T', D)`` to the model's outputs.

The contract between heads, losses (``plusultra.models.losses``) and the code that trains and
predicts:

* Every head is an ``nn.Module`` whose ``forward(h)`` takes ``(B, T', D)`` tokens and returns
  ONE tensor ``out`` (so it compiles and travels through Lightning unchanged).
* Every head has a class attribute ``kind``, one of ``HEAD_KINDS``, that says what ``out`` is:

  ==============  ===============  =================================================  =========
  head            kind             ``out``                                            signal
  ==============  ===============  =================================================  =========
  RegressionHead  "forecast"       (B, H) forecast of the scaled targets              (B, H)
  QuantileHead    "quantiles"      (B, H, Q) non-crossing quantiles of the targets    (B, H)
  CalibratedHead  "calibrated"     (B, H, 3 + Q): Dirichlet alphas over (down, flat,  (B, H)
                                   up), then non-crossing quantiles
  PolicyHead      "position"       (B, 1) position in [-1, 1] ("continuous") or       (B, 1)
                                   (B, 3) logits over (sell, hold, buy) ("discrete")
  ==============  ===============  =================================================  =========

* Every head has ``signal(out) -> (B, H')``: the point forecast in target units (targets are
  forward log returns scaled by their train RMS) that drives positions and evaluation.
  Regression: ``out`` itself. Quantile and calibrated: the median (0.5) quantile, so the
  quantile levels must contain 0.5. Policy: the position for the next step, ``(B, 1)``
  (discrete: P(buy) - P(sell)); column 0 of a signal is always the next step.
* Every loss has a class attribute ``accepts``, the head kinds whose ``out`` it can score, and
  ``forward(out, y)`` with targets ``y`` of shape (B, H). ``losses.check_compatible(head,
  loss)`` raises ConfigError for a pair that does not fit and tells the loss the head's kind.
  It must be called once when the model is wired (risk losses refuse to run unbound).

Which losses (``losses.LOSSES``) accept which kinds:

  =================================================  =========================================
  kind                                               losses
  =================================================  =========================================
  "forecast"                                         mse, huber, sharpe, sortino, drawdown,
                                                     cvar, risk_aware
  "quantiles"                                        pinball
  "calibrated"                                       calibrated
  "position"                                         sharpe, sortino, drawdown, cvar,
                                                     risk_aware (with mse_weight=0)
  =================================================  =========================================

Wiring: build head and loss, ``check_compatible(head, loss)``; train on ``loss(head(h), y)``;
predict with ``head.signal(head(h))``, whose column k is step k + 1. A policy's signal is a
position in [-1, 1] for step 1 only, not a return forecast.

Shapes: B batch, T' tokens, D width, H horizon, Q quantile levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import check_int, check_rate

HEAD_KINDS = ("forecast", "quantiles", "calibrated", "position")
CLASSES = ("down", "flat", "up")  # CalibratedHead's classes; index = sign of the move + 1
ACTIONS = ("sell", "hold", "buy")  # discrete PolicyHead's logits; index = position + 1
POLICY_MODES = ("continuous", "discrete")
ALPHA_MIN = 1e-3  # floor added to every Dirichlet concentration so that alpha > 0

POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "last": lambda h: h[:, -1],  # the last token, which covers the decision time
    "mean": lambda h: h.mean(dim=1),  # the mean over all tokens of the window
}


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ConfigError(f"unknown pool {pool!r}; valid names: {sorted(POOLS)}")


def _mlp(d_model: int, out: int, hidden: int | None, dropout: float) -> nn.Module:
    """One Linear, or Linear -> GELU -> Dropout -> Linear when ``hidden`` is an int."""
    check_int("d_model", d_model)
    check_rate("dropout", dropout)
    if hidden is None:
        return nn.Linear(d_model, out)
    check_int("hidden", hidden)
    return nn.Sequential(
        nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out)
    )


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate quantile levels: strictly increasing, inside (0, 1), containing 0.5.

    Returns:
        The levels as a tuple of floats.
    """
    try:
        levels = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise ConfigError(f"quantiles must be a list of numbers, got {quantiles!r}") from None
    if not levels or any(not 0.0 < q < 1.0 for q in levels):
        raise ConfigError(f"quantiles must be non-empty and strictly inside (0, 1), got {levels}")
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise ConfigError(f"quantiles must be sorted and distinct, got {levels}")
    if 0.5 not in levels:
        raise ConfigError(f"quantiles must contain 0.5 (the median is the signal), got {levels}")
    return levels


def non_crossing(raw: torch.Tensor) -> torch.Tensor:
    """Sorted quantiles from unconstrained values along the last axis.

    The first value is the lowest quantile; each next one adds a softplus increment (>= 0), so
    ``q[..., k + 1] >= q[..., k]`` for any weights (floating-point addition of a non-negative
    number never decreases a value).
    """
    first = raw[..., :1]  # (..., 1)
    steps = F.softplus(raw[..., 1:])  # (..., Q - 1) >= 0
    return torch.cat([first, first + steps.cumsum(dim=-1)], dim=-1)  # (..., Q)


def classify(y: torch.Tensor, flat_band: float) -> torch.Tensor:
    """Class index of each scaled target: 0 down (y <= -band), 1 flat (|y| < band), 2 up."""
    return (y >= flat_band).long() - (y <= -flat_band).long() + 1


def policy_position(out: torch.Tensor) -> torch.Tensor:
    """Position (B,) from a PolicyHead's output: (B, 1) positions or (B, 3) action logits."""
    if out.shape[-1] == 1:
        return out[:, 0]  # (B,)
    p = torch.softmax(out, dim=-1)  # (B, 3) over (sell, hold, buy)
    return p[:, 2] - p[:, 0]  # expected position: P(buy) - P(sell)


class RegressionHead(nn.Module):
    """Multi-step forecast: pool the tokens to one vector, then project to ``horizon`` values.

    Args:
        d_model: Token width D of the backbone.
        horizon: Number of future steps forecast (>= 1).
        hidden: Hidden width of a Linear -> GELU -> Dropout -> Linear MLP; None for one Linear.
        dropout: Dropout rate in the hidden layer (unused when ``hidden`` is None).
        pool: How tokens are reduced, a key of ``POOLS``: "last" or "mean".
    """

    kind = "forecast"

    def __init__(
        self,
        d_model: int,
        horizon: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        check_int("horizon", horizon)
        _check_pool(pool)
        self.pool = pool
        self.net = _mlp(d_model, horizon, hidden, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h is (B, T', D) backbone tokens; returns (B, horizon) forecasts."""
        return self.net(POOLS[self.pool](h))  # (B, D) -> (B, horizon)

    def signal(self, out: torch.Tensor) -> torch.Tensor:
        """The forecasts themselves, (B, H)."""
        return out


class QuantileHead(nn.Module):
    """Quantiles of each forecast step; non-crossing by construction (see ``non_crossing``).

    Args:
        d_model: Token width D of the backbone.
        horizon: Number of future steps forecast (>= 1).
        quantiles: Quantile levels, sorted, strictly inside (0, 1), containing 0.5.
        hidden: Hidden width of an MLP; None for one Linear.
        dropout: Dropout rate in the hidden layer.
        pool: How tokens are reduced: "last" or "mean".
    """

    kind = "quantiles"

    def __init__(
        self,
        d_model: int,
        horizon: int,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        hidden: int | None = None,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        check_int("horizon", horizon)
        _check_pool(pool)
        self.quantiles = check_quantiles(quantiles)
        self.median = self.quantiles.index(0.5)
        self.horizon, self.pool = horizon, pool
        self.net = _mlp(d_model, horizon * len(self.quantiles), hidden, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h is (B, T', D); returns (B, H, Q) quantiles, increasing along Q."""
        raw = self.net(POOLS[self.pool](h))  # (B, H * Q)
        return non_crossing(raw.view(-1, self.horizon, len(self.quantiles)))  # (B, H, Q)

    def signal(self, out: torch.Tensor) -> torch.Tensor:
        """The median quantile, (B, H)."""
        return out[..., self.median]


class CalibratedHead(nn.Module):
    """Dirichlet / quantile hybrid: class evidence over (down, flat, up) plus return quantiles.

    A step's class is "flat" when its scaled target is inside ``(-flat_band, flat_band)``
    (target units: multiples of the targets' train RMS), "down" or "up" otherwise. The head
    outputs Dirichlet concentrations ``alpha = softplus(.) + 1e-3 > 0``; their mean
    ``alpha / sum(alpha)`` is the predicted class distribution and their sum its confidence.

    Args:
        d_model: Token width D of the backbone.
        horizon: Number of future steps forecast (>= 1).
        quantiles: Quantile levels, sorted, strictly inside (0, 1), containing 0.5.
        flat_band: Half-width of the flat class in target units (> 0); the loss must use the
            same value (``check_compatible`` checks).
        hidden: Hidden width of an MLP; None for one Linear.
        dropout: Dropout rate in the hidden layer.
        pool: How tokens are reduced: "last" or "mean".
    """

    kind = "calibrated"

    def __init__(
        self,
        d_model: int,
        horizon: int,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        flat_band: float = 0.1,
        hidden: int | None = None,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        check_int("horizon", horizon)
        _check_pool(pool)
        if not flat_band > 0:
            raise ConfigError(f"flat_band must be > 0 (target units), got {flat_band!r}")
        self.quantiles = check_quantiles(quantiles)
        self.median = self.quantiles.index(0.5)
        self.horizon, self.flat_band, self.pool = horizon, float(flat_band), pool
        self.width = len(CLASSES) + len(self.quantiles)
        self.net = _mlp(d_model, horizon * self.width, hidden, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h is (B, T', D); returns (B, H, 3 + Q): alphas (> 0), then increasing quantiles."""
        raw = self.net(POOLS[self.pool](h)).view(-1, self.horizon, self.width)  # (B, H, 3 + Q)
        alpha = F.softplus(raw[..., :3]) + ALPHA_MIN  # (B, H, 3)
        return torch.cat([alpha, non_crossing(raw[..., 3:])], dim=-1)  # (B, H, 3 + Q)

    @staticmethod
    def probabilities(out: torch.Tensor) -> torch.Tensor:
        """Predicted class probabilities over (down, flat, up): alpha / sum(alpha), (B, H, 3)."""
        alpha = out[..., :3]
        return alpha / alpha.sum(dim=-1, keepdim=True)

    def signal(self, out: torch.Tensor) -> torch.Tensor:
        """The median quantile, (B, H)."""
        return out[..., 3 + self.median]


class PolicyHead(nn.Module):
    """A position for the next step, trained directly by a risk loss.

    Args:
        d_model: Token width D of the backbone.
        mode: "continuous": ``tanh`` position in [-1, 1], out (B, 1); "discrete": logits over
            (sell, hold, buy), out (B, 3).
        hidden: Hidden width of an MLP; None for one Linear.
        dropout: Dropout rate in the hidden layer.
        pool: How tokens are reduced: "last" or "mean".
    """

    kind = "position"

    def __init__(
        self,
        d_model: int,
        mode: str = "continuous",
        hidden: int | None = None,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        if mode not in POLICY_MODES:
            raise ConfigError(f"unknown mode {mode!r}; valid names: {list(POLICY_MODES)}")
        _check_pool(pool)
        self.mode, self.pool = mode, pool
        self.net = _mlp(d_model, 1 if mode == "continuous" else len(ACTIONS), hidden, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h is (B, T', D); returns (B, 1) positions in [-1, 1] or (B, 3) action logits."""
        z = self.net(POOLS[self.pool](h))  # (B, 1) or (B, 3)
        return torch.tanh(z) if self.mode == "continuous" else z

    def signal(self, out: torch.Tensor) -> torch.Tensor:
        """The position in [-1, 1], (B, 1); discrete: P(buy) - P(sell)."""
        return policy_position(out)[:, None]


def expected_calibration_error(
    probs: torch.Tensor, y: torch.Tensor, flat_band: float, n_bins: int = 10
) -> float:
    """Top-label expected calibration error of (down, flat, up) probabilities.

    Each prediction's confidence is its largest probability; predictions are grouped into
    ``n_bins`` equal-width confidence bins on [0, 1], and the ECE is the count-weighted mean
    over bins of |accuracy - mean confidence|.

    Args:
        probs: (..., 3) class probabilities, e.g. ``CalibratedHead.probabilities(out)``.
        y: (...) scaled targets.
        flat_band: Half-width of the flat class in target units.
        n_bins: Number of confidence bins.

    Returns:
        ECE in [0, 1].
    """
    check_int("n_bins", n_bins)
    conf, pred = probs.detach().reshape(-1, 3).max(dim=-1)  # (N,), (N,)
    hit = (pred == classify(y.detach().reshape(-1), flat_band)).to(conf.dtype)  # (N,)
    bins = (conf * n_bins).long().clamp(0, n_bins - 1)  # (N,)
    conf_sum = conf.new_zeros(n_bins).index_add_(0, bins, conf)  # (n_bins,)
    hit_sum = conf.new_zeros(n_bins).index_add_(0, bins, hit)  # (n_bins,)
    return float((hit_sum - conf_sum).abs().sum() / max(len(conf), 1))
