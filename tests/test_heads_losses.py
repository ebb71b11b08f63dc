"""Heads and losses: shapes, constraints, the kind contract, and naive references.

Every vectorised loss is compared with a ``*_ref`` written as plain Python loops over the batch
(the portfolio losses: per date, per symbol), in float64: values to 1e-10 absolute / 1e-9
relative, gradients (autograd through both) to 1e-9 relative.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra.utils import get_object

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest import positions
from plusultra.models.heads import (
    ALPHA_MIN,
    HEAD_KINDS,
    CalibratedHead,
    PolicyHead,
    QuantileHead,
    RegressionHead,
    classify,
    expected_calibration_error,
    non_crossing,
)
from plusultra.models.losses import (
    LOSSES,
    CalibratedLoss,
    CVaR,
    DrawdownPenalty,
    Huber,
    NegSharpe,
    NegSortino,
    Pinball,
    RiskAware,
    accepted_kinds,
    check_compatible,
)
from plusultra.models.portfolio import cap_exposure, cvar, max_drawdown, portfolio_series
from plusultra.run import CONF_DIR

B, T, D, H = 8, 6, 16, 4
TOL = {"atol": 1e-10, "rtol": 1e-9}
GRAD_TOL = {"atol": 1e-12, "rtol": 1e-9}

# One instance of each head option, with the kind and the out / signal shapes it must give.
HEAD_CASES = {
    "regression": (lambda: RegressionHead(D, H), "forecast", (B, H), (B, H)),
    "regression_mlp_mean": (
        lambda: RegressionHead(D, H, hidden=8, pool="mean"),
        "forecast",
        (B, H),
        (B, H),
    ),
    "quantile": (lambda: QuantileHead(D, H), "quantiles", (B, H, 3), (B, H)),
    "quantile_5_mlp": (
        lambda: QuantileHead(D, H, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95), hidden=8),
        "quantiles",
        (B, H, 5),
        (B, H),
    ),
    "calibrated": (lambda: CalibratedHead(D, H), "calibrated", (B, H, 6), (B, H)),
    "policy_continuous": (lambda: PolicyHead(D), "position", (B, 1), (B, 1)),
    "policy_discrete": (lambda: PolicyHead(D, mode="discrete"), "position", (B, 3), (B, 1)),
}
LOSS_CASES = {
    "mse": torch.nn.MSELoss,
    "huber": Huber,
    "pinball": Pinball,
    "calibrated": CalibratedLoss,
    "sharpe": NegSharpe,
    "sortino": NegSortino,
    "drawdown": DrawdownPenalty,
    "cvar": CVaR,
    "risk_aware": lambda: RiskAware(mse_weight=0.0, sharpe_weight=1.0, cvar_weight=0.5),
}
# Which head kinds each loss accepts: the documented compatibility table.
ACCEPTS = {
    "mse": {"forecast"},
    "huber": {"forecast"},
    "pinball": {"quantiles"},
    "calibrated": {"calibrated"},
    "sharpe": {"forecast", "position"},
    "sortino": {"forecast", "position"},
    "drawdown": {"forecast", "position"},
    "cvar": {"forecast", "position"},
    "risk_aware": {"forecast", "position"},
}
RISK = ["sharpe", "sortino", "drawdown", "cvar", "risk_aware"]


def _scramble(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Adversarial weights: large random values of both signs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------- naive references


def non_crossing_ref(raw: torch.Tensor) -> torch.Tensor:
    """q_0 = raw_0, q_k = q_{k-1} + softplus(raw_k), one element at a time."""
    out = torch.empty_like(raw)
    flat_in, flat_out = raw.reshape(-1, raw.shape[-1]), out.view(-1, raw.shape[-1])
    for i in range(flat_in.shape[0]):
        flat_out[i, 0] = flat_in[i, 0]
        for k in range(1, raw.shape[-1]):
            flat_out[i, k] = flat_out[i, k - 1] + math.log1p(math.exp(float(flat_in[i, k])))
    return out


def classify_ref(v: float, band: float) -> int:
    return 0 if v <= -band else (2 if v >= band else 1)


def ece_ref(probs: torch.Tensor, y: torch.Tensor, band: float, n_bins: int) -> float:
    rows = probs.reshape(-1, 3).tolist()
    ys = y.reshape(-1).tolist()
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for p, v in zip(rows, ys, strict=True):
        conf = max(p)
        pred = p.index(conf)
        b = min(int(conf * n_bins), n_bins - 1)
        bins[b].append((conf, pred == classify_ref(v, band)))
    total = 0.0
    for members in bins:
        if members:
            acc = sum(hit for _, hit in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(ys) * abs(acc - conf)
    return total


def huber_ref(out: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    total = out.new_zeros(())
    for i in range(out.shape[0]):
        for h in range(out.shape[1]):
            a = abs(out[i, h] - y[i, h])
            total = total + (0.5 * a**2 if a < delta else delta * (a - 0.5 * delta))
    return total / out.numel()


def pinball_ref(q: torch.Tensor, y: torch.Tensor, taus: tuple[float, ...]) -> torch.Tensor:
    total = q.new_zeros(())
    for i in range(q.shape[0]):
        for h in range(q.shape[1]):
            for k, tau in enumerate(taus):
                u = y[i, h] - q[i, h, k]
                total = total + (tau * u if u >= 0 else (tau - 1) * u)
    return total / q.numel()


def calibrated_ref(out, y, taus, band, nll_weight, pinball_weight) -> torch.Tensor:
    nll = out.new_zeros(())
    for i in range(out.shape[0]):
        for h in range(out.shape[1]):
            alpha = out[i, h, :3]
            c = classify_ref(float(y[i, h]), band)
            nll = nll - torch.log(alpha[c] / (alpha[0] + alpha[1] + alpha[2]))
    nll = nll / (out.shape[0] * out.shape[1])
    return nll_weight * nll + pinball_weight * pinball_ref(out[..., 3:], y, taus)


def position_ref(out, i: int, kind: str, step: int = 0, temperature: float = 1.0):
    """Sample i's position, one element at a time."""
    if kind == "position" and out.shape[1] == 1:
        return out[i, 0]
    if kind == "position":  # (sell, hold, buy) logits
        e = [torch.exp(out[i, a]) for a in range(3)]
        return (e[2] - e[0]) / (e[0] + e[1] + e[2])
    return torch.tanh(out[i, step] / temperature)


def book_ref(out, date, symbol, ret, kind, step=0, temperature=1.0, gross=1.0, net=None, cost=0.0):
    """The block's portfolio returns, per date and per symbol in plain loops: (dates, returns).

    Each date's book is scaled by one factor so that sum|w| <= gross and |sum w| <= net; a
    (date, symbol) without a sample holds 0; turnover from the previous date of the block.
    """
    dates, symbols = sorted(set(date.tolist())), sorted(set(symbol.tolist()))
    zero = out.sum() * 0
    p = {(d, s): zero for d in dates for s in symbols}
    r = {(d, s): 0.0 for d in dates for s in symbols}
    for i in range(len(date)):
        key = (int(date[i]), int(symbol[i]))
        p[key], r[key] = position_ref(out, i, kind, step, temperature), float(ret[i])
    returns, previous = [], None
    for d in dates:
        total_abs = sum(abs(p[d, s]) for s in symbols)
        total = sum(p[d, s] for s in symbols)
        scale = zero + 1.0
        if total_abs > gross:
            scale = gross / total_abs
        if net is not None and abs(total) * scale > net:
            scale = net / abs(total)
        w = {s: p[d, s] * scale for s in symbols}
        value = sum(w[s] * r[d, s] for s in symbols)
        if previous is not None:
            value = value - cost * sum(abs(w[s] - previous[s]) for s in symbols)
        returns.append(value)
        previous = w
    return dates, returns


def sharpe_ref(r: list, eps: float) -> torch.Tensor:
    mean = sum(r) / len(r)
    var = sum((x - mean) ** 2 for x in r) / len(r)
    return -mean / torch.sqrt(var + eps)


def sortino_ref(r: list, eps: float) -> torch.Tensor:
    mean = sum(r) / len(r)
    down = sum(torch.clamp(x, max=0) ** 2 for x in r) / len(r)
    return -mean / torch.sqrt(down + eps)


def drawdown_ref(r: list) -> torch.Tensor:
    """Max over s <= t of path_s - path_t, path starting at 0, by a double loop."""
    path = [r[0] * 0]
    for x in r:
        path.append(path[-1] + x)
    return max(path[s] - path[t] for t in range(len(path)) for s in range(t + 1))


def cvar_ref(r: list, alpha: float) -> torch.Tensor:
    """R–U objective at the inverse-CDF alpha-quantile of the losses, by sorting a list."""
    losses = [-x for x in r]
    k = max(math.ceil(alpha * len(losses) - 1e-9), 1)
    z = sorted(v.item() for v in losses)[k - 1]
    excess = [v - z for v in losses if v > z]  # strictly beyond the VaR
    return z + sum(excess, losses[0] * 0) / (len(losses) * (1 - alpha))


def cvar_tail_ref(r: list, alpha: float) -> torch.Tensor:
    """Mean of the worst (1 - alpha) * B losses (valid when that is an integer)."""
    m = round((1 - alpha) * len(r))
    return sum(sorted((-x for x in r), key=lambda v: v.item(), reverse=True)[:m]) / m


BOOK = {"block": 4, "cost_bps": 20.0, "gross": 1.5, "net": 0.5}  # caps and costs that bind
RISK_REFS = {
    "sharpe": (lambda: NegSharpe(eps=1e-6, **BOOK), lambda r: sharpe_ref(r, 1e-6)),
    "sortino": (lambda: NegSortino(eps=1e-6, **BOOK), lambda r: sortino_ref(r, 1e-6)),
    "drawdown": (lambda: DrawdownPenalty(**BOOK), drawdown_ref),
    "cvar": (lambda: CVaR(alpha=0.8, **BOOK), lambda r: cvar_ref(r, 0.8)),
}


def _market(n_dates: int, n_symbols: int, seed: int = 1, missing: float = 0.2):
    """A portfolio batch's (date, symbol, ret), (B,) each: dates 100, 101, ... with some
    (date, symbol) cells missing, the samples in a scrambled order."""
    g = torch.Generator().manual_seed(seed)
    d, s = torch.meshgrid(torch.arange(100, 100 + n_dates), torch.arange(n_symbols), indexing="ij")
    keep = torch.rand(d.shape, generator=g) >= missing
    keep[:, 0] = True  # every date has a sample
    date, symbol = d[keep], s[keep]
    order = torch.randperm(len(date), generator=g)
    ret = torch.randn(len(date), generator=g, dtype=torch.float64) * 0.02
    return date[order], symbol[order], ret[order]


def _risk_inputs(kind: str, n_dates: int = 12, n_symbols: int = 5, seed: int = 1):
    """(out, y, head kind, date, symbol, ret) of a random portfolio batch; out requires grad."""
    date, symbol, ret = _market(n_dates, n_symbols, seed)
    b = len(date)
    g = torch.Generator().manual_seed(seed + 100)
    width = {"forecast": H, "position": 1, "discrete": 3}[kind]
    out = torch.randn(b, width, generator=g, dtype=torch.float64)
    if kind == "position":
        out = out.tanh()
    y = torch.randn(b, H, generator=g, dtype=torch.float64)
    head_kind = "position" if kind == "discrete" else kind
    return out.requires_grad_(), y, head_kind, date, symbol, ret


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_head_shapes_kind_and_signal(case):
    build, kind, out_shape, signal_shape = HEAD_CASES[case]
    head = build()
    out = head(torch.randn(B, T, D))
    assert head.kind == kind and kind in HEAD_KINDS
    assert out.shape == out_shape and torch.isfinite(out).all()
    assert head.signal(out).shape == signal_shape


def test_registry_names_every_head_and_loss_and_matches_yaml():
    """Each conf/loss option builds the class registered in LOSSES; each head has a known kind."""
    conf = Path(CONF_DIR)
    for path in (conf / "loss").glob("*.yaml"):
        target = yaml.safe_load(path.read_text())["_target_"]
        assert LOSSES[path.stem] is get_object(target), path
    for path in (conf / "head").glob("*.yaml"):
        assert get_object(yaml.safe_load(path.read_text())["_target_"]).kind in HEAD_KINDS, path


def test_regression_signal_is_the_forecast():
    head = RegressionHead(D, H)
    out = head(torch.randn(B, T, D))
    assert head.signal(out) is out


def test_non_crossing_matches_reference():
    raw = torch.randn(5, 3, 4, dtype=torch.float64) * 3
    torch.testing.assert_close(non_crossing(raw), non_crossing_ref(raw), **TOL)


@pytest.mark.parametrize("cls", [QuantileHead, CalibratedHead])
@pytest.mark.parametrize("hidden", [None, 8])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_quantiles_never_cross_even_with_adversarial_weights(cls, hidden, scale):
    head = cls(D, H, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95), hidden=hidden)
    _scramble(head, scale)
    q = head(torch.randn(64, T, D) * 10)[..., -5:]  # (B, H, Q)
    assert torch.isfinite(q).all()
    assert (q.diff(dim=-1) >= 0).all()


def test_quantile_signal_is_the_median_level():
    head = QuantileHead(D, H, quantiles=(0.25, 0.5, 0.75, 0.9))
    out = head(torch.randn(B, T, D))
    torch.testing.assert_close(head.signal(out), out[..., 1])
    cal = CalibratedHead(D, H, quantiles=(0.1, 0.3, 0.5, 0.9))
    out = cal(torch.randn(B, T, D))
    torch.testing.assert_close(cal.signal(out), out[..., 3 + 2])


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_dirichlet_alphas_positive_and_probabilities_sum_to_one(scale):
    head = CalibratedHead(D, H)
    _scramble(head, scale, seed=3)
    out = head(torch.randn(64, T, D) * 10)
    assert (out[..., :3] >= ALPHA_MIN).all()
    probs = head.probabilities(out)
    assert probs.shape == (64, H, 3) and (probs > 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, H))


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_policy_positions_in_range(scale):
    cont, disc = PolicyHead(D), PolicyHead(D, mode="discrete")
    _scramble(cont, scale)
    _scramble(disc, scale)
    h = torch.randn(64, T, D) * 10
    p = cont(h)
    assert p.shape == (64, 1) and (p.abs() <= 1).all()
    torch.testing.assert_close(cont.signal(p), p)
    logits = disc(h)
    s = disc.signal(logits)
    assert s.shape == (64, 1) and (s.abs() <= 1).all() and torch.isfinite(s).all()
    probs = torch.softmax(logits, -1)  # (sell, hold, buy)
    torch.testing.assert_close(s[:, 0], probs[:, 2] - probs[:, 0])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: QuantileHead(D, H, quantiles=(0.1, 0.9)), "0.5"),
        (lambda: QuantileHead(D, H, quantiles=(0.9, 0.5, 0.1)), "sorted"),
        (lambda: QuantileHead(D, H, quantiles=(0.5, 0.5)), "sorted"),
        (lambda: QuantileHead(D, H, quantiles=(0.0, 0.5)), r"\(0, 1\)"),
        (lambda: QuantileHead(D, H, quantiles=(0.5, 1.0)), r"\(0, 1\)"),
        (lambda: QuantileHead(D, H, quantiles=()), "quantiles"),
        (lambda: QuantileHead(D, H, quantiles=["a", 0.5]), "quantiles"),
        (lambda: QuantileHead(D, 0), "horizon"),
        (lambda: QuantileHead(D, H, pool="max"), "last.*mean"),
        (lambda: CalibratedHead(D, H, flat_band=0.0), "flat_band"),
        (lambda: CalibratedHead(D, H, quantiles=(0.2, 0.8)), "0.5"),
        (lambda: CalibratedHead(D, H, hidden=0), "hidden"),
        (lambda: PolicyHead(D, mode="greedy"), "mode.*continuous.*discrete"),
        (lambda: PolicyHead(D, dropout=1.0), "dropout"),
        (lambda: PolicyHead(0), "d_model"),
    ],
)
def test_head_bad_args_raise(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_classify_matches_reference_at_band_edges():
    y = torch.tensor([-1.0, -0.1, -0.0999, 0.0, 0.0999, 0.1, 2.0])
    assert classify(y, 0.1).tolist() == [classify_ref(float(v), 0.1) for v in y]
    assert classify(y, 0.1).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_expected_calibration_error_matches_reference():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, H, 3, generator=g) * 2, dim=-1)
    y = torch.randn(50, H, generator=g) * 0.3
    for n_bins in (1, 5, 10):
        got = expected_calibration_error(probs, y, 0.1, n_bins=n_bins)
        assert got == pytest.approx(ece_ref(probs, y, 0.1, n_bins), abs=1e-6)
    sure_and_right = F.one_hot(classify(y, 0.1), 3).float()
    assert expected_calibration_error(sure_and_right, y, 0.1) == pytest.approx(0.0)
    sure_and_wrong = F.one_hot((classify(y, 0.1) + 1) % 3, 3).float()
    assert expected_calibration_error(sure_and_wrong, y, 0.1) == pytest.approx(1.0)


# ---------------------------------------------------------------- losses vs references


def test_huber_matches_reference():
    out = (torch.randn(B, H, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randn(B, H, dtype=torch.float64)
    for delta in (0.5, 1.0):
        torch.testing.assert_close(Huber(delta)(out, y), huber_ref(out, y, delta), **TOL)


def test_pinball_matches_reference_values_and_gradients():
    taus = (0.1, 0.5, 0.9)
    raw = torch.randn(B, H, 3, dtype=torch.float64, requires_grad=True)
    q = non_crossing(raw)
    y = torch.randn(B, H, dtype=torch.float64)
    got, want = Pinball(taus)(q, y), pinball_ref(q, y, taus)
    torch.testing.assert_close(got, want, **TOL)
    (g_got,) = torch.autograd.grad(got, raw, retain_graph=True)  # q's graph is shared
    (g_want,) = torch.autograd.grad(want, raw)
    torch.testing.assert_close(g_got, g_want, **GRAD_TOL)


def test_calibrated_loss_matches_reference_values_and_gradients():
    head = CalibratedHead(D, H, quantiles=(0.2, 0.5, 0.8), flat_band=0.3).double()
    h = torch.randn(B, T, D, dtype=torch.float64)
    y = torch.randn(B, H, dtype=torch.float64) * 0.5
    loss = CalibratedLoss(quantiles=(0.2, 0.5, 0.8), flat_band=0.3, nll_weight=0.7)
    got = loss(head(h), y)
    want = calibrated_ref(head(h), y, (0.2, 0.5, 0.8), 0.3, 0.7, 1.0)
    torch.testing.assert_close(got, want, **TOL)
    w = head.net.weight
    torch.testing.assert_close(
        torch.autograd.grad(got, w)[0], torch.autograd.grad(want, w)[0], **GRAD_TOL
    )


def test_calibrated_nll_is_dirichlet_multinomial_predictive():
    """NLL of class c is -log(alpha_c / alpha_0): alphas (1, 2, 5) and an "up" target."""
    out = torch.tensor([[[1.0, 2.0, 5.0, -1.0, 0.0, 1.0]]])
    loss = CalibratedLoss(nll_weight=1.0, pinball_weight=0.0)
    assert float(loss(out, torch.tensor([[3.0]]))) == pytest.approx(-math.log(5 / 8))


@pytest.mark.parametrize("kind", ["forecast", "position", "discrete"])
@pytest.mark.parametrize(
    "book", [{}, {"gross": 1.5, "net": 0.5, "cost": 20e-4}, {"gross": 0.3, "cost": 1e-3}]
)
def test_portfolio_series_matches_reference(kind, book):
    """Book per date and symbol, caps, turnover cost: vectorised vs loops, values and grads."""
    out, y, head_kind, date, symbol, ret = _risk_inputs(kind)
    for step, temperature in [(0, 1.0), (2, 0.5)] if kind == "forecast" else [(0, 1.0)]:
        loss = NegSharpe(block=4, step=step, temperature=temperature).bind(head_kind)
        p = loss.positions(out)
        got = portfolio_series(p, ret, date, symbol, **book)
        dates, want = book_ref(out, date, symbol, ret, head_kind, step, temperature, **book)
        assert got.dates.tolist() == dates
        torch.testing.assert_close(got.returns, torch.stack(want), **TOL)
        assert (got.weights.abs().sum(1) <= book.get("gross", 1.0) + 1e-12).all()
        if "net" in book:
            assert (got.weights.sum(1).abs() <= book["net"] + 1e-12).all()
        (g_got,) = torch.autograd.grad(got.returns.sum(), out)
        (g_want,) = torch.autograd.grad(sum(want), out)
        torch.testing.assert_close(g_got, g_want, **GRAD_TOL)


def test_cap_exposure_matches_the_backtest_caps():
    """The differentiable caps equal positions.cap_exposure (the backtest's) and its loop."""
    w = torch.randn(30, 7, dtype=torch.float64) * 0.4
    w[3] = 0.0
    w[4] = 0.01  # inside both caps: unchanged
    for gross, net in [(1.0, None), (1.0, 0.2), (2.5, 1.0), (0.5, 0.5)]:
        got = cap_exposure(w, gross, net).numpy()
        np.testing.assert_allclose(got, positions.cap_exposure(w.numpy(), gross, net), rtol=1e-15)
        np.testing.assert_allclose(
            got, positions.cap_exposure_reference(w.numpy(), gross, net), rtol=1e-12, atol=1e-15
        )
    np.testing.assert_array_equal(cap_exposure(w, 1.0, 0.2)[4].numpy(), w[4].numpy())


@pytest.mark.parametrize("name", sorted(RISK_REFS))
@pytest.mark.parametrize("kind", ["forecast", "position", "discrete"])
def test_risk_losses_match_reference_values_and_gradients(name, kind):
    """Each loss on the block's portfolio series equals its loop reference, with gradients."""
    build, ref = RISK_REFS[name]
    out, y, head_kind, date, symbol, ret = _risk_inputs(kind)
    got = build().bind(head_kind)(out, y, date, symbol, ret)
    cost = BOOK["cost_bps"] / 1e4
    _, series = book_ref(out, date, symbol, ret, head_kind, gross=1.5, net=0.5, cost=cost)
    want = ref(series)
    torch.testing.assert_close(got, want, **TOL)
    (g_got,) = torch.autograd.grad(got, out)
    (g_want,) = torch.autograd.grad(want, out)
    torch.testing.assert_close(g_got, g_want, **GRAD_TOL)


def test_risk_losses_follow_time_order_not_batch_order():
    """Scrambling the samples of a batch changes nothing: the book is arranged by date."""
    out, y, head_kind, date, symbol, ret = _risk_inputs("position")
    perm = torch.randperm(len(date), generator=torch.Generator().manual_seed(5))
    for name in RISK:
        loss = LOSS_CASES[name]().bind(head_kind)
        a = loss(out, y, date, symbol, ret)
        b = loss(out[perm], y[perm], date[perm], symbol[perm], ret[perm])
        torch.testing.assert_close(a, b, **TOL)


def test_turnover_cost_lowers_the_objective_of_a_trading_book():
    out, y, head_kind, date, symbol, ret = _risk_inputs("position")
    free = NegSharpe(block=4, cost_bps=0.0).bind(head_kind)(out, y, date, symbol, ret)
    costly = NegSharpe(block=4, cost_bps=50.0).bind(head_kind)(out, y, date, symbol, ret)
    assert costly > free  # a higher negative Sharpe: costs are inside the objective


def test_soft_drawdown_bounds_exact_drawdown():
    r = torch.randn(30, dtype=torch.float64)
    exact = max_drawdown(r)
    torch.testing.assert_close(exact, drawdown_ref(list(r)), **TOL)
    for smooth in (1e-3, 0.1, 1.0):
        soft = max_drawdown(r, smooth)
        assert exact <= soft <= exact + smooth * math.log(31) + 1e-12


@pytest.mark.parametrize(("b", "alpha"), [(20, 0.95), (40, 0.95), (10, 0.8), (8, 0.5)])
def test_cvar_is_mean_of_worst_tail_with_its_gradient(b, alpha):
    """When (1 - alpha) * D is an integer, CVaR is the mean of that many worst losses."""
    r = torch.randn(b, dtype=torch.float64, requires_grad=True)
    got, want = cvar(r, alpha), cvar_tail_ref(list(r), alpha)
    torch.testing.assert_close(got, want, **TOL)
    (g_got,) = torch.autograd.grad(got, r)
    (g_want,) = torch.autograd.grad(want, r)
    torch.testing.assert_close(g_got, g_want, **GRAD_TOL)


@pytest.mark.parametrize("b", [1, 7, 13, 30])
def test_cvar_z_minimises_the_rockafellar_uryasev_objective(b):
    r = torch.randn(b, dtype=torch.float64)
    alpha = 0.9
    got = float(cvar(r, alpha))
    assert got == pytest.approx(float(cvar_ref(list(r), alpha)), abs=1e-10)
    for z in torch.cat([-r, torch.linspace(-3, 3, 61, dtype=torch.float64)]).tolist():
        objective = z + float(F.relu(-r - z).mean()) / (1 - alpha)
        assert got <= objective + 1e-10


def test_risk_aware_is_the_weighted_sum_of_its_terms():
    out, y, _, date, symbol, ret = _risk_inputs("forecast")
    weights = {"mse_weight": 0.5, "sharpe_weight": 0.3, "drawdown_weight": 0.2}
    weights |= {"cvar_weight": 0.1, "sortino_weight": 0.4}
    loss = RiskAware(**weights, cvar_alpha=0.8, **BOOK).bind("forecast")
    got = loss(out, y, date, symbol, ret)
    _, r = book_ref(out, date, symbol, ret, "forecast", gross=1.5, net=0.5, cost=20e-4)
    mse = sum((out[i, h] - y[i, h]) ** 2 for i in range(out.shape[0]) for h in range(H))
    want = (
        0.5 * mse / out.numel()
        + 0.3 * sharpe_ref(r, 1e-6)
        + 0.2 * drawdown_ref(r)
        + 0.1 * cvar_ref(r, 0.8)
        + 0.4 * sortino_ref(r, 1e-6)
    )
    torch.testing.assert_close(got, want, **TOL)
    (g_got,) = torch.autograd.grad(got, out)
    (g_want,) = torch.autograd.grad(want, out)
    torch.testing.assert_close(g_got, g_want, **GRAD_TOL)


# ---------------------------------------------------------------- edge cases


def _edge_inputs(case: str, kind: str):
    """(out, y, date, symbol, ret) for a degenerate portfolio batch; out requires grad."""
    n_dates, n_symbols = (2, 1) if case == "two_dates_one_symbol" else (8, 3)
    date, symbol, ret = _market(n_dates, n_symbols, seed=2, missing=0.0)
    b = len(date)
    width = H if kind == "forecast" else (1 if kind == "position" else 3)
    out = torch.randn(b, width) * 0.5
    y = torch.randn(b, H)
    ret = ret.float()
    if case == "zero_variance":  # the same book and returns at every date
        out, ret = torch.full((b, width), 0.3), torch.full((b,), 0.01)
    elif case == "all_zero_positions":
        out = torch.zeros(b, width)
    elif case == "all_equal_losses":  # every date earns the same
        out, ret = out[:1].repeat(b, 1), torch.full((b,), -0.02)
    return out.requires_grad_(), y, date, symbol, ret


@pytest.mark.parametrize("name", RISK)
@pytest.mark.parametrize("kind", ["forecast", "position", "discrete"])
@pytest.mark.parametrize(
    "case", ["zero_variance", "all_zero_positions", "two_dates_one_symbol", "all_equal_losses"]
)
def test_risk_losses_finite_on_edge_cases(name, kind, case):
    out, y, *market = _edge_inputs(case, kind)
    loss = LOSS_CASES[name]().bind("position" if kind == "discrete" else kind)
    value = loss(out, y, *market)
    (grad,) = torch.autograd.grad(value, out)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_a_block_of_one_date_is_refused():
    date, symbol, ret = torch.zeros(3, dtype=torch.long), torch.arange(3), torch.zeros(3)
    with pytest.raises(DataError, match="spans 1 date"):
        NegSharpe().bind("position")(torch.zeros(3, 1), torch.zeros(3, H), date, symbol, ret)


def test_cvar_of_equal_losses_is_that_loss_with_zero_gradient():
    out, y, date, symbol, ret = _edge_inputs("all_equal_losses", "position")
    out = torch.full_like(out, 0.2).requires_grad_()  # 3 symbols x 0.2 = gross 0.6 < 1
    value = CVaR(alpha=0.95, cost_bps=0.0).bind("position")(out, y, date, symbol, ret)
    torch.testing.assert_close(value, torch.tensor(0.6 * 0.02))
    assert not torch.autograd.grad(value, out)[0].any()


@pytest.mark.parametrize("name", ["huber", "pinball", "calibrated"])
def test_other_losses_finite_on_batch_of_1(name):
    head = {"huber": RegressionHead, "pinball": QuantileHead, "calibrated": CalibratedHead}[name]
    out = head(D, H)(torch.randn(1, T, D))
    value = LOSS_CASES[name]()(out, torch.zeros(1, H))
    assert torch.isfinite(value)


# ---------------------------------------------------------------- the contract


PAIRS = [(h, loss) for h in sorted(HEAD_CASES) for loss in sorted(LOSS_CASES)]


@pytest.mark.parametrize(("head_case", "loss_name"), PAIRS)
def test_compatibility_table_and_training_step(head_case, loss_name):
    """Compatible pairs train end to end (finite loss and gradients); others raise naming both."""
    build, kind, _, _ = HEAD_CASES[head_case]
    head, loss = build(), LOSS_CASES[loss_name]()
    assert accepted_kinds(loss) == ACCEPTS[loss_name]
    if kind not in ACCEPTS[loss_name]:
        with pytest.raises(ConfigError, match=f"loss={loss_name} does not accept head kind"):
            check_compatible(head, loss)
        return
    if hasattr(loss, "quantiles") and hasattr(head, "quantiles"):
        loss = type(loss)(quantiles=head.quantiles)  # the YAML interpolates the head's levels
    check_compatible(head, loss)
    market = _block_market() if getattr(loss, "portfolio", False) else ()
    value = loss(head(torch.randn(B, T, D)), torch.randn(B, H), *market)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_incompatible_message_is_exact():
    with pytest.raises(ConfigError) as err:
        check_compatible(QuantileHead(D, H), NegSharpe())
    assert str(err.value) == (
        "loss=sharpe does not accept head kind 'quantiles' (head=QuantileHead); "
        "it accepts forecast, position"
    )


@pytest.mark.parametrize(
    ("head", "loss", "match"),
    [
        (QuantileHead(D, H, quantiles=(0.2, 0.5, 0.8)), Pinball(), "quantiles"),
        (QuantileHead(D, H, quantiles=(0.25, 0.5)), Pinball(), "quantiles"),
        (CalibratedHead(D, H, flat_band=0.2), CalibratedLoss(flat_band=0.1), "flat_band"),
        (PolicyHead(D), RiskAware(), "mse_weight"),
        (PolicyHead(D), NegSharpe(step=1), "step"),
        (torch.nn.Linear(2, 2), torch.nn.MSELoss(), "kind"),
    ],
)
def test_check_compatible_catches_mismatches(head, loss, match):
    with pytest.raises(ConfigError, match=match):
        check_compatible(head, loss)


def _block_market():
    """(date, symbol, ret) of B samples for a portfolio loss (4 dates x 2 symbols), else ()."""
    date, symbol = torch.arange(B) // 2, torch.arange(B) % 2
    return date, symbol, torch.randn(B) * 0.01


def test_unbound_risk_loss_refuses_to_guess_the_head_kind():
    with pytest.raises(RuntimeError, match="check_compatible"):
        NegSharpe()(torch.zeros(B, 1), torch.zeros(B, H), *_block_market())


def test_risk_loss_without_portfolio_batches_is_a_config_error():
    with pytest.raises(ConfigError, match="data.block"):
        NegSharpe().bind("position")(torch.zeros(B, 1), torch.zeros(B, H))


def test_forecast_step_outside_horizon_raises():
    with pytest.raises(ConfigError, match="step=4"):
        NegSharpe(step=4).bind("forecast")(torch.zeros(B, H), torch.zeros(B, H), *_block_market())


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Huber(delta=0.0), "delta"),
        (lambda: Pinball(quantiles=(0.1, 0.9)), "0.5"),
        (lambda: CalibratedLoss(flat_band=-1.0), "flat_band"),
        (lambda: CalibratedLoss(nll_weight=-1.0), "nll_weight"),
        (lambda: NegSharpe(eps=0.0), "eps"),
        (lambda: NegSortino(temperature=0.0), "temperature"),
        (lambda: DrawdownPenalty(smooth=-0.1), "smooth"),
        (lambda: CVaR(alpha=1.0), "alpha"),
        (lambda: CVaR(step=-1), "step"),
        (lambda: CVaR(block=1), "block"),
        (lambda: NegSharpe(cost_bps=-1.0), "cost_bps"),
        (lambda: NegSharpe(gross=0.0), "gross"),
        (lambda: NegSortino(net=float("inf")), "net"),
        (lambda: RiskAware(sharpe_weight=-0.1), "sharpe_weight"),
        (lambda: RiskAware(mse_weight=0.0, sharpe_weight=0.0), "at least one weight"),
        (lambda: RiskAware(cvar_alpha=0.0), "cvar_alpha"),
    ],
)
def test_loss_bad_args_raise(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_pinball_with_wrong_number_of_quantiles_raises():
    with pytest.raises(ConfigError, match="quantiles"):
        Pinball()(torch.zeros(B, H, 5), torch.zeros(B, H))


# The portfolio losses build the book with data-dependent shapes (torch.unique over the
# batch's dates and symbols), so they run eagerly; the module compiles the forward pass only.
COMPILE_PAIRS = [
    ("regression", "huber"),
    ("quantile", "pinball"),
    ("calibrated", "calibrated"),
]


@pytest.mark.parametrize(("head_case", "loss_name"), COMPILE_PAIRS)
def test_head_and_loss_trace_as_one_graph(head_case, loss_name):
    """torch.compile (hardware configs switch it on) traces head + loss without graph breaks."""
    head, loss = HEAD_CASES[head_case][0](), LOSS_CASES[loss_name]()
    check_compatible(head, loss)
    h, y = torch.randn(B, T, D), torch.randn(B, H)
    compiled = torch.compile(lambda h, y: loss(head(h), y), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(h, y), loss(head(h), y))
