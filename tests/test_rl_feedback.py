"""Analyst feedback as offline data for PPO (plusultra.rl.feedback; docs/rl.md, "Analyst
feedback as offline data"): the penalties against naive references, the placement of reviews
on the train segment's bars, and PPO with vetoes moving the policy away from them."""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from plusultra.errors import ConfigError
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.feedback import (
    FeedbackSettings,
    approve_penalty_discrete,
    build_penalty,
    feedback_bars,
    place_reviews,
    veto_penalty_continuous,
    veto_penalty_discrete,
)
from plusultra.rl.market import EnvMarket
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.service.feedback import ReviewStore
from plusultra.training.curriculum import build_stage
from tests.test_ppo import MLPBackbone
from tests.test_rl_stage import PPO, SMALL, _factory, _module, dm  # noqa: F401 (fixture)

W, F, S, T = 4, 2, 3, 200
TRAIN = (0, 120)  # decision bars of the train segment
DATES = pd.bdate_range("2020-01-01", periods=T)
SYMBOLS = ["AAA", "BBB", "CCC"]


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def veto_ref(mean: float, std: float, v: float, band: float) -> float:
    """-log(1 - P(|clip(a) - v| <= band)), a ~ N(mean, std), by the clipped action's law."""
    lo, hi = v - band, v + band
    p_lo = 0.0 if lo <= -1 else _phi((lo - mean) / std)  # P(clip(a) < lo)
    p_hi = 0.0 if hi >= 1 else 1 - _phi((hi - mean) / std)  # P(clip(a) > hi)
    return -math.log(p_lo + p_hi)


def test_continuous_veto_penalty_matches_the_naive_reference():
    cases = [(0.0, 0.3, 0.0, 0.1), (0.5, 0.6, 0.2, 0.1), (0.95, 0.2, 1.0, 0.1),
             (-0.4, 0.5, -1.0, 0.25), (0.3, 0.1, -0.5, 0.05), (1.3, 0.4, 1.0, 0.1)]  # fmt: skip
    mean = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    log_std = torch.tensor([math.log(c[1]) for c in cases], dtype=torch.float64)
    v = torch.tensor([c[2] for c in cases], dtype=torch.float64)
    for i, (m, sd, vv, band) in enumerate(cases):
        got = veto_penalty_continuous(mean[i : i + 1], log_std[i], v[i : i + 1], band)
        assert float(got) == pytest.approx(veto_ref(m, sd, vv, band), rel=1e-9, abs=1e-12)


def test_veto_penalties_push_away_from_the_vetoed_position():
    mean = torch.tensor([0.1, 0.9], requires_grad=True)
    log_std = torch.tensor(math.log(0.3), requires_grad=True)
    veto_penalty_continuous(mean, log_std, torch.tensor([0.0, 1.0]), 0.1).sum().backward()
    assert mean.grad[0] < 0 and mean.grad[1] > 0  # descent: up from 0, down from the +1 bound
    assert log_std.grad is None  # the std is detached: only the mean moves
    logits = torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, 0.5]], dtype=torch.float64)
    action = torch.tensor([2, 0])
    p = torch.softmax(logits, -1)[[0, 1], action]
    expected = -torch.log(1 - p)
    torch.testing.assert_close(veto_penalty_discrete(logits, action), expected)
    torch.testing.assert_close(approve_penalty_discrete(logits, action), -torch.log(p))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"feedback\.veto_weight=-1"):
        FeedbackSettings(veto_weight=-1)
    with pytest.raises(ConfigError, match=r"feedback\.veto_band=0"):
        FeedbackSettings(veto_band=0)
    with pytest.raises(ConfigError, match="feedback.db='nope.sqlite': no such review store"):
        FeedbackSettings(db="nope.sqlite", veto_weight=1.0).store()
    assert not FeedbackSettings(db="x", veto_weight=0.0).active
    assert not FeedbackSettings(db=None, veto_weight=1.0).active
    with pytest.raises(ConfigError, match=r"feedback: unknown key\(s\) \['weight'\]"):
        build_stage(1, {"kind": "ppo", "name": "ppo", "simulator": object(),
                        "feedback": {"weight": 1.0}})  # fmt: skip


# ----------------------------------------------------------------------- an env and reviews


def env(action_kind: str = "continuous") -> TradingEnv:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(T, S, F)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, S)), axis=0))
    market = EnvMarket.build(feats, close, W, open_=close * 1.001)
    cfg = EnvConfig(n_envs=4, episode_len=16, action_kind=action_kind)
    return TradingEnv(market, TRAIN, W, cfg)


def reviews(tmp_path, rows) -> ReviewStore:
    store = ReviewStore(tmp_path / "reviews.sqlite")
    for symbol, bar, position, verdict in rows:
        store.add("run-1", symbol, DATES[bar], verdict, "ana", "why", position)
    return store


def test_reviews_outside_the_train_bars_are_ignored_and_counted(tmp_path, caplog):
    e = env()
    first, last = feedback_bars(e)
    assert (first, last) == (W - 1, TRAIN[1] - 1 - 1)  # next-open fill: lag 1
    rows = [("AAA", 50, 0.8, "veto"), ("BBB", 60, -0.5, "approve"), ("AAA", 70, 0.1, "flag"),
            ("AAA", last + 1, 0.8, "veto"),  # its fill lies past the train segment
            ("CCC", 150, 0.3, "veto"), ("CCC", 1, 0.3, "veto"),  # validation; no full window
            ("ZZZ", 50, 0.3, "veto")]  # fmt: skip
    store = reviews(tmp_path, rows)
    data = place_reviews(store.frame(), DATES, SYMBOLS, first, last, e.market.observable.numpy())
    assert data.counts == {"veto": 1, "approve": 1, "flag": 1, "unused_verdict": 0,
                           "no_position": 0, "not_in_data": 1, "outside_train": 3,
                           "not_tradable": 0}  # fmt: skip
    assert data.bars.tolist() == [50, 60] and data.symbols.tolist() == [0, 1]
    assert data.veto.tolist() == [True, False]
    settings = FeedbackSettings(db=str(store.path), veto_weight=1.0)  # approvals unused
    with caplog.at_level(logging.INFO, logger="plusultra.rl.feedback"):
        penalty = build_penalty(settings, e, DATES, SYMBOLS)
    assert penalty.n == 1
    assert "used 1 veto(es) and 0 approval(s) at train bars of 6 review(s)" in caplog.text
    assert "3 outside train" in caplog.text and "1 unused verdict" in caplog.text
    only_outside = reviews(tmp_path / "b", [("CCC", 150, 0.3, "veto")])
    off = FeedbackSettings(db=str(only_outside.path), veto_weight=1.0)
    with caplog.at_level(logging.WARNING, logger="plusultra.rl.feedback"):
        assert build_penalty(off, e, DATES, SYMBOLS) is None
    assert "no usable review" in caplog.text


def test_observations_of_review_bars_are_the_envs():
    e = env()
    bars = torch.tensor([10, 50])
    obs = e.observe_bars(bars)
    e.t[:2] = bars
    live = e.observe(torch.tensor([0, 1]))
    torch.testing.assert_close(obs.features, live.features)
    torch.testing.assert_close(obs.mask, live.mask)
    assert obs.position.abs().sum() == 0 and torch.all(obs.cash == 1)


# --------------------------------------------------------------------- PPO with vetoes


# one epoch of 3 updates, each one pass of 2 minibatches over 4 envs x 8 steps
FAST = {"n_steps": 8, "updates_per_epoch": 3, "update_epochs": 1, "n_minibatches": 2, "lr": 1e-2}


def train(action_kind: str, penalty_settings: FeedbackSettings | None, store) -> ActorCritic:
    e = env(action_kind)
    torch.manual_seed(0)
    policy = ActorCritic(MLPBackbone(W, F), action_kind, hidden=16, log_std_init=-2.0)
    feedback = build_penalty(penalty_settings, e, DATES, SYMBOLS) if penalty_settings else None
    ppo = PPOModule(policy, e, PPOSettings(**FAST), None, feedback)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(ppo)
    assert penalty_settings is None or ppo.last_logs["train/feedback_veto"] > 0
    return policy.eval()


# the flat book at those bars is vetoed: where the fresh policy (mean ~0, std 0.135) sits
VETO = 0.0
VETOED = [(s, bar) for bar in (20, 40, 60, 80) for s in ("AAA", "BBB")]


@pytest.mark.parametrize("action_kind", ["continuous", "discrete"])
def test_vetoes_lower_the_policys_probability_of_the_vetoed_positions(tmp_path, action_kind):
    store = reviews(tmp_path, [(s, bar, VETO, "veto") for s, bar in VETOED])
    settings = FeedbackSettings(db=str(store.path), veto_weight=5.0)
    base, vetoed = train(action_kind, None, store), train(action_kind, settings, store)
    e = env(action_kind)
    bars = torch.tensor(sorted({b for _, b in VETOED}))
    cols = torch.tensor([SYMBOLS.index(s) for s in ("AAA", "BBB")])

    def prob_of_veto(policy):  # (bars, 2): P(trading the vetoed position) at the vetoed cells
        with torch.no_grad():
            out = policy(e.observe_bars(bars))
        if action_kind == "continuous":
            q = 1 - torch.exp(
                -veto_penalty_continuous(
                    out.mean, out.log_std, torch.full_like(out.mean, VETO), 0.1
                )
            )
            return q[:, cols]
        return torch.softmax(out.logits, -1)[:, cols, 1]  # hold: the sign of 0

    before, after = prob_of_veto(base), prob_of_veto(vetoed)
    assert before.mean() > 0.05  # the unpenalised policy would trade it: the test can fail
    assert (after < before).all()
    assert after.mean() < 0.75 * before.mean()  # by a clear margin, not noise


# ------------------------------------------------------------------- the PPO stage's key


def test_the_ppo_stage_reads_feedback_from_the_store(dm, tmp_path, caplog):  # noqa: F811
    """`feedback` of a PPO stage: vetoes at train bars enter the loss; one in the test segment
    is ignored and counted; a missing store fails the stage's check."""
    store = ReviewStore(tmp_path / "reviews.sqlite")
    dates, symbols = dm.panel.dates, list(dm.panel.symbols)
    lo, hi = dm.segments.train
    for bar in (lo + dm.window + 5, (lo + hi) // 2):
        store.add("run-0", symbols[0], dates[bar], "veto", "ana", "too long", 0.0)
    store.add("run-0", symbols[1], dates[dm.segments.test[0]], "veto", "ana", "test bar", 0.0)
    spec = {**PPO, **SMALL, "epochs": 1}
    with pytest.raises(ConfigError, match=r"stage 'ppo': feedback\.db='.*nope\.sqlite'"):
        bad = {"db": str(tmp_path / "nope.sqlite"), "veto_weight": 1.0}
        build_stage(1, {**spec, "feedback": bad}).check(_module(dm), dm)
    stage = build_stage(1, {**spec, "feedback": {"db": str(store.path), "veto_weight": 1.0}})
    stage.check(_module(dm), dm)
    with caplog.at_level(logging.INFO, logger="plusultra.rl.feedback"):
        result = stage.run(_module(dm), dm, _factory(tmp_path / "ckpt"), final=True)
    assert "used 2 veto(es) and 0 approval(s) at train bars of 3 review(s)" in caplog.text
    assert "1 outside train" in caplog.text
    ppo = result.trainer.lightning_module
    assert ppo.feedback is not None and ppo.last_logs["train/feedback_veto"] > 0
