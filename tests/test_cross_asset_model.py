"""Cross-asset attention (`cross_asset.enabled=true`): data, model, refusals, end to end."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch
from experiments.benchmarks.cross_asset import fit_lead_lag, lead_lag_market
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import nn

from plusultra.data.datasets.cross_section import CrossSectionDataset, window_members
from plusultra.errors import ConfigError
from plusultra.models.backbones import BACKBONES
from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.cross_asset import (
    CrossAssetMixer,
    CrossAssetModule,
    CrossAssetSettings,
    forecast_module,
)
from plusultra.models.heads import RegressionHead
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.training.cross_asset import check_cross_asset, check_cross_sharding
from plusultra.training.curriculum import Curriculum
from tests.conftest import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

T, S, F, W, H = 60, 5, 3, 8, 2


def _panel(seed: int = 0):
    """(T, S, F) features with a late listing, an early delisting and a missing bar."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((T, S, F)).astype(np.float32)
    tradable = np.ones((T, S), dtype=bool)
    tradable[:20, 1] = False  # symbol 1 lists at bar 20
    tradable[45:, 3] = False  # symbol 3 delists after bar 44
    tradable[30, 4] = False  # symbol 4 has no bar 30
    feats[:3, 2, 0] = np.nan  # symbol 2's first bars lack a feature (warm-up)
    targets = rng.standard_normal((T, S, H))
    targets[-H:] = np.nan
    return feats, tradable, targets


def _model(steps: str = "last", seed: int = 0) -> CrossAssetModule:
    torch.manual_seed(seed)
    module = forecast_module(
        CrossAssetSettings(enabled=True, depth=2, n_heads=2, steps=steps),
        backbone=HybridBackbone(F, 16, depth=1, n_heads=2, patch_len=2, patch_stride=2, max_len=W),
        head=RegressionHead(16, H, pool="last" if steps == "last" else "mean"),
        loss=nn.MSELoss(),
        optim=OptimSettings(),
    )
    return module.eval()


def _grid(ds: CrossSectionDataset, out: torch.Tensor) -> np.ndarray:
    """Outputs (N, H) in dataset-index order -> (T, S, H), NaN where no row."""
    grid = np.full((T, ds.symbols_per_item, out.shape[-1]), np.nan)
    idx = ds.index.numpy()
    grid[idx[:, 0], idx[:, 1]] = out.detach().numpy()
    return grid


def _predict(model, feats, tradable) -> tuple[CrossSectionDataset, np.ndarray]:
    ds = CrossSectionDataset(feats, tradable, W, W - 1, T - 1)
    with torch.no_grad():
        out = model(*ds.__getitems__(list(range(len(ds)))))
    return ds, _grid(ds, out)


def test_members_match_a_per_symbol_reference():
    """Listing mask: the whole window finite and tradable, checked cell by cell."""
    feats, tradable, _ = _panel()
    got = window_members(feats, tradable, W)
    ref = np.zeros((T, S), dtype=bool)
    for t in range(W - 1, T):
        for s in range(S):
            win = slice(t - W + 1, t + 1)
            ref[t, s] = np.isfinite(feats[win, s]).all() and tradable[win, s].all()
    np.testing.assert_array_equal(got, ref)
    assert not got[:, 1][: 20 + W - 1].any() and got[20 + W - 1, 1]
    assert not got[30 : 30 + W, 4].any() and got[30 + W, 4]


def test_batches_line_up_with_the_index():
    """Rows are date-major; y, t, s and returns follow them; labels are gathered per window."""
    feats, tradable, targets = _panel()
    labels = np.random.default_rng(1).integers(0, 3, (T, S, 2))
    returns = np.random.default_rng(2).standard_normal((T, S))
    returns[50, 0] = np.nan
    ds = CrossSectionDataset(feats, tradable, W, 10, 55, targets, labels, returns)
    x, members, rows, lab, y, t, s, r = ds.__getitems__(list(range(len(ds))))
    times = ds.times.numpy()
    assert times.min() >= 10 and times.max() <= 55
    assert x.shape == (len(ds), W, S, F) and lab.shape == (len(ds), W, S, 2)
    np.testing.assert_array_equal(members.numpy(), window_members(feats, tradable, W)[times])
    assert not (rows & ~members).any() and not rows[times == 50, 0].any()
    assert len(y) == len(ds.index) == int(rows.sum())
    np.testing.assert_array_equal(np.stack([t, s], 1), ds.index.numpy())
    np.testing.assert_allclose(y.numpy(), targets[t.numpy(), s.numpy()], rtol=1e-6)
    np.testing.assert_allclose(r.numpy(), returns[t.numpy(), s.numpy()], rtol=1e-6)
    b = 3
    np.testing.assert_array_equal(lab[b].numpy(), labels[times[b] - W + 1 : times[b] + 1])
    np.testing.assert_allclose(x[b].numpy(), np.nan_to_num(feats[times[b] - W + 1 : times[b] + 1]))


@pytest.mark.parametrize("steps", ["last", "all"])
def test_perturbing_any_symbols_future_leaves_every_past_output(steps):
    """Causality: change bars > t0 of one symbol; every symbol's output at t <= t0 stays."""
    feats, tradable, _ = _panel()
    model = _model(steps)
    _, base = _predict(model, feats, tradable)
    t0 = 35
    for k in range(S):
        moved = feats.copy()
        moved[t0 + 1 :, k] += np.random.default_rng(k).standard_normal(moved[t0 + 1 :, k].shape)
        _, after = _predict(model, moved, tradable)
        np.testing.assert_array_equal(after[: t0 + 1], base[: t0 + 1])
        changed = np.nan_to_num(after[t0 + 1 :] - base[t0 + 1 :])
        assert np.abs(changed).max() > 1e-4, "the perturbation must reach later outputs"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_runs_across_assets_causally(name):
    """Any registered backbone is the per-symbol encoder: finite (N, H) outputs, and a future
    perturbation of one symbol leaves every past output bit-identical."""
    from tests.test_models import tiny_backbone

    feats, tradable, _ = _panel()
    window = 24  # the multiscale backbone's coarsest scale is 21 bars
    model = CrossAssetModule(
        tiny_backbone(name, n_features=F),
        RegressionHead(16, H),
        nn.MSELoss(),
        OptimSettings(),
        CrossAssetSettings(enabled=True, n_heads=2).mixer(16),
    ).eval()

    def outputs(x):
        ds = CrossSectionDataset(x, tradable, window, window - 1, T - 1)
        with torch.no_grad():
            return _grid(ds, model(*ds.__getitems__(list(range(len(ds))))))

    base = outputs(feats)
    assert np.isfinite(base).sum() > 0 and np.isfinite(base[window - 1 :, 0]).all()
    moved = feats.copy()
    moved[41:, 2] += 1.0
    after = outputs(moved)
    np.testing.assert_array_equal(after[:41], base[:41])
    assert not np.allclose(np.nan_to_num(after[41:]), np.nan_to_num(base[41:]))


@pytest.mark.parametrize("steps", ["last", "all"])
def test_outputs_permute_with_the_symbols(steps):
    """Permutation equivariance: permute symbols in x and the masks; outputs permute."""
    feats, tradable, _ = _panel()
    model = _model(steps)
    perm = np.array([3, 0, 4, 2, 1])
    _, base = _predict(model, feats, tradable)
    _, permuted = _predict(model, feats[:, perm], tradable[:, perm])
    np.testing.assert_allclose(permuted, base[:, perm], atol=1e-5, equal_nan=True)


def test_unlisted_symbols_do_not_affect_the_others():
    """A symbol outside its listing: any values, or no column at all, change nobody's output."""
    feats, tradable, _ = _panel()
    model = _model()
    _, base = _predict(model, feats, tradable)
    wild = feats.copy()
    wild[:20, 1] = 1e3 * np.random.default_rng(5).standard_normal(wild[:20, 1].shape)
    _, after = _predict(model, wild, tradable)
    np.testing.assert_array_equal(after, base)
    keep = [0, 2, 3, 4]  # before symbol 1 lists, the universe without it gives the same outputs
    _, without = _predict(model, feats[:, keep], tradable[:, keep])
    early = slice(0, 20 + W - 1)
    np.testing.assert_allclose(without[early], base[early][:, keep], atol=1e-5, equal_nan=True)
    assert np.isfinite(base[early][:, keep]).any()


@pytest.mark.parametrize("steps", ["last", "all"])
def test_mixer_matches_a_per_date_reference(steps):
    """The batched, masked mixer equals running each date's listed symbols alone."""
    torch.manual_seed(0)
    mixer = CrossAssetMixer(8, depth=2, n_heads=2, steps=steps).eval()
    members = torch.rand(6, 5) > 0.4
    members[:, 0] = True
    h = torch.randn(int(members.sum()), 3, 8)  # (M, T', D)
    with torch.no_grad():
        got = mixer(h, members)
        ref, start = [], 0
        for row in members:
            n = int(row.sum())
            ref.append(mixer(h[start : start + n], torch.ones(1, n, dtype=torch.bool)))
            start += n
    torch.testing.assert_close(got, torch.cat(ref), atol=1e-5, rtol=1e-5)
    if steps == "last":
        torch.testing.assert_close(got[:, :-1], h[:, :-1])  # only the decision token moves


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="cross_asset.steps"):
        CrossAssetSettings(steps="first")
    with pytest.raises(ConfigError, match="cross_asset.depth"):
        CrossAssetSettings(depth=0)
    with pytest.raises(ConfigError, match="must divide d_model"):
        CrossAssetSettings(n_heads=3).mixer(16)
    module = forecast_module(
        CrossAssetSettings(enabled=False),
        backbone=HybridBackbone(F, 16, depth=1, n_heads=2),
        head=RegressionHead(16, H),
        loss=nn.MSELoss(),
        optim=OptimSettings(),
    )
    assert type(module) is ForecastModule


def _curriculum(*stages) -> Curriculum:
    return Curriculum("c", [dict(s) for s in stages])


def test_unsupported_combinations_are_refused():
    sup = {"kind": "supervised", "name": "supervised"}
    check_cross_asset(True, True, _curriculum(sup))
    pre = {"kind": "pretrain", "name": "pre", "masked": {}}
    check_cross_asset(True, True, _curriculum(pre, sup))  # pretrains the per-symbol backbone
    check_cross_asset(False, False, _curriculum({**sup, "window": 8}))
    with pytest.raises(ConfigError, match=r"cross_asset.enabled=True but data.cross_section"):
        check_cross_asset(True, False, _curriculum(sup))
    with pytest.raises(ConfigError, match=r"curriculum.stages\[0\].*window/regimes"):
        check_cross_asset(True, True, _curriculum({**sup, "window": 8}))
    node = compose_config(["curriculum=rl"]).curriculum
    with open_dict(node):
        node.checkpoint_dir = None  # a run dir only exists inside a run
    rl = instantiate(node, _convert_="all")
    with pytest.raises(ConfigError, match=r"curriculum.stages\[\d\].*PPO stage"):
        check_cross_asset(True, True, rl)
    trainer = types.SimpleNamespace(world_size=2, num_devices=2)
    with pytest.raises(ConfigError, match="cross_asset.enabled=true cannot be sharded"):
        check_cross_sharding(trainer, True)
    assert check_cross_sharding(trainer, False) is trainer


def test_only_the_cross_asset_model_learns_a_lead_lag_market():
    """A follower's next return is the leader's current one: invisible to a per-symbol model."""
    market = lead_lag_market(n_bars=400, seed=0)
    kw = dict(steps=150, windows_per_step=60, lr=5e-3)
    plain = fit_lead_lag(False, market, **kw)
    cross = fit_lead_lag(True, market, **kw)
    assert plain["val_mse"] > 0.95 * plain["zero_mse"]  # nothing to learn from own history
    assert abs(plain["ic"]) < 0.3
    assert cross["val_mse"] < 0.5 * cross["zero_mse"]  # at best noise^2 / (1 + noise^2) = 0.2
    assert cross["ic"] > 0.7


def test_cli_run_trains_predicts_and_records(tiny_cfg, tmp_path):
    """`cross_asset.enabled=true` end to end: the usual predictions frame, plusultra-predict
    reproducing it from the run dir, and plusultra-serve refusing the run."""
    from plusultra.cli.predict import predict
    from tests.test_run import run_in_process

    with open_dict(tiny_cfg):
        tiny_cfg.cross_asset.enabled = True
        tiny_cfg.data.cross_section = True
    value, run_dir = run_in_process(tiny_cfg)
    assert np.isfinite(value)
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert {"symbol", "timestamp", "pred_1", "pred_2", "position"} <= set(preds.columns)
    out = predict(run_dir, tiny_cfg.data.path, tmp_path / "p.parquet", 256, None, None, False)
    again = preds.merge(pd.read_parquet(out), on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(again) == len(preds)
    np.testing.assert_allclose(again["pred_1"], again["pred_1_cli"], rtol=1e-5, atol=1e-7)
    from plusultra.service.model import LoadedModel

    with pytest.raises(ConfigError, match="a cross-asset run"):  # serving is per-symbol
        LoadedModel(run_dir)
