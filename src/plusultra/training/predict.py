"""Batched inference over windows: one code path for a run's test predictions and for
`plusultra-predict` on any database."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from plusultra.data.datasets.windows import WindowDataset, passthrough_collate


@torch.inference_mode()
def predict_windows(
    model: nn.Module, dataset: WindowDataset, batch_size: int = 1024, progress: bool = True
) -> np.ndarray:
    """Point forecasts (N, H') in scaled target units, or positions (N, 1) for a policy head."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=passthrough_collate
    )
    out = []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        inputs = batch if isinstance(batch, tuple) else (batch,)  # x, or (x, labels)
        out.append(model.signal(*(i.to(device) for i in inputs)).float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out, axis=0)


def predictions_frame(
    model: nn.Module,
    dataset: WindowDataset,
    dates: np.ndarray,
    symbols: list[str],
    target_scale: list[float],
    batch_size: int = 1024,
    progress: bool = True,
) -> pd.DataFrame:
    """Long frame: symbol, timestamp, pred_1..pred_H' (forward log returns in return units; for a
    policy head, pred_1 is its position in [-1, 1])."""
    raw = predict_windows(model, dataset, batch_size, progress)
    index = dataset.index.numpy()
    horizon = raw.shape[1] if raw.ndim == 2 and len(raw) else len(target_scale)
    scale = np.asarray(target_scale[:horizon], dtype=np.float64)
    if getattr(getattr(model, "head", None), "kind", "forecast") == "position":
        scale = np.ones(horizon)
    preds = raw.reshape(len(index), horizon) * scale
    frame = pd.DataFrame(
        {
            "symbol": np.asarray(symbols, dtype=object)[index[:, 1]],
            "timestamp": pd.DatetimeIndex(dates)[index[:, 0]],
        }
    )
    for k in range(horizon):
        frame[f"pred_{k + 1}"] = preds[:, k]
    return frame
