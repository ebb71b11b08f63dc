"""Learned prediction baselines: ridge with its penalty chosen on validation, and LightGBM.

Both regress the model's label (``targets``, the scaled forward return of the traded step) on
the model's normalised features known at close ``t`` (``features``), pooled over symbols, and
predict every ``(t, s)`` with finite features from ``features[t, s]`` alone. Samples are the
``(t, s)`` that are tradable with finite features and target (those of
``baselines.ridge_weights``).

Fitting and selection read only labels known at fit time:

- ``train``: the samples with ``train_start <= t <= train_end`` (``train_end`` = the context's
  ``label_end``, the last train bar whose label is known at the end of training).
- ``val_span = (vlo, vhi)``: the validation segment's decision bars, whose labels are all known by
  the validation segment's end (the data embargo separates them from the test segment). Ridge
  picks its penalty there (``select_ridge_alpha``: the best mean cross-sectional Pearson IC of
  its predictions with the targets), LightGBM stops boosting there (``lightgbm_predictions``:
  the round with the lowest validation mean squared error, after ``early_stopping_rounds``
  rounds without improvement). No test-segment label is read.

Walk-forward refits (``walk_forward_predictions``) fit block ``k >= 1`` on the samples
``fit_lo <= t <= fit_hi`` of that block (labels known at its first bar); LightGBM then stops
early on the last ``refit_valid_share`` of those bars and boosts on the bars before them. Block
0 uses the fit above (train, validation), as the model's first block uses the curriculum's
model.

LightGBM is an optional dependency (``pip install 'plusultra[lightgbm]'``), imported only when
the baseline is fitted.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.baselines import ridge_predictions, sample_mask
from plusultra.evaluation.metrics.performance import information_coefficient

INSTALL_HINT = "pip install 'plusultra[lightgbm]'"
log = logging.getLogger("plusultra")


@dataclass(frozen=True)
class LightGBMParams:
    """Booster settings of the ``lightgbm`` baseline (``evaluation.lightgbm``).

    Defaults follow Qlib's Alpha158 LightGBM (mse loss, column and row subsampling ~0.88, strong
    L1/L2 leaf penalties, depth 8) with fewer leaves and rounds for a CPU.

    Attributes:
        num_boost_round: most boosting rounds; early stopping keeps ``best_iteration`` of them.
        early_stopping_rounds: rounds without a better validation MSE before boosting stops.
        learning_rate: shrinkage of each tree.
        num_leaves: most leaves per tree.
        max_depth: most tree depth (-1: no limit).
        min_data_in_leaf: fewest samples in a leaf.
        feature_fraction: share of features each tree sees, in (0, 1].
        bagging_fraction: share of samples each bagging draw keeps, in (0, 1].
        bagging_freq: rounds between bagging draws (0: no bagging).
        lambda_l1: L1 penalty on leaf values.
        lambda_l2: L2 penalty on leaf values.
        num_threads: threads (fixed, so that a re-run gives the same booster).
        refit_valid_share: walk-forward refits: share of the block's fit bars (the last ones)
            used for early stopping, in (0, 1).
    """

    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    learning_rate: float = 0.05
    num_leaves: int = 31
    max_depth: int = 8
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.8879
    bagging_fraction: float = 0.8789
    bagging_freq: int = 1
    lambda_l1: float = 205.6999
    lambda_l2: float = 580.9768
    num_threads: int = 1
    refit_valid_share: float = 0.2

    def __post_init__(self) -> None:
        ints = {
            "num_boost_round": 1,
            "early_stopping_rounds": 1,
            "num_leaves": 2,
            "min_data_in_leaf": 1,
            "bagging_freq": 0,
            "num_threads": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"evaluation.lightgbm.{name}={value!r} must be an int >= {low}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int):
            raise ConfigError(f"evaluation.lightgbm.max_depth={self.max_depth!r} must be an int")
        if self.max_depth == 0 or self.max_depth < -1:
            raise ConfigError(
                f"evaluation.lightgbm.max_depth={self.max_depth} must be >= 1, or -1 (no limit)"
            )
        checks = {  # name -> (test, the range it states)
            "learning_rate": (lambda v: v > 0, "> 0"),
            "feature_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "bagging_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "refit_valid_share": (lambda v: 0 < v < 1, "in (0, 1)"),
            "lambda_l1": (lambda v: v >= 0, ">= 0"),
            "lambda_l2": (lambda v: v >= 0, ">= 0"),
        }
        for name, (test, bound) in checks.items():
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and test(value)):
                raise ConfigError(f"evaluation.lightgbm.{name}={value!r} must be a number {bound}")

    def booster_params(self, seed: int) -> dict[str, object]:
        """LightGBM's parameter dict: mse regression, seeded and deterministic."""
        out = {k: v for k, v in asdict(self).items() if k != "refit_valid_share"}
        del out["num_boost_round"], out["early_stopping_rounds"]
        return out | {
            "objective": "regression",  # mean squared error
            "metric": "l2",  # early stopping on the validation MSE
            "seed": int(seed),  # derives the bagging and feature-fraction seeds
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }


def require_lightgbm() -> None:
    """ConfigError naming ``evaluation.baselines`` when lightgbm is not installed."""
    if importlib.util.find_spec("lightgbm") is None:
        raise ConfigError(
            "evaluation.baselines lists lightgbm but the lightgbm package is not installed; "
            f"{INSTALL_HINT} (or drop lightgbm from evaluation.baselines)"
        )


def _check_span(span: tuple[int, int] | None, n_t: int, what: str) -> tuple[int, int]:
    if span is None:
        raise DataError(f"{what} needs the validation segment's bars (MarketContext.val_span)")
    lo, hi = (int(v) for v in span)
    if not 0 <= lo <= hi < n_t:
        raise DataError(f"{what}: validation bars {lo}..{hi} are not inside 0..{n_t - 1}")
    return lo, hi


def fit_lightgbm(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_stop: np.ndarray,
    y_stop: np.ndarray,
    params: LightGBMParams,
    seed: int,
) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """Boost on ``(x_fit, y_fit)``, stopping on the MSE of ``(x_stop, y_stop)``.

    Args:
        x_fit, y_fit: ``(N, F)`` features and ``(N,)`` targets the trees are fitted on.
        x_stop, y_stop: ``(M, F)`` and ``(M,)`` early-stopping samples (never fitted on).
        params: booster settings.
        seed: seeds bagging and feature subsampling.

    Returns:
        ``(predict, best_iteration)``: ``predict`` maps ``(K, F)`` features to ``(K,)``
        predictions with the best round's trees; ``best_iteration`` counts the rounds kept.
    """
    require_lightgbm()
    import lightgbm as lgb

    if len(y_fit) == 0 or len(y_stop) == 0:
        raise DataError(
            f"lightgbm baseline: {len(y_fit)} fit and {len(y_stop)} early-stopping samples; "
            "both need at least one tradable (t, s) with finite features and target"
        )
    booster_params = params.booster_params(seed)
    train = lgb.Dataset(x_fit, y_fit, params=booster_params, free_raw_data=True)
    stop = lgb.Dataset(x_stop, y_stop, reference=train, params=booster_params)
    booster = lgb.train(
        booster_params,
        train,
        num_boost_round=params.num_boost_round,
        valid_sets=[stop],
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration) or booster.current_iteration()
    return (lambda x: booster.predict(x, num_iteration=best)), best


def lightgbm_predictions(
    features: np.ndarray,
    targets: np.ndarray,
    tradable: np.ndarray,
    train_end: int,
    stop_span: tuple[int, int],
    params: LightGBMParams,
    seed: int = 0,
    train_start: int = 0,
) -> tuple[np.ndarray, int]:
    """LightGBM fitted on ``train_start..train_end``, early-stopped on ``stop_span``.

    Args:
        features: ``(T, S, F)`` normalised features known at close ``t``; NaN = missing.
        targets: ``(T, S)`` forward returns from ``t`` (the model's label), NaN = unknown.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.
        train_end: last bar fitted on, its label known at fit time.
        stop_span: ``(lo, hi)`` bars of the early-stopping samples (the validation segment, or
            the last bars of a walk-forward block's fit window), disjoint from the fit bars.
        params: booster settings.
        seed: seeds bagging and feature subsampling.
        train_start: first bar fitted on.

    Returns:
        ``(pred, best_iteration)``: ``(T, S)`` predictions, NaN where a feature is NaN or the
        symbol is not tradable; the boosting rounds kept.
    """
    x, y, m, has_x = sample_mask(features, targets, tradable)
    n_t = y.shape[0]
    lo, hi = _check_span(stop_span, n_t, "lightgbm baseline")
    if not 0 <= train_start <= train_end < lo:
        raise DataError(
            f"lightgbm baseline: fit bars {train_start}..{train_end} must end before the "
            f"early-stopping bars {lo}..{hi}"
        )
    sample = has_x & np.isfinite(y) & m  # (T, S)
    rows = np.arange(n_t)[:, None]
    fit = sample & (rows >= train_start) & (rows <= train_end)
    stop = sample & (rows >= lo) & (rows <= hi)
    start = time.perf_counter()
    predict, best = fit_lightgbm(x[fit], y[fit], x[stop], y[stop], params, seed)
    pred = np.full(y.shape, np.nan)
    pred[has_x & m] = predict(x[has_x & m])
    log.info(
        "lightgbm baseline: fitted on %d samples (bars %d..%d), stopped on %d (bars %d..%d): "
        "%d of %d rounds kept, %.1f s",
        fit.sum(), train_start, train_end, stop.sum(), lo, hi, best, params.num_boost_round,
        time.perf_counter() - start,
    )  # fmt: skip
    return pred, best


def refit_stop_span(fit_lo: int, fit_hi: int, share: float) -> tuple[int, int]:
    """The early-stopping bars of a walk-forward refit: the last ``ceil(share * n)`` of the
    ``n`` fit bars ``fit_lo..fit_hi`` (at least one, leaving at least one to fit on)."""
    n = fit_hi - fit_lo + 1
    if n < 2:
        raise DataError(
            f"lightgbm baseline: walk-forward fit bars {fit_lo}..{fit_hi} leave nothing for "
            "early stopping; lengthen walk_forward.train_bars"
        )
    k = min(n - 1, max(1, math.ceil(round(share * n, 9))))
    return fit_hi - k + 1, fit_hi


def walk_forward_predictions(
    first: np.ndarray,
    refits: list[tuple[int, int, int, int]],
    fit_block: Callable[[int, int], np.ndarray],
) -> np.ndarray:
    """Predictions stitched block by block: block 0 from ``first``, block ``k >= 1`` from
    ``fit_block(fit_lo, fit_hi)`` (each a ``(T, S)`` panel); NaN outside the blocks."""
    out = np.full(first.shape, np.nan)
    for k, (fit_lo, fit_hi, lo, hi) in enumerate(refits):
        pred = first if k == 0 else fit_block(fit_lo, fit_hi)
        out[lo : hi + 1] = pred[lo : hi + 1]
    return out


def mean_ic(pred: np.ndarray, targets: np.ndarray, span: tuple[int, int]) -> float:
    """Mean per-bar Pearson IC of ``pred`` with ``targets`` over bars ``span`` (NaN if none)."""
    lo, hi = span
    ic = information_coefficient(pred[lo : hi + 1], np.asarray(targets)[lo : hi + 1])
    ic = ic[np.isfinite(ic)]
    return float(ic.mean()) if ic.size else math.nan


def select_ridge_alpha(
    features: np.ndarray,
    targets: np.ndarray,
    tradable: np.ndarray,
    train_end: int,
    alphas: list[float],
    val_span: tuple[int, int] | None,
    train_start: int = 0,
) -> tuple[float, np.ndarray]:
    """The ridge penalty with the best validation IC, and its predictions.

    Each alpha is fitted on ``train_start..train_end`` (``baselines.ridge_predictions``); with
    more than one, the one whose predictions have the highest mean Pearson IC with the targets
    over ``val_span`` is kept (the first on a tie; an alpha with no defined IC never wins unless
    none has one). One alpha is kept as it is, without reading validation.

    Returns:
        ``(alpha, pred)``: the alpha kept and its ``(T, S)`` predictions.
    """
    if not alphas:
        raise ConfigError("evaluation.ridge_alphas must list at least one penalty")
    preds = [
        ridge_predictions(features, targets, tradable, train_end, a, train_start) for a in alphas
    ]
    if len(alphas) == 1:
        return float(alphas[0]), preds[0]
    span = _check_span(val_span, preds[0].shape[0], "evaluation.ridge_alphas")
    scores = [mean_ic(p, targets, span) for p in preds]
    ranked = [s if math.isfinite(s) else -math.inf for s in scores]
    best = int(np.argmax(ranked))
    return float(alphas[best]), preds[best]
