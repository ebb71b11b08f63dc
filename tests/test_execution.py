"""Execution timing contract (plusultra.execution): modes, defaults, aligned returns."""

from __future__ import annotations

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.execution import (
    EXECUTION_MODES,
    LABELS,
    carry_prices,
    describe,
    execution_returns,
    execution_returns_reference,
    resolve_execution,
)


def _prices(seed: int = 0, t: int = 30, s: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (t, s)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.01, (t, s)))
    close[:3, 0] = np.nan  # listed late
    open_[:3, 0] = np.nan
    close[-4:, 1] = np.nan  # delisted early
    open_[-4:, 1] = np.nan
    return open_, close


@pytest.mark.parametrize("mode", EXECUTION_MODES)
def test_vectorised_matches_reference(mode: str) -> None:
    open_, close = _prices()
    np.testing.assert_array_equal(
        execution_returns(mode, open_, close), execution_returns_reference(mode, open_, close)
    )


@pytest.mark.parametrize("mode", ["next_open", "next_close"])
def test_decision_at_t_earns_nothing_of_bar_t_or_t_plus_1_close_move(mode: str) -> None:
    """Moving bar t's close (and for next_open, t+1's close) leaves the t row unchanged."""
    open_, close = _prices(1)
    t = 10
    before = execution_returns(mode, open_, close)
    bumped = close.copy()
    bumped[t] *= 1.5
    if mode == "next_open":
        bumped[t + 1] *= 1.5
    after = execution_returns(mode, open_, bumped)
    np.testing.assert_array_equal(after[t], before[t])


def test_perturbing_next_open_changes_the_fill_of_an_order_decided_at_t() -> None:
    open_, close = _prices(2)
    t = 12
    before = execution_returns("next_open", open_, close)
    moved = open_.copy()
    moved[t + 1] *= 1.1
    after = execution_returns("next_open", moved, close)
    assert not np.allclose(after[t], before[t])
    np.testing.assert_array_equal(
        after[: t - 1], before[: t - 1]
    )  # decisions before t-1 unaffected


def test_same_close_is_the_close_to_close_return() -> None:
    open_, close = _prices(3)
    out = execution_returns("same_close", open_, close)
    np.testing.assert_allclose(out[:-1], close[1:] / close[:-1] - 1)
    assert np.isnan(out[-1]).all()


def test_defaults_and_errors() -> None:
    open_, close = _prices()
    assert resolve_execution(None, open_, close) == "next_open"
    assert resolve_execution(None, None, close) == "next_close"
    assert resolve_execution(None, np.full_like(close, np.nan), close) == "next_close"
    assert resolve_execution("same_close", None, close) == "same_close"
    with pytest.raises(DataError, match="next_close"):
        resolve_execution("next_open", None, close)
    with pytest.raises(ConfigError, match="next_open, next_close, same_close"):
        resolve_execution("at_noon", open_, close)


def test_carried_prices_fill_holes_inside_a_life_only() -> None:
    p = np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, 3.0], [4.0, np.nan], [np.nan, np.nan]])
    expected = np.array([[np.nan, 1.0], [2.0, 1.0], [2.0, 3.0], [4.0, np.nan], [np.nan, np.nan]])
    np.testing.assert_array_equal(carry_prices(p), expected)


def test_labels_flag_same_close_as_optimistic() -> None:
    assert set(LABELS) == set(EXECUTION_MODES)
    assert describe("next_open") == "next bar open"
    assert "optimistic" in describe("same_close")
