"""Portfolio losses end to end: the data module's block batches, the simulator's contract, and a
market where the traded weights matter.

* A batch's training-time portfolio return equals the frictionless simulator's return for the
  same weights and execution timing (`execution_returns`).
* The portfolio dataset serves execution-aligned returns and keeps them inside its segment.
* On a synthetic market with a known optimal policy, `head=policy loss=sharpe` traded as its
  weights reaches a higher validation Sharpe than the MSE forecast turned into rank positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.datasets.sampler import BlockBatchSampler
from plusultra.data.datasets.windows import WindowDataset, passthrough_collate, sample_index
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.evaluation.backtest.positions import positions_from_signal
from plusultra.execution import execution_returns
from plusultra.models.heads import PolicyHead, RegressionHead
from plusultra.models.losses import CVaR, NegSharpe, check_compatible
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.sim.frictionless import FrictionlessSimulator
from plusultra.training.predict import predict_windows


def _dm(path, horizon: int = 2, **kw) -> SQLiteDataModule:
    features = FeaturePipeline(["log_return", "return_5", "volatility_20"], [])
    dm = SQLiteDataModule(str(path), features, 16, horizon, block=8, **kw)
    dm.setup()
    return dm


@pytest.mark.parametrize("execution", ["next_open", "next_close", "same_close"])
def test_batch_portfolio_return_equals_frictionless_simulator(tiny_db, execution):
    dm = _dm(tiny_db, execution=execution)
    fields = dm.panel.fields
    r_exec = execution_returns(execution, fields["open"], fields["close"])  # (T, S)
    batch = next(iter(dm.train_dataloader()))
    x, y, date, symbol, ret = batch  # a portfolio batch: all symbols of consecutive dates
    np.testing.assert_allclose(ret.numpy(), r_exec[date, symbol], rtol=1e-6)
    head = PolicyHead(x.shape[-1]).double()
    out = torch.tanh(
        torch.randn(len(x), 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    out = out * 0.6  # 6 symbols x up to 0.6: the gross cap binds on most dates
    loss = NegSharpe(block=8, gross=1.0, net=0.4)
    check_compatible(head, loss)
    book = loss.book(out, date, symbol, ret)
    dates, symbols = book.dates.numpy(), book.symbols.numpy()
    assert len(dates) >= 8 and (np.diff(dates) == 1).all()  # consecutive bars, in order
    # The same weights as a (dates, all symbols) panel, through the simulator.
    weights = np.zeros((len(dates), len(dm.panel.symbols)))
    weights[:, symbols] = book.weights.detach().numpy()
    sim = FrictionlessSimulator().run(weights, np.nan_to_num(r_exec[dates]) * (weights != 0))
    np.testing.assert_allclose(book.returns.detach().numpy(), sim.portfolio_returns, atol=1e-9)
    np.testing.assert_allclose(sim.gross_exposure, np.abs(weights).sum(1))
    assert (sim.gross_exposure <= 1.0 + 1e-12).all() and (
        np.abs(sim.net_exposure) <= 0.4 + 1e-12
    ).all()


def test_portfolio_dataset_stays_inside_its_segment(tiny_db):
    """horizon=1 with next-bar fills: the return of decision t ends at t + 2, one bar past its
    label, so the last train decision moves back a bar and never prices past train_end."""
    dm = _dm(tiny_db, horizon=1)
    seg = dm.segments
    train = dm.labelled_dataset(*seg.train)
    assert int(train.index[:, 0].max()) + 2 <= seg.train_end
    pooled = SQLiteDataModule(str(tiny_db), dm.pipeline, 16, 1)  # the default regression path
    pooled.setup()
    assert int(pooled.labelled_dataset(*seg.train).index[:, 0].max()) == seg.train_end - 1
    assert len(next(iter(pooled.train_dataloader()))) == 2  # (x, y): unchanged
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, BlockBatchSampler)
    assert sum(len(b[0]) for b in loader) == len(train)


def test_a_portfolio_loss_on_pooled_batches_names_the_fix():
    from plusultra.errors import ConfigError

    model = ForecastModule(_Tokens(3, 8), PolicyHead(8), CVaR(), OptimSettings())
    with pytest.raises(ConfigError, match="data.block"):
        model._split_batch((torch.zeros(4, 3, 3), torch.zeros(4, 1)))


# ---------------------------------------------------------------- a market with a known policy

WINDOW, N_SYMBOLS, N_DATES, TRAIN_END, VAL_START = 4, 8, 700, 449, 460
STEPS = 80  # optimiser steps of each model


def _market(seed: int = 0):
    """Execution returns r = m_t + e_ts (a common move and a smaller own move) and a feature
    that tells the sign of each symbol's own next execution return, wrong 30% of the time.

    The known optimal policy holds each symbol in the direction of its feature; most of what it
    earns is the common move, which a cross-sectionally re-ranked (dollar-neutral) book cannot
    hold, whatever the forecast.
    """
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.01, (N_DATES, 1)) + rng.normal(0, 0.004, (N_DATES, N_SYMBOLS))
    told = np.where(rng.random(r.shape) < 0.3, -np.sign(r), np.sign(r))
    feats = rng.normal(size=(N_DATES, N_SYMBOLS, 3)).astype(np.float32)  # two noise channels
    feats[..., 0] = told  # known at the decision bar
    y = (r / r.std())[..., None].astype(np.float32)  # the MSE model's target: the same return
    return feats, y, r, told


class _Tokens(nn.Module):
    """(B, T, F) -> (B, T, D): a one-layer backbone, enough for a linear signal."""

    def __init__(self, n_features: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_features, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x))


def _fit(model: ForecastModule, loader: DataLoader, steps: int) -> ForecastModule:
    """AdamW on the module's own batch unpacking and loss, `steps` optimiser steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = 0
    while step < steps:
        for batch in loader:
            inputs, y, market = model._split_batch(batch)
            loss = model.loss_fn(model(*inputs), y, *market)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return model


def _val_sharpe(weights: np.ndarray, r: np.ndarray) -> float:
    pr = FrictionlessSimulator().run(weights, r[VAL_START:]).portfolio_returns
    return float(pr.mean() / pr.std() * np.sqrt(252))


def _val_weights(model, feats, val_idx, method: str) -> np.ndarray:
    pred = predict_windows(model, WindowDataset(feats, val_idx, WINDOW), progress=False)[:, 0]
    signal = np.full((N_DATES, N_SYMBOLS), np.nan)
    signal[val_idx[:, 0], val_idx[:, 1]] = pred
    return positions_from_signal(signal[VAL_START:], method, gross=1.0)


def test_policy_sharpe_beats_the_mse_forecast_on_validation():
    feats, y, r, told = _market()
    ok = np.ones((N_DATES, N_SYMBOLS), dtype=bool)
    train_idx = sample_index(ok, WINDOW - 1, TRAIN_END)
    val_idx = sample_index(ok, VAL_START, N_DATES - 1)

    torch.manual_seed(0)
    policy = ForecastModule(_Tokens(3, 16), PolicyHead(16), NegSharpe(block=16), OptimSettings())
    blocks = BlockBatchSampler(train_idx[:, 0], 16, shuffle=True, seed=0)
    train = WindowDataset(feats, train_idx, WINDOW, y, returns=r)
    _fit(policy, DataLoader(train, batch_sampler=blocks, collate_fn=passthrough_collate), STEPS)

    torch.manual_seed(0)
    mse = ForecastModule(_Tokens(3, 16), RegressionHead(16, 1), nn.MSELoss(), OptimSettings())
    pooled = WindowDataset(feats, train_idx, WINDOW, y)
    loader = DataLoader(pooled, batch_size=256, shuffle=True, collate_fn=passthrough_collate)
    _fit(mse, loader, STEPS)

    policy_sharpe = _val_sharpe(_val_weights(policy, feats, val_idx, "weights"), r)
    mse_sharpe = _val_sharpe(_val_weights(mse, feats, val_idx, "rank"), r)
    oracle = _val_sharpe(positions_from_signal(told[VAL_START:], "weights"), r)
    print(f"val Sharpe: policy {policy_sharpe:.2f}, mse+rank {mse_sharpe:.2f}, oracle {oracle:.2f}")
    assert policy_sharpe > mse_sharpe + 3.0
    assert policy_sharpe > 0.8 * oracle  # close to the known optimal policy


def test_policy_head_selects_weights_and_portfolio_batches_through_hydra():
    """head=policy picks evaluation=weights; a portfolio loss sets data.block; both overridable."""
    from tests.conftest import compose_config

    cfg = compose_config(["head=policy", "loss=sharpe"])
    assert cfg.evaluation.position_method == "weights"
    assert cfg.data.block == cfg.loss.block == 32
    assert cfg.loss.gross == cfg.evaluation.gross
    cfg = compose_config(["head=policy", "loss=cvar", "evaluation.position_method=rank"])
    assert cfg.evaluation.position_method == "rank"
    cfg = compose_config(["head=policy", "loss=sortino", "evaluation=default", "loss.block=5"])
    assert cfg.evaluation.position_method == "rank" and cfg.data.block == 5
    cfg = compose_config([])  # the default regression run: pooled, shuffled samples, rank
    assert cfg.data.block is None and cfg.evaluation.position_method == "rank"


@pytest.mark.slow
def test_policy_run_trades_its_positions_as_capped_weights(tiny_db, tmp_path):
    """`head=policy loss=sharpe`: Hydra selects evaluation=weights, training uses block batches
    (walk-forward refits too), and the traded position is the policy's output, capped."""
    import pandas as pd

    from tests.test_run import _tiny_cfg, run_in_process

    cfg = _tiny_cfg(tiny_db, tmp_path, "head=policy", "loss=sharpe", "walk_forward.refit_every=40")
    assert cfg.evaluation.position_method == "weights" and cfg.data.block == cfg.loss.block
    _, run_dir = run_in_process(cfg)
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    wide = preds.pivot(index="timestamp", columns="symbol", values="pred_1").to_numpy()
    got = np.nan_to_num(preds.pivot(index="timestamp", columns="symbol", values="position"))
    # A tanh position is never exactly 0: a 0 is a symbol the backtest could not trade there.
    signal = np.where(got != 0, wide, np.nan)
    want = positions_from_signal(signal, "weights", cfg.evaluation.gross)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (got != 0).mean() > 0.9
    assert (np.abs(want).sum(axis=1) <= cfg.evaluation.gross + 1e-9).all()
