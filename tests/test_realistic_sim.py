"""Realistic simulator: frictionless limit, vectorised vs per-order reference, one hand case per
friction, batches, determinism, trade list and config validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from plusultra.errors import ConfigError, DataError
from plusultra.sim.frictionless import FrictionlessSimulator
from plusultra.sim.realistic import (
    COST_NAMES,
    MarketData,
    RealisticResult,
    RealisticSimulator,
    SimulatorConfig,
    draw_latencies,
)
from plusultra.sim.reference import simulate_realistic_reference

NAN = float("nan")
INF = float("inf")
CONF = Path(__file__).resolve().parents[1] / "conf" / "simulator" / "realistic.yaml"
TENSORS = (
    "portfolio_returns",
    "equity",
    "cash",
    "positions",
    "weights_held",
    "fills",
    "turnover",
    "gross_exposure",
    "net_exposure",
)
MODES = ("next_open", "next_close", "same_close")
# No frictions, no caps, latency 0: the frictionless limit. The hand cases fill at the decision
# close (same_close, the behaviour before next-bar execution); next-bar cases set it themselves.
FREE = dict(
    execution="same_close",
    commission_bps=0.0,
    half_spread_bps=0.0,
    impact_coef=0.0,
    participation_cap=None,
    borrow_bps_annual=0.0,
    max_gross_leverage=None,
    max_net_leverage=None,
)


def _cfg(**kwargs) -> SimulatorConfig:
    return SimulatorConfig(**{"initial_cash": 10_000.0, **FREE, **kwargs})


def _market(close, volume=INF, volatility=0.0, tradable=None) -> MarketData:
    """A (T + 1, S) market from a list of closes per bar; scalars broadcast."""
    close = np.asarray(close, dtype=float)
    close = close[:, None] if close.ndim == 1 else close
    if tradable is None:
        tradable = ~np.isnan(close)
    return MarketData(
        close=close,
        volume=np.broadcast_to(np.asarray(volume, dtype=float).reshape(-1, 1), close.shape),
        volatility=np.broadcast_to(np.asarray(volatility, dtype=float).reshape(-1, 1), close.shape),
        tradable=np.asarray(tradable, dtype=bool).reshape(close.shape),
    )


def _run(weights, market: MarketData, **kwargs) -> RealisticResult:
    w = np.asarray(weights, dtype=float)
    return RealisticSimulator(_cfg(**kwargs)).run(w[:, None] if w.ndim == 1 else w, market=market)


def _close(actual: torch.Tensor, expected, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(
        actual.numpy(), np.asarray(expected, dtype=float), rtol=tol, atol=tol
    )


def _assert_same(a: RealisticResult, b: RealisticResult, tol: float = 1e-9) -> None:
    """Every output equal to ``tol`` relative to its scale (currency outputs to initial cash)."""
    for name in TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        scale = max(1.0, float(y.abs().max())) if y.numel() else 1.0
        assert x.shape == y.shape, name
        assert float((x - y).abs().max()) <= tol * scale, name
    for name in COST_NAMES:
        scale = max(1.0, float(b.equity.abs().max()))
        assert float((a.costs[name] - b.costs[name]).abs().max()) <= tol * scale, name
    ta, tb = a.trades, b.trades
    assert list(ta.columns) == list(tb.columns)
    exact = ["env", "symbol", "side", "entry_bar", "exit_bar", "holding_bars", "open"]
    assert ta[exact].equals(tb[exact])
    scale = max(1.0, float(b.equity.abs().max()))
    np.testing.assert_allclose(ta["pnl"], tb["pnl"], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(ta["quantity"], tb["quantity"], rtol=tol, atol=tol)


# --- random scenarios ------------------------------------------------------------------------


def _returns_scenario(seed: int, n_t: int = 60, n_s: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Returns with late listing, delisting and holes; leveraged long/short weights."""
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0005, 0.02, size=(n_t, n_s))
    returns[: rng.integers(1, n_t // 3), 0] = NAN
    returns[rng.integers(n_t // 2, n_t) :, 1] = NAN
    returns[rng.random((n_t, n_s)) < 0.05] = NAN
    raw = rng.normal(0.0, 1.0, size=(n_t, n_s))
    weights = raw / np.abs(raw).sum(axis=1, keepdims=True) * rng.uniform(0.5, 3.0, (n_t, 1))
    weights[rng.random((n_t, n_s)) < 0.05] = NAN
    weights[np.isnan(returns)] = 0.0
    return weights, returns


def _market_scenario(
    seed: int, n_env: int = 2, n_t: int = 40, n_s: int = 5, lag: int = 0
) -> tuple[np.ndarray, MarketData]:
    """(E, T + 1 + lag, S) opens and closes with late listing, delisting, holes, halts and
    zero-volume bars."""
    rng = np.random.default_rng(seed)
    shape = (n_env, n_t + 1 + lag, n_s)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, shape), axis=1))
    close[:, : rng.integers(2, n_t // 3), 0] = NAN  # listed late
    close[:, rng.integers(n_t // 2, n_t) :, 1] = NAN  # delisted
    close[rng.random(shape) < 0.05] = NAN  # missing bars
    tradable = ~np.isnan(close) & (rng.random(shape) > 0.05)  # and trading halts
    volume = rng.lognormal(np.log(20_000.0), 1.0, shape)  # orders are ~1e3..1e4 shares
    volume[rng.random(shape) < 0.03] = 0.0
    volatility = rng.uniform(0.005, 0.03, shape)
    raw = rng.normal(0.0, 1.0, (n_env, n_t, n_s))
    weights = raw / np.abs(raw).sum(-1, keepdims=True) * rng.uniform(0.3, 3.0, (n_env, n_t, 1))
    weights[rng.random(weights.shape) < 0.05] = NAN
    open_ = close * np.exp(rng.normal(0.0, 0.01, shape))  # NaN where there is no bar
    return weights, MarketData(close, volume, volatility, tradable, open=open_)


def _all_frictions(seed: int, unfilled: str, execution: str = "same_close") -> SimulatorConfig:
    return SimulatorConfig(
        execution=execution,
        initial_cash=1_000_000.0,
        commission_bps=5.0,
        min_commission=30.0,  # binds on small fills
        half_spread_bps=3.0,
        impact_coef=0.5,
        participation_cap=0.1,  # binds often
        unfilled=unfilled,
        latency_probs=(0.5, 0.3, 0.2),
        borrow_bps_annual=200.0,
        funding_bps_annual=300.0,
        max_gross_leverage=1.8,
        max_net_leverage=1.2,
        seed=seed,
    )


# --- frictionless limit ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frictionless_limit_matches_frictionless_simulator(seed) -> None:
    weights, returns = _returns_scenario(seed)
    expected = FrictionlessSimulator(10_000.0).run(weights, returns)
    result = RealisticSimulator(_cfg()).run(weights, returns)
    np.testing.assert_allclose(result.equity.numpy(), expected.equity, rtol=1e-9, atol=0)
    np.testing.assert_allclose(
        result.portfolio_returns.numpy(), expected.portfolio_returns, 0, 1e-9
    )
    np.testing.assert_allclose(result.turnover.numpy(), expected.turnover, 0, 1e-9)
    np.testing.assert_allclose(result.gross_exposure.numpy(), expected.gross_exposure, 0, 1e-9)
    np.testing.assert_allclose(result.net_exposure.numpy(), expected.net_exposure, 0, 1e-9)
    assert all(float(v.abs().sum()) == 0.0 for v in result.costs.values())
    # The same through explicit market data: closes from the returns, unlimited volume.
    close = np.vstack([np.ones((1, returns.shape[1])), np.cumprod(1 + np.nan_to_num(returns), 0)])
    market = _market(close, tradable=np.ones_like(close, dtype=bool))
    weights = np.where(np.isnan(returns), 0.0, weights)
    via_market = RealisticSimulator(_cfg()).run(weights, market=market)
    np.testing.assert_allclose(via_market.equity.numpy(), expected.equity, rtol=1e-9, atol=0)


# --- vectorised vs reference -----------------------------------------------------------------


@pytest.mark.parametrize("execution", MODES)
@pytest.mark.parametrize("unfilled", ["carry", "cancel"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_reference_with_every_friction(seed, unfilled, execution) -> None:
    lag = 0 if execution == "same_close" else 1
    weights, market = _market_scenario(seed, lag=lag)
    cfg = _all_frictions(seed, unfilled, execution)
    result = RealisticSimulator(cfg).run(weights, market=market)
    assert result.execution == execution
    _assert_same(result, simulate_realistic_reference(weights, market=market, config=cfg))
    # The scenario exercises what it should: binding caps and minimums, shorts, open trades.
    fills = result.fills
    volume = torch.as_tensor(market.volume)[:, lag:-1]  # the fill bars
    price = market.open if execution == "next_open" else market.close
    notional = fills.abs() * torch.as_tensor(price)[:, lag:-1].nan_to_num()
    assert ((fills.abs() - cfg.participation_cap * volume).abs() < 1e-9).sum() > 50
    assert ((notional * cfg.commission_bps * 1e-4 < cfg.min_commission) & (fills != 0)).sum() > 20
    paid = {k for k in COST_NAMES if float(result.costs[k].sum()) > 0}
    assert paid >= {"commission", "spread", "impact", "borrow"}, "every trading cost is paid"
    assert (result.trades["side"] == -1).sum() > 20 and result.trades["open"].any()


@pytest.mark.parametrize("seed", [3, 4])
def test_vectorised_matches_reference_shared_market_and_returns_input(seed) -> None:
    weights, market = _market_scenario(seed, n_env=3)
    shared = MarketData(
        *(np.asarray(getattr(market, k))[0] for k in MarketData.__dataclass_fields__)
    )
    cfg = _all_frictions(seed, "carry")
    _assert_same(
        RealisticSimulator(cfg).run(weights, market=shared),
        simulate_realistic_reference(weights, market=shared, config=cfg),
    )
    w, r = _returns_scenario(seed, n_t=30, n_s=4)
    _assert_same(RealisticSimulator(cfg).run(w, r), simulate_realistic_reference(w, r, config=cfg))


def test_trade_pnl_adds_up_to_the_equity_change_less_funding() -> None:
    weights, market = _market_scenario(5)
    result = RealisticSimulator(_all_frictions(5, "carry")).run(weights, market=market)
    change = float((result.equity[:, -1] - result.equity[:, 0]).sum())
    funding = float(result.costs["funding"].sum())
    assert result.trades["pnl"].sum() == pytest.approx(change + funding, rel=0, abs=1e-6)


# --- hand-computed cases, one per friction ----------------------------------------------------


def test_commission_with_minimum() -> None:
    # t=0: buy 50 @ 100: 20 bps of 5000 = 10 > minimum 8.
    # t=1: equity 9990 -> target 49.95: sell 0.05 @ 100, 20 bps of 5 = 0.01 -> minimum 8.
    # t=2 (final mark): cash 4990 + 5 - 8 = 4987, plus 49.95 @ 110 = 10481.5.
    r = _run([0.5, 0.5], _market([100.0, 100.0, 110.0]), commission_bps=20.0, min_commission=8.0)
    _close(r.costs["commission"], [10.0, 8.0])
    _close(r.fills[:, 0], [50.0, -0.05])
    _close(r.cash, [4990.0, 4987.0])
    _close(r.equity, [10_000.0, 9990.0, 10_481.5])
    _close(r.turnover, [0.5, 5.0 / 9990.0])


def test_half_spread() -> None:
    # Buy 50 @ 100; 10 bps of 5000 = 5.
    r = _run([0.5], _market([100.0, 100.0]), half_spread_bps=10.0)
    _close(r.costs["spread"], [5.0])
    _close(r.equity, [10_000.0, 9995.0])


def test_square_root_impact() -> None:
    # Buy 100 @ 100 of a bar of 10 000 shares with volatility 2 %:
    # 0.5 * 0.02 * sqrt(100 / 10 000) = 0.1 % of 10 000 = 10.
    r = _run([1.0], _market([100.0, 100.0], volume=10_000.0, volatility=0.02), impact_coef=0.5)
    _close(r.costs["impact"], [10.0])
    _close(r.equity, [10_000.0, 9990.0])


def test_participation_cap_with_carry_and_with_cancel() -> None:
    # Every order is due one bar after its decision; 10 % of 200 shares = 20 shares a bar.
    market = _market([100.0] * 5, volume=200.0)
    kw = dict(participation_cap=0.1, latency_probs=(0.0, 1.0))
    carry = _run([1.0] * 4, market, unfilled="carry", **kw)
    # 100 shares due at t=1: 20 filled, 80 due at t=2 (20 filled), 60 at t=3 (20 filled).
    _close(carry.fills[:, 0], [0.0, 20.0, 20.0, 20.0])
    _close(carry.positions[:, 0], [0.0, 20.0, 40.0, 60.0])
    cancel = _run([1.0] * 4, market, unfilled="cancel", **kw)
    # t=1: 20 filled, 80 dropped; t=2: a new order of 80 (due t=3), nothing due;
    # t=3: 20 of it filled.
    _close(cancel.fills[:, 0], [0.0, 20.0, 0.0, 20.0])
    _close(cancel.equity, [10_000.0] * 5)


def test_zero_volume_bar_fills_nothing() -> None:
    r = _run([1.0, 1.0], _market([100.0] * 3, volume=[0.0, 500.0, 500.0]), participation_cap=0.1)
    _close(r.fills[:, 0], [0.0, 50.0])


def test_latency_executes_k_bars_later_at_that_close() -> None:
    # Orders due 2 bars after the decision: 100 shares decided at close 0 fill at close 2 (@ 110),
    # leaving cash -1000; the order of t=2 (-9.09) would be due at bar 4, after the end.
    r = _run([1.0, 1.0, 1.0], _market([100.0, 100.0, 110.0, 121.0]), latency_probs=(0, 0, 1))
    _close(r.fills[:, 0], [0.0, 0.0, 100.0])
    _close(r.cash, [10_000.0, 10_000.0, -1000.0])
    _close(r.equity, [10_000.0, 10_000.0, 10_000.0, 11_100.0])


def test_latency_draws_follow_the_probabilities_and_the_seed() -> None:
    k = draw_latencies((0.2, 0.5, 0.3), 2, 400, 50, seed=7)
    assert k.shape == (2, 400, 50) and k.dtype == torch.int64
    freq = torch.bincount(k.flatten(), minlength=3).double() / k.numel()
    np.testing.assert_allclose(freq.numpy(), [0.2, 0.5, 0.3], atol=0.01)
    assert torch.equal(k, draw_latencies((0.2, 0.5, 0.3), 2, 400, 50, seed=7))
    assert torch.equal(k[1], draw_latencies((0.2, 0.5, 0.3), 1, 400, 50, seed=8)[0])
    assert not torch.equal(k, draw_latencies((0.2, 0.5, 0.3), 2, 400, 50, seed=8))
    assert not draw_latencies((1.0,), 1, 5, 3, seed=1).any()


def test_borrow_on_short_notional() -> None:
    # Short 50 @ 100 = 5000 notional at 252 bps a year / 252 bars = 1 bp a bar: 0.5.
    r = _run([-0.5], _market([100.0, 100.0]), borrow_bps_annual=252.0)
    _close(r.costs["borrow"], [0.5])
    _close(r.cash, [15_000.0 - 0.5])
    _close(r.equity, [10_000.0, 9999.5])
    assert r.trades["pnl"].tolist() == pytest.approx([-0.5])


def test_funding_on_borrowed_cash() -> None:
    # Long 150 @ 100 from 10 000 of cash: borrowed 5000 at 1 bp a bar = 0.5.
    r = _run(
        [1.5],
        _market([100.0, 100.0]),
        funding_bps_annual=252.0,
        max_gross_leverage=2.0,
        max_net_leverage=2.0,
    )
    _close(r.costs["funding"], [0.5])
    _close(r.equity, [10_000.0, 9999.5])
    assert r.trades["pnl"].tolist() == pytest.approx([0.0])  # funding is not a trade's cost


def test_gross_and_net_leverage_caps_scale_targets() -> None:
    market = _market(np.full((2, 2), 100.0))
    gross = _run([[0.8, -0.8]], market, max_gross_leverage=1.0)  # sum|w| 1.6 -> x 0.625
    _close(gross.weights_held[0], [0.5, -0.5])
    net = _run([[0.9, 0.6]], market, max_gross_leverage=2.0, max_net_leverage=1.0)  # x 2/3
    _close(net.weights_held[0], [0.6, 0.4])
    both = _run([[1.5, 0.5]], market, max_gross_leverage=3.0, max_net_leverage=1.0)  # x 1/2
    _close(both.gross_exposure, [1.0])
    _close(both.net_exposure, [1.0])


def test_no_trading_outside_listed_life() -> None:
    # Symbol 1 is listed at bars 1..2 only; symbol 0 always. Weights ask for 0.4 in each always.
    close = np.array([[100.0, NAN], [100.0, 50.0], [100.0, 50.0], [100.0, NAN], [100.0, NAN]])
    r = _run(np.full((4, 2), 0.4), _market(close))
    _close(r.positions[:, 1], [0.0, 80.0, 80.0, 80.0])  # bought at 1, frozen after delisting
    _close(r.fills[:, 1], [0.0, 80.0, 0.0, 0.0])
    _close(r.equity, [10_000.0] * 5)  # the frozen position keeps its last close
    # A weight of 0 on the last listed bar exits; the trade list shows the round trip.
    w = np.array([[0.4, 0.4], [0.4, 0.4], [0.4, 0.0], [0.4, 0.0]])
    r = _run(w, _market(close))
    _close(r.positions[:, 1], [0.0, 80.0, 0.0, 0.0])
    trade = r.trades[r.trades["symbol"] == 1].iloc[0]
    assert (trade["entry_bar"], trade["exit_bar"], trade["holding_bars"]) == (1, 2, 1)


def test_returns_input_sells_at_the_close_after_the_last_return() -> None:
    # The symbol's last return is r[1]; it has a close at bar 2 where the weight 0 sells it.
    returns = np.array([[0.1], [0.1], [NAN]])
    r = RealisticSimulator(_cfg()).run(np.array([[1.0], [1.0], [0.0]]), returns)
    _close(r.fills[:, 0], [10_000.0, 0.0, -10_000.0])
    _close(r.equity, [10_000.0, 11_000.0, 12_100.0, 12_100.0])


def test_trade_list_one_round_trip() -> None:
    # t=0: buy 50 @ 100, commission 10 bps = 5. t=1: equity 9995 -> sell 0.025 @ 100
    # (commission 0.0025). t=2: sell 49.975 @ 120 (commission 5.997). Final equity 10 988.5005.
    r = _run([0.5, 0.5, 0.0], _market([100.0, 100.0, 120.0, 120.0]), commission_bps=10.0)
    _close(r.equity[-1:], [10_988.5005])
    assert len(r.trades) == 1
    trade = r.trades.iloc[0]
    assert trade["env"] == 0 and trade["symbol"] == 0 and trade["side"] == 1
    assert (trade["entry_bar"], trade["exit_bar"], trade["holding_bars"]) == (0, 2, 2)
    assert not trade["open"]
    assert trade["quantity"] == pytest.approx(50.0)
    assert trade["pnl"] == pytest.approx(988.5005, abs=1e-9)


def test_trade_list_flip_splits_the_fill_cost() -> None:
    # Long 50, then flip to short 49.975 in one fill of 99.975 shares @ 100 (commission 10 bps,
    # 0.1 a share): 5 to the long, 4.9975 to the short. Borrow 0, prices flat.
    r = _run([0.5, -0.5], _market([100.0, 100.0, 100.0]), commission_bps=10.0)
    trades = r.trades
    assert trades["side"].tolist() == [1, -1]
    assert trades["entry_bar"].tolist() == [0, 1] and trades["exit_bar"].tolist() == [1, 2]
    assert trades["open"].tolist() == [False, True]
    np.testing.assert_allclose(trades["pnl"], [-5.0 - 5.0, -4.9975], atol=1e-9)


# --- batches, determinism, dtype -------------------------------------------------------------


def test_batch_of_environments_equals_each_run_alone() -> None:
    weights, market = _market_scenario(6, n_env=3)
    cfg = _all_frictions(6, "carry")
    batch = RealisticSimulator(cfg).run(torch.as_tensor(weights), market=market)
    for e in range(3):
        alone_market = MarketData(
            *(np.asarray(getattr(market, k))[e] for k in MarketData.__dataclass_fields__)
        )
        alone = RealisticSimulator(_all_frictions(6 + e, "carry")).run(
            weights[e], market=alone_market
        )
        for name in TENSORS:
            torch.testing.assert_close(getattr(batch, name)[e], getattr(alone, name), msg=name)
        trades = batch.trades[batch.trades["env"] == e].drop(columns="env").reset_index(drop=True)
        assert trades.equals(alone.trades.drop(columns="env"))


def test_deterministic_by_seed() -> None:
    weights, market = _market_scenario(7, n_env=1)
    runs = [
        RealisticSimulator(_all_frictions(seed, "carry")).run(weights, market=market)
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0].fills, runs[1].fills) and torch.equal(runs[0].equity, runs[1].equity)
    assert not torch.equal(runs[0].fills, runs[2].fills)


def test_float32_is_close_to_float64() -> None:
    weights, market = _market_scenario(8, n_env=1)
    sim = RealisticSimulator(_all_frictions(8, "carry"))
    r64 = sim.run(weights, market=market)
    r32 = sim.run(weights, market=market, dtype=torch.float32)
    assert r32.equity.dtype == torch.float32
    np.testing.assert_allclose(r32.equity.numpy(), r64.equity.numpy(), rtol=1e-4)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    weights, market = _market_scenario(9)
    sim = RealisticSimulator(_all_frictions(9, "cancel"))
    gpu = sim.run(weights, market=market, device="cuda")
    cpu = sim.run(weights, market=market)
    torch.testing.assert_close(gpu.equity.cpu(), cpu.equity, rtol=1e-9, atol=1e-6)


# --- config and data validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("initial_cash", 0.0),
        ("initial_cash", INF),
        ("commission_bps", -1.0),
        ("min_commission", NAN),
        ("half_spread_bps", "2"),
        ("impact_coef", True),
        ("participation_cap", 0.0),
        ("unfilled", "keep"),
        ("latency_probs", ()),
        ("latency_probs", (0.5, 0.4)),
        ("latency_probs", (1.5, -0.5)),
        ("borrow_bps_annual", -5.0),
        ("funding_bps_annual", INF),
        ("max_gross_leverage", 0.0),
        ("max_net_leverage", -1.0),
        ("periods_per_year", 0),
        ("periods_per_year", 252.5),
        ("seed", -1),
    ],
)
def test_config_validation_names_the_key(key, value) -> None:
    with pytest.raises(ConfigError, match=rf"simulator\.{key}"):
        SimulatorConfig(**{key: value})


def test_unknown_key_and_valid_names_are_listed() -> None:
    with pytest.raises(ConfigError, match=r"simulator\.slippage_bps.*valid keys"):
        RealisticSimulator(slippage_bps=3.0)
    with pytest.raises(ConfigError, match="carry"):
        SimulatorConfig(unfilled="hold")


def test_yaml_builds_the_default_config() -> None:
    node = OmegaConf.load(CONF)
    assert set(node) - {"_target_"} == set(SimulatorConfig.__dataclass_fields__), "one key each"
    assert node._get_node("periods_per_year")._value() == "${periods_per_year}"  # the root's
    root = OmegaConf.create({"periods_per_year": 252, "simulator": node})
    sim = instantiate(root.simulator)
    assert isinstance(sim, RealisticSimulator)
    assert sim.config == SimulatorConfig()
    override = RealisticSimulator(SimulatorConfig(seed=3), latency_probs=[0.5, 0.5])
    assert override.config.latency_probs == (0.5, 0.5) and override.config.seed == 3


def test_data_errors() -> None:
    sim = RealisticSimulator(_cfg())
    w = np.full((2, 1), 0.5)
    with pytest.raises(DataError, match="T \\+ 1 bars"):
        sim.run(w, market=_market([100.0, 100.0]))
    with pytest.raises(DataError, match="exactly one"):
        sim.run(w)
    with pytest.raises(DataError, match="exactly one"):
        sim.run(w, np.zeros((2, 1)), market=_market([100.0] * 3))
    with pytest.raises(DataError, match="close must be finite where tradable"):
        sim.run(w, market=_market([100.0, NAN, 100.0], tradable=[True, True, True]))
    with pytest.raises(DataError, match="volume"):
        sim.run(w, market=_market([100.0] * 3, volume=[1.0, -1.0, 1.0]))
    with pytest.raises(DataError, match="> -1"):
        sim.run(w, np.array([[0.1], [-1.0]]))
    with pytest.raises(DataError, match="finite or NaN"):
        sim.run(np.array([[INF], [0.0]]), np.zeros((2, 1)))
    with pytest.raises(DataError, match="shape"):
        MarketData(np.ones((3, 1)), np.ones((3, 2)), np.ones((3, 1)), np.ones((3, 1), bool))
    assert math.isinf(SimulatorConfig(participation_cap=None).participation_cap)


# --- execution timing ------------------------------------------------------------------------


def _bars(close, open_=None, volume=INF, volatility=0.0) -> MarketData:
    market = _market(close, volume, volatility)
    if open_ is None:
        return market
    return MarketData(market.close, market.volume, market.volatility, market.tradable, open_)


def test_next_open_fills_at_the_next_open_and_marks_at_opens() -> None:
    # Decided at close 0 (95): 100 shares bought at open 1 (100), valued at open 2 (110).
    # Bar 1's close (300) is never a price of this book.
    market = _bars([95.0, 300.0, 105.0], open_=np.array([[90.0], [100.0], [110.0]]))
    r = _run([1.0], market, execution="next_open")
    assert r.execution == "next_open"
    _close(r.fills[:, 0], [100.0])
    _close(r.equity, [10_000.0, 11_000.0])
    c = _run([1.0], market, execution="next_close")  # bought at close 1, valued at close 2
    _close(c.fills[:, 0], [10_000.0 / 300.0])
    _close(c.equity, [10_000.0, 10_000.0 * 105.0 / 300.0])


def test_default_is_next_open_with_opens_and_next_close_without() -> None:
    cfg = {k: v for k, v in FREE.items() if k != "execution"}
    with_opens = _bars([95.0, 300.0, 105.0], open_=np.array([[90.0], [100.0], [110.0]]))
    sim = RealisticSimulator(SimulatorConfig(initial_cash=10_000.0, **cfg))
    assert sim.execution is None
    assert sim.run(np.ones((1, 1)), market=with_opens).execution == "next_open"
    assert sim.run(np.ones((1, 1)), market=_bars([95.0, 300.0, 105.0])).execution == "next_close"
    nan_opens = _bars([95.0, 300.0, 105.0], open_=np.full((3, 1), NAN))
    assert sim.run(np.ones((1, 1)), market=nan_opens).execution == "next_close"
    with pytest.raises(DataError, match="simulator.execution=next_open"):
        _run([1.0], _bars([95.0, 300.0, 105.0]), execution="next_open")
    with pytest.raises(ConfigError, match="simulator.execution"):
        SimulatorConfig(execution="noon")


def test_perturbing_the_next_open_changes_the_fill_of_an_order_decided_at_t() -> None:
    weights, market = _market_scenario(10, n_env=1, lag=1)
    cfg = _all_frictions(10, "carry", "next_open")
    t = 12
    moved_open = np.array(market.open, dtype=float)
    moved_open[:, t + 1] *= 1.05
    moved = MarketData(market.close, market.volume, market.volatility, market.tradable, moved_open)
    before = RealisticSimulator(cfg).run(weights, market=market)
    after = RealisticSimulator(cfg).run(weights, market=moved)
    assert not torch.allclose(after.fills[:, t], before.fills[:, t])
    assert torch.equal(after.fills[:, : t - 1], before.fills[:, : t - 1])
    # Closes are not execution prices under next_open: moving every close changes nothing.
    closes = MarketData(
        np.array(market.close) * 1.5, market.volume, market.volatility, market.tradable, market.open
    )
    again = RealisticSimulator(cfg).run(weights, market=closes)
    assert torch.equal(again.fills, before.fills) and torch.equal(again.equity, before.equity)


@pytest.mark.parametrize("mode", MODES)
def test_a_position_decided_at_t_earns_nothing_of_bar_t(mode) -> None:
    """A book that first trades on the decision at close t: moving close t (and, for
    next_open, close t + 1) changes nothing under next-bar execution, and everything from t on
    under same_close (the optimistic fill at the decision close)."""
    lag = 0 if mode == "same_close" else 1
    weights, market = _market_scenario(11, n_env=1, lag=lag)
    t = 20
    weights[:, :t] = 0.0
    sim = RealisticSimulator(_all_frictions(11, "carry", mode))
    before = sim.run(weights, market=market)
    close = np.array(market.close, dtype=float)
    close[:, t] *= 1.2  # bar t's own close
    if mode == "next_open":
        close[:, t + 1] *= 1.2
    moved = MarketData(close, market.volume, market.volatility, market.tradable, market.open)
    after = sim.run(weights, market=moved)
    if mode == "same_close":
        assert not torch.allclose(after.equity[:, t + 1], before.equity[:, t + 1])
    else:
        assert torch.equal(after.equity, before.equity) and torch.equal(after.fills, before.fills)


def test_participation_cap_uses_the_volume_of_the_fill_bar() -> None:
    # Bar 0 trades nothing, bar 1 trades 200 shares: an order decided at close 0 fills at bar 1
    # (20 shares, 10 %), whereas a same-close fill at bar 0 fills nothing.
    market = _bars([100.0] * 3, volume=[0.0, 200.0, 200.0])
    nxt = _run([1.0], market, execution="next_close", participation_cap=0.1)
    _close(nxt.fills[:, 0], [20.0])
    same = _run([1.0, 1.0], market, execution="same_close", participation_cap=0.1)
    _close(same.fills[:, 0], [0.0, 20.0])


def test_latency_adds_bars_on_top_of_the_fill_lag() -> None:
    # next_close with latency 1: decided at close 0, sized at its fill bar's close (100 shares
    # at 100), due one bar later: filled at close 2 (110), cash -1000, valued at close 3 (121).
    market = _bars([100.0, 100.0, 110.0, 121.0])
    r = _run([1.0, 1.0], market, execution="next_close", latency_probs=(0, 1))
    _close(r.fills[:, 0], [0.0, 100.0])
    _close(r.equity, [10_000.0, 10_000.0, 11_100.0])


def test_missing_volume_runs_without_cap_and_impact_and_logs_it(caplog) -> None:
    market = _bars([100.0, 100.0, 100.0], volume=NAN, volatility=0.02)
    with caplog.at_level("WARNING", logger="plusultra"):
        r = _run([1.0], market, execution="next_close", participation_cap=0.1, impact_coef=1.0)
    _close(r.fills[:, 0], [100.0])  # the whole order, no cap
    _close(r.costs["impact"], [0.0])
    assert "no participation cap and no market impact" in caplog.text
