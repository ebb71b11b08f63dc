"""Model tests: the backbone contract for every registered backbone, layers vs naive references."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.backbones import BACKBONES
from plusultra.models.heads import RegressionHead
from plusultra.models.layers import (
    CausalDepthwiseConv,
    CausalSelfAttention,
    DropPath,
    GatedMLP,
    LearnedPositionalEncoding,
    PatchEmbedding,
)

B, T, F, D = 3, 32, 5, 16
TINY = {"n_features": F, "d_model": D, "depth": 2, "n_heads": 2}


def accepts(name: str, arg: str) -> bool:
    """Whether backbone `name`'s constructor takes `arg` (tcn and ssm have no attention heads)."""
    return arg in inspect.signature(BACKBONES[name]).parameters


def tiny_backbone(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {k: v for k, v in {**TINY, **overrides}.items() if accepts(name, k)}
    return BACKBONES[name](**kwargs).eval()


def window(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, F, generator=torch.Generator().manual_seed(seed))  # (B, T, F)


# ---------------------------------------------------------------- naive references


def causal_conv_ref(layer: CausalDepthwiseConv, x: torch.Tensor) -> torch.Tensor:
    """Per-step, per-tap loop: y[t] = bias + sum_k w[k] * x[t - (K - 1 - k) * dilation]."""
    w = layer.conv.weight[:, 0, :]  # (D, K)
    K, dilation = w.shape[1], layer.conv.dilation[0]
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        y[:, t] = layer.conv.bias
        for k in range(K):
            src = t - (K - 1 - k) * dilation
            if src >= 0:
                y[:, t] += w[:, k] * x[:, src]
    return y


def attention_ref(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit per-head scores, -inf mask above the diagonal, softmax, weighted sum."""
    Bx, Tx, Dx = x.shape
    H = layer.n_heads
    q, k, v = layer.qkv(x).split(Dx, dim=2)
    heads = []
    for h in range(H):
        sl = slice(h * Dx // H, (h + 1) * Dx // H)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(Dx // H)  # (B, T, T)
        if layer.causal:
            future = torch.triu(torch.ones(Tx, Tx, dtype=torch.bool), diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])  # (B, T, Dh)
    return layer.proj(torch.cat(heads, dim=-1))


def patch_embedding_ref(layer: PatchEmbedding, x: torch.Tensor) -> torch.Tensor:
    """Loop over patches: token j = proj(x[start_j : start_j + patch_len] flattened)."""
    Tx = x.shape[1]
    tokens = []
    for j in range(layer.n_tokens(Tx)):
        end = layer.token_end(j, Tx)
        tokens.append(layer.proj(x[:, end - layer.patch_len + 1 : end + 1].flatten(1)))
    return torch.stack(tokens, dim=1)


# ---------------------------------------------------------------- backbone contract


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_forward_backward(name):
    model = tiny_backbone(name).train()
    out = model(window())
    assert out.shape == (B, model.n_tokens(T), D)
    assert model.d_out == D
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("t", [7, 18])
def test_backbone_is_causal(name, t):
    model = tiny_backbone(name)
    x = window()
    x_future = x.clone()
    x_future[:, t + 1 :] = torch.randn_like(x_future[:, t + 1 :]) * 10
    with torch.no_grad():
        out, out_future = model(x), model(x_future)
    ends = [model.token_end(j, T) for j in range(model.n_tokens(T))]
    past = [j for j, end in enumerate(ends) if end <= t]
    later = [j for j, end in enumerate(ends) if end > t]
    assert past and later
    torch.testing.assert_close(out_future[:, past], out[:, past], atol=1e-6, rtol=0)
    assert not torch.allclose(out_future[:, later], out[:, later])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_last_token_covers_last_step(name):
    model = tiny_backbone(name)
    assert model.token_end(-1, T) == T - 1
    x = window()
    x_last = x.clone()
    x_last[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x_last)[:, -1], model(x)[:, -1])


@pytest.mark.parametrize("name", sorted(n for n in BACKBONES if accepts(n, "causal")))
def test_non_causal_sees_whole_window(name):
    model = tiny_backbone(name, causal=False)
    assert model.token_end(0, T) == T - 1
    x = window()
    x_last = x.clone()
    x_last[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x_last)[:, 0], model(x)[:, 0])


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_depth_sets_blocks_and_params(name):
    counts = []
    for depth in (1, 2, 3):
        model = tiny_backbone(name, depth=depth)
        assert isinstance(model.blocks, nn.ModuleList)
        assert len(model.blocks) == depth
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("name", sorted(n for n in BACKBONES if accepts(n, "n_heads")))
def test_heads_not_dividing_d_model_raises(name):
    with pytest.raises(ConfigError, match="n_heads"):
        BACKBONES[name](**{**TINY, "n_heads": 3})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"patch_len": 0}, "patch_len"),
        ({"patch_len": 2, "patch_stride": 3}, "patch_stride"),
        ({"patch_stride": 0}, "patch_stride"),
        ({"conv_dilations": []}, "conv_dilations"),
        ({"conv_dilations": [1, 0]}, "conv_dilations"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_hybrid_bad_args_raise(overrides, key):
    with pytest.raises(ConfigError, match=key):
        BACKBONES["hybrid"](**{**TINY, **overrides})


def test_hybrid_drop_path_rises_linearly_and_dilations_cycle():
    model = BACKBONES["hybrid"](**{**TINY, "depth": 5, "drop_path": 0.2})
    rates = [block.drop_path.p for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [block.conv.conv.dilation[0] for block in model.blocks] == [1, 2, 4, 8, 1]


def test_window_shorter_than_patch_raises():
    model = tiny_backbone("hybrid", patch_len=8, patch_stride=8)
    with pytest.raises(ConfigError, match="window.*patch_len"):
        model(torch.randn(1, 7, F))


# ---------------------------------------------------------------- layers


def test_patch_embedding_alignment():
    # T=10, P=4, S=3: (10-4) % 3 = 0 steps dropped, N = 6 // 3 + 1 = 3 patches
    # [0..3], [3..6], [6..9]; the last ends at the last step.
    layer = PatchEmbedding(n_features=2, d_model=8, patch_len=4, stride=3)
    assert layer.n_tokens(10) == 3
    assert [layer.token_end(j, 10) for j in range(3)] == [3, 6, 9]
    # T=11: (11-4) % 3 = 1 oldest step dropped, N = 7 // 3 + 1 = 3, patches [1..4], [4..7], [7..10].
    assert layer.n_tokens(11) == 3
    assert [layer.token_end(j, 11) for j in range(3)] == [4, 7, 10]
    assert layer.token_end(-1, 11) == 10
    x = torch.randn(2, 11, 2)
    torch.testing.assert_close(layer(x), patch_embedding_ref(layer, x), atol=1e-6, rtol=0)
    x_oldest = x.clone()
    x_oldest[:, 0] += 5.0  # the dropped step changes nothing
    torch.testing.assert_close(layer(x_oldest), layer(x), atol=0, rtol=0)


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (3, 1), (3, 4), (2, 8)])
def test_causal_conv_matches_loop_reference(kernel_size, dilation):
    torch.manual_seed(0)
    layer = CausalDepthwiseConv(d_model=6, kernel_size=kernel_size, dilation=dilation)
    x = torch.randn(2, 20, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), causal_conv_ref(layer, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_masked_softmax_reference(causal):
    torch.manual_seed(0)
    layer = CausalSelfAttention(d_model=12, n_heads=3, causal=causal).eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), attention_ref(layer, x), atol=1e-5, rtol=0)


def test_gated_mlp_and_drop_path():
    x = torch.randn(4, 5, 8)
    assert GatedMLP(8, mlp_ratio=2.0)(x).shape == (4, 5, 8)
    drop = DropPath(0.5)
    assert drop.eval()(x) is x
    y = drop.train()(torch.ones(1000, 1, 1))
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0 < y.sum() < 2000


def test_positional_encoding_too_long_names_max_len():
    with pytest.raises(ConfigError, match="max_len"):
        LearnedPositionalEncoding(max_len=4, d_model=8)(torch.randn(1, 5, 8))


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("pool", ["last", "mean"])
@pytest.mark.parametrize("hidden", [None, 32])
def test_regression_head_shapes(pool, hidden):
    head = RegressionHead(d_model=D, horizon=5, hidden=hidden, pool=pool)
    h = torch.randn(B, 7, D)
    assert head(h).shape == (B, 5)


def test_regression_head_last_pool_reads_last_token():
    head = RegressionHead(d_model=D, horizon=2, pool="last")
    h = torch.randn(B, 7, D)
    h_early = h.clone()
    h_early[:, :-1] = 0.0
    torch.testing.assert_close(head(h_early), head(h))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"pool": "max"}, "last.*mean"), ({"horizon": 0}, "horizon"), ({"hidden": 0}, "hidden")],
)
def test_regression_head_bad_args_raise(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        RegressionHead(**{"d_model": D, "horizon": 3, **kwargs})
