"""Selective SSM: the chunked scan against its sequential reference, the mixer, the backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from plusultra.errors import ConfigError
from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.backbones.ssm import SSMBackbone
from plusultra.models.ssm import SelectiveSSM, _SiluGate, selective_scan, selective_scan_ref

# Stated tolerances: the chunked scan reorders the same sums into matmuls, so it agrees with the
# loop to a few ulps of the result's magnitude.
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
GRAD_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def scan_inputs(
    b: int,
    L: int,
    h: int,
    p: int,
    n: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    dt_range: tuple[float, float] = (1e-3, 1.0),
) -> tuple[torch.Tensor, ...]:
    """Random x (B, L, H, P), dt (B, L, H) log-uniform in dt_range, A (H,) < 0, B, C (B, L, N)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(dt_range, dtype=torch.float64).log()
    dt = torch.exp(lo + (hi - lo) * torch.rand(b, L, h, generator=g, dtype=torch.float64))
    tensors = (
        torch.randn(b, L, h, p, generator=g, dtype=torch.float64),  # x
        dt,  # (B, L, H), > 0
        -torch.exp(torch.randn(h, generator=g, dtype=torch.float64)),  # A (H,), < 0
        torch.randn(b, L, n, generator=g, dtype=torch.float64),  # B
        torch.randn(b, L, n, generator=g, dtype=torch.float64),  # C
    )
    return tuple(t.to(dtype).requires_grad_() for t in tensors)


def grads(fn, inputs: tuple[torch.Tensor, ...], **kwargs) -> tuple[torch.Tensor, ...]:
    """Gradients of a fixed random projection of fn(*inputs) with respect to every input."""
    y = fn(*inputs, **kwargs)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.autograd.grad((y * w.to(y.dtype)).sum(), inputs)


# ---------------------------------------------------------------- scan vs reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("L", "chunk"),
    [(37, 8), (37, 1), (37, 64), (64, 64), (64, 16), (100, 7), (5, 5), (1, 4)],
    ids=["L%chunk!=0", "chunk=1", "chunk>L", "chunk=L", "4chunks", "100%7", "tiny", "L=1"],
)
def test_scan_matches_reference(dtype, L, chunk):
    inputs = scan_inputs(2, L, 3, 4, 5, dtype)
    fast = selective_scan(*inputs, chunk=chunk)
    ref = selective_scan_ref(*inputs)
    assert fast.dtype == dtype and fast.shape == (2, L, 3, 4)
    torch.testing.assert_close(fast, ref, atol=TOL[dtype], rtol=TOL[dtype])
    for g_fast, g_ref in zip(
        grads(selective_scan, inputs, chunk=chunk), grads(selective_scan_ref, inputs), strict=True
    ):
        torch.testing.assert_close(g_fast, g_ref, atol=GRAD_TOL[dtype], rtol=GRAD_TOL[dtype])


@pytest.mark.parametrize("chunk", [64, 100, 333])  # 1000 = 15.6, 10 and 3.003 chunks
@pytest.mark.parametrize("dt_range", [(1e-3, 1.0), (1e-2, 10.0)])
def test_long_sequence_float32_matches_float64_reference(chunk, dt_range):
    """L = 1000 in float32 against the float64 loop: no drift or blow-up over many chunks.

    Each decay is exp of a difference of chunk-local cumulative log-decays (never a product of
    many small numbers), and the state crosses chunk boundaries by one recurrence; errors must
    not grow with the number of chunks. (test_scan_extreme_dt_... is the one that fails if the
    cumulative sums are differenced in plain float32.)
    """
    inputs64 = scan_inputs(2, 1000, 3, 4, 6, torch.float64, seed=3, dt_range=dt_range)
    ref = selective_scan_ref(*inputs64)
    inputs32 = tuple(t.detach().float().requires_grad_() for t in inputs64)
    fast = selective_scan(*inputs32, chunk=chunk)
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast.double(), ref, atol=2e-6 * scale, rtol=1e-4)
    fast_grads = grads(selective_scan, inputs32, chunk=chunk)
    for g_fast, g_ref in zip(fast_grads, grads(selective_scan_ref, inputs64), strict=True):
        g_scale = g_ref.abs().max().item()
        torch.testing.assert_close(g_fast.double(), g_ref, atol=2e-5 * g_scale, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dt_range", [(1e-8, 1e-6), (1e2, 1e4), (1e-8, 1e4)])
def test_scan_extreme_dt_is_finite_and_matches(dtype, dt_range):
    inputs = scan_inputs(2, 50, 3, 2, 4, dtype, seed=2, dt_range=dt_range)
    fast, ref = selective_scan(*inputs, chunk=16), selective_scan_ref(*inputs)
    assert torch.isfinite(fast).all()
    # With dt ~ 1e4 the states are ~1e4 and y = <C, h> cancels, so compare on the output's scale.
    scale = ref.abs().max().item()
    torch.testing.assert_close(fast, ref, atol=TOL[dtype] * scale, rtol=TOL[dtype])
    for g in grads(selective_scan, inputs, chunk=16):
        assert torch.isfinite(g).all()


def test_scan_chunk_invariance():
    inputs = scan_inputs(1, 40, 2, 3, 2)
    ref = selective_scan_ref(*inputs)
    for chunk in (1, 3, 7, 40, 100):
        torch.testing.assert_close(selective_scan(*inputs, chunk=chunk), ref, atol=1e-10, rtol=0)


def test_scan_gradcheck():
    inputs = scan_inputs(1, 7, 2, 2, 3)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=3), inputs)


def test_scan_runs_in_float32_for_low_precision_inputs():
    x, dt, A, B, C = (t.detach() for t in scan_inputs(1, 20, 3, 2, 2, torch.float32))
    x, dt, B, C = (t.bfloat16() for t in (x, dt, B, C))  # as under bf16 autocast
    y = selective_scan(x, dt, A, B, C, chunk=8)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(x.float(), dt.float(), A, B.float(), C.float())
    torch.testing.assert_close(y.float(), ref, atol=0.02, rtol=0.01)  # bf16 output rounding only


def test_mixer_under_bf16_autocast_is_close_to_float32():
    torch.manual_seed(0)
    layer = SelectiveSSM(d_model=16, d_state=4, expand=2, n_heads=4, chunk=8)
    x = torch.randn(2, 30, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    ref = layer(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 projections


def test_scan_bad_inputs_raise():
    x, dt, A, B, C = (t.detach() for t in scan_inputs(1, 6, 3, 2, 2))
    with pytest.raises(ValueError, match="dt"):
        selective_scan(x, dt[:, :5], A, B, C)
    with pytest.raises(ValueError, match="A"):
        selective_scan_ref(x, dt, A[:2], B, C)
    with pytest.raises(ValueError, match="x"):
        selective_scan(x[..., 0], dt, A, B, C)
    with pytest.raises(ConfigError, match="chunk"):
        selective_scan(x, dt, A, B, C, chunk=0)


class ElementCounter(TorchDispatchMode):
    """Counts, over every aten op run inside it, the elements produced and the largest output."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.total += t.numel()
                self.largest = max(self.largest, t.numel())
        self.ops += 1
        return out


SIZES = {"b": 2, "h": 2, "p": 16, "n": 16}  # a (B, L, H, P, N) state is 8x any chunk tensor


def scan_cost(L: int, chunk: int = 16) -> tuple[ElementCounter, int]:
    """Elements written by forward + backward at length L, and elements saved for backward."""
    inputs = scan_inputs(SIZES["b"], L, SIZES["h"], SIZES["p"], SIZES["n"], torch.float32)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel()
        return t

    counter = ElementCounter()
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(*inputs, chunk=chunk).sum().backward()
    return counter, saved[0]


def test_scan_work_and_memory_are_linear_in_length_and_bounded():
    """No timing: count the elements every op writes, the largest tensor, and autograd's saves."""
    short, saved_short = scan_cost(256)
    long, saved_long = scan_cost(1024)
    assert 3.5 < long.total / short.total < 4.5  # 4x the length -> ~4x the work (not 16x)
    assert 3.5 < saved_long / saved_short < 4.5  # and ~4x the memory kept for backward
    b, h, p, n, Q, L = *SIZES.values(), 16, 1024
    # the largest tensor is a (B, L/Q, H, Q, Q) chunk mask, an input-sized (B, L, H, P) tensor
    # or the (B, L/Q, H, P, N) chunk states; never (B, L, H, P, N) nor (L, L)
    bound = max(b * L * h * Q, b * L * h * p, b * (L // Q) * h * p * n)
    assert long.largest <= bound < b * L * h * p * n // 8


# ---------------------------------------------------------------- the mixer


def test_selective_ssm_shape_init_and_reference_path():
    torch.manual_seed(0)
    layer = SelectiveSSM(
        d_model=12, d_state=6, expand=2, n_heads=3, dt_min=1e-3, dt_max=0.1, chunk=5
    )
    assert (layer.n_heads, layer.head_dim) == (3, 8)
    x = torch.randn(3, 23, 12)
    y = layer(x)
    assert y.shape == (3, 23, 12)
    torch.testing.assert_close(y, layer(x, reference=True), atol=1e-5, rtol=1e-5)
    dt0 = F.softplus(layer.dt_bias)
    assert dt0.shape == (3,) and (dt0 >= 1e-3 * 0.999).all() and (dt0 <= 0.1 * 1.001).all()
    A = torch.exp(layer.A_log)  # (H,), Mamba-2 init: uniform in [1, 16]
    assert A.shape == (3,) and (A >= 1 - 1e-6).all() and (A <= 16 + 1e-5).all()
    assert layer.D.shape == (24,)


def test_selective_ssm_gradients_are_exact():
    """gradcheck through the recomputed main branch, the fused gate and the scan (float64)."""
    torch.manual_seed(0)
    layer = SelectiveSSM(d_model=4, d_state=3, expand=2, n_heads=2, chunk=3).double()
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    y = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    gate = (3 * torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(_SiluGate.apply, (y, gate))
    # parameter gradients with the chunked scan equal those with the sequential reference
    for reference in (False, True):
        layer.zero_grad()
        layer(x, reference=reference).square().sum().backward()
        if not reference:
            fast = [p.grad.clone() for p in layer.parameters()]
    for g_fast, p in zip(fast, layer.parameters(), strict=True):
        torch.testing.assert_close(g_fast, p.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("conv_kernel", [0, 4])
@pytest.mark.parametrize("t", [0, 9, 21])
def test_selective_ssm_is_causal(conv_kernel, t):
    torch.manual_seed(0)
    layer = SelectiveSSM(
        d_model=8, d_state=4, expand=2, n_heads=2, chunk=4, conv_kernel=conv_kernel
    ).eval()
    x = torch.randn(2, 24, 8)
    x_future = x.clone()
    x_future[:, t + 1 :] = torch.randn_like(x_future[:, t + 1 :]) * 10
    with torch.no_grad():
        y, y_future = layer(x), layer(x_future)
    torch.testing.assert_close(y_future[:, : t + 1], y[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(y_future[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"d_state": 0}, "d_state"),
        ({"expand": 0}, "expand"),
        ({"chunk": 0}, "chunk"),
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 3}, "heads"),
        ({"conv_kernel": -1}, "conv_kernel"),
        ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_selective_ssm_bad_args_raise(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        SelectiveSSM(d_model=8, **kwargs)


# ---------------------------------------------------------------- backbones

B, T, FEAT, D = 3, 32, 5, 16


def window(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, FEAT, generator=torch.Generator().manual_seed(seed))  # (B, T, F)


def ssm_backbone(**overrides) -> SSMBackbone:
    torch.manual_seed(0)
    kwargs = {"n_features": FEAT, "d_model": D, "depth": 2, "d_state": 4, "chunk": 8}
    return SSMBackbone(**{**kwargs, **overrides}).eval()


def hybrid_backbone(**overrides) -> HybridBackbone:
    torch.manual_seed(0)
    kwargs = {"n_features": FEAT, "d_model": D, "depth": 2, "n_heads": 2}
    return HybridBackbone(**{**kwargs, **overrides}).eval()


def assert_causal(model: nn.Module, t: int) -> None:
    """Changing input steps after t leaves every token ending at or before t unchanged."""
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


@pytest.mark.parametrize(("patch_len", "patch_stride"), [(1, 1), (4, 4), (4, 2)])
def test_ssm_backbone_forward_backward(patch_len, patch_stride):
    model = ssm_backbone(patch_len=patch_len, patch_stride=patch_stride, drop_path=0.1).train()
    out = model(window())
    assert out.shape == (B, model.n_tokens(T), D) and model.d_out == D and model.causal
    assert model.n_tokens(T) == (T - patch_len) // patch_stride + 1
    assert model.token_end(-1, T) == T - 1
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("patch_len", [1, 4])
@pytest.mark.parametrize("t", [7, 18])
def test_ssm_backbone_is_causal(patch_len, t):
    assert_causal(ssm_backbone(patch_len=patch_len, patch_stride=patch_len), t)


def test_ssm_backbone_depth_sets_blocks_and_drop_path():
    counts = []
    for depth in (1, 2, 3):
        model = ssm_backbone(depth=depth, drop_path=0.2)
        assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == depth
        counts.append(sum(p.numel() for p in model.parameters()))
    assert counts[0] < counts[1] < counts[2]
    assert [block.drop_path.p for block in model.blocks] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"depth": 0}, "depth"),
        ({"d_state": 0}, "d_state"),
        ({"expand": 0}, "expand"),
        ({"patch_len": 2, "patch_stride": 3}, "patch_stride"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"chunk": 0}, "chunk"),
        ({"heads": 5}, "heads"),
    ],
)
def test_ssm_backbone_bad_args_raise(overrides, key):
    with pytest.raises(ConfigError, match=key):
        ssm_backbone(**overrides)


def test_hybrid_ssm_sublayer_toggles():
    with_ssm, without = hybrid_backbone(ssm_state=8), hybrid_backbone(ssm_state=0)
    count = [sum(p.numel() for p in m.parameters()) for m in (with_ssm, without)]
    assert count[0] > count[1]
    assert all(isinstance(b.ssm, SelectiveSSM) for b in with_ssm.blocks)
    assert all(b.ssm is None for b in without.blocks)
    assert len(with_ssm.blocks) == len(without.blocks) == 2
    for model in (with_ssm, without):
        for t in (7, 18):
            assert_causal(model, t)


def test_hybrid_ssm_gets_block_drop_path_and_bad_args_raise():
    model = hybrid_backbone(depth=3, drop_path=0.2, ssm_chunk=3).train()
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    model(window()).sum().backward()
    assert all(b.ssm.A_log.grad is not None for b in model.blocks)
    with pytest.raises(ConfigError, match="ssm_state"):
        hybrid_backbone(ssm_state=-1)
    with pytest.raises(ConfigError, match="ssm_chunk"):
        hybrid_backbone(ssm_chunk=0)
    with pytest.raises(ConfigError, match="ssm_heads"):
        hybrid_backbone(ssm_heads=3)
