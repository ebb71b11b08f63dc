"""Each joblib worker process holds one GPU for its lifetime and sees only that one.

A worker takes an exclusive ``flock`` on ``<lock_dir>/gpu-<id>.lock`` for the first free GPU
before its first job, then sets ``CUDA_VISIBLE_DEVICES=<id>`` before anything initialises CUDA,
so a job that asks for one device gets that GPU. Ids are CUDA's numbering; when they come from
nvidia-smi, ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (unless set) makes CUDA number them the same way.
loky reuses its workers from batch to batch, and a process cannot change its visible devices
once CUDA is up, so the lock is kept until the worker exits (the kernel releases it, also on a
crash). Workers of another sweep on the same host use the same lock files, so they wait for a
free GPU instead of sharing one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher import _core
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from joblib import Parallel, delayed

log = logging.getLogger(__name__)

# "<pid>:<GPU id>" once this process holds a GPU. In the environment, not a module global:
# Hydra re-executes plugin modules when it scans them again (each job in a worker), which would
# reset a global while the lock file stays open, and the process would then lock out itself.
HELD = "HYDRA_JOBLIB_GPU_HELD"


def list_gpus(gpus: Any = None) -> list[str]:
    """The GPU ids to share: ``gpus`` as given, else ``CUDA_VISIBLE_DEVICES``, else the indices
    nvidia-smi lists (without initialising CUDA in this process); [] when there are none."""
    if gpus is not None:
        items = gpus.split(",") if isinstance(gpus, str) else list(gpus)
        return [str(g).strip() for g in items if str(g).strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def claim_gpu(gpus: Sequence[str], lock_dir: str, poll_s: float = 2.0) -> str:
    """Lock the first free GPU of ``gpus`` for this process's lifetime and make it the only
    visible device; waits (polling every ``poll_s`` seconds) while all are held.

    Returns:
        the GPU id now in ``CUDA_VISIBLE_DEVICES``; the same id on every later call.
    """
    pid, _, held = os.environ.get(HELD, "").partition(":")
    if pid == str(os.getpid()):
        return held
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        for gpu in gpus:
            path = Path(lock_dir) / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"
            fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o666)  # flock needs no write access
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.environ[HELD] = f"{os.getpid()}:{gpu}"  # fd left open: the lock lives with us
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            log.info("worker %d holds GPU %s", os.getpid(), gpu)
            return gpu
        if not waiting:
            log.warning("GPUs %s are all held (locks in %s); waiting for one", list(gpus), lock_dir)
            waiting = True
        time.sleep(poll_s)


def execute_job_on_gpu(gpus: Sequence[str], lock_dir: str, *args: Any) -> JobReturn:
    """hydra-joblib-launcher's ``execute_job``, in a worker that holds one GPU."""
    claim_gpu(gpus, lock_dir)
    return _core.execute_job(*args)


class GpuJoblibLauncher(JoblibLauncher):
    """``JoblibLauncher`` whose workers each hold one GPU (module docstring)."""

    def __init__(self, gpus: Any = None, lock_dir: str = "/tmp/hydra-gpu-locks", **joblib: Any):
        super().__init__(**joblib)
        self.gpus, self.lock_dir = gpus, str(lock_dir)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Run the batch on ``n_jobs`` workers, one GPU each (as ``_core.launch`` otherwise)."""
        assert self.config is not None and self.task_function is not None
        assert self.hydra_context is not None
        if self.gpus is None and "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # nvidia-smi's numbering
        gpus = list_gpus(self.gpus)
        if not gpus:
            raise ValueError(
                "hydra/launcher=joblib_gpus: no GPU found (CUDA_VISIBLE_DEVICES is unset and "
                "nvidia-smi lists none); name them with hydra.launcher.gpus=[0,1]"
            )
        n_jobs = self.joblib.get("n_jobs") or len(gpus)
        if not 1 <= n_jobs <= len(gpus):
            raise ValueError(
                f"hydra.launcher.n_jobs={n_jobs} with {len(gpus)} GPU(s) {gpus}: one trial per "
                "GPU needs 1 <= n_jobs <= GPUs (null: one worker per GPU)"
            )
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib, n_jobs=n_jobs, backend="loky")  # loky: processes
        _core.process_joblib_cfg(joblib_cfg)
        log.info(
            "Joblib.Parallel(%s) is launching %d jobs on GPUs %s",
            ",".join(f"{k}={v}" for k, v in joblib_cfg.items()),
            len(job_overrides),
            gpus,
        )
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        singleton_state = Singleton.get_state()
        runs = Parallel(**joblib_cfg)(
            delayed(execute_job_on_gpu)(
                gpus,
                self.lock_dir,
                initial_job_idx + idx,
                overrides,
                self.hydra_context,
                self.config,
                self.task_function,
                singleton_state,
            )
            for idx, overrides in enumerate(job_overrides)
        )
        assert isinstance(runs, list) and all(isinstance(r, JobReturn) for r in runs)
        return runs
