"""Losses: score a head's output ``out`` against scaled targets ``y`` (B, H).

Every loss is an ``nn.Module`` with a class attribute ``accepts``, the head kinds (see
``plusultra.models.heads``) whose output it can score, and ``forward(out, y) -> scalar``.
``check_compatible(head, loss)`` must be called once when the model is wired: it raises
ConfigError for a pair that does not fit and binds the loss to the head's kind (losses that
accept several kinds, such as the risk losses, read ``out`` differently per kind).
Plain torch losses such as ``torch.nn.MSELoss`` have no ``accepts`` and are taken to accept
"forecast" only.

Risk losses (sharpe, sortino, drawdown, cvar, risk_aware) score a *portfolio*: they have
``portfolio = True`` and ``forward(out, y, date, symbol, ret)``. Their batches come from the
block sampler (``plusultra.data.datasets.sampler``): every symbol's sample for a block of
consecutive decision dates, each with its decision bar, symbol index and execution-aligned
return. Each sample's position ``p`` is

* head kind "position": the head's position (discrete heads: P(buy) - P(sell));
* head kind "forecast": ``tanh(out[:, step] / temperature)``, ``step`` 0-based (0 = next step);

the positions form the (dates, symbols) book, capped like the backtest (gross, net), and the
loss scores the block's portfolio return series net of turnover costs, in time order
(``plusultra.models.portfolio``). So Sharpe, Sortino and CVaR are time-series statistics of one
portfolio, and the drawdown follows the calendar.

Shapes: B batch, H horizon, Q quantile levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError, DataError
from plusultra.models.heads import HEAD_KINDS, check_quantiles, classify, policy_position
from plusultra.models.portfolio import (
    Portfolio,
    cvar,
    max_drawdown,
    neg_sharpe,
    neg_sortino,
    portfolio_series,
)

DEFAULT_ACCEPTS = frozenset({"forecast"})  # what a loss without `accepts` (torch.nn.MSELoss) takes
RISK_KINDS = frozenset({"forecast", "position"})


# ---------------------------------------------------------------- kernels


def pinball(q: torch.Tensor, y: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss; q (B, H, Q) quantiles at levels taus (Q,), y (B, H)."""
    u = y.unsqueeze(-1) - q  # (B, H, Q) residuals
    return torch.maximum(taus * u, (taus - 1) * u).mean()


# ---------------------------------------------------------------- losses


class HeadLoss(nn.Module):
    """Base of the losses here: ``accepts`` and the head kind they are bound to."""

    accepts: frozenset[str] = DEFAULT_ACCEPTS

    def __init__(self) -> None:
        super().__init__()
        self.head_kind: str | None = next(iter(self.accepts)) if len(self.accepts) == 1 else None

    def bind(self, kind: str) -> HeadLoss:
        """Score outputs of heads of ``kind`` (``check_compatible`` calls this); returns self."""
        if kind not in self.accepts:
            raise ConfigError(f"head kind {kind!r} not accepted; accepts {sorted(self.accepts)}")
        self.head_kind = kind
        return self

    def _kind(self) -> str:
        if self.head_kind is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to a head kind; "
                "call check_compatible(head, loss) when wiring the model"
            )
        return self.head_kind


class Huber(HeadLoss):
    """Huber loss of (B, H) forecasts: squared below ``delta``, linear above (target units).

    Args:
        delta: Residual size (in target RMS units) where the loss turns linear; > 0.
    """

    accepts = frozenset({"forecast"})

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        if not delta > 0:
            raise ConfigError(f"delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(out, y, delta=self.delta)  # mean over (B, H)


class _QuantileLevels(HeadLoss):
    """Holds validated quantile levels as ``self.quantiles``."""

    def __init__(self, quantiles: Sequence[float]) -> None:
        super().__init__()
        self.quantiles = check_quantiles(quantiles)

    def _pinball(self, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if q.shape[-1] != len(self.quantiles):
            raise ConfigError(
                f"loss quantiles={self.quantiles} but the head gives {q.shape[-1]} quantiles"
            )
        return pinball(q, y, torch.tensor(self.quantiles, dtype=q.dtype, device=q.device))


class Pinball(_QuantileLevels):
    """Mean pinball loss over H and Q of a QuantileHead's (B, H, Q) output.

    Args:
        quantiles: The head's quantile levels (the YAML reads them from ``head.quantiles``).
    """

    accepts = frozenset({"quantiles"})

    def __init__(self, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        super().__init__(quantiles)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._pinball(out, y)


class CalibratedLoss(_QuantileLevels):
    """Dirichlet-categorical NLL of the (down, flat, up) class plus pinball on the quantiles.

    The NLL is that of the observed class c under the Dirichlet-multinomial predictive,
    ``-log(alpha_c / alpha_0)`` with ``alpha_0 = sum(alpha)``, averaged over (B, H).

    Args:
        quantiles: The head's quantile levels (the YAML reads them from ``head.quantiles``).
        flat_band: Half-width of the flat class in target units; must equal the head's.
        nll_weight: Weight of the class NLL (>= 0).
        pinball_weight: Weight of the pinball loss (>= 0).
    """

    accepts = frozenset({"calibrated"})

    def __init__(
        self,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        flat_band: float = 0.1,
        nll_weight: float = 1.0,
        pinball_weight: float = 1.0,
    ) -> None:
        super().__init__(quantiles)
        if not flat_band > 0:
            raise ConfigError(f"flat_band must be > 0 (target units), got {flat_band!r}")
        _check_weights(nll_weight=nll_weight, pinball_weight=pinball_weight)
        self.flat_band = float(flat_band)
        self.nll_weight, self.pinball_weight = float(nll_weight), float(pinball_weight)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha = out[..., :3]  # (B, H, 3)
        c = classify(y, self.flat_band).unsqueeze(-1)  # (B, H, 1)
        nll = alpha.sum(dim=-1).log() - alpha.gather(-1, c).squeeze(-1).log()  # (B, H)
        quantile_loss = self._pinball(out[..., 3:], y)
        return self.nll_weight * nll.mean() + self.pinball_weight * quantile_loss


class _PortfolioLoss(HeadLoss):
    """Shared settings of the risk losses: the block's book, its caps, costs and positions.

    ``forward(out, y, date, symbol, ret)`` builds the batch's ``Portfolio`` (module docstring)
    and scores its return series ``R`` (D,), in time order, with the subclass's
    ``risk(R, out, y) -> scalar``.

    Args:
        block: Consecutive decision dates per batch (>= 2). The data module reads it
            (``data.block: ${oc.select:loss.block,null}``) to build portfolio batches.
        cost_bps: Cost per unit of turnover in basis points (1 bp = 1e-4), subtracted from
            ``R`` inside the objective; >= 0.
        gross: Gross cap ``sum_s |w|`` per date, as in the backtest (``evaluation.gross``).
        net: Net cap ``|sum_s w|`` per date; None: none beyond the gross cap.
        step: Forecast step (0-based) whose forecast a forecast head trades.
        temperature: p = tanh(forecast / temperature) for a forecast head.
    """

    accepts = RISK_KINDS
    portfolio = True  # the module passes date, symbol and ret: batches from the block sampler

    def __init__(
        self,
        block: int = 32,
        cost_bps: float = 0.0,
        gross: float = 1.0,
        net: float | None = None,
        step: int = 0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ConfigError(f"block must be an integer >= 2 (dates per batch), got {block!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step must be an integer >= 0 (0 = next step), got {step!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        if not cost_bps >= 0:
            raise ConfigError(f"cost_bps must be >= 0, got {cost_bps!r}")
        for name, cap in (("gross", gross), ("net", net)):
            if cap is not None and not (math.isfinite(cap) and cap > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {cap!r}")
        self.block, self.step, self.temperature = block, step, float(temperature)
        self.cost = float(cost_bps) / 1e4  # fraction of equity per unit of turnover
        self.gross, self.net = float(gross), None if net is None else float(net)

    def bind(self, kind: str) -> HeadLoss:
        if kind == "position" and self.step != 0:
            raise ConfigError(
                f"step={self.step} applies to forecast heads; a position head trades the next "
                "step, so step must be 0"
            )
        return super().bind(kind)

    def positions(self, out: torch.Tensor) -> torch.Tensor:
        """Per-sample position p (B,) before the caps: the policy's, or tanh(forecast / T)."""
        if self._kind() == "position":
            return policy_position(out)  # (B,)
        if self.step >= out.shape[1]:
            raise ConfigError(
                f"step={self.step} is outside the forecast's {out.shape[1]} steps (0-based)"
            )
        return torch.tanh(out[:, self.step] / self.temperature)  # (B,)

    def book(
        self, out: torch.Tensor, date: torch.Tensor, symbol: torch.Tensor, ret: torch.Tensor
    ) -> Portfolio:
        """The batch's capped book and its return series net of turnover costs."""
        book = portfolio_series(
            self.positions(out), ret, date, symbol, self.gross, self.net, self.cost
        )
        if len(book.dates) < 2:
            raise DataError(
                f"a portfolio batch spans {len(book.dates)} date(s); a return series needs >= 2 "
                "(is the segment shorter than two decision dates?)"
            )
        return book

    def forward(
        self,
        out: torch.Tensor,
        y: torch.Tensor,
        date: torch.Tensor | None = None,
        symbol: torch.Tensor | None = None,
        ret: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if date is None or symbol is None or ret is None:
            raise ConfigError(
                f"{type(self).__name__} scores a portfolio: it needs batches of consecutive dates "
                "with each sample's date, symbol and execution return (data.block, set from "
                "loss.block)"
            )
        return self.risk(self.book(out, date, symbol, ret).returns, out, y)


class NegSharpe(_PortfolioLoss):
    """Negative Sharpe ratio of the block's portfolio returns: -mean(R) / sqrt(var(R) + eps).

    Args:
        eps: Added to the variance so that constant returns give a finite loss and gradient.
        **book: ``block``, ``cost_bps``, ``gross``, ``net``, ``step``, ``temperature`` (see
            ``_PortfolioLoss``).
    """

    def __init__(self, eps: float = 1e-6, **book) -> None:
        super().__init__(**book)
        self.eps = _check_eps(eps)

    def risk(self, r: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return neg_sharpe(r, self.eps)


class NegSortino(_PortfolioLoss):
    """Negative Sortino ratio: -mean(R) / sqrt(mean(min(R, 0)^2) + eps).

    Args:
        eps: Added to the downside second moment (a block without losses divides by
            sqrt(eps), so the loss can be large but stays finite).
        **book: see ``_PortfolioLoss``.
    """

    def __init__(self, eps: float = 1e-6, **book) -> None:
        super().__init__(**book)
        self.eps = _check_eps(eps)

    def risk(self, r: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return neg_sortino(r, self.eps)


class DrawdownPenalty(_PortfolioLoss):
    """Maximum drawdown of the block's cumulative portfolio returns, in time order.

    Args:
        smooth: 0 for the exact max (differentiable almost everywhere); > 0 for a logsumexp
            soft max at that scale (return units).
        **book: see ``_PortfolioLoss``.
    """

    def __init__(self, smooth: float = 0.0, **book) -> None:
        super().__init__(**book)
        if smooth < 0:
            raise ConfigError(f"smooth must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)

    def risk(self, r: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return max_drawdown(r, self.smooth)


class CVaR(_PortfolioLoss):
    """Conditional value at risk of the block's portfolio losses -R at level ``alpha``.

    Args:
        alpha: Confidence level in (0, 1); CVaR is the mean of the worst (1 - alpha) dates.
        **book: see ``_PortfolioLoss``.
    """

    def __init__(self, alpha: float = 0.9, **book) -> None:
        super().__init__(**book)
        self.alpha = _check_alpha("alpha", alpha)

    def risk(self, r: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cvar(r, self.alpha)


class RiskAware(_PortfolioLoss):
    """Weighted sum of MSE (forecast heads only) and the risk terms above, on one block's R.

    loss = mse_weight * MSE(out, y) + sharpe_weight * NegSharpe + sortino_weight * NegSortino
           + drawdown_weight * DrawdownPenalty + cvar_weight * CVaR.

    Args:
        mse_weight: Weight of the MSE over all (B, H) forecasts; must be 0 for position heads.
        sharpe_weight: Weight of the negative Sharpe ratio.
        drawdown_weight: Weight of the maximum drawdown.
        cvar_weight: Weight of the CVaR.
        sortino_weight: Weight of the negative Sortino ratio.
        cvar_alpha: CVaR level in (0, 1).
        eps: Stabiliser of the Sharpe and Sortino denominators.
        smooth: Drawdown soft-max scale; 0 for the exact max.
        **book: ``block``, ``cost_bps``, ``gross``, ``net``, ``step``, ``temperature`` (see
            ``_PortfolioLoss``).
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        sharpe_weight: float = 0.1,
        drawdown_weight: float = 0.0,
        cvar_weight: float = 0.0,
        sortino_weight: float = 0.0,
        cvar_alpha: float = 0.9,
        eps: float = 1e-6,
        smooth: float = 0.0,
        **book,
    ) -> None:
        super().__init__(**book)
        self.weights = _check_weights(
            mse_weight=mse_weight,
            sharpe_weight=sharpe_weight,
            drawdown_weight=drawdown_weight,
            cvar_weight=cvar_weight,
            sortino_weight=sortino_weight,
        )
        if not any(self.weights.values()):
            raise ConfigError("risk_aware needs at least one weight > 0")
        self.cvar_alpha = _check_alpha("cvar_alpha", cvar_alpha)
        self.eps = _check_eps(eps)
        if smooth < 0:
            raise ConfigError(f"smooth must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)

    def bind(self, kind: str) -> HeadLoss:
        if kind == "position" and self.weights["mse_weight"] != 0:
            raise ConfigError(
                f"mse_weight={self.weights['mse_weight']} must be 0 with a position head "
                "(a position is not a forecast to regress)"
            )
        return super().bind(kind)

    def risk(self, r: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.weights
        total = r.new_zeros(())
        if w["mse_weight"]:
            total = total + w["mse_weight"] * F.mse_loss(out, y)
        if w["sharpe_weight"]:
            total = total + w["sharpe_weight"] * neg_sharpe(r, self.eps)
        if w["sortino_weight"]:
            total = total + w["sortino_weight"] * neg_sortino(r, self.eps)
        if w["drawdown_weight"]:
            total = total + w["drawdown_weight"] * max_drawdown(r, self.smooth)
        if w["cvar_weight"]:
            total = total + w["cvar_weight"] * cvar(r, self.cvar_alpha)
        return total


def _check_weights(**weights: float) -> dict[str, float]:
    for name, w in weights.items():
        if not w >= 0:
            raise ConfigError(f"{name} must be >= 0, got {w!r}")
    return {name: float(w) for name, w in weights.items()}


def _check_eps(eps: float) -> float:
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps!r}")
    return float(eps)


def _check_alpha(name: str, alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {alpha!r}")
    return float(alpha)


LOSSES: dict[str, type[nn.Module]] = {
    "mse": nn.MSELoss,
    "huber": Huber,
    "pinball": Pinball,
    "calibrated": CalibratedLoss,
    "sharpe": NegSharpe,
    "sortino": NegSortino,
    "drawdown": DrawdownPenalty,
    "cvar": CVaR,
    "risk_aware": RiskAware,
}


def accepted_kinds(loss: nn.Module) -> frozenset[str]:
    """The head kinds a loss accepts (``DEFAULT_ACCEPTS`` for losses without ``accepts``)."""
    return getattr(loss, "accepts", DEFAULT_ACCEPTS)


def check_compatible(head: nn.Module, loss: nn.Module) -> None:
    """Raise ConfigError unless ``loss`` can score ``head``'s output; then bind the loss.

    Checks the head kind against ``loss.accepts``, that quantile levels and ``flat_band`` agree
    where both have them, and the loss's own rules for the kind (e.g. RiskAware's mse_weight
    must be 0 for a position head).
    """
    head_name = type(head).__name__
    kind = getattr(head, "kind", None)
    if kind not in HEAD_KINDS:
        raise ConfigError(f"head={head_name} has no kind; heads declare one of {HEAD_KINDS}")
    names = {cls: name for name, cls in LOSSES.items()}
    loss_name = names.get(type(loss), type(loss).__name__)
    accepts = accepted_kinds(loss)
    if kind not in accepts:
        raise ConfigError(
            f"loss={loss_name} does not accept head kind {kind!r} (head={head_name}); "
            f"it accepts {', '.join(sorted(accepts))}"
        )
    for key in ("quantiles", "flat_band"):
        if hasattr(head, key) and hasattr(loss, key):
            ours, theirs = getattr(loss, key), getattr(head, key)
            a, b = torch.atleast_1d(torch.tensor(ours)), torch.atleast_1d(torch.tensor(theirs))
            if a.shape != b.shape or not torch.equal(a, b):
                raise ConfigError(
                    f"loss={loss_name} has {key}={ours} but head={head_name} has {key}={theirs}; "
                    "they must be equal"
                )
    if isinstance(loss, HeadLoss):
        try:
            loss.bind(kind)
        except ConfigError as err:
            raise ConfigError(f"loss={loss_name} with head={head_name}: {err}") from None
