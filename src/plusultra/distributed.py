"""Multi-process training (``hardware=ddp``): who writes, and how a DDP run ends its training.

A DDP run is one ``plusultra`` command on one machine. Lightning's ``ddp`` strategy starts the
extra ranks at the first ``fit`` by re-running the command line (``LOCAL_RANK=1..N-1``, with
``hydra.run.dir`` set to rank 0's directory and ``hydra.output_subdir=null``); each rank then
runs ``plusultra.run`` from the top, trains its shard of every epoch, and gradients are
averaged across ranks every step. So every rank builds the same data, model and trainers, and:

- **only rank zero writes**: the run dir (config.yaml, data artifacts, checkpoints, backbones,
  diagnostics, TensorBoard, predictions, reports, metrics.json, run_id.txt), the catalogue row,
  and the Hydra log file. ``is_rank_zero`` guards the writes made outside a Trainer; inside one,
  ``trainer.is_global_zero`` does (Lightning's checkpoints and loggers, our diagnostics and
  pruning callbacks).
  ``plusultra.run.main`` gives worker ranks ``hydra/job_logging=disabled`` (no log file;
  warnings and errors still reach stderr) and no catalogue directory for a failure;
- **evaluation runs on rank zero alone**, after the curriculum: ``finish_training`` waits for
  every rank at a barrier, closes the process group, and tells the workers to return (they exit
  0 without writing); rank zero waits for them to exit, then evaluates with single-device
  trainers (``single_device``), exactly as a one-process run evaluates the same weights (DDP
  keeps the ranks' weights identical, and the restored best checkpoint is the same file on all
  of them). Walk-forward refits therefore train on rank zero's device only.

- **a failing rank zero takes its workers down**: ``prepare`` (called on every trainer the run
  builds) remembers the launchers and removes the collective from Lightning's SIGTERM handler;
  ``stop_workers`` kills the workers once rank zero has recorded its failure or interruption.

The alternative, evaluating on every rank with a DistributedSampler and gathering, was not
taken: the sampler pads the last shard with repeated samples (so metrics differ from a
one-process evaluation), and the backtests run on the gathered frame anyway.

Portfolio batches (``data.block``, set by a portfolio loss) are refused under DDP
(``check_sharding``): their ``BlockBatchSampler`` yields whole date blocks, and Lightning
cannot put a DistributedSampler under it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from plusultra.errors import ConfigError

if TYPE_CHECKING:  # the rank test imports neither (the catalogue callback and CLIs use it)
    import lightning as L

log = logging.getLogger(__name__)

WORKER_EXIT_TIMEOUT_S = 120.0  # how long rank zero waits for the workers to exit


def global_rank() -> int:
    """This process's rank among all training processes (0 without distributed training).

    The process group's rank once one exists; before it does (config, data setup, Hydra
    callbacks), the launcher's environment: ``RANK``, else ``NODE_RANK`` / ``LOCAL_RANK``
    (Lightning's relaunched workers), else ``SLURM_PROCID``.
    """
    group = _process_group()
    if group is not None:
        return group.get_rank()
    env = os.environ
    if env.get("RANK", "").isdigit():
        return int(env["RANK"])
    local = env.get("LOCAL_RANK", "")
    if local.isdigit():
        node = env.get("NODE_RANK", env.get("GROUP_RANK", "0"))
        per_node = int(env.get("LOCAL_WORLD_SIZE", "0") or 0)
        # Lightning's launcher sets NODE_RANK and LOCAL_RANK only: any node > 0 is not rank 0
        return int(local) + (int(node) * max(per_node, 1) if node.isdigit() else 0)
    if env.get("SLURM_PROCID", "").isdigit():
        return int(env["SLURM_PROCID"])
    return 0


def _process_group():
    """``torch.distributed`` when a process group is initialised, else None (torch not imported
    yet: no group can exist)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def is_rank_zero() -> bool:
    """Whether this process is the one that writes (rank 0, or the only process)."""
    return global_rank() == 0


def single_device(trainer: L.Trainer) -> dict:
    """Trainer overrides for rank zero's evaluation after DDP training: one process, on the
    device rank zero trained on (``trainer.devices=[1,3]`` trains rank 0 on GPU 1)."""
    root = trainer.strategy.root_device
    devices = [root.index] if root.type == "cuda" and root.index is not None else 1
    return {"strategy": "auto", "devices": devices, "num_nodes": 1}


def check_sharding(trainer: L.Trainer, block: int | None) -> L.Trainer:
    """Refuse portfolio batches under multi-process training; returns ``trainer``.

    Args:
        trainer: a built Trainer (its world size is known before ``fit``).
        block: the data module's ``block`` (dates per portfolio batch), None for pooled batches.

    Raises:
        ConfigError: ``block`` is set and the trainer runs more than one process.
    """
    if block is not None and trainer.world_size > 1:
        raise ConfigError(
            f"data.block={block} (portfolio batches of a portfolio loss) cannot be sharded "
            f"across {trainer.world_size} DDP processes (trainer.strategy="
            f"{type(trainer.strategy).__name__}, trainer.devices={trainer.num_devices}): each "
            "batch is a whole block of dates, which a DistributedSampler cannot split. Train "
            "it on one device (trainer.devices=1), or use a pooled loss (loss=mse, quantile, "
            "...) with hardware=ddp"
        )
    return trainer


_LAUNCHERS: list = []  # launchers of this process's trainers; their ``procs`` are DDP workers


def prepare(trainer: L.Trainer) -> L.Trainer:
    """Ready a freshly built trainer for this run's DDP handling; returns it.

    - Remembers its strategy's launcher (rank 0's starts the workers at the first ``fit``),
      for ``stop_workers`` and ``finish_training``.
    - Under DDP, drops the collective from Lightning's SIGTERM handler: Lightning 2.6
      broadcasts from inside the signal handler, and a rank blocked in another collective never
      joins that broadcast, so both hang (Lightning issue #20806). SIGTERM still sets
      ``trainer.received_sigterm``; ``plusultra.lifecycle.handle_signals`` raises
      ``Interrupted`` and rank 0 then records the run and kills its workers (``stop_workers``).
    """
    launcher = getattr(trainer.strategy, "launcher", None)
    if hasattr(launcher, "procs") and all(launcher is not seen for seen in _LAUNCHERS):
        _LAUNCHERS.append(launcher)
    connector = getattr(trainer, "_signal_connector", None)
    if trainer.world_size > 1 and connector is not None:
        connector._sigterm_notifier_fn = _sigterm_notifier(connector)
    return trainer


def _sigterm_notifier(connector):
    """Lightning's SIGTERM notifier without its broadcast (and without forwarding the signal)."""

    def notify(signum, frame) -> None:
        log.info("DDP rank %d: received signal %d", global_rank(), signum)
        connector.received_sigterm = True

    return notify


def workers() -> list[subprocess.Popen]:
    """The DDP worker processes this process started (none on a worker, or without DDP)."""
    return [proc for launcher in _LAUNCHERS for proc in launcher.procs or []]


def stop_workers() -> int:
    """Kill the DDP workers still running; returns how many. Rank 0 calls it when the run
    fails: Lightning stops them only on KeyboardInterrupt, so after any other error they would
    wait at their next collective until the process group times out. They write nothing, so
    killing them loses nothing."""
    running = [proc for proc in workers() if proc.poll() is None]
    for proc in running:
        proc.kill()
        proc.wait()
    for launcher in _LAUNCHERS:
        # in place: Lightning's child-process observer watches this very list, and on seeing a
        # killed worker it would SIGKILL this process before it reports the run's error
        launcher.procs.clear()
    if running:
        log.info("stopped %d DDP worker process(es)", len(running))
    return len(running)


def finish_training(trainers: Iterable[L.Trainer]) -> bool:
    """End the distributed part of a run after its last ``fit`` (module docstring).

    A no-op returning True when training ran in one process. Otherwise every rank meets at a
    barrier (rank zero's checkpoints and backbones are on disk), the process group is closed,
    and rank zero waits for the worker processes Lightning started to exit.

    Args:
        trainers: the curriculum's trainers, in order (the first one started the workers).

    Returns:
        True where the run goes on to evaluate and write (rank zero), False on a worker rank,
        which returns without writing anything.

    Raises:
        RuntimeError: a worker exited with an error, or did not exit in time.
    """
    trainers = list(trainers)
    if not trainers or max(t.world_size for t in trainers) <= 1:
        return True
    group = _process_group()
    if group is not None:
        trainers[-1].strategy.barrier("plusultra.finish_training")
        rank = group.get_rank()
        group.destroy_process_group()
    else:  # a spawn-style strategy: its workers have already returned
        rank = global_rank()
    if rank != 0:
        log.info("DDP rank %d: training done; rank 0 evaluates and writes", rank)
        return False
    for trainer in trainers:
        prepare(trainer)
    for proc in workers():
        try:
            code = proc.wait(timeout=WORKER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"DDP worker (pid {proc.pid}) did not exit {WORKER_EXIT_TIMEOUT_S:.0f} s after "
                "training"
            ) from None
        if code != 0:
            raise RuntimeError(f"DDP worker (pid {proc.pid}) exited with code {code}")
    size = trainers[0].world_size
    log.info("DDP training done on %d processes; rank 0 evaluates alone", size)
    return True
