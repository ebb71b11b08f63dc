"""Where and in which precision inference runs, and the float32 matmul (TF32) setting.

Lightning moves a model back to the CPU when ``fit`` ends, so a plain forward after training
would predict on the CPU in float32 whatever the run trained on. Every inference pass of a run
(the validation backtest, each pruning epoch's backtest, the walk-forward test predictions) and
of ``plusultra-predict`` instead runs on an `InferenceDevice`: the trainer's root device under
the trainer's precision (``InferenceDevice.from_trainer``), or, in ``plusultra-predict``, the
run's ``trainer.accelerator`` and ``trainer.precision`` (``InferenceDevice.from_config``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from plusultra.errors import ConfigError

# Lightning precision -> (autocast dtype or None, dtype of floating inputs and weights). A
# "-mixed" precision keeps float32 weights and inputs and runs autocast; a "-true" precision
# holds weights and inputs in its dtype (Lightning converts the module) with no autocast.
PRECISIONS: dict[str, tuple[torch.dtype | None, torch.dtype]] = {
    "32-true": (None, torch.float32),
    "16-mixed": (torch.float16, torch.float32),
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-true": (None, torch.float16),
    "bf16-true": (None, torch.bfloat16),
    "64-true": (None, torch.float64),
}
# Lightning's short spellings of the same precisions (trainer.precision accepts both)
ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
# torch.set_float32_matmul_precision values; anything but "highest" lets CUDA use TF32 cores
MATMUL_PRECISIONS = ("highest", "high", "medium")


def canonical_precision(precision: str | int) -> str:
    """Lightning's full name of a precision setting (``bf16`` -> ``bf16-mixed``, 32 -> ``32-true``).

    Raises:
        ConfigError: a precision inference does not support, naming ``trainer.precision``.
    """
    name = ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        valid = ", ".join([*PRECISIONS, *ALIASES])
        raise ConfigError(f"trainer.precision={precision!r} is not supported; valid: {valid}")
    return name


@dataclass(frozen=True)
class InferenceDevice:
    """Device and precision of an inference pass.

    Attributes:
        device: where the model and each batch go (e.g. ``cuda:0`` or ``cpu``).
        precision: a Lightning precision name (``PRECISIONS``; aliases are normalised).
    """

    device: torch.device
    precision: str = "32-true"

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "precision", canonical_precision(self.precision))

    @classmethod
    def from_trainer(cls, trainer) -> InferenceDevice:
        """The trainer's root device (the first of its devices) and precision."""
        return cls(trainer.strategy.root_device, trainer.precision)

    @classmethod
    def from_config(
        cls, accelerator: str, precision: str | int, device: str | None = None
    ) -> InferenceDevice:
        """From a run's ``trainer.accelerator`` and ``trainer.precision``; `device` (``cpu``,
        ``cuda``, ``cuda:1``, ...) overrides the accelerator.

        Raises:
            ConfigError: CUDA asked for (accelerator ``gpu``/``cuda`` or `device`) but absent.
        """
        requested = device
        if device is None:
            accelerator = str(accelerator)
            if accelerator == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            else:
                device = {"gpu": "cuda"}.get(accelerator, accelerator)
        try:
            target = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(
                f"inference device {device!r} (trainer.accelerator={accelerator!r}, "
                f"--device {requested!r}) is not a torch device: {exc}"
            ) from None
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"inference on {device!r} (trainer.accelerator={accelerator!r}, --device "
                f"{requested!r}) needs CUDA, which is not available here; pass --device cpu "
                "(docs/hardware.md: installing the CUDA build)"
            )
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        return cls(target, precision)

    @classmethod
    def of_model(cls, model: nn.Module) -> InferenceDevice:
        """Wherever the model's weights are, in their dtype (no autocast)."""
        param = next(iter(model.parameters()), None)
        if param is None:
            return cls(torch.device("cpu"))
        true = {dtype: name for name, (autocast, dtype) in PRECISIONS.items() if autocast is None}
        return cls(param.device, true.get(param.dtype, "32-true"))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of a "-mixed" precision; None: no autocast."""
        return PRECISIONS[self.precision][0]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of floating inputs (and of the weights, for a "-true" precision)."""
        return PRECISIONS[self.precision][1]

    @property
    def pin_memory(self) -> bool:
        """Pinned host batches and asynchronous (non-blocking) copies: on CUDA only."""
        return self.device.type == "cuda"

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Autocast for a "-mixed" precision; the default dtype for a "-true" one (so tensors
        created inside the forward match the weights, as Lightning does in training)."""
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                yield
            return
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """One input tensor on the device; floating ones in `dtype` (non-blocking from pinned
        memory on CUDA)."""
        dtype = self.dtype if tensor.is_floating_point() else None
        return tensor.to(self.device, dtype=dtype, non_blocking=self.pin_memory)

    @contextlib.contextmanager
    def placed(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` on this device in eval mode; afterwards back on its original device and in
        its original train/eval mode. The moves run outside inference mode (even inside an
        outer one): weights copied under it would become inference tensors, which autograd
        refuses when the model trains again (a walk-forward refit)."""
        param = next(iter(model.parameters()), None)
        home = param.device if param is not None else self.device
        was_training = model.training
        with torch.inference_mode(False):
            model.to(self.device).eval()
        try:
            yield model
        finally:
            with torch.inference_mode(False):
                model.to(home).train(was_training)


def set_matmul_precision(precision: str) -> None:
    """Float32 matmul precision, with cuDNN's TF32 switch set consistently from the same key.

    ``highest``: IEEE float32 everywhere; ``high``/``medium``: TF32 (``medium`` may also use
    bf16) in CUDA matmuls, and TF32 in cuDNN convolutions. Only torch's legacy switches are set
    (torch refuses a mix of its legacy and new TF32 APIs).

    Raises:
        ConfigError: an unknown value, naming the key ``matmul_precision``.
    """
    if precision not in MATMUL_PRECISIONS:
        raise ConfigError(f"matmul_precision={precision!r}; valid: {', '.join(MATMUL_PRECISIONS)}")
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"
