"""The launcher's config schema, registered as ``hydra/launcher=joblib_gpus``.

No ``from __future__ import annotations``: Hydra execs plugin modules outside sys.modules, where
dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf


@dataclass
class GpuJoblibLauncherConf(JobLibLauncherConf):
    """hydra-joblib-launcher's keys, plus ``gpus`` and ``lock_dir``."""

    _target_: str = "hydra_plugins.plusultra_gpu_launcher.launcher.GpuJoblibLauncher"
    # worker processes; null: one per GPU; more than the GPUs is refused
    n_jobs: int | None = None
    # GPUs to share, e.g. [0, 1] or "0,1"; null: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists
    gpus: Any = None
    # one lock file per GPU: a GPU is held by one worker (of any sweep on this host) at a time
    lock_dir: str = "${oc.env:TMPDIR,/tmp}/hydra-gpu-locks"


ConfigStore.instance().store(
    group="hydra/launcher",
    name="joblib_gpus",
    node=GpuJoblibLauncherConf,
    provider="plusultra_gpu_launcher",
)
