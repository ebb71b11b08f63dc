"""Self-supervised objectives, the pretraining module, and backbone warm starts."""

from __future__ import annotations

import re

import pytest
import torch

from plusultra.errors import ConfigError
from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.models.module import OptimSettings
from plusultra.training import ssl
from plusultra.training.pretrain import (
    ContrastiveSettings,
    MaskedSettings,
    PretrainModule,
    load_backbone,
    save_backbone,
)

B, T, F = 4, 16, 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- masking


def test_patch_mask_masks_the_configured_share_and_step_mask_aligns_to_the_end():
    patches = ssl.patch_mask(B, 18, 4, 0.5, _gen())  # 4 patches, 2 bars before them
    assert patches.shape == (B, 4)
    assert (patches.sum(dim=1) == 2).all()
    steps = ssl.step_mask(patches, 18, 4)
    assert steps.shape == (B, 18)
    assert not steps[:, :2].any()  # the oldest T % patch_len bars belong to no patch
    for p in range(4):
        assert (steps[:, 2 + 4 * p : 6 + 4 * p] == patches[:, p : p + 1]).all()


def test_patch_tokens_picks_the_last_token_ending_at_or_before_each_patch():
    # tokens ending at bars 7, 11, 15 (a patch-4 backbone without its first token)
    assert ssl.patch_tokens([7, 11, 15], 16, 4).tolist() == [-1, 0, 1, 2]
    assert ssl.patch_tokens(list(range(16)), 16, 4).tolist() == [3, 7, 11, 15]


def test_masked_loss_ignores_unmasked_patches():
    g = _gen(1)
    recon, target = torch.randn(B, 4, 2, F, generator=g), torch.randn(B, 4, 2, F, generator=g)
    masked = torch.zeros(B, 4, dtype=torch.bool)
    masked[:, 1] = True
    loss = ssl.masked_patch_loss(recon, target, masked)
    other = target.clone()
    other[:, [0, 2, 3]] += 100.0  # perturb every unmasked patch
    assert ssl.masked_patch_loss(recon, other, masked) == loss
    other[:, 1] += 1.0  # a masked patch does count
    assert ssl.masked_patch_loss(recon, other, masked) != loss
    expected = (recon[:, 1] - target[:, 1]).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def _module(**kw) -> PretrainModule:
    torch.manual_seed(0)
    backbone = TransformerBackbone(F, d_model=8, depth=1, n_heads=2, max_len=T)
    return PretrainModule(backbone, F, OptimSettings(), **kw)


def test_masked_values_never_reach_the_backbone():
    """The reconstruction loss depends on masked bars' true values only as targets."""
    mod = _module(masked=MaskedSettings(patch_len=4, mask_ratio=0.5))
    x = torch.randn(B, T, F, generator=_gen(2))
    seen = []
    mod.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    mod.masked_loss(x, None, _gen(5))
    steps = ssl.step_mask(ssl.patch_mask(B, T, 4, 0.5, _gen(5)), T, 4)
    changed = x + 50.0 * steps[..., None]  # move only the masked bars' values
    mod.masked_loss(changed, None, _gen(5))
    torch.testing.assert_close(seen[0], seen[1])  # the backbone saw the same inputs
    assert (seen[0][steps] == 0).all()  # the (zero-initialised) mask vector


def test_masked_loss_runs_on_a_patch_backbone_and_trains():
    backbone = HybridBackbone(F, d_model=8, depth=1, n_heads=2, max_len=T, ssm_state=4)
    mod = PretrainModule(backbone, F, OptimSettings(), masked=MaskedSettings(4, 0.5))
    x = torch.randn(B, T, F, generator=_gen(3))
    loss = mod.masked_loss(x, None, _gen(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert mod.mask_token.grad is not None and mod.mask_token.grad.abs().sum() > 0


# --------------------------------------------------------------------------- augmentations


def test_jitter_adds_noise_of_the_configured_std():
    x = torch.zeros(64, 32, 8)
    noise = ssl.jitter(x, 0.3, _gen())
    assert abs(noise.std().item() - 0.3) < 0.02
    assert torch.equal(ssl.jitter(x + 1, 0.0, _gen()), x + 1)


def test_scaling_multiplies_each_sample_feature_by_one_factor_over_time():
    x = torch.rand(8, 10, 3) + 1.0
    out = ssl.scaling(x, 0.2, _gen())
    ratio = out / x  # (B, T, F), constant over T
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ratio[:, 0].std() > 0.05
    assert torch.equal(ssl.scaling(x, 0.0, _gen()), x)


def test_time_mask_zeroes_one_contiguous_span():
    x = torch.ones(16, 20, 2)
    out = ssl.time_mask(x, 0.25, _gen())
    zero = (out == 0).all(dim=-1)  # (B, T)
    assert (zero.sum(dim=1) == 5).all()
    for row in zero:
        idx = row.nonzero().flatten()
        assert (idx.diff() == 1).all()  # contiguous
    assert torch.equal(ssl.time_mask(x, 0.0, _gen()), x)


def test_crop_takes_contiguous_sub_windows():
    x = torch.arange(2 * 10 * 1, dtype=torch.float32).reshape(2, 10, 1)
    starts = torch.tensor([0, 3])
    out = ssl.crop(x, starts, 6)
    assert torch.equal(out[0], x[0, 0:6]) and torch.equal(out[1], x[1, 3:9])
    s = ssl.crop_starts(100, 10, 6, _gen())
    assert s.min() >= 0 and s.max() <= 4
    assert ssl.crop_length(10, 0.8) == 8


# --------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_info_nce_matches_the_loop_reference_on_values_and_gradients(temperature):
    z1 = torch.randn(5, 7, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 7, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    fast = ssl.info_nce(z1, z2, temperature)
    ref = ssl.info_nce_ref(z1, z2, temperature)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    g_fast = torch.autograd.grad(fast, (z1, z2))
    g_ref = torch.autograd.grad(ssl.info_nce_ref(z1, z2, temperature), (z1, z2))
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_info_nce_is_lower_when_views_agree():
    z = torch.randn(8, 4, generator=_gen(6))
    assert ssl.info_nce(z, z, 0.1) < ssl.info_nce(z, torch.randn(8, 4, generator=_gen(7)), 0.1)


def test_contrastive_loss_with_all_augmentations_is_finite_and_differentiable():
    mod = _module(contrastive=ContrastiveSettings(crop=0.75, time_mask=0.2))
    loss = mod.contrastive_loss(torch.randn(B, T, F, generator=_gen(8)), None, _gen(1))
    loss.backward()
    assert torch.isfinite(loss)
    assert mod.projector[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (MaskedSettings, {"mask_ratio": 1.0}, "mask_ratio"),
        (MaskedSettings, {"patch_len": 0}, "patch_len"),
        (ContrastiveSettings, {"temperature": 0.0}, "temperature"),
        (ContrastiveSettings, {"crop": 0.0}, "crop"),
        (ContrastiveSettings, {"time_mask": 1.0}, "time_mask"),
        (ContrastiveSettings, {"jitter": -0.1}, "jitter"),
    ],
)
def test_bad_settings_name_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        cls(**kwargs)


# --------------------------------------------------------------------------- warm start


def _backbone(d_model: int = 8) -> TransformerBackbone:
    return TransformerBackbone(F, d_model=d_model, depth=1, n_heads=2, max_len=T)


def test_saved_backbone_loads_with_weights_only_and_warm_starts(tmp_path):
    torch.manual_seed(1)
    src = _backbone()
    path = save_backbone(src, tmp_path / "run" / "checkpoints" / "backbone.pt")
    state = torch.load(path, weights_only=True)
    assert set(state) == set(src.state_dict())
    dst = _backbone()
    assert load_backbone(dst, tmp_path / "run") == path  # a run dir resolves to its backbone.pt
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_warm_start_refuses_another_shape_naming_the_parameter(tmp_path):
    save_backbone(_backbone(8), tmp_path / "checkpoints" / "backbone.pt")
    with pytest.raises(ConfigError, match=r"parameter \S+ has shape \(\d+(, \d+)*\) in .* but"):
        load_backbone(_backbone(16), tmp_path)


def test_warm_start_refuses_another_architecture(tmp_path):
    save_backbone(_backbone(8), tmp_path / "b.pt")
    other = HybridBackbone(F, d_model=8, depth=1, n_heads=2, max_len=T)
    with pytest.raises(ConfigError, match="missing"):
        load_backbone(other, tmp_path / "b.pt")


@pytest.mark.parametrize("where", ["nope", "run", "run/checkpoints/pretrain-backbone.pt"])
def test_warm_start_from_a_missing_file_names_the_path(tmp_path, where):
    (tmp_path / "run").mkdir()  # a run dir without checkpoints
    expected = tmp_path / where
    expected = expected if expected.suffix == ".pt" else expected / "checkpoints" / "backbone.pt"
    with pytest.raises(ConfigError, match=re.escape(f"no backbone checkpoint at {expected}")):
        load_backbone(_backbone(), tmp_path / where)
