"""The tcn, multiscale and moe backbones: contract, causality, vectorised parts vs references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.backbones.moe import MoEBackbone, MoEFeedForward, load_balance_loss
from plusultra.models.backbones.multiscale import MultiScaleBackbone
from plusultra.models.backbones.tcn import TCNBackbone

B, T, F_, D = 3, 32, 5, 16
ZOO: dict[str, type[nn.Module]] = {
    "moe": MoEBackbone,
    "multiscale": MultiScaleBackbone,
    "tcn": TCNBackbone,
}
TINY: dict[str, dict] = {
    "moe": {"n_features": F_, "d_model": D, "depth": 2, "n_heads": 2},
    "multiscale": {"n_features": F_, "d_model": D, "depth": 2, "n_heads": 2},
    "tcn": {"n_features": F_, "d_model": D, "depth": 2},
}
BINDING = {"capacity_factor": 0.25}  # moe: capacity ceil(0.25 * 32 * 2 / 8) = 2 tokens


def tiny(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[name](**{**TINY[name], **overrides}).eval()


def window(seed: int = 0, steps: int = T) -> torch.Tensor:
    return torch.randn(B, steps, F_, generator=torch.Generator().manual_seed(seed))  # (B, T, F)


# ---------------------------------------------------------------- naive references


def pool_ref(x: torch.Tensor, scale: int) -> tuple[torch.Tensor, list[int]]:
    """Trailing mean of `scale` bars at every step, then every scale-th one back from the end."""
    Tx = x.shape[1]
    ends = list(range(Tx - 1, scale - 2, -scale))[::-1]
    tokens = [x[:, e - scale + 1 : e + 1].mean(dim=1) for e in ends]
    return torch.stack(tokens, dim=1), ends


def moe_ref(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token in time order, one capacity counter per (sequence, expert)."""
    Bx, Tx, _ = x.shape
    C = layer.capacity(Tx)
    y = torch.zeros_like(x)
    for b in range(Bx):
        count = [0] * layer.n_experts
        for t in range(Tx):
            probs = torch.softmax(layer.router(x[b, t]), dim=-1)  # (E,)
            top_p, top_i = probs.topk(layer.top_k)
            for p, e in zip(top_p.tolist(), top_i.tolist(), strict=True):
                if count[e] < C:
                    y[b, t] += p * (F.gelu(x[b, t] @ layer.w_in[e]) @ layer.w_out[e])
                count[e] += 1
    return y


def balance_ref(probs: torch.Tensor, top_i: torch.Tensor) -> float:
    """E * sum_e (share of picks to e) * (mean prob of e), with explicit loops."""
    N, E = probs.shape
    k = top_i.shape[1]
    total = 0.0
    for e in range(E):
        share = sum(int(top_i[n, j]) == e for n in range(N) for j in range(k)) / (N * k)
        mean_prob = sum(float(probs[n, e]) for n in range(N)) / N
        total += share * mean_prob
    return E * total


# ---------------------------------------------------------------- contract, all three


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_backward(name):
    model = tiny(name).train()
    out = model(window())
    assert out.shape == (B, model.n_tokens(T), D)
    assert model.d_out == D
    assert torch.isfinite(out).all()
    loss = out.square().mean() + getattr(model, "aux_loss", 0.0)
    loss.backward()
    # moe keeps its experts as stacked tensors, so an expert with no token gets a zero grad
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


# Causality, the last token, non-causal mode and depth of every backbone (these three included,
# with the same sizes) are tested in test_models.py; here only what is specific to the zoo.


@pytest.mark.parametrize("t", [7, 18])
def test_moe_is_causal_when_capacity_binds(t):
    """Tokens dropped by a full expert must not let later tokens change earlier outputs."""
    model = tiny("moe", **BINDING)
    x = window()
    x_future = x.clone()
    x_future[:, t + 1 :] = torch.randn_like(x_future[:, t + 1 :]) * 10
    with torch.no_grad():
        out, out_future = model(x), model(x_future)
    assert model.aux_metrics["moe_dropped_frac"] > 0.2  # capacity really binds
    ends = [model.token_end(j, T) for j in range(model.n_tokens(T))]
    past = [j for j, end in enumerate(ends) if end <= t]
    later = [j for j, end in enumerate(ends) if end > t]
    assert past and later
    torch.testing.assert_close(out_future[:, past], out[:, past], atol=1e-6, rtol=0)
    assert not torch.allclose(out_future[:, later], out[:, later])


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("tcn", {"kernel_size": 0}, "kernel_size"),
        ("tcn", {"dilations": []}, "dilations"),
        ("tcn", {"dilations": [1, 0]}, "dilations"),
        ("tcn", {"drop_path": 1.0}, "drop_path"),
        ("tcn", {"depth": 0}, "depth"),
        ("multiscale", {"scales": [5, 21]}, "scales"),
        ("multiscale", {"scales": [1, 21, 5]}, "scales"),
        ("multiscale", {"scales": [1, 0]}, "scales"),
        ("multiscale", {"n_heads": 3}, "n_heads"),
        ("multiscale", {"mlp_ratio": 0}, "mlp_ratio"),
        ("moe", {"n_heads": 3}, "n_heads"),
        ("moe", {"top_k": 9}, "top_k"),
        ("moe", {"top_k": 0}, "top_k"),
        ("moe", {"n_experts": 0}, "n_experts"),
        ("moe", {"capacity_factor": 0.0}, "capacity_factor"),
        ("moe", {"aux_loss_weight": -0.1}, "aux_loss_weight"),
        ("moe", {"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_args_raise(name, overrides, key):
    with pytest.raises(ConfigError, match=key):
        ZOO[name](**{**TINY[name], **overrides})


# ---------------------------------------------------------------- tcn


def test_tcn_receptive_field_and_dilations_cycle():
    model = tiny("tcn", depth=5, kernel_size=3, dilations=[1, 2, 4])
    assert model.dilations == [1, 2, 4, 1, 2]
    assert [block.conv_1.dilation[0] for block in model.blocks] == [1, 2, 4, 1, 2]
    assert model.receptive_field == 1 + 2 * 2 * (1 + 2 + 4 + 1 + 2)
    assert tiny("tcn", kernel_size=1).receptive_field == 1


@pytest.mark.parametrize(("kernel_size", "dilations"), [(3, [1, 2]), (2, [1, 4]), (4, [2])])
def test_tcn_receptive_field_is_exact(kernel_size, dilations):
    model = tiny("tcn", kernel_size=kernel_size, dilations=dilations)
    rf = model.receptive_field
    assert rf < T
    x = window()
    outside, inside = x.clone(), x.clone()
    outside[:, T - rf - 1] += 5.0  # one step too old for the last output
    inside[:, T - rf] += 5.0  # the oldest step the last output sees
    with torch.no_grad():
        last = model(x)[:, -1]
        torch.testing.assert_close(model(outside)[:, -1], last, atol=1e-6, rtol=0)
        assert not torch.allclose(model(inside)[:, -1], last)


# ---------------------------------------------------------------- multiscale


@pytest.mark.parametrize("steps", [32, 33, 42])
@pytest.mark.parametrize("scale", [1, 5, 21])
def test_multiscale_pool_matches_loop_reference(scale, steps):
    model = tiny("multiscale")
    x = window(steps=steps)
    ref, ends = pool_ref(x, scale)
    assert model.scale_ends(scale, steps).tolist() == ends
    torch.testing.assert_close(model.pool(x, scale), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [21, 32, 33, 64])
def test_multiscale_scales_align_to_last_bar(steps):
    model = tiny("multiscale")
    for s in model.scales:
        ends = model.scale_ends(s, steps)
        assert ends[-1] == steps - 1  # the last token of every scale ends at the decision time
        assert len(ends) == steps // s
        assert (ends.diff() == s).all() and ends[0] >= s - 1  # every token is a full s bars


def test_multiscale_fusion_mask_matches_reference():
    model = tiny("multiscale")
    mask = model.fusion_mask(T)
    ends = [-1] + [e for s in model.scales[1:] for e in model.scale_ends(s, T).tolist()]
    ref = torch.tensor([[e <= t for e in ends] for t in range(T)])
    assert torch.equal(mask, ref)
    assert mask[:, 0].all()  # the null token keeps every row non-empty


def test_multiscale_window_shorter_than_scale_raises():
    model = tiny("multiscale")
    with pytest.raises(ConfigError, match="scale 21"):
        model(window(steps=20))


# ---------------------------------------------------------------- moe


@pytest.mark.parametrize("capacity_factor", [0.25, 1.25, 8.0])
@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_layer_matches_loop_reference(top_k, capacity_factor):
    torch.manual_seed(0)
    layer = MoEFeedForward(D, 4, top_k, capacity_factor, mlp_ratio=2.0, dropout=0.0)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        y, _ = layer(x)
        torch.testing.assert_close(y, moe_ref(layer, x), atol=1e-5, rtol=0)


def test_moe_capacity_respected():
    model = tiny("moe", **BINDING)
    with torch.no_grad():
        model(window())
    for block in model.blocks:
        C = block.moe.capacity(T)
        assert C == math.ceil(0.25 * T * 2 / 8) == 2
        assert block.moe.load.shape == (B, 8)
        assert (block.moe.load <= C).all()
        assert block.moe.load.sum() < B * T * 2  # some picks were dropped
    assert model.aux_metrics["moe_dropped_frac"] > 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_top_k_sets_picks_per_token(top_k):
    model = tiny("moe", top_k=top_k, capacity_factor=100.0)  # capacity = T: nothing dropped
    with torch.no_grad():
        model(window())
    for block in model.blocks:
        assert (block.moe.load.sum(dim=1) == T * top_k).all()
    assert model.aux_metrics["moe_dropped_frac"] == 0.0


def test_moe_top_k_changes_output():
    with torch.no_grad():
        one, two = tiny("moe", top_k=1)(window()), tiny("moe", top_k=2)(window())
    assert not torch.allclose(one, two)


def test_moe_aux_loss_positive_with_grad():
    model = tiny("moe", aux_loss_weight=0.5).train()
    model(window())
    assert model.aux_loss.ndim == 0 and model.aux_loss.requires_grad
    assert model.aux_loss > 0
    metrics = model.aux_metrics
    assert set(metrics) == {"moe_balance", "moe_dropped_frac"}
    assert all(isinstance(v, float) for v in metrics.values())
    # aux_loss = weight * sum over blocks; moe_balance = mean over blocks
    assert model.aux_loss.item() == pytest.approx(0.5 * 2 * metrics["moe_balance"], rel=1e-5)
    model.aux_loss.backward()
    for block in model.blocks:
        assert block.moe.router.weight.grad.abs().sum() > 0


def test_load_balance_loss_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    # top-1 picks experts 0 and 1: f = [1/2, 1/2, 0], P = [0.4, 0.4, 0.2] -> 3 * 0.4 = 1.2
    assert load_balance_loss(probs, torch.tensor([[0], [1]])).item() == pytest.approx(1.2)
    # top-2 picks {0, 1} and {1, 2}: f = [1/4, 1/2, 1/4] -> 3 * (0.1 + 0.2 + 0.05) = 1.05
    assert load_balance_loss(probs, torch.tensor([[0, 1], [1, 2]])).item() == pytest.approx(1.05)
    uniform = torch.full((4, 4), 0.25)
    assert load_balance_loss(uniform, torch.arange(4)[:, None]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("top_k", [1, 3])
def test_load_balance_loss_matches_loop_reference(top_k):
    probs = torch.softmax(torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(1)), -1)
    top_i = probs.topk(top_k, dim=-1).indices  # (2, 9, k)
    ref = balance_ref(probs.reshape(-1, 6), top_i.reshape(-1, top_k))
    assert load_balance_loss(probs, top_i).item() == pytest.approx(ref, rel=1e-6)


def test_moe_depth_24_builds():
    model = tiny("moe", depth=24)
    assert len(model.blocks) == 24
    with torch.no_grad():
        out = model(window())
    assert out.shape == (B, T, D) and torch.isfinite(out).all()
    assert model.aux_loss > 0
