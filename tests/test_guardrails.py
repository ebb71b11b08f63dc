"""Guardrails: each rule against hand-computed numbers, apply_path against a loop of step,
causality, the kill switch, config errors, and an all-off config that changes nothing."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.guardrails import (
    RULES,
    GuardrailConfig,
    Guardrails,
    events_frame,
)

SYMS = ["A", "B", "C", "D"]
ALL = np.ones(4, dtype=bool)


def one_bar(config: GuardrailConfig, proposed, sectors=None, history=None, prev=None):
    """Guard one bar from a fresh state (optionally with return history and previous weights;
    with previous weights and history, the book is marked with the last history row)."""
    g = Guardrails(config, SYMS, sectors)
    state = g.new_state()
    today = np.full(4, np.nan)
    if history is not None:  # the last row is bar t's own returns, known at its close
        g.warm_up(state, history[:-1])
        today = history[-1]
    if prev is not None:
        state.weights = np.asarray(prev, dtype=float)
    return g.step(state, np.asarray(proposed, dtype=float), today, ALL, "2024-01-02")


def test_symbol_cap_clips_each_name():
    w, ev = one_bar(GuardrailConfig(symbol_cap=0.3), [0.5, -0.4, 0.1, 0.0])
    np.testing.assert_allclose(w, [0.3, -0.3, 0.1, 0.0])
    assert [(e.rule, e.symbol, e.before, e.after) for e in ev] == [
        ("symbol_cap", "A", 0.5, 0.3),
        ("symbol_cap", "B", -0.4, -0.3),
    ]
    assert ev[0].timestamp == "2024-01-02"


def test_sector_caps_scale_a_sector_and_star_applies_to_the_rest():
    sectors = {"A": "Tech", "B": "Tech", "C": "Energy", "D": "Energy"}
    cfg = GuardrailConfig(sector_caps={"Tech": 0.4, "*": 0.5})
    w, ev = one_bar(cfg, [0.3, -0.3, 0.2, 0.2], sectors)
    # Tech: |0.3| + |-0.3| = 0.6 > 0.4 -> x 2/3; Energy: 0.4 <= 0.5, untouched
    np.testing.assert_allclose(w, [0.2, -0.2, 0.2, 0.2])
    assert len(ev) == 1 and ev[0].rule == "sector_cap" and ev[0].symbol is None
    assert ev[0].before == pytest.approx(0.6) and ev[0].after == 0.4 and "Tech" in ev[0].detail
    w, ev = one_bar(cfg, [0.0, 0.0, 0.4, -0.4], sectors)  # Energy 0.8 > '*' cap 0.5
    np.testing.assert_allclose(w, [0.0, 0.0, 0.25, -0.25])


def test_net_and_gross_caps_scale_the_book():
    w, ev = one_bar(GuardrailConfig(net_cap=0.2), [0.4, 0.2, -0.1, 0.0])
    np.testing.assert_allclose(w, np.array([0.4, 0.2, -0.1, 0.0]) * 0.4)  # net 0.5 -> 0.2
    assert (ev[0].rule, ev[0].before, ev[0].after) == ("net_cap", pytest.approx(0.5), 0.2)
    w, ev = one_bar(GuardrailConfig(gross_cap=1.0), [0.8, -0.6, 0.4, -0.2])
    np.testing.assert_allclose(w, [0.4, -0.3, 0.2, -0.1])  # gross 2.0 -> 1.0
    assert (ev[0].rule, ev[0].before, ev[0].after) == ("gross_cap", pytest.approx(2.0), 1.0)
    w, ev = one_bar(GuardrailConfig(gross_cap=1.0, net_cap=1.0), [0.3, -0.3, 0.2, 0.1])
    assert ev == [] and np.allclose(w, [0.3, -0.3, 0.2, 0.1])  # within both: untouched


def test_turnover_cap_moves_part_way_from_the_previous_targets():
    prev = [0.5, -0.5, 0.0, 0.0]
    w, ev = one_bar(GuardrailConfig(turnover_cap=0.5), [0.0, 0.0, 0.5, -0.5], prev=prev)
    # wanted turnover 2.0, budget 0.5: a quarter of the way
    np.testing.assert_allclose(w, [0.375, -0.375, 0.125, -0.125])
    assert np.abs(w - prev).sum() == pytest.approx(0.5)
    assert (ev[0].rule, ev[0].before, ev[0].after) == ("turnover_cap", 2.0, 0.5)


def test_turnover_cap_forces_exits_of_untradable_symbols_first():
    g = Guardrails(GuardrailConfig(turnover_cap=0.4), SYMS)
    state = g.new_state()
    state.weights = np.array([0.3, 0.0, 0.0, 0.0])
    tradable = np.array([False, True, True, True])
    w, ev = g.step(state, np.array([0.0, 0.5, 0.0, 0.0]), np.full(4, np.nan), tradable)
    # exit of A (0.3) is forced; the remaining budget 0.1 goes to B
    np.testing.assert_allclose(w, [0.0, 0.1, 0.0, 0.0])
    assert (ev[0].before, ev[0].after) == (pytest.approx(0.8), pytest.approx(0.4))


def test_vol_target_scales_to_the_trailing_book_vol():
    rng = np.random.default_rng(0)
    hist = rng.normal(0, 0.02, size=(10, 4))
    proposed = np.array([0.5, -0.25, 0.25, 0.0])
    book = hist @ proposed
    vol = book.std(ddof=1) * math.sqrt(252)  # by hand: the book's trailing annualised vol
    target = vol / 2
    w, ev = one_bar(GuardrailConfig(vol_target=target, vol_lookback=10), proposed, history=hist)
    np.testing.assert_allclose(w, proposed / 2)
    assert ev[0].rule == "vol_target" and ev[0].before == pytest.approx(vol)
    # fewer than vol_lookback bars known: not applied yet
    w, ev = one_bar(GuardrailConfig(vol_target=target, vol_lookback=11), proposed, history=hist)
    assert ev == [] and np.allclose(w, proposed)
    # below the target: never scaled up
    w, ev = one_bar(GuardrailConfig(vol_target=vol * 2, vol_lookback=10), proposed, history=hist)
    assert ev == [] and np.allclose(w, proposed)


def test_cvar_cap_on_hand_numbers():
    # book = asset A only: returns -4%, -2%, 0..., alpha 0.2 of 10 bars = the 2 worst bars
    hist = np.zeros((10, 4))
    hist[:, 0] = [-0.04, -0.02, 0.01, 0.0, 0.01, 0.02, 0.0, 0.01, 0.0, 0.01]
    cfg = GuardrailConfig(cvar_cap=0.015, cvar_alpha=0.2, cvar_lookback=10)
    w, ev = one_bar(cfg, [1.0, 0.0, 0.0, 0.0], history=hist)
    # CVaR = mean(0.04, 0.02) = 0.03 > 0.015 -> half the book
    np.testing.assert_allclose(w, [0.5, 0, 0, 0])
    assert (ev[0].rule, ev[0].before, ev[0].after) == ("cvar_cap", pytest.approx(0.03), 0.015)


def test_rules_apply_in_the_documented_order():
    sectors = {"A": "X", "B": "X", "C": "Y", "D": "Y"}
    cfg = GuardrailConfig(
        symbol_cap=0.5, sector_caps={"X": 0.6}, net_cap=0.4, gross_cap=0.8, turnover_cap=0.2
    )
    w, ev = one_bar(cfg, [0.9, 0.3, 0.3, -0.4], sectors)
    # symbol: A 0.9 -> 0.5; sector X 0.8 -> 0.6 (x 3/4); net 0.5 -> 0.4 (x 4/5); gross
    # 1.04 -> 0.8 (x 10/13); turnover from flat 0.8 -> 0.2 (x 1/4)
    np.testing.assert_allclose(w, np.array([0.3, 0.18, 0.24, -0.32]) * 10 / 13 / 4)
    rules = [e.rule for e in ev]
    assert rules == ["symbol_cap", "sector_cap", "net_cap", "gross_cap", "turnover_cap"]
    assert rules == sorted(rules, key=RULES.index)


def test_kill_switch_fires_on_drawdown_and_stays_flat():
    g = Guardrails(GuardrailConfig(drawdown_kill=0.1), ["A"])
    state = g.new_state()
    w1, _ = g.step(state, np.array([1.0]), np.array([np.nan]), np.array([True]), "d1")
    w2, ev2 = g.step(state, np.array([1.0]), np.array([0.05]), np.array([True]), "d2")
    assert w2[0] == 1.0 and ev2 == [] and state.equity == pytest.approx(1.05)
    w3, ev3 = g.step(state, np.array([1.0]), np.array([-0.12]), np.array([True]), "d3")
    # equity 1.05 * 0.88 = 0.924, drawdown 12% >= 10%: flat
    assert w3[0] == 0.0 and ev3[0].rule == "drawdown_kill" and state.killed_at == "d3"
    for t, r in enumerate([0.3, 0.5, 0.2]):  # the market recovers; the book stays flat
        w, ev = g.step(state, np.array([0.7]), np.array([r]), np.array([True]), f"e{t}")
        assert w[0] == 0.0 and ev[0].rule == "drawdown_kill" and "d3" in ev[0].detail
    w, ev = g.step(state, np.array([0.0]), np.array([0.1]), np.array([True]))
    assert w[0] == 0.0 and ev == []  # nothing proposed: nothing to flatten, no event


def random_path(seed: int = 0, t: int = 120, s: int = 6):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(t, s)), axis=0))
    close[rng.random((t, s)) < 0.03] = np.nan
    tradable = np.isfinite(close)
    weights = np.where(tradable, rng.normal(0, 0.4, size=(t, s)), 0.0)
    dates = np.arange("2020-01-01", t, dtype="datetime64[D]")[:t]
    return weights, close, tradable, dates


STRICT = GuardrailConfig(
    gross_cap=1.2,
    net_cap=0.3,
    symbol_cap=0.35,
    sector_caps={"X": 0.6, "*": 0.8},
    turnover_cap=0.6,
    vol_target=0.25,
    vol_lookback=10,
    cvar_cap=0.02,
    cvar_alpha=0.1,
    cvar_lookback=20,
    drawdown_kill=0.5,
)
SECTORS = {f"S{i}": ("X" if i < 3 else "Y") for i in range(6)}
NAMES = [f"S{i}" for i in range(6)]


def test_apply_path_equals_a_loop_of_step():
    weights, close, tradable, dates = random_path()
    g = Guardrails(STRICT, NAMES, SECTORS)
    out, events = g.apply_path(weights, close, tradable, dates)
    ref = Guardrails(STRICT, NAMES, SECTORS)
    state, rows, ref_events = ref.new_state(), [], []
    prev_close = np.full(6, np.nan)
    for t in range(len(weights)):  # the reference: plain per-bar returns and step
        r = np.array([c / p - 1 if np.isfinite(c) and np.isfinite(p) else np.nan
                      for c, p in zip(close[t], prev_close, strict=True)])  # fmt: skip
        prev_close = close[t]
        w, ev = ref.step(state, weights[t], r, tradable[t], str(dates[t]))
        rows.append(w)
        ref_events += ev
    np.testing.assert_array_equal(out, np.array(rows))
    assert [e.as_dict() for e in events] == [e.as_dict() for e in ref_events]
    assert {e.rule for e in events} >= {"symbol_cap", "net_cap", "turnover_cap", "vol_target"}
    # every limit holds on the output (turnover: where no exit is forced)
    assert (np.abs(out) <= 0.35 + 1e-12).all() and (np.abs(out.sum(1)) <= 0.3 + 1e-12).all()
    assert (np.abs(out).sum(1) <= 1.2 + 1e-12).all()
    assert (np.abs(out[:, :3]).sum(1) <= 0.6 + 1e-12).all()
    prev = np.vstack([np.zeros((1, 6)), out[:-1]])
    free = (tradable | (prev == 0)).all(axis=1)
    assert (np.abs(out - prev).sum(1)[free] <= 0.6 + 1e-9).all()
    assert (~free).any()  # forced exits happened, and the exposure caps held through them


def test_causal_bars_after_t_do_not_change_weights_up_to_t():
    weights, close, tradable, dates = random_path(seed=1)
    g = Guardrails(STRICT, NAMES, SECTORS)
    base, _ = g.apply_path(weights, close, tradable, dates)
    cut = 70
    rng = np.random.default_rng(9)
    w2, c2 = weights.copy(), close.copy()
    w2[cut + 1 :] = rng.normal(0, 2, size=w2[cut + 1 :].shape) * tradable[cut + 1 :]
    c2[cut + 1 :] *= np.exp(rng.normal(0, 0.3, size=c2[cut + 1 :].shape))
    moved, _ = g.apply_path(w2, c2, tradable, dates)
    np.testing.assert_array_equal(moved[: cut + 1], base[: cut + 1])
    assert not np.array_equal(moved[cut + 1 :], base[cut + 1 :])


def test_all_off_returns_the_weights_unchanged():
    weights, close, tradable, dates = random_path(seed=2)
    g = Guardrails(GuardrailConfig(), NAMES)
    assert not g.active and GuardrailConfig().active_rules == ()
    out, events = g.apply_path(weights, close, tradable, dates)
    np.testing.assert_array_equal(out, weights)
    assert events == [] and events_frame(events).empty


def test_events_are_logged_as_structured_records(caplog):
    with caplog.at_level(logging.INFO, logger="plusultra.guardrails"):
        _, ev = one_bar(GuardrailConfig(gross_cap=0.5), [0.5, 0.5, 0.0, 0.0])
    records = [r for r in caplog.records if r.name == "plusultra.guardrails"]
    assert len(records) == 1 and records[0].guardrail_event == ev[0].as_dict()
    frame = events_frame(ev)
    assert list(frame.columns) == ["timestamp", "symbol", "rule", "before", "after", "detail"]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"gross_cap": 0}, "guardrails.gross_cap"),
        ({"net_cap": -1.0}, "guardrails.net_cap"),
        ({"symbol_cap": "big"}, "guardrails.symbol_cap"),
        ({"turnover_cap": float("inf")}, "guardrails.turnover_cap"),
        ({"vol_target": True}, "guardrails.vol_target"),
        ({"vol_lookback": 1}, "guardrails.vol_lookback"),
        ({"cvar_lookback": 2.5}, "guardrails.cvar_lookback"),
        ({"cvar_alpha": 1.0}, "guardrails.cvar_alpha"),
        ({"cvar_cap": float("nan")}, "guardrails.cvar_cap"),
        ({"drawdown_kill": 1.0}, "guardrails.drawdown_kill"),
        ({"sector_caps": {"Tech": 0}}, "guardrails.sector_caps.Tech"),
        ({"sector_caps": [0.5]}, "guardrails.sector_caps"),
    ],
)
def test_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GuardrailConfig(**kwargs)


def test_from_mapping_reads_a_run_config_node():
    node = {"_target_": "plusultra.guardrails.GuardrailConfig", "gross_cap": 1, "sector_caps": {}}
    assert GuardrailConfig.from_mapping(node) == GuardrailConfig(gross_cap=1.0)
    assert GuardrailConfig.from_mapping(None).active_rules == ()
    with pytest.raises(ConfigError, match=r"guardrails\.gros_cap is not a guardrails key"):
        GuardrailConfig.from_mapping({"gros_cap": 1.0})


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="sector column"):
        Guardrails(GuardrailConfig(sector_caps={"*": 0.5}), SYMS, None)
    g = Guardrails(GuardrailConfig(gross_cap=1.0), SYMS)
    state = g.new_state()
    with pytest.raises(DataError, match="shape"):
        g.step(state, np.zeros(3), np.zeros(4), ALL)
    with pytest.raises(DataError, match="proposed of B is not finite"):
        g.step(state, np.array([0, np.nan, 0, 0]), np.zeros(4), ALL)
    with pytest.raises(DataError, match="C, which is not tradable"):
        g.step(state, np.array([0, 0, 0.1, 0]), np.zeros(4), np.array([1, 1, 0, 1], bool))


# ------------------------------------------------------------------ in the backtest and report


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


def test_backtest_with_guardrails_off_is_unchanged():
    from plusultra.sim.frictionless import FrictionlessSimulator
    from tests.test_strategies import _backtest, _engine_case

    case = _engine_case(3)
    plain = _backtest(case, FrictionlessSimulator())
    off = _backtest(case, FrictionlessSimulator(), guardrails=GuardrailConfig())
    assert off.guardrail_events is None and off.guarded is None
    assert _same(plain.metrics, off.metrics) and plain.baselines.keys() == off.baselines.keys()
    assert not any("guardrail" in k for k in off.metrics)
    np.testing.assert_array_equal(plain.daily.to_numpy(), off.daily.to_numpy())


def test_backtest_trades_apply_path_of_the_model_positions():
    import pandas as pd

    from plusultra.evaluation.backtest.engine import Backtest, decision_mask
    from plusultra.sim.frictionless import FrictionlessSimulator
    from tests.test_strategies import _backtest, _engine_case

    case = _engine_case(4)
    sectors = {s: f"K{i % 2}" for i, s in enumerate(case["symbols"])}
    case["context"].sectors = sectors
    cfg = GuardrailConfig(
        symbol_cap=0.08, sector_caps={"*": 0.45}, turnover_cap=0.3, vol_target=0.1,
        vol_lookback=20,
    )  # fmt: skip
    result = _backtest(case, FrictionlessSimulator(), guardrails=cfg)
    plain = _backtest(case, FrictionlessSimulator())
    # the reference: the model's weights, flat before the segment, guarded from bar 0
    decide = decision_mask(case["tradable"], 1)
    w = Backtest(bootstrap=0).weights(case["preds"], case["dates"], case["symbols"], decide)
    w[:270] = 0.0
    g = Guardrails(cfg, case["symbols"], sectors)
    close = case["context"].carried("close")
    end = 270 + len(result.daily)  # the last decision bar is capped by the exit fills
    ref, ref_events = g.apply_path(w[:end], close[:end], decide[:end], case["dates"][:end])
    np.testing.assert_allclose(result.guarded[270:end], ref[270:], atol=1e-15)
    assert np.isnan(result.guarded[:270]).all() and np.isnan(result.guarded[end:]).all()
    expected = events_frame(ref_events)
    pd.testing.assert_frame_equal(result.guardrail_events, expected)
    counts = expected["rule"].value_counts()
    assert result.metrics["guardrail_events"] == len(expected) > 0
    for rule in cfg.active_rules:
        assert result.metrics[f"guardrail_{rule}"] == counts.get(rule, 0)
    assert {"symbol_cap", "turnover_cap"} <= set(counts.index)
    # the unguarded model beside it is the plain backtest; the baselines are not guarded
    assert _same(result.baselines["unguarded"], {
        k: v for k, v in plain.metrics.items() if k in result.baselines["unguarded"]
    })  # fmt: skip
    assert result.baselines["unguarded"]["sharpe"] == plain.metrics["sharpe"]
    for name, metrics in plain.baselines.items():
        assert _same(metrics, result.baselines[name])
    assert result.metrics["turnover"] <= 0.3 + 1e-9 < plain.metrics["turnover"]


def test_report_counts_table():
    from plusultra.evaluation.report.analysis import guardrail_counts

    assert guardrail_counts({"test_sharpe": 1.0}) is None
    metrics = {
        "val_guardrail_events": 3.0,
        "val_guardrail_gross_cap": 1.0,
        "val_guardrail_turnover_cap": 2.0,
        "test_guardrail_events": 5.0,
        "test_guardrail_gross_cap": 5.0,
        "test_guardrail_turnover_cap": 0.0,
    }
    table = guardrail_counts(metrics)
    assert list(table.index) == ["gross_cap", "turnover_cap", "all"]
    assert table.loc["all"].tolist() == [3.0, 5.0]
    assert table.loc["turnover_cap", "test_events"] == 0.0


def test_the_group_reaches_the_backtest():
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    for option in ("off", "standard", "strict"):
        cfg = compose_config([f"guardrails={option}", "periods_per_year=252"])
        built = instantiate(cfg.guardrails, _convert_="all")
        backtest = instantiate(cfg.evaluation, _convert_="all")
        assert isinstance(built, GuardrailConfig)
        if option == "off":
            assert built == GuardrailConfig() and backtest.guardrails is None
        else:
            assert backtest.guardrails == built and len(built.active_rules) == len(RULES)
    assert compose_config([]).hydra.runtime.choices.guardrails == "off"  # the root default


@pytest.mark.slow
def test_a_run_with_guardrails_records_them(tiny_db, tmp_path):
    """guardrails=standard end to end: events file, metrics, guarded positions, report."""
    import json

    import pandas as pd

    from tests.test_run import _tiny_cfg, run_in_process

    cfg = _tiny_cfg(
        tiny_db, tmp_path, "guardrails=standard", "++guardrails.sector_caps.Sector0=0.05"
    )
    _, run_dir = run_in_process(cfg)
    events = pd.read_parquet(run_dir / "guardrails.parquet")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for segment in ("val", "test"):
        mine = events[events["segment"] == segment]
        assert metrics[f"{segment}_guardrail_events"] == len(mine) > 0
        for rule in RULES:
            assert metrics[f"{segment}_guardrail_{rule}"] == (mine["rule"] == rule).sum()
        assert f"{segment}_unguarded_sharpe" in metrics
    assert (events["rule"] == "sector_cap").any()
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert "guarded_position" in preds.columns
    assert "## Guardrails" in (run_dir / "report.md").read_text()
