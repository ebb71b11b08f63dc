"""The market context a backtest reads, and the baselines' books on it.

A baseline's book (`Book`) is its ``(n, S)`` weights on the backtested decision bars
``lo..hi`` and, for the learned baselines (``ridge``, ``lightgbm``), its forecasts on those bars
(for the IC metrics) and what was selected on validation (``alpha``, ``best_iteration``). Rule
baselines are in ``baselines``, learned ones in ``learned``; both are traded by the engine on the
model's simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from plusultra.evaluation.backtest import baselines as strategies
from plusultra.evaluation.backtest.learned import (
    LightGBMParams,
    lightgbm_predictions,
    refit_stop_span,
    select_ridge_alpha,
    walk_forward_predictions,
)
from plusultra.evaluation.backtest.positions import positions_from_signal
from plusultra.execution import carry_prices, execution_returns


@dataclass
class MarketContext:
    """Full-calendar (T, S) arrays the baselines and simulators may need.

    Attributes:
        close: adjusted close; open: adjusted open (None or NaN for close-only data; the fill
        price of ``next_open``); volume: split-adjusted shares (NaN: unknown); volatility:
        per-bar return std known at t; features: (T, S, F) normalised model inputs; targets:
        (T, S) scaled labels of the traded step; label_end: last bar whose label is known at
        the end of training; val_span: ``(lo, hi)`` decision bars of the validation segment,
        whose labels are all known by its end (ridge's penalty and LightGBM's early stopping
        are chosen there); refits: walk-forward blocks ``(fit_lo, fit_hi, lo, hi)``, when the
        model is refitted (the learned baselines are then refitted on the same samples before
        the same blocks); sectors: symbol -> sector (the assets table's ``sector``), for the
        guardrails' sector caps; factors: name -> (T,) market-wide return series known at each
        bar's close (the run's market-wide alternative-data columns), for the guardrails'
        factor caps; fits: fitted learned baselines, kept so that a run fits LightGBM once for
        both segments (shared by the copies `dataclasses.replace` makes).
    """

    close: np.ndarray
    open: np.ndarray | None = None
    volume: np.ndarray | None = None
    volatility: np.ndarray | None = None
    features: np.ndarray | None = None
    targets: np.ndarray | None = None
    label_end: int | None = None
    val_span: tuple[int, int] | None = None
    refits: list[tuple[int, int, int, int]] | None = None
    sectors: dict[str, str] | None = None
    factors: dict[str, np.ndarray] | None = None
    fits: dict = field(default_factory=dict, repr=False, compare=False)
    _carried: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def carried(self, name: str) -> np.ndarray:
        """`close` or `open` with a missing bar inside a symbol's life carrying the last price
        (NaN outside its life), computed once per array: the model and every baseline are
        simulated on the same fill prices. Assigning a new array recomputes it; the arrays are
        not to be changed in place."""
        raw = getattr(self, name)
        cached = self._carried.get(name)
        if cached is None or cached[0] is not raw:
            cached = self._carried[name] = (raw, carry_prices(raw))
        return cached[1]

    def earned(self, mode: str) -> np.ndarray:
        """(T, S) simple return a position decided at ``t`` earns under `mode`, from the
        carried fill prices."""
        opens = self.carried("open") if mode == "next_open" else None
        return execution_returns(mode, opens, self.carried("close"))

    def fitted(self, key: tuple, tradable: np.ndarray, fit: Callable[[], object]) -> object:
        """``fit()``, computed once per `key` and `tradable` mask (features and targets are
        not to be changed in place)."""
        hit = self.fits.get(key)
        if hit is None or not np.array_equal(hit[0], tradable):
            hit = self.fits[key] = (np.array(tradable, copy=True), fit())
        return hit[1]


@dataclass(frozen=True)
class BaselineSettings:
    """What the learned baselines are fitted with (the Backtest's settings).

    Attributes:
        ridge_alphas: ridge penalties tried; the best validation IC is kept when several.
        lightgbm: the LightGBM booster's settings.
        seed: seeds LightGBM's bagging and feature subsampling.
    """

    ridge_alphas: tuple[float, ...] = (1.0,)
    lightgbm: LightGBMParams = field(default_factory=LightGBMParams)
    seed: int = 0


@dataclass
class Book:
    """A baseline's positions on the backtested bars ``lo..hi``.

    Attributes:
        weights: ``(n, S)`` target weights decided at each bar's close.
        signal: ``(n, S)`` forecasts behind them (learned baselines; NaN = none), or None.
        extra: metrics of the fit (``alpha`` of ridge, ``best_iteration`` of LightGBM).
    """

    weights: np.ndarray
    signal: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _walk(c: MarketContext) -> bool:
    return bool(c.refits) and len(c.refits) > 1


def ridge_book(c: MarketContext, tr: np.ndarray, s: BaselineSettings) -> tuple[np.ndarray, dict]:
    """(T, S) ridge forecasts (penalty chosen on validation; refitted per walk-forward block,
    block 0 included, on the block's fit bars) and ``{"alpha": ...}``."""
    alpha, pred = select_ridge_alpha(
        c.features, c.targets, tr, c.label_end, list(s.ridge_alphas), c.val_span
    )
    if _walk(c):

        def refit(flo: int, fhi: int) -> np.ndarray:
            return strategies.ridge_predictions(c.features, c.targets, tr, fhi, alpha, flo)

        pred = walk_forward_predictions(refit(*c.refits[0][:2]), c.refits, refit)
    return pred, {"alpha": alpha}


def lightgbm_book(c: MarketContext, tr: np.ndarray, s: BaselineSettings) -> tuple[np.ndarray, dict]:
    """(T, S) LightGBM forecasts (fitted on train, stopped on validation; blocks ``k >= 1`` of
    a walk-forward evaluation refitted and stopped on their fit window's last bars) and
    ``{"best_iteration": ...}`` (the mean over the blocks with refits)."""
    p = s.lightgbm

    def fit(lo: int, hi: int, stop: tuple[int, int]) -> tuple[np.ndarray, int]:
        key = ("lightgbm", lo, hi, stop, p, s.seed)
        return c.fitted(
            key,
            tr,
            lambda: lightgbm_predictions(c.features, c.targets, tr, hi, stop, p, s.seed, lo),
        )

    first, best = fit(0, c.label_end, c.val_span)
    if not _walk(c):
        return first, {"best_iteration": float(best)}
    kept = [best]

    def refit(flo: int, fhi: int) -> np.ndarray:
        stop = refit_stop_span(flo, fhi, p.refit_valid_share)
        pred, n = fit(flo, stop[0] - 1, stop)
        kept.append(n)
        return pred

    pred = walk_forward_predictions(first, c.refits, refit)
    return pred, {"best_iteration": float(np.mean(kept))}


LEARNED: dict[str, Callable[[MarketContext, np.ndarray, BaselineSettings], tuple]] = {
    "ridge": ridge_book,
    "lightgbm": lightgbm_book,
}
"""Learned baselines: name -> ``fn(context, tradable, settings) -> ((T, S) forecasts, extra)``.
They need the context's features and targets."""

# Rule baselines' weights on the full calendar (momentum needs history before the segment);
# buy-and-hold starts at the segment's first bar, so it is computed on the segment alone.
RULES = {
    "buyhold": lambda c, tr, r, lo, hi: strategies.buy_and_hold_weights(
        r[lo : hi + 1], tr[lo : hi + 1]
    ),
    "equal_weight": lambda c, tr, r, lo, hi: strategies.equal_weight_weights(tr)[lo : hi + 1],
    "momentum": lambda c, tr, r, lo, hi: strategies.momentum_weights(c.close, tr)[lo : hi + 1],
    "mean_reversion": lambda c, tr, r, lo, hi: strategies.mean_reversion_weights(c.close, tr)[
        lo : hi + 1
    ],
}

BASELINES = (*RULES, *LEARNED)
"""Every baseline name (``evaluation.baselines``)."""
DEFAULT_BASELINES = ("buyhold", "equal_weight", "momentum", "mean_reversion", "ridge")
"""The baselines of a Backtest built without a list (LightGBM is an optional extra)."""


def baseline_book(
    name: str,
    c: MarketContext,
    tradable: np.ndarray,
    earned: np.ndarray,
    lo: int,
    hi: int,
    settings: BaselineSettings,
) -> Book:
    """Baseline `name`'s book on decision bars ``lo..hi``.

    Args:
        name: a key of ``BASELINES``.
        c: the market context (features, targets, segments, refits for learned baselines).
        tradable: ``(T, S)`` bool, where a position may be decided (the engine's decision mask).
        earned: ``(T, S)`` return a position decided at ``t`` earns (buy-and-hold drifts on it).
        lo, hi: the backtested decision bars.
        settings: the learned baselines' settings.

    Returns:
        The book; a learned baseline's forecasts become weights by cross-sectional rank
        (gross 1, dollar neutral), as ``baselines.ridge_weights`` does.
    """
    if name in RULES:
        return Book(RULES[name](c, tradable, earned, lo, hi))
    pred, extra = LEARNED[name](c, tradable, settings)
    pred = pred[lo : hi + 1]
    return Book(positions_from_signal(pred, "rank"), pred, extra)
