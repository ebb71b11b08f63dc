"""Signal -> cross-sectional weights: hand examples, sums, neutrality, NaN, row independence."""

from __future__ import annotations

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.positions import (
    POSITION_METHODS,
    cap_exposure,
    cap_exposure_reference,
    positions_from_signal,
)

NAN = float("nan")
METHODS = sorted(POSITION_METHODS)


def _random_signal(seed: int, n_t: int = 40, n_s: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_t, n_s))
    signal[rng.random((n_t, n_s)) < 0.2] = NAN
    signal[3] = NAN  # nothing tradable
    signal[4, 1:] = NAN  # one tradable symbol
    signal[5] = 0.7  # all equal
    signal[6, ::2] = 0.0  # some zero signals
    return signal


def test_registry_names() -> None:
    assert METHODS == ["rank", "sign", "weights", "zscore"]


def test_rank_hand_example() -> None:
    signal = np.array(
        [
            [3.0, 1.0, 2.0, NAN],  # ranks 3, 1, 2; mean 2 -> [1, -1, 0]; sum|.| = 2
            [1.0, 2.0, 2.0, 3.0],  # tie: ranks 1, 2.5, 2.5, 4; mean 2.5 -> [-1.5, 0, 0, 1.5]
        ]
    )
    expected = np.array([[0.5, -0.5, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.5]])
    np.testing.assert_allclose(positions_from_signal(signal, "rank"), expected, atol=1e-15)
    np.testing.assert_allclose(positions_from_signal(signal, "rank", 2.0), 2 * expected)


def test_zscore_hand_example() -> None:
    # [1, 2, 6]: mean 3 -> [-2, -1, 3]; sum|.| = 6; gross 2 -> [-2/3, -1/3, 1].
    signal = np.array([[1.0, NAN, 2.0, 6.0]])
    np.testing.assert_allclose(
        positions_from_signal(signal, "zscore", gross=2.0), [[-2 / 3, 0.0, -1 / 3, 1.0]]
    )


def test_sign_hand_example() -> None:
    # Three valid symbols (a zero signal counts as valid), gross 1.5 -> 0.5 each.
    signal = np.array([[0.5, -2.0, 0.0, NAN]])
    np.testing.assert_allclose(positions_from_signal(signal, "sign", 1.5), [[0.5, -0.5, 0.0, 0.0]])


def test_weights_hand_example() -> None:
    """The signal is the weight; rows over the gross cap are scaled down, never up."""
    signal = np.array(
        [
            [0.2, -0.1, NAN, 0.3],  # sum|w| = 0.6 <= 1: kept as it is
            [0.8, 0.8, -0.4, NAN],  # sum|w| = 2.0 -> halved
            [NAN, NAN, NAN, NAN],  # nothing tradable
        ]
    )
    expected = np.array([[0.2, -0.1, 0.0, 0.3], [0.4, 0.4, -0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(positions_from_signal(signal, "weights"), expected, atol=1e-15)
    # Net cap 0.3: row 0 (net 0.4) is divided by 4/3; row 1 by max(1, 2.0 / 1, 1.2 / 0.3) = 4.
    np.testing.assert_allclose(
        positions_from_signal(signal, "weights", 1.0, net=0.3),
        [[0.15, -0.075, 0.0, 0.225], [0.2, 0.2, -0.1, 0.0], [0.0, 0.0, 0.0, 0.0]],
        atol=1e-15,
    )


@pytest.mark.parametrize("gross", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("net", [None, 0.1, 0.5, 5.0])
def test_cap_exposure_matches_loop_reference(gross: float, net: float | None) -> None:
    rng = np.random.default_rng(4)
    w = rng.normal(size=(50, 9)) * rng.choice([0.01, 0.2, 1.0], size=(50, 1))
    w[0] = 0.0
    got = cap_exposure(w, gross, net)
    np.testing.assert_allclose(got, cap_exposure_reference(w, gross, net), rtol=1e-12, atol=1e-15)
    assert (np.abs(got).sum(axis=1) <= gross * (1 + 1e-12)).all()
    if net is not None:
        assert (np.abs(got.sum(axis=1)) <= net * (1 + 1e-12)).all()
    ratio = np.divide(got, w, out=np.ones_like(w), where=w != 0)
    assert (ratio <= 1 + 1e-12).all() and (ratio > 0).all()  # scaled down, signs kept
    assert np.allclose(ratio, ratio[:, :1])  # one factor per row: relative sizes kept


@pytest.mark.parametrize("net", [0.0, -1.0, NAN, "1"])
def test_bad_net(net) -> None:
    with pytest.raises(ConfigError, match="net"):
        positions_from_signal(np.zeros((2, 2)), "weights", 1.0, net)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "weights"])
@pytest.mark.parametrize("gross", [1.0, 2.5])
def test_gross_and_neutrality(method: str, gross: float) -> None:
    signal = _random_signal(0)
    w = positions_from_signal(signal, method, gross)
    assert w.shape == signal.shape and np.isfinite(w).all()
    assert (w[np.isnan(signal)] == 0.0).all()
    valid = ~np.isnan(signal)
    n_valid = valid.sum(axis=1)
    if method == "sign":
        nonzero = (valid & (signal != 0.0)).sum(axis=1)
        expected = np.where(n_valid > 0, gross * nonzero / np.maximum(n_valid, 1), 0.0)
        np.testing.assert_allclose(np.abs(w).sum(axis=1), expected, atol=1e-12)
        assert w[4, 0] == pytest.approx(gross * np.sign(signal[4, 0]))
    else:
        cross_section = np.ones(len(signal), dtype=bool)
        cross_section[[3, 4, 5]] = False  # empty, single, all-equal rows
        np.testing.assert_allclose(np.abs(w[cross_section]).sum(axis=1), gross, atol=1e-12)
        np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-12)
        assert (w[~cross_section] == 0.0).all()


@pytest.mark.parametrize("method", ["rank", "zscore"])
def test_order_preserving(method: str) -> None:
    signal = _random_signal(1)
    w = positions_from_signal(signal, method)
    for row_s, row_w in zip(signal, w, strict=True):
        ok = ~np.isnan(row_s)
        order = np.argsort(row_s[ok])
        assert (np.diff(row_w[ok][order]) >= -1e-15).all()


@pytest.mark.parametrize("method", METHODS)
def test_rows_are_independent(method: str) -> None:
    signal = _random_signal(2)
    base = positions_from_signal(signal, method)
    rng = np.random.default_rng(9)
    for t in (0, 10, 25):
        changed = signal.copy()
        changed[t + 1 :] = rng.normal(size=changed[t + 1 :].shape) * 100.0  # rewrite the future
        changed[t + 1 :: 3] = NAN
        np.testing.assert_allclose(
            positions_from_signal(changed, method)[: t + 1], base[: t + 1], rtol=0, atol=1e-15
        )
    # Each row alone gives the same weights as inside the panel.
    for t in range(len(signal)):
        np.testing.assert_allclose(
            positions_from_signal(signal[t : t + 1], method)[0], base[t], rtol=0, atol=1e-15
        )


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="rank, sign, weights, zscore"):
        positions_from_signal(np.zeros((2, 2)), "softmax")


@pytest.mark.parametrize("gross", [0.0, -1.0, float("inf"), NAN])
def test_bad_gross(gross: float) -> None:
    with pytest.raises(ConfigError, match="gross"):
        positions_from_signal(np.zeros((2, 2)), "rank", gross)


def test_bad_signal() -> None:
    with pytest.raises(DataError, match="2-D"):
        positions_from_signal(np.zeros(4))
    with pytest.raises(DataError, match=r"signal\[1, 0\]"):
        positions_from_signal(np.array([[0.0, 1.0], [np.inf, 0.0]]))
