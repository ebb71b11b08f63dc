"""Cross-asset windows: naive slices, survivorship masks, causality, batching, decision bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from plusultra.data.datasets.panel import Panel, load_panel, tradable_mask
from plusultra.data.datasets.windows import forward_log_returns, passthrough_collate
from plusultra.data.features.cross_asset import CrossAssetDataset, cross_asset_times

WINDOW, HORIZON = 5, 2
N_BARS, N_SYMBOLS, N_FEATS = 40, 4, 3
LISTS, DELISTS = 12, 25  # symbol 1 lists at bar 12; symbol 2's last bar (delisting date) is 25


@pytest.fixture
def hand_made():
    """(panel, feats, targets, tradable): symbol 1 lists late, symbol 2 delists early."""
    rng = np.random.default_rng(0)
    close = 30 * np.exp(np.cumsum(0.01 * rng.standard_normal((N_BARS, N_SYMBOLS)), axis=0))
    close[:LISTS, 1] = np.nan
    close[DELISTS + 1 :, 2] = np.nan
    close[18, 3] = np.nan  # one missing day
    dates = pd.bdate_range("2021-01-04", periods=N_BARS)
    symbols = [f"S{i}" for i in range(N_SYMBOLS)]
    assets = pd.DataFrame(
        {
            "sector": ["A", "B", "A", "B"],
            "listed": [str(dates[0].date()), str(dates[LISTS].date()), None, None],
            "delisted": [None, None, str(dates[DELISTS].date()), None],
        },
        index=pd.Index(symbols, name="symbol"),
    )
    fields = {k: close for k in ("open", "high", "low", "close")}
    fields["volume"] = np.ones_like(close)
    panel = Panel(dates.to_numpy(), symbols, fields, {}, assets)
    feats = rng.standard_normal((N_BARS, N_SYMBOLS, N_FEATS)).astype(np.float32)
    feats[3, 0, 1] = np.nan  # one undefined feature inside symbol 0's life
    feats[np.isnan(close)] = np.nan
    feats[:LISTS, 1] = 0.5  # forward-filled garbage before listing: must stay invisible
    targets = forward_log_returns(close, HORIZON)
    targets[np.isnan(targets)] = 0.1  # finite everywhere: only `tradable` may hide them
    targets[30, 0, 1] = np.nan  # one undefined horizon
    return panel, feats, targets, tradable_mask(panel)


def naive_item(feats, targets, tradable, t: int) -> dict[str, np.ndarray]:
    """Plain slices of one decision bar, the definition the dataset must match."""
    window = feats[t - WINDOW + 1 : t + 1]
    visible = np.isfinite(window).all(-1) & tradable[t - WINDOW + 1 : t + 1]
    return {
        "x": np.nan_to_num(window, nan=0.0),
        "mask": visible,
        "tradable": tradable[t],
        "y": np.nan_to_num(targets[t], nan=0.0).astype(np.float32),
        "y_mask": np.isfinite(targets[t]).all(-1) & tradable[t],
    }


def test_items_equal_naive_slices(hand_made):
    _, feats, targets, tradable = hand_made
    times = np.arange(WINDOW - 1, N_BARS)
    ds = CrossAssetDataset(feats, WINDOW, times, targets, tradable)
    assert len(ds) == len(times)
    for i, t in enumerate(times):
        item, want = ds[i], naive_item(feats, targets, tradable, t)
        assert set(item) == set(want)
        assert item["x"].shape == (WINDOW, N_SYMBOLS, N_FEATS) and item["x"].dtype == torch.float32
        assert item["mask"].shape == (WINDOW, N_SYMBOLS) and item["mask"].dtype == torch.bool
        assert item["y"].shape == (N_SYMBOLS, HORIZON) and item["y_mask"].shape == (N_SYMBOLS,)
        for key, value in want.items():
            np.testing.assert_array_equal(item[key].numpy(), value, err_msg=f"{key} at t={t}")


def test_batched_fetch_is_one_stack(hand_made):
    _, feats, targets, tradable = hand_made
    ds = CrossAssetDataset(feats, WINDOW, np.arange(10, 30), targets, tradable)
    batch = ds.__getitems__([3, 0, 7])
    assert batch["x"].shape == (3, WINDOW, N_SYMBOLS, N_FEATS)
    assert batch["mask"].shape == (3, WINDOW, N_SYMBOLS)
    assert batch["tradable"].shape == (3, N_SYMBOLS)
    assert batch["y"].shape == (3, N_SYMBOLS, HORIZON) and batch["y_mask"].shape == (3, N_SYMBOLS)
    for row, i in enumerate([3, 0, 7]):
        for key, value in ds[i].items():
            assert torch.equal(batch[key][row], value)


def test_survivorship_masks(hand_made):
    panel, feats, targets, tradable = hand_made
    ds = CrossAssetDataset(feats, WINDOW, np.arange(WINDOW - 1, N_BARS), targets, tradable)
    bars = np.arange(N_BARS)
    for i in range(len(ds)):
        t = i + WINDOW - 1
        item = ds[i]
        window_bars = bars[t - WINDOW + 1 : t + 1]
        # late listing: invisible (despite finite filler features) before listing
        np.testing.assert_array_equal(item["mask"][:, 1].numpy(), window_bars >= LISTS)
        assert bool(item["tradable"][1]) == (t >= LISTS)
        # early delisting: not tradable from its delisting date, never a target after
        np.testing.assert_array_equal(item["mask"][:, 2].numpy(), window_bars < DELISTS)
        assert bool(item["tradable"][2]) == (t < DELISTS)
        assert bool(item["y_mask"][2]) == (t < DELISTS)
        # the missing day and the undefined feature
        np.testing.assert_array_equal(item["mask"][:, 3].numpy(), window_bars != 18)
        np.testing.assert_array_equal(item["mask"][:, 0].numpy(), window_bars != 3)
        assert bool(item["y_mask"][0]) == (t != 30)
    # y_mask is exactly "target finite and tradable": targets here are finite off-life too
    y_mask = torch.stack([ds[i]["y_mask"] for i in range(len(ds))]).numpy()
    off_life = ~tradable[WINDOW - 1 :]
    assert off_life.any() and not y_mask[off_life].any()
    assert np.isfinite(targets[WINDOW - 1 :][off_life]).all()
    assert panel.shape == (N_BARS, N_SYMBOLS)


def test_inputs_use_bars_up_to_t_only(hand_made):
    _, feats, targets, tradable = hand_made
    times = np.arange(WINDOW - 1, N_BARS)
    before = CrossAssetDataset(feats, WINDOW, times, targets, tradable)
    rng = np.random.default_rng(1)
    for cut in (10, 22, 33):
        f2, tr2 = feats.copy(), tradable.copy()
        f2[cut + 1 :] = rng.standard_normal(f2[cut + 1 :].shape)
        f2[cut + 1 :, 0, 0] = np.nan
        tr2[cut + 1 :] = rng.random(tr2[cut + 1 :].shape) < 0.5
        after = CrossAssetDataset(f2, WINDOW, times, targets, tr2)
        for i in np.flatnonzero(times <= cut):
            for key in ("x", "mask", "tradable"):
                assert torch.equal(after[i][key], before[i][key]), (key, cut, times[i])
        assert any(
            not torch.equal(after[i]["x"], before[i]["x"]) for i in np.flatnonzero(times > cut)
        )


def test_dataloader_with_passthrough_collate(hand_made):
    _, feats, targets, tradable = hand_made
    times = cross_asset_times(feats, tradable, WINDOW, 0, N_BARS - 1)
    ds = CrossAssetDataset(feats, WINDOW, times, targets, tradable)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=passthrough_collate)
    batches = list(loader)
    assert len(batches) == -(-len(times) // 4)
    first = batches[0]
    assert first["x"].shape == (4, WINDOW, N_SYMBOLS, N_FEATS)
    assert first["y_mask"].shape == (4, N_SYMBOLS)
    x = torch.cat([b["x"] for b in batches])
    assert torch.equal(x, torch.stack([ds[i]["x"] for i in range(len(ds))]))


def test_inference_without_targets(hand_made):
    _, feats, _, tradable = hand_made
    ds = CrossAssetDataset(feats, WINDOW, np.array([WINDOW - 1, N_BARS - 1]), None, tradable)
    assert set(ds[0]) == {"x", "mask", "tradable"}
    assert set(ds.__getitems__([0, 1])) == {"x", "mask", "tradable"}


def test_rejects_out_of_range_times(hand_made):
    _, feats, targets, tradable = hand_made
    with pytest.raises(ValueError, match="decision bars"):
        CrossAssetDataset(feats, WINDOW, np.array([WINDOW - 2]), targets, tradable)
    with pytest.raises(ValueError, match="decision bars"):
        CrossAssetDataset(feats, WINDOW, np.array([N_BARS]), targets, tradable)
    with pytest.raises(ValueError, match="tradable"):
        CrossAssetDataset(feats, WINDOW, np.array([10]), targets, tradable[:-1])


def times_ref(feats, tradable, window, lo, hi, min_symbols, targets=None) -> np.ndarray:
    """Loop over bars and symbols: count complete tradable windows at t."""
    out = []
    for t in range(max(lo, window - 1), min(hi, len(feats) - 1) + 1):
        count = 0
        for s in range(feats.shape[1]):
            rows = slice(t - window + 1, t + 1)
            ok = np.isfinite(feats[rows, s]).all() and tradable[rows, s].all()
            if targets is not None:
                ok = ok and np.isfinite(targets[t, s]).all()
            count += bool(ok)
        if count >= min_symbols:
            out.append(t)
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("min_symbols", [1, 2, 3, 4])
@pytest.mark.parametrize(("lo", "hi"), [(0, N_BARS - 1), (-5, 100), (10, 20), (30, 29)])
def test_cross_asset_times_matches_reference(hand_made, min_symbols, lo, hi):
    _, feats, targets, tradable = hand_made
    got = cross_asset_times(feats, tradable, WINDOW, lo, hi, min_symbols)
    np.testing.assert_array_equal(got, times_ref(feats, tradable, WINDOW, lo, hi, min_symbols))
    assert got.dtype == np.int64
    with_targets = cross_asset_times(feats, tradable, WINDOW, lo, hi, min_symbols, targets)
    want = times_ref(feats, tradable, WINDOW, lo, hi, min_symbols, targets)
    np.testing.assert_array_equal(with_targets, want)


def test_on_the_synthetic_market(tiny_db):
    """Delisted/late symbols of the generated database never leak outside their life."""
    panel = load_panel(tiny_db, validate=False)
    tradable = tradable_mask(panel)
    log_close = np.log(panel.fields["close"])
    feats = np.stack([np.diff(log_close, axis=0, prepend=np.nan), log_close], -1)  # (T, S, 2)
    targets = forward_log_returns(panel.fields["close"], HORIZON)
    times = cross_asset_times(feats, tradable, 16, 0, panel.shape[0] - 1, 2, targets)
    ds = CrossAssetDataset(feats.astype(np.float32), 16, times, targets, tradable)
    loader = DataLoader(ds, batch_size=4, collate_fn=passthrough_collate)
    tr = torch.from_numpy(tradable)
    for start, batch in zip(range(0, len(times), 4), loader, strict=True):
        t = torch.from_numpy(times[start : start + 4])
        rows = t[:, None] + torch.arange(-15, 1)[None, :]
        assert not (batch["mask"] & ~tr[rows]).any()
        assert not (batch["y_mask"] & ~tr[t]).any()
        assert (batch["y_mask"].sum(1) >= 2).all()
