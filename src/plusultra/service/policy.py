"""The served policy of a PPO run (last curriculum stage PPO: ``curriculum=rl``, ``full``).

A policy reads its own previous position, so its position at a bar is not a function of one
window: it is the state of one sequential greedy rollout. `ServedPolicy.last_bar` runs exactly
`plusultra-predict`'s rollout (`plusultra.rl.predict.run_policy` and `rollout_positions`:
start flat at the first bar with a complete window of the data module, step through the run's
environment up to its last bar, live over the last ``lag + 1`` bars) and keeps the last bar's
rows. The rollout of the run's own database is cached under the data module's cache key (the
database file's modification time and size), so a repeated request costs a lookup; bars sent in
a request are rolled out per request (cost: one policy pass per bar of the sent history).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch


class ServedPolicy:
    """A PPO run's policy with a one-entry rollout cache.

    Args:
        run_dir: the run directory (``checkpoints/<stage>-policy.pt``, ``normalisation.json``).
        model: the run's `ForecastModule` (`run_model.build_module`), untrained: the policy's
            architecture.
        stage: the run's PPO stage (`run_model.policy_stage`).
        target: the `InferenceDevice` of the rollout (a policy: 32-true unless overridden).

    Raises:
        ConfigError / DataError: a bad precision, no policy file, or one that does not fit.
    """

    def __init__(self, run_dir: Path, model, stage, target) -> None:
        from plusultra.data.datasets.windows import NormStats
        from plusultra.rl.predict import run_policy

        # make_policy reads only the run's train-segment target scale (its data module's norm)
        norm = SimpleNamespace(norm=NormStats.load(Path(run_dir) / "normalisation.json"))
        self.stage, self.target = stage, target
        self.policy = run_policy(model, stage, norm, run_dir, target)
        self.policy.to(target.device).eval()
        self._cache: tuple[tuple, pd.DataFrame] | None = None

    def last_bar(self, dm, key: tuple | None = None) -> tuple[pd.DataFrame, float]:
        """The rollout's rows at `dm`'s last bar and the seconds this call spent on them.

        Args:
            dm: the data module of the request (the run's own database, or the sent bars).
            key: the cache key of `dm` (None: not cached, roll out); a call with the key of the
                cached rollout returns it without rolling out again.

        Returns:
            ``symbol, timestamp, pred_1`` (the policy's position, a fraction of equity in
            [-1, 1]) of every symbol observable at the last bar, and the seconds spent.
        """
        from plusultra.rl import predict as rl_predict

        start = time.perf_counter()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1], time.perf_counter() - start
        with torch.inference_mode():
            frame = rl_predict.rollout_positions(self.policy, self.stage, dm, self.target)
        last = np.datetime64(pd.Timestamp(dm.panel.dates[-1]), "ns")
        rows = frame[frame["timestamp"].to_numpy(dtype="datetime64[ns]") == last]
        rows = rows.reset_index(drop=True)
        if key is not None:
            self._cache = (key, rows)
        return rows, time.perf_counter() - start
