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
from plusultra.training.device import InferenceDevice


def predict_windows(
    model: nn.Module,
    dataset: WindowDataset,
    batch_size: int = 1024,
    progress: bool = True,
    device: InferenceDevice | None = None,
) -> np.ndarray:
    """Point forecasts (N, H') in scaled target units, or positions (N, 1) for a policy head.

    Runs on `device` (the training run's device and precision; None: wherever the model is,
    in its weights' dtype): the model goes there for the pass and back afterwards (outside
    inference mode, so its weights stay trainable); batches come from pinned memory with
    non-blocking copies on CUDA. The result is float32, on the CPU. Over a cross-section
    dataset (one item = every symbol of a date), a batch holds about `batch_size`
    symbol-windows: ``batch_size // symbols_per_item`` dates.
    """
    device = device or InferenceDevice.of_model(model)
    batch_size = max(1, batch_size // getattr(dataset, "symbols_per_item", 1))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=passthrough_collate,
        pin_memory=device.pin_memory,
    )
    out = []
    with device.placed(model), torch.inference_mode(), device.context():
        for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
            inputs = batch if isinstance(batch, tuple) else (batch,)  # x, (x, labels), ...
            out.append(model.signal(*(device.put(i) for i in inputs)).float())  # on the device
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).cpu().numpy()  # one copy back, after the last batch


def predictions_frame(
    model: nn.Module,
    dataset: WindowDataset,
    dates: np.ndarray,
    symbols: list[str],
    target_scale: list[float],
    batch_size: int = 1024,
    progress: bool = True,
    device: InferenceDevice | None = None,
) -> pd.DataFrame:
    """Long frame: symbol, timestamp, pred_1..pred_H' (forward log returns in return units; for a
    policy head, pred_1 is its position in [-1, 1]); `device` as in `predict_windows`."""
    raw = predict_windows(model, dataset, batch_size, progress, device)
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
