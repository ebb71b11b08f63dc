"""Factor caps of the guardrails: the betas against np.polyfit, apply_path against a naive
per-bar loop, the cap holding, step == apply_path, causality, a beta-neutral book untouched,
the rule order, config errors, and the rule reaching the backtest and the CLI."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.guardrails import RULES, GuardrailConfig, Guardrails
from plusultra.guardrails.factors import market_returns, min_pairs, rolling_betas
from plusultra.guardrails.segment import event_counts, guard_segment

SYMS = ["A", "B", "C", "D", "E"]


def _case(seed: int = 0, n_t: int = 160, n_s: int = 5):
    """Closes with a market factor (betas 0.4..1.6), a late listing and a missing bar; a
    factor series joined one bar late (its value at t is the market move of t - 1, noisy,
    with a gap); weights leaning long, 0 where a symbol has no bar."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0005, 0.01, n_t)
    beta = np.linspace(0.4, 1.6, n_s)
    r = beta * m[:, None] + rng.normal(0.0, 0.01, (n_t, n_s))
    close = 100.0 * np.cumprod(1.0 + r, axis=0)
    close[:30, -1] = np.nan  # the last symbol lists at bar 30
    close[50, 2] = np.nan  # one missing bar
    f = np.r_[np.nan, m[:-1]] + rng.normal(0.0, 0.002, n_t)
    f[70:73] = np.nan
    tradable = np.isfinite(close)
    weights = np.where(tradable, rng.normal(0.1, 0.2, (n_t, n_s)), 0.0)
    return close, f[:, None], weights, tradable


def _returns(close: np.ndarray) -> np.ndarray:
    out = np.full_like(close, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1:] = close[1:] / close[:-1] - 1.0
    out[~np.isfinite(out)] = np.nan
    return out


def _beta_ref(x: np.ndarray, y: np.ndarray, lookback: int) -> float:
    """np.polyfit slope over the finite pairs; NaN with too few or a flat factor."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < max(2, math.ceil(lookback / 2)) or np.ptp(x[ok]) == 0:
        return math.nan
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _guard_ref(weights, close, factors, caps: dict, lookback: int, lags: dict):
    """Factor caps alone, bar by bar, from the full arrays up to t (the obviously correct
    version): betas by np.polyfit on the pairs (asset return of k - lag, factor at k) for the
    last `lookback` bars k, exposure, the book scaled to each breached cap in config order."""
    r = _returns(close)
    n_t, n_s = weights.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN row
        market = np.nanmean(r, axis=1)
    supplied = [n for n in caps if n != "market"]
    out = np.zeros_like(weights)
    for t in range(n_t):
        w = weights[t].copy()
        for name, cap in caps.items():
            series = market if name == "market" else factors[:, supplied.index(name)]
            lag = lags.get(name, 0)
            ks = np.arange(max(t - lookback + 1, lag), t + 1)
            beta = [_beta_ref(series[ks], r[ks - lag, s], lookback) for s in range(n_s)]
            e = float(w @ np.nan_to_num(beta))
            if abs(e) > cap * (1 + 1e-12):
                w = w * (cap / abs(e))
        out[t] = w
    return out


# --------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("lag", [0, 1, 3])
@pytest.mark.parametrize("lookback", [2, 7, 20])
def test_rolling_betas_match_polyfit(lag, lookback):
    rng = np.random.default_rng(lookback + 10 * lag)
    k, n_s = 30, 6
    f = rng.normal(size=k)
    r = 0.8 * np.roll(f, -lag)[:, None] * np.arange(n_s) + rng.normal(size=(k, n_s))
    r[rng.random((k, n_s)) < 0.2] = np.nan
    f[rng.random(k) < 0.1] = np.nan
    r[:, 5] = np.nan  # no data: undefined
    r[: k - 1, 4] = np.nan  # one pair at most: undefined
    got = rolling_betas(r, f, lookback, lag)
    ks = np.arange(max(k - lookback, lag), k)
    want = [_beta_ref(f[ks], r[ks - lag, s], lookback) for s in range(n_s)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.isnan(got[4:]).all()


def test_flat_factor_or_short_history_has_no_beta():
    r = np.random.default_rng(1).normal(size=(10, 3))
    assert np.isnan(rolling_betas(r, np.full(10, 0.01), 10)).all()  # no variance
    assert np.isnan(rolling_betas(r, np.zeros(10), 10)).all()
    assert np.isnan(rolling_betas(r[:4], np.arange(4.0), 10)).all()  # 4 < min_pairs(10) = 5
    assert np.isfinite(rolling_betas(r[:5], np.arange(5.0), 10)).all()
    assert np.isnan(rolling_betas(r[:1], np.arange(1.0), 2, lag=1)).all()  # no pair at all
    assert min_pairs(2) == 2 and min_pairs(63) == 32


def test_market_returns_average_the_known_symbols():
    r = np.array([[0.01, 0.03, np.nan], [np.nan, np.nan, np.nan], [0.0, -0.03, 0.03]])
    np.testing.assert_allclose(market_returns(r), [0.02, np.nan, 0.0])


# --------------------------------------------------------------------- the rule
CAPS = {"market": 0.15, "f1": 0.12}


def _guards(**kwargs) -> Guardrails:
    cfg = dict(factor_caps=CAPS, factor_lookback=20, factor_lags={"f1": 1}) | kwargs
    return Guardrails(GuardrailConfig(**cfg), SYMS)


def test_apply_path_equals_the_naive_reference():
    close, f, w, tr = _case()
    out, events = _guards().apply_path(w, close, tr, None, f)
    ref = _guard_ref(w, close, f, CAPS, 20, {"f1": 1})
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-14)
    names = {e.detail.split(":")[0] for e in events}
    assert names == {"factor market", "factor f1"}  # both caps bind somewhere
    assert all(e.rule == "factor_cap" and e.symbol is None for e in events)
    assert all(abs(e.after) == CAPS[e.detail.split(":")[0][7:]] < abs(e.before) for e in events)
    assert not events or len(events) < 2 * len(w)


def test_the_guarded_book_is_within_every_factor_cap():
    close, f, w, tr = _case(seed=2)
    cfg = dict(symbol_cap=0.25, net_cap=0.4, gross_cap=0.9, vol_target=0.12, vol_lookback=20)
    g = _guards(**cfg)
    state, r = g.new_state(), _returns(close)
    fired = 0
    for t in range(len(w)):
        guarded, events = g.step(state, w[t], r[t], tr[t], factor_returns=f[t])
        fired += sum(e.rule == "factor_cap" for e in events)
        for name, beta in g.betas(state).items():
            assert abs(guarded @ np.nan_to_num(beta)) <= CAPS[name] * (1 + 1e-9)
        assert np.abs(guarded).max() <= 0.25 + 1e-12 and np.abs(guarded).sum() <= 0.9 + 1e-12
    assert fired > 20


def test_step_equals_apply_path_and_warm_up_continues_it():
    close, f, w, tr = _case(seed=3)
    g = _guards(turnover_cap=0.3)
    out, events = g.apply_path(w, close, tr, None, f)
    r = _returns(close)
    state, stepped = g.new_state(), []
    for t in range(len(w)):
        got, found = g.step(state, w[t], r[t], tr[t], factor_returns=f[t])
        np.testing.assert_array_equal(got, out[t])
        stepped += found
    assert stepped == events
    # a service starting at bar 100 with the history warmed up decides the same as the path
    # wherever its book is the same (the weights held before bar 100 are set from the path)
    late = g.new_state()
    g.warm_up(late, r[:100], f[:100])
    late.weights = out[99].copy()
    got, _ = g.step(late, w[100], r[100], tr[100], factor_returns=f[100])
    np.testing.assert_allclose(got, out[100], rtol=1e-12)


def test_causal_bars_after_t_do_not_change_weights_up_to_t():
    close, f, w, tr = _case(seed=4)
    g, t = _guards(), 90
    out, _ = g.apply_path(w, close, tr, None, f)
    close2, f2 = close.copy(), f.copy()
    close2[t + 1 :] *= np.exp(np.random.default_rng(9).normal(0, 0.3, close2[t + 1 :].shape))
    f2[t + 1 :] = 0.5
    out2, _ = g.apply_path(w, close2, tr, None, f2)
    np.testing.assert_array_equal(out[: t + 1], out2[: t + 1])
    assert not np.array_equal(out[t + 1 :], out2[t + 1 :])


def test_a_beta_neutral_book_is_untouched():
    """Pairs of symbols with the same closes have the same betas; long one, short the other."""
    close, f, _, _ = _case(seed=5, n_s=4)
    close[:, 1], close[:, 3] = close[:, 0], close[:, 2]
    close[:30] = close[30]  # every symbol listed from bar 0
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 0.3, (2, len(close)))
    w = np.column_stack([a, -a, b, -b])
    g = Guardrails(GuardrailConfig(factor_caps={"market": 1e-6, "f1": 1e-6}), SYMS[:4])
    out, events = g.apply_path(w, close, np.ones_like(w, dtype=bool), None, f)
    assert events == [] and np.array_equal(out, w)


def test_no_beta_no_action():
    """Before the window holds half its bars, or with a flat factor, the rule does not act."""
    close, _, w, tr = _case(seed=6)
    flat = np.full((len(close), 1), 0.001)
    g = Guardrails(GuardrailConfig(factor_caps={"f1": 1e-6}, factor_lookback=20), SYMS)
    out, events = g.apply_path(w, close, tr, None, flat)
    assert events == [] and np.array_equal(out, w)
    g = Guardrails(GuardrailConfig(factor_caps={"market": 1e-6}, factor_lookback=20), SYMS)
    out, events = g.apply_path(w, close, tr, None)
    np.testing.assert_array_equal(out[:10], w[:10])  # bar 0 has no return: 9 pairs by bar 9
    assert events[0].timestamp is None and not np.array_equal(out[10], w[10])


def test_factor_cap_comes_after_the_name_cuts_that_can_raise_an_exposure():
    """Clipping C, whose beta offsets A and B, raises the exposure from 0.1 to 0.25; the factor
    cap after it scales the book to 0.2 and the net and gross caps keep it there."""
    k = np.random.default_rng(7).normal(0, 0.01, 30)
    history = np.column_stack([k, k, -k, np.zeros(30)])  # betas 1, 1, -1, 0 on the factor
    cfg = GuardrailConfig(
        symbol_cap=0.35, factor_caps={"f": 0.2}, factor_lookback=30, net_cap=0.8, gross_cap=0.7
    )
    g = Guardrails(cfg, SYMS[:4])
    state = g.new_state()
    g.warm_up(state, history[:-1], k[:-1, None])
    ok = np.ones(4, dtype=bool)
    w, events = g.step(
        state, np.array([0.3, 0.3, 0.5, 0.0]), history[-1], ok, factor_returns=k[-1:]
    )
    assert [e.rule for e in events] == ["symbol_cap", "factor_cap", "gross_cap"]
    assert RULES.index("sector_cap") < RULES.index("factor_cap") < RULES.index("net_cap")
    fc = events[1]
    assert (fc.before, fc.after) == (pytest.approx(0.25), 0.2) and "factor f" in fc.detail
    np.testing.assert_allclose(w, np.array([0.24, 0.24, 0.28, 0.0]) * 0.7 / 0.76)
    assert abs(w @ g.betas(state)["f"]) <= 0.2


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"factor_caps": {"market": 0}}, "guardrails.factor_caps.market"),
        ({"factor_caps": {"market": -0.1}}, "guardrails.factor_caps.market"),
        ({"factor_caps": {"etf_mtum": None}}, "guardrails.factor_caps.etf_mtum"),
        ({"factor_caps": {"market": "high"}}, "guardrails.factor_caps.market"),
        ({"factor_caps": [0.5]}, "guardrails.factor_caps"),
        ({"factor_caps": {"": 0.5}}, "guardrails.factor_caps"),
        ({"factor_lookback": 1}, "guardrails.factor_lookback"),
        ({"factor_lookback": 2.5}, "guardrails.factor_lookback"),
        ({"factor_caps": {"m": 0.5}, "factor_lags": {"x": 1}}, "guardrails.factor_lags.x"),
        ({"factor_caps": {"m": 0.5}, "factor_lags": {"m": -1}}, "guardrails.factor_lags.m"),
        ({"factor_caps": {"m": 0.5}, "factor_lags": {"m": 0.5}}, "guardrails.factor_lags.m"),
        ({"factor_caps": {"market": 0.5}, "factor_lags": {"market": 1}}, "factor_lags.market"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GuardrailConfig(**kwargs)


def test_config_orders_and_from_mapping():
    cfg = GuardrailConfig.from_mapping(
        {"factor_caps": {"etf_mtum": 0.2, "market": 0.5, "etf_vlue": 1}, "factor_lookback": 30}
    )
    assert cfg.factor_series == ("etf_mtum", "etf_vlue") and cfg.factor_caps["etf_vlue"] == 1.0
    assert cfg.active_rules == ("factor_cap",) and GuardrailConfig().factor_series == ()


def test_a_missing_series_is_a_config_error_naming_the_key_and_the_series():
    close, f, w, tr = _case()
    dates = np.arange(len(w)).astype("datetime64[D]")
    cfg = GuardrailConfig(factor_caps={"market": 0.5, "etf_nope": 0.2})
    with pytest.raises(ConfigError, match=r"guardrails\.factor_caps\.etf_nope.*etf_mtum, etf_qual"):
        guard_segment(cfg, w[40:], 40, close, tr, dates, SYMS, factors={"etf_qual": f[:, 0],
                      "etf_mtum": f[:, 0]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"etf_nope.*available: market \(always\), none"):
        guard_segment(cfg, w[40:], 40, close, tr, dates, SYMS)
    with pytest.raises(DataError, match="etf_nope has 10 bars"):
        guard_segment(cfg, w[40:], 40, close, tr, dates, SYMS, factors={"etf_nope": f[:10, 0]})


def test_bad_factor_inputs_are_clear_errors():
    close, f, w, tr = _case()
    g = _guards()
    state = g.new_state()
    r = _returns(close)
    with pytest.raises(DataError, match=r"factor_returns of \['f1'\].*not given"):
        g.step(state, w[1], r[1], tr[1])
    with pytest.raises(DataError, match=r"shape \(F,\) with F = 1"):
        g.step(state, w[1], r[1], tr[1], factor_returns=[0.1, 0.2])
    with pytest.raises(DataError, match="factor_returns of f1 is not finite"):
        g.step(state, w[1], r[1], tr[1], factor_returns=[np.inf])
    with pytest.raises(DataError, match=r"shape \(K, F\)"):
        g.warm_up(state, r[:5], f[:4])
    with pytest.raises(DataError, match=r"not given"):
        g.apply_path(w, close, tr)
    market_only = Guardrails(GuardrailConfig(factor_caps={"market": 0.5}), SYMS)
    market_only.step(market_only.new_state(), w[1], r[1], tr[1])  # nothing to supply


# --------------------------------------------------------------------- backtest and CLI
def test_backtest_passes_the_context_factors():
    from plusultra.sim.frictionless import FrictionlessSimulator
    from tests.test_strategies import _backtest, _engine_case

    case = _engine_case(5)
    ctx = case["context"]
    rng = np.random.default_rng(0)
    ctx.factors = {"etf_x": rng.normal(0, 0.01, len(case["dates"]))}
    cfg = GuardrailConfig(factor_caps={"market": 0.02, "etf_x": 0.01}, factor_lags={"etf_x": 1})
    result = _backtest(case, FrictionlessSimulator(), guardrails=cfg)
    events = result.guardrail_events
    assert result.metrics["guardrail_factor_cap"] == len(events) > 0
    assert set(events["detail"].str.split(":").str[0]) <= {"factor market", "factor etf_x"}
    assert event_counts(cfg, events)["guardrail_factor_cap"] == len(events)
    ctx.factors = {}
    with pytest.raises(ConfigError, match=r"guardrails\.factor_caps\.etf_x"):
        _backtest(case, FrictionlessSimulator(), guardrails=cfg)


def _skfolio_files() -> None:
    from plusultra.data.io.sp500_stocks import FACTORS_FILE, skfolio_data_file

    try:
        skfolio_data_file(FACTORS_FILE)
    except DataError:
        pytest.skip("skfolio's data files are not installed (extra `stocks`)")


def test_the_data_module_supplies_its_market_wide_side_columns(tmp_path):
    """data=sp500_stocks_factors: the backtest context carries etf_* raw, one bar late."""
    import sqlite3

    import pandas as pd
    from omegaconf import OmegaConf

    from plusultra.data.datasets.datamodule import SQLiteDataModule
    from plusultra.data.features.pipeline import FeaturePipeline
    from plusultra.data.io.sp500_stocks import build_sp500_stocks_database
    from plusultra.run import CONF_DIR

    _skfolio_files()
    db = build_sp500_stocks_database(tmp_path / "stocks.sqlite")
    conf = OmegaConf.load(f"{CONF_DIR}/data/sp500_stocks_factors.yaml")
    dm = SQLiteDataModule(
        str(db), FeaturePipeline(["log_return"]), window=16, horizon=2, train_end=conf.train_end,
        val_end=conf.val_end, embargo=100, start=conf.start,
        alternative=OmegaConf.to_container(conf.alternative),
    )  # fmt: skip
    dm.setup()
    factors = dm.context()["factors"]
    assert sorted(factors) == [f"etf_{n}" for n in ("mtum", "qual", "size", "usmv", "vlue")]
    with sqlite3.connect(db) as con:
        table = pd.read_sql("SELECT timestamp, mtum FROM factor_returns", con)
    raw = table.set_index(pd.to_datetime(table["timestamp"]))["mtum"]
    dates = pd.DatetimeIndex(dm.panel.dates)
    np.testing.assert_allclose(factors["etf_mtum"][1:], raw.reindex(dates[:-1]).to_numpy())


@pytest.mark.slow
def test_cli_run_with_a_market_cap_records_it(tiny_db, tmp_path):
    """guardrails=standard with a tight market cap: the rule fires in a real run."""
    import pandas as pd

    from tests.conftest import TINY, run_cli

    args = ["plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}", "guardrails=standard"]
    res = run_cli([*args, "guardrails.factor_caps.market=0.02", "evaluation.bootstrap=0"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = next(tmp_path.rglob("metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = pd.read_parquet(run_dir / "guardrails.parquet")
    for segment in ("val", "test"):
        mine = events[(events["segment"] == segment) & (events["rule"] == "factor_cap")]
        assert metrics[f"{segment}_guardrail_factor_cap"] == len(mine)
    assert metrics["test_guardrail_factor_cap"] + metrics["val_guardrail_factor_cap"] > 0


@pytest.mark.slow
def test_cli_run_caps_a_factor_etf(tmp_path):
    """data=sp500_stocks_factors (built from skfolio's files) with a cap on the momentum ETF
    series, joined one bar late (factor_lags 1)."""
    from tests.conftest import TINY, run_cli

    _skfolio_files()

    res = run_cli(
        [
            "plusultra.run",
            *TINY,
            "data=sp500_stocks_factors",
            "data.train_end=2016-12-30",
            "data.val_end=2017-12-29",
            "data.end=2018-12-31",
            "data.embargo=20",
            "evaluation.bootstrap=0",
            "++guardrails.factor_caps.etf_mtum=0.2",
            "++guardrails.factor_lags.etf_mtum=1",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["val_guardrail_factor_cap"] + metrics["test_guardrail_factor_cap"] > 0
