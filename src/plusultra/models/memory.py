"""Peak memory of a training step, estimated before training, and the refusal of a config that
cannot fit its device.

What is counted (bytes on one device; DDP replicates it on every device):

- model state: each trainable parameter's weight, gradient and the two AdamW moments, all in
  the parameters' dtype (fp32 under ``32-true`` and the ``*-mixed`` precisions: 16 bytes a
  parameter; 8 under ``bf16-true``);
- activations saved for backward: measured, not modelled. One training-mode forward of the
  model (backbone + head) runs under ``torch.autograd.graph.saved_tensors_hooks`` on *fake*
  tensors (``FakeTensorMode``: shapes, dtypes and storages, no data, no compute), and the bytes
  of every distinct storage saved for backward are summed, the parameters' own storages left
  out (they are the model state). Under a ``*-mixed`` precision the forward runs in CPU autocast
  of that dtype, whose low-precision op list (linear, matmul, conv, attention) is CUDA's, so
  the saved casts and half-width activations are counted as they are made; the weight copies
  autocast makes are counted too. It runs at batch 2 and 3: ``per_sample = m(3) - m(2)`` and
  ``fixed = m(2) - 2 per_sample``, and the batch of the run is ``fixed + per_sample * batch``
  (not batch 1: there some reshapes are views of one storage that larger batches copy).
- with activation checkpointing (``backbone.activation_checkpointing``) the same forward runs
  with it on: what is saved outside the blocks, each block's input (kept for the recompute),
  plus the largest single block's saved activations (alive while that block is recomputed and
  back-propagated).

Not counted: the CUDA context, library workspaces, the allocator's fragmentation, the temporary
gradients of activations in the backward pass, and what ``torch.compile`` saves differently
(its fused graphs usually save less). So the budget taken from a device is `HEADROOM` of its
memory; a budget given in ``hardware.memory_gb`` is used as it is.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeCopyMode, FakeTensorMode

from plusultra.errors import ConfigError

GIB = 1024**3
HEADROOM = 0.9  # share of a device's memory the estimate may use (the rest: see the docstring)

# Lightning precision -> (parameter dtype, autocast dtype or None)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "32-true": (torch.float32, None),
    "32": (torch.float32, None),
    "64-true": (torch.float64, None),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "16-mixed": (torch.float32, torch.float16),
    "bf16-true": (torch.bfloat16, None),
    "16-true": (torch.float16, None),
}
OPTIMIZER_STATES = 2  # AdamW: first and second moments, one tensor each per parameter


def size(n: float) -> str:
    """Bytes as ``12.3 GiB`` (``45.6 MiB`` below 0.1 GiB)."""
    return f"{n / GIB:.1f} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.1f} MiB"


def _precision(precision: str | int) -> tuple[torch.dtype, torch.dtype | None]:
    key = str(precision)
    if key not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r}; valid: {sorted(PRECISIONS)}")
    return PRECISIONS[key]


@dataclass(frozen=True)
class Activations:
    """Saved-for-backward bytes as ``fixed + per_sample * batch``."""

    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        return self.fixed + self.per_sample * batch


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak training memory of one device, in bytes.

    Attributes:
        n_params: trainable parameters.
        state: weights + gradients + AdamW moments.
        plain: saved activations without activation checkpointing.
        checkpointed: with it (None: the backbone has no blocks to checkpoint).
        batch, window: samples per step and bars per window of the run.
        checkpointing: whether the run checkpoints activations.
    """

    n_params: int
    state: int
    plain: Activations
    checkpointed: Activations | None
    batch: int
    window: int
    checkpointing: bool

    def activations(self, checkpointing: bool | None = None, batch: int | None = None) -> int:
        on = self.checkpointing if checkpointing is None else checkpointing
        acts = self.checkpointed if on and self.checkpointed is not None else self.plain
        return acts.at(self.batch if batch is None else batch)

    def total(self, checkpointing: bool | None = None, batch: int | None = None) -> int:
        return self.state + self.activations(checkpointing, batch)

    def max_batch(self, budget: float, checkpointing: bool | None = None) -> int:
        """Largest batch whose estimate fits `budget` bytes (0: not even one sample)."""
        on = self.checkpointing if checkpointing is None else checkpointing
        acts = self.checkpointed if on and self.checkpointed is not None else self.plain
        room = budget - self.state - acts.fixed
        return max(0, int(room // max(acts.per_sample, 1)))

    def describe(self) -> str:
        """One line: total, its parts, batch and window, in GiB."""
        return (
            f"estimated peak memory {size(self.total())} (params+optimizer "
            f"{size(self.state)}, activations {size(self.activations())} at batch "
            f"{self.batch}, window {self.window}"
            + (", activation checkpointing" if self.checkpointing else "")
            + ")"
        )


def _saved_bytes(
    net: nn.Module,
    x: torch.Tensor,
    autocast: torch.dtype | None,
    blocks: nn.ModuleList | None,
    keep_inputs: bool = False,
) -> tuple[int, list[int]]:
    """Bytes of distinct non-parameter storages saved for backward by ``net(x)``, and of
    those first saved inside each of `blocks`; with `keep_inputs` (checkpointed blocks) each
    block's inputs count too, as the checkpoint keeps them for the recomputation."""
    params = {id(p.untyped_storage()) for p in net.parameters()}
    seen: dict[int, tuple[object, int]] = {}  # storage id -> (storage kept alive, bytes)
    per_block = [0] * (len(blocks) if blocks is not None else 0)
    current = [-1]

    def add(t: torch.Tensor, block: int) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key not in params and key not in seen:
            seen[key] = (storage, storage.nbytes())
            if block >= 0:
                per_block[block] += storage.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        add(t, current[0])
        return t

    handles = []
    for i, block in enumerate(blocks or []):

        def enter(module, args, i=i):
            current[0] = i
            for a in args if keep_inputs else ():
                for t in a if isinstance(a, (list, tuple)) else [a]:
                    if isinstance(t, torch.Tensor):
                        add(t, -1)

        def leave(module, args, out):
            current[0] = -1

        handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]
    cast = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            net(x)
    finally:
        for h in handles:
            h.remove()
    return sum(b for _, b in seen.values()), per_block


def estimate_memory(
    backbone: nn.Module,
    head: nn.Module,
    window: int,
    n_features: int,
    batch_size: int,
    precision: str | int = "32-true",
) -> MemoryEstimate:
    """Estimate one device's peak training memory (see the module docstring for the method).

    Args:
        backbone: (B, T, F) -> (B, T', D); its ``activation_checkpointing`` attribute, if any,
            says whether the run checkpoints (both settings are estimated).
        head: (B, T', D) -> the output.
        window: bars per input window T.
        n_features: inputs per bar F (market-state embedding columns included).
        batch_size: samples per optimiser step on one device.
        precision: Lightning's ``trainer.precision``.
    """
    param_dtype, autocast = _precision(precision)
    n_params = sum(p.numel() for m in (backbone, head) for p in m.parameters() if p.requires_grad)
    item = torch.empty((), dtype=param_dtype).element_size()
    state = n_params * item * (2 + OPTIMIZER_STATES)
    checkpointing = bool(getattr(backbone, "activation_checkpointing", False))
    has_blocks = hasattr(backbone, "activation_checkpointing") and hasattr(backbone, "blocks")
    net = nn.Sequential(backbone, head)
    if next(net.parameters()).dtype != param_dtype:  # a *-true precision: cast a real copy
        net = copy.deepcopy(net).to(param_dtype)
    fake = FakeTensorMode()
    with FakeCopyMode(fake):
        net = copy.deepcopy(net).train()  # fake parameters: no data, no compute
    blocks = net[0].blocks if has_blocks else None
    measured: dict[bool, list[int]] = {False: [], True: []}
    with torch.random.fork_rng(devices=[]), fake:  # the run's RNG stream stays untouched
        for batch in (2, 3):  # batch 1 can share storages (views) that larger batches copy
            x = torch.empty(batch, window, n_features, dtype=param_dtype)  # (B, T, F)
            if has_blocks:
                net[0].activation_checkpointing = False
            plain, per_block = _saved_bytes(net, x, autocast, blocks)
            measured[False].append(plain)
            if has_blocks:  # outside the blocks + their inputs, + the largest one recomputed
                net[0].activation_checkpointing = True
                outside, _ = _saved_bytes(net, x, autocast, blocks, keep_inputs=True)
                measured[True].append(outside + max(per_block, default=0))

    def fit(m: list[int]) -> Activations:
        per_sample = m[1] - m[0]
        return Activations(fixed=m[0] - 2 * per_sample, per_sample=per_sample)

    return MemoryEstimate(
        n_params=n_params,
        state=state,
        plain=fit(measured[False]),
        checkpointed=fit(measured[True]) if has_blocks else None,
        batch=int(batch_size),
        window=int(window),
        checkpointing=checkpointing and has_blocks,
    )


def device_budget(
    accelerator: str, devices: int | str | list[int] | None, memory_gb: float | None
) -> tuple[float | None, str]:
    """Bytes the estimate may use on each device and the device's name.

    `memory_gb` (``hardware.memory_gb``) is used as given; otherwise `HEADROOM` of the smallest
    CUDA device's memory (``gpu``/``cuda``, or ``auto`` with CUDA present), or of the machine's
    physical memory, shared by `devices` processes on CPU. None when a GPU is asked for and no
    CUDA device is visible (the trainer refuses such a run itself).
    """
    if memory_gb is not None:
        if not memory_gb > 0:
            raise ConfigError(f"hardware.memory_gb={memory_gb} must be > 0 GiB or null")
        return memory_gb * GIB, f"hardware.memory_gb={memory_gb}"
    accelerator = str(accelerator)
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            return None, "an unavailable CUDA device"
        if isinstance(devices, (list, tuple)):
            ids = [int(d) for d in devices]
        elif isinstance(devices, int) and devices > 0:
            ids = list(range(devices))
        else:  # "auto", -1: every visible device
            ids = list(range(torch.cuda.device_count()))
        props = min(
            (torch.cuda.get_device_properties(i) for i in ids), key=lambda p: p.total_memory
        )
        total = props.total_memory
        return HEADROOM * total, f"{props.name} ({total / GIB:.1f} GiB x {HEADROOM:.0%})"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    n = devices if isinstance(devices, int) and devices > 1 else 1  # CPU DDP: processes share it
    share = f" / {n} processes" if n > 1 else ""
    return (
        HEADROOM * total / n,
        f"this machine's memory ({total / GIB:.1f} GiB x {HEADROOM:.0%}{share})",
    )


def check_memory(estimate: MemoryEstimate, budget: float | None, device: str) -> str:
    """The estimate's one-line description; ConfigError with the numbers if it exceeds `budget`.

    The refusal names the largest ``data.batch_size`` that fits and, when the run does not
    checkpoint activations, the estimate with ``backbone.activation_checkpointing=true``.
    """
    line = estimate.describe()
    if budget is None or estimate.total() <= budget:
        return line + (f", within the {size(budget)} of {device}" if budget else "")
    fits = estimate.max_batch(budget)
    advice = (
        f"lower data.batch_size to {fits} (or below)"
        if fits
        else "no batch size fits: shorten `window` or shrink the model (d_model, depth)"
    )
    if not estimate.checkpointing and estimate.checkpointed is not None:
        with_ckpt = estimate.total(checkpointing=True)
        advice += (
            ", or set backbone.activation_checkpointing=true (estimate with it: "
            f"{size(with_ckpt)}; largest batch with it: "
            f"{estimate.max_batch(budget, checkpointing=True)})"
        )
    raise ConfigError(
        f"{line} exceeds the {size(budget)} of {device}; {advice}; "
        "hardware.memory_gb sets the budget explicitly"
    )


def check_fits(
    backbone: nn.Module,
    head: nn.Module,
    window: int,
    n_features: int,
    batch_size: int,
    precision: str | int,
    accelerator: str,
    devices: int | str | list[int] | None,
    memory_gb: float | None,
) -> str:
    """`estimate_memory` then `check_memory` against `device_budget`: the line to log, or
    ConfigError with the numbers when the config cannot fit its device."""
    budget, device = device_budget(accelerator, devices, memory_gb)
    try:
        estimate = estimate_memory(backbone, head, window, n_features, batch_size, precision)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an op fake tensors cannot run: say so, go on
        return f"memory estimate skipped: fake-tensor forward failed ({type(exc).__name__}: {exc})"
    return check_memory(estimate, budget, device)
