"""Cross-asset attention: training throughput vs the plain hybrid, and the lead-lag lift.

    .venv/bin/python -m experiments.benchmarks.cross_asset            # both parts, writes docs
    .venv/bin/python -m experiments.benchmarks.cross_asset --part throughput --no-write

Part 1 (throughput): the real data module over the synthetic market (64 symbols x 1,260 days,
`features=default`), the hybrid backbone at the default size (d_model 64, depth 4, window 64),
regression head, MSE. The plain model trains on pooled (date, symbol) batches of 256 windows,
the cross-asset model (`cross_asset.enabled=true`) on blocks of 4 whole dates (256
symbol-windows); forward + backward + AdamW step over the data module's own train loader, 20
steps after 2 warm-up steps, both models in the same process, alternating. Throughput is
labelled symbol-windows (samples) per second; the headline ratio compares each model's fastest
step (this machine is shared), and the median ratio of back-to-back step pairs is reported too.

Part 2 (lift): `lead_lag_market`, a market where one leader's return at bar t moves its
followers' returns at bar t + 1 and nothing else is predictable. `fit_lead_lag` trains the plain
and the cross-asset model (tiny hybrid) on the same bars and scores the followers' next-bar
forecasts on held-out bars. tests/test_cross_asset_model.py runs the same routine, smaller.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from experiments.benchmarks._report import machine, write_section

ROLES = {"leader": 1.0, "follower": -1.0, "independent": 0.0}


def lead_lag_market(
    n_bars: int = 800, n_followers: int = 2, n_independent: int = 2, noise: float = 0.5, seed=0
) -> dict[str, np.ndarray]:
    """A market of one leader, `n_followers` followers and `n_independent` independent symbols.

    Returns r (T, S) are standard normal for the leader and the independent symbols, and
    ``r_f[t + 1] = r_leader[t] + noise * e`` for each follower (own noise e ~ N(0, 1)), so a
    follower's own history (``r_leader[t - 1] + noise``) says nothing of its next return: only
    the leader's current bar does. Symbol order: leader, followers, independents.

    Returns:
        feats (T, S, 2) float32: the bar's return and a static role flag (leader 1,
        follower -1, independent 0; symbols of a real universe carry such static columns too,
        e.g. sectors); targets (T, S, 1): the next bar's return (NaN at the last bar);
        tradable (T, S) bool (all True); role (S,) names.
    """
    rng = np.random.default_rng(seed)
    role = ["leader"] + ["follower"] * n_followers + ["independent"] * n_independent
    r = rng.standard_normal((n_bars, len(role)))
    lead = r[:, 0]
    for s in range(1, 1 + n_followers):
        r[1:, s] = lead[:-1] + noise * rng.standard_normal(n_bars - 1)
    flags = np.broadcast_to(np.array([ROLES[x] for x in role]), r.shape)
    feats = np.stack([r, flags], axis=-1).astype(np.float32)
    targets = np.full((n_bars, len(role), 1), np.nan)
    targets[:-1, :, 0] = r[1:]
    return {
        "feats": feats,
        "targets": targets,
        "tradable": np.ones(r.shape, dtype=bool),
        "role": np.array(role),
    }


def _tiny_model(cross: bool, n_features: int, window: int, d_model: int):
    from plusultra.models.backbones.hybrid import HybridBackbone
    from plusultra.models.cross_asset import CrossAssetSettings, forecast_module
    from plusultra.models.heads import RegressionHead
    from plusultra.models.module import OptimSettings

    backbone = HybridBackbone(
        n_features, d_model, depth=1, n_heads=2, patch_len=4, patch_stride=4, max_len=window
    )
    return forecast_module(
        CrossAssetSettings(enabled=cross, n_heads=2),
        backbone=backbone,
        head=RegressionHead(d_model, 1),
        loss=nn.MSELoss(),
        optim=OptimSettings(),
    )


def fit_lead_lag(
    cross: bool,
    market: dict[str, np.ndarray],
    steps: int = 300,
    train_frac: float = 0.7,
    window: int = 8,
    d_model: int = 16,
    windows_per_step: int = 160,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train the plain (`cross=False`) or cross-asset model and score it on held-out bars.

    Both see the same bars: decisions up to ``train_frac`` of the calendar train (random
    batches of about `windows_per_step` symbol-windows: single windows for the plain model,
    whole dates for the cross-asset one), the decisions after it (starting one window later,
    so no input bar is shared) are scored through `training.predict.predictions_frame`, the
    path of a run's predictions.

    Returns:
        followers' validation MSE, the zero forecast's MSE on the same rows, their IC (Pearson
        of forecast and realised next return, pooled) and the final training loss.
    """
    from plusultra.data.datasets.cross_section import CrossSectionDataset
    from plusultra.data.datasets.windows import WindowDataset, sample_index, valid_window_mask
    from plusultra.training.predict import predictions_frame

    torch.manual_seed(seed)
    feats, targets, tradable = market["feats"], market["targets"], market["tradable"]
    T, S, F = feats.shape
    split = int(train_frac * T)
    model = _tiny_model(cross, F, window, d_model)
    if cross:
        train = CrossSectionDataset(feats, tradable, window, window - 1, split - 1, targets)
        per_item = S
    else:
        ok = valid_window_mask(feats, window) & np.isfinite(targets).all(-1)
        train = WindowDataset(feats, sample_index(ok, window - 1, split - 1), window, targets)
        per_item = 1
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        items = torch.randint(len(train), (max(1, windows_per_step // per_item),), generator=gen)
        *inputs, y = train.__getitems__(items.tolist())
        loss = model.loss_fn(model(*inputs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    lo, hi = split + window, T - 2
    if cross:
        test = CrossSectionDataset(feats, tradable, window, lo, hi)
    else:
        test = WindowDataset(feats, sample_index(valid_window_mask(feats, window), lo, hi), window)
    dates = pd.date_range("2000-01-03", periods=T, freq="B")
    symbols = [f"{role}{i}" for i, role in enumerate(market["role"])]
    preds = predictions_frame(model, test, dates, symbols, [1.0], progress=False)
    t = dates.get_indexer(preds["timestamp"])
    s = pd.Index(symbols).get_indexer(preds["symbol"])
    truth = targets[t, s, 0]
    follow = market["role"][s] == "follower"
    p, r = preds["pred_1"].to_numpy()[follow], truth[follow]
    return {
        "val_mse": float(np.mean((p - r) ** 2)),
        "zero_mse": float(np.mean(r**2)),
        "ic": float(np.corrcoef(p, r)[0, 1]) if p.std() > 0 else 0.0,
        "train_loss": float(loss.detach()),
    }


def lift(steps: int = 600, seed: int = 0) -> str:
    market = lead_lag_market(n_bars=1500, seed=seed)
    rows = {name: fit_lead_lag(name == "cross-asset", market, steps=steps, seed=seed)
            for name in ("plain", "cross-asset")}  # fmt: skip
    lines = [
        f"| {name} | {r['val_mse']:.3f} | {r['zero_mse']:.3f} | "
        f"{1 - r['val_mse'] / r['zero_mse']:+.1%} | {r['ic']:+.3f} |"
        for name, r in rows.items()
    ]
    return f"""### Lead-lag lift

`lead_lag_market(n_bars=1500, noise=0.5)`: 1 leader, 2 followers (next return = leader's
return + 0.5 N(0, 1), so at best R^2 = 0.8), 2 independent symbols; features: the bar's return
and a static role flag. Hybrid d_model 16, depth 1, window 8; {steps} AdamW steps of about 160
symbol-windows at lr 3e-3; followers scored on the last 30% of bars (after a one-window gap).

| model | followers' val MSE | zero forecast MSE | MSE reduction | IC |
|---|---:|---:|---:|---:|
{chr(10).join(lines)}
"""


def _datamodule(cross: bool, symbols: int, days: int, batch: int, cache: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from plusultra.run import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"cross_asset.enabled={str(cross).lower()}",
                f"data.fixture.symbols={symbols}",
                f"data.fixture.days={days}",
                f"data.batch_size={batch}",
                f"paths.cache_dir={cache}",
            ],
        )
    dm = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"), _convert_="all")
    dm.setup()
    return dm, cfg


def _build(cfg, dm):
    from hydra.utils import instantiate

    from plusultra.models.cross_asset import forecast_module

    return forecast_module(
        instantiate(cfg.cross_asset),
        backbone=instantiate(cfg.backbone, n_features=dm.n_features, _convert_="all"),
        head=instantiate(cfg.head, _convert_="all"),
        loss=instantiate(cfg.loss, _convert_="all"),
        optim=instantiate(cfg.optim, _convert_="all"),
    )


def throughput(symbols: int = 64, days: int = 1260, batch: int = 256, steps: int = 20) -> str:
    import shutil
    import tempfile

    torch.manual_seed(0)
    cache = tempfile.mkdtemp(prefix="xasset_bench_")  # the generated database
    try:
        runs = {}
        for name, cross in (("plain hybrid", False), ("cross-asset hybrid", True)):
            dm, cfg = _datamodule(cross, symbols, days, batch, cache)
            model = _build(cfg, dm).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            batches = iter(dm.train_dataloader())
            runs[name] = {"model": model, "opt": opt, "batches": batches, "dm": dm, "times": [],
                          "samples": [], "dates": [], "encoded": []}  # fmt: skip

        def step(run) -> tuple[float, int, int, int]:
            batch = next(run["batches"])
            start = time.perf_counter()
            inputs, y, _ = run["model"]._split_batch(batch)
            loss = run["model"].loss_fn(run["model"](*inputs), y)
            run["opt"].zero_grad(set_to_none=True)
            loss.backward()
            run["opt"].step()
            # symbol-windows through the backbone: the listed ones of each date / the batch
            encoded = int(inputs[1].sum()) if len(inputs) > 2 else len(y)
            return time.perf_counter() - start, len(y), len(inputs[0]), encoded

        for i in range(steps + 2):  # alternate, so that machine load hits both alike
            for run in runs.values():
                seconds, samples, items, encoded = step(run)
                if i >= 2:
                    run["times"].append(seconds)
                    run["samples"].append(samples)
                    run["dates"].append(items)
                    run["encoded"].append(encoded)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    out = {}
    for name, run in runs.items():
        sec = statistics.median(run["times"])
        best = min(run["times"])
        out[name] = {
            "best_per_s": run["samples"][run["times"].index(best)] / best,
            "samples_per_s": statistics.median(run["samples"]) / sec,
            "encoded_per_s": statistics.median(run["encoded"]) / sec,
            "dates": statistics.median(run["dates"]),
            "batch": statistics.median(run["samples"]),
            "params": sum(p.numel() for p in run["model"].parameters()),
        }
    plain, cross = out["plain hybrid"], out["cross-asset hybrid"]
    # each cross-asset step against the plain step measured just before it: robust to load drift
    a, b = runs["plain hybrid"], runs["cross-asset hybrid"]
    pairs = sorted(
        (nb / tb) / (na / ta)
        for na, ta, nb, tb in zip(a["samples"], a["times"], b["samples"], b["times"], strict=True)
    )
    ratio = cross["best_per_s"] / plain["best_per_s"]
    lines = [
        f"| {name} | {r['params']:,} | {r['batch']:.0f} | {r['best_per_s']:.0f} | "
        f"{r['samples_per_s']:.0f} | {r['encoded_per_s']:.0f} | "
        f"{r['best_per_s'] / plain['best_per_s']:.2f}x |"
        for name, r in out.items()
    ]
    return f"""## Cross-asset attention: training throughput

`python -m experiments.benchmarks.cross_asset` — {machine()}

The synthetic market with {symbols} symbols x {days} days (`features=default`), hybrid backbone at
the default size (d_model 64, depth 4, n_heads 4, window 64), regression head, MSE; forward +
backward + AdamW step over the data module's own train loader (batch assembly excluded from the
timing), {steps} steps after 2 warm-up steps, the two models alternating in one process. The
plain model takes pooled batches of {batch} windows; the cross-asset model
(`cross_asset.enabled=true`, one cross-symbol block on the decision token) blocks of whole
dates of about the same number of symbol-windows ({cross["dates"]:.0f} dates). Samples are labelled
symbol-windows (with a target); "encoded" counts every window through the backbone, for the
cross-asset model also listed symbols without a target. This machine is shared, so step times
vary a lot: the headline ratio compares each model's fastest step (samples/s), the least
disturbed by other load; the median over the {steps} back-to-back step pairs of (cross-asset
samples/s) / (plain samples/s) is {statistics.median(pairs):.2f}x (range {pairs[0]:.2f}x to
{pairs[-1]:.2f}x). Table: samples/s of the fastest step, then medians; "vs plain" compares the
fastest steps.

**Cross-asset training throughput: {ratio:.2f}x the plain hybrid's** (samples/s, fastest step)
in this run.

| model | parameters | samples / step | samples/s (fastest) | samples/s | encoded/s | vs plain |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(lines)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["throughput", "lift", "all"], default="all")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    parts = []
    if args.part in ("throughput", "all"):
        parts.append(throughput())
    if args.part in ("lift", "all"):
        parts.append(lift())
    text = "\n".join(parts)
    print(text)
    if not args.no_write and args.part == "all":
        print(f"wrote {write_section('cross_asset', text)}")


if __name__ == "__main__":
    main()
