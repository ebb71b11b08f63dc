"""Which runs and checkpoints a run may resume: config comparison, checkpoint files, run search.

A run resumes only from a checkpoint of the same experiment. The comparison is made on the
flattened config (dotted keys -> resolved values), ignoring the keys that may legitimately
differ between a killed run and its continuation (`ALLOWED_TO_DIFFER`: longer training,
display, paths, loader workers, hardware) and values interpolating this run's own paths
(``${paths.run_dir}/checkpoints`` ...), which are `RUNTIME`. Every other differing key is
named, with both values, in one ConfigError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from plusultra.errors import ConfigError

# Keys (and key prefixes) a resumed run may change: training length, display, locations,
# loader workers and the device a run trains on.
ALLOWED_TO_DIFFER = (
    "resume",
    "ckpt_path",
    "print_summary",
    "paths",
    "hydra",
    "optuna",
    "sweep_name",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.precision",
    "trainer.deterministic",
    "trainer.default_root_dir",
    "data.num_workers",
    "data.pin_memory",
    "compile",
    "matmul_precision",
    "callbacks.resume_checkpoint.every_n_train_steps",
)
# null in a command, filled in by the run (also where interpolated): compared when set
DERIVED = ("periods_per_year",)
RUNTIME = "<this run's path>"  # value of a key interpolating the run's own paths
_RUNTIME_REF = re.compile(r"\$\{(paths\.|hydra:|now:|plusultra\.uid)")
MISSING = "<absent>"
STAGE_FILES = ("resume", "last")  # per stage: step/interrupt checkpoint, epoch-end checkpoint


def allowed(key: str) -> bool:
    """Whether `key` may differ between a checkpoint's run and the run resuming it."""
    return any(key == k or key.startswith(k + ".") for k in ALLOWED_TO_DIFFER)


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and node:
        for k, v in node.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(node, list) and any(isinstance(v, Mapping) for v in node):
        for i, v in enumerate(node):  # e.g. curriculum.stages.1.periods_per_year
            _flatten(v, f"{prefix}{i}.", out)
    else:
        out[prefix[:-1]] = node


def flat_config(cfg: DictConfig | Mapping) -> dict[str, Any]:
    """Dotted key -> resolved value of every key a resume compares (a list is one value,
    except a list of mappings, whose items are keyed by index: ``curriculum.stages.0.epochs``).

    A DictConfig (a command's composed config) is resolved key by key: values that interpolate
    the run's own paths (or cannot be resolved before the run starts) become `RUNTIME`. A plain
    mapping (a run's saved, resolved ``config.yaml``) is taken as it is.
    """
    raw: dict[str, Any] = {}
    if isinstance(cfg, DictConfig):
        _flatten(OmegaConf.to_container(cfg, resolve=False), "", raw)
    else:
        _flatten(cfg, "", raw)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if allowed(key):
            continue
        if isinstance(cfg, DictConfig) and (isinstance(value, list) or _has_ref(value)):
            if _has_ref(value, runtime=True):
                out[key] = RUNTIME
                continue
            try:
                value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            except Exception:  # noqa: BLE001 - e.g. ${hydra:...} before the job starts
                out[key] = RUNTIME
                continue
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            if isinstance(value, Mapping):
                _flatten(value, key + ".", out)
                continue
        out[key] = value
    return out


def _has_ref(value: Any, runtime: bool = False) -> bool:
    if isinstance(value, list | tuple):
        return any(_has_ref(v, runtime) for v in value)
    if isinstance(value, Mapping):
        return any(_has_ref(v, runtime) for v in value.values())
    if not isinstance(value, str):
        return False
    return bool(_RUNTIME_REF.search(value)) if runtime else "${" in value


def mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: <saved> (checkpoint) vs <current> (this run)"`` for every key that differs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, MISSING), current.get(key, MISSING)
        derived = key.rsplit(".", 1)[-1] in DERIVED and b is None
        if allowed(key) or RUNTIME in (a, b) or derived:
            continue
        if a != b:
            out.append(f"{key}: {a!r} (checkpoint) vs {b!r} (this run)")
    return out


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint whose run's config differs from this run's (naming every key).

    Raises:
        ConfigError: ``incompatible checkpoint <source>: window: 64 (checkpoint) vs 32 ...``.
    """
    diff = mismatches(saved, current)
    if diff:
        raise ConfigError(
            f"incompatible checkpoint {source}: " + "; ".join(diff) + " (keys that may differ "
            f"on resume: {', '.join(ALLOWED_TO_DIFFER)})"
        )


def check_shapes(state: Mapping[str, torch.Tensor], module: torch.nn.Module, source: str) -> None:
    """Refuse a checkpoint state dict whose parameters do not fit `module`, naming the first.

    Raises:
        ConfigError: a parameter missing on either side, or of another shape (both shapes).
    """
    own = module.state_dict()
    for name in sorted(set(own) | set(state)):
        if name not in state or name not in own:
            where = "this run's model" if name not in own else "the checkpoint"
            raise ConfigError(f"incompatible checkpoint {source}: {name} is missing in {where}")
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise ConfigError(
                f"incompatible checkpoint {source}: parameter {name} has shape "
                f"{tuple(state[name].shape)} in the checkpoint but {tuple(own[name].shape)} in "
                "this run"
            )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint loaded with ``weights_only=True`` (memory-mapped), or None when the file is
    missing, torn or not a plusultra checkpoint (no ``plusultra`` entry)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError):
        return None
    return ckpt if isinstance(ckpt, dict) and "plusultra" in ckpt else None


def stage_checkpoints(ckpt_dir: Path, stage: str, final: bool) -> list[Path]:
    """The files a stage's resume may start from (``resume.ckpt``, ``last.ckpt``; prefixed
    ``<stage>-`` for a non-final stage)."""
    return [ckpt_dir / (f"{n}.ckpt" if final else f"{stage}-{n}.ckpt") for n in STAGE_FILES]


def newest_checkpoint(paths: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint among `paths` furthest into training (global step, then file
    time); None if none is readable."""
    best = None
    for path in paths:
        if not path.is_file():
            continue
        ckpt = read_checkpoint(path)
        if ckpt is None:
            continue
        key = (int(ckpt.get("global_step", 0)), path.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, path, ckpt)
    return None if best is None else (best[1], best[2])


def find_resumable_run(output_dir: str | os.PathLike, current: Mapping[str, Any]) -> Path:
    """The most recent run under ``<output_dir>/runs`` this command can continue: its saved
    ``config.yaml`` equals `current` up to `ALLOWED_TO_DIFFER`, it has no ``metrics.json`` (it
    did not finish) and it has a checkpoint.

    Raises:
        ConfigError: no such run (saying what was looked for, and why the newest ones differ).
    """
    root = Path(output_dir) / "runs"
    runs = sorted((p for p in root.glob("*/*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    runs.sort(key=lambda p: p.parent.name, reverse=True)  # date dirs, then times in each
    reasons = []
    for run in runs:
        if (run / "metrics.json").exists() or not (run / "config.yaml").is_file():
            continue
        if not any((run / "checkpoints").glob("*.ckpt")):
            continue
        try:
            saved = flat_config(yaml.safe_load((run / "config.yaml").read_text()) or {})
        except (OSError, yaml.YAMLError):
            continue
        diff = mismatches(saved, current)
        if not diff:
            return run
        if len(reasons) < 3:
            reasons.append(f"{run}: {'; '.join(diff[:3])}")
    why = ("; the newest unfinished ones differ: " + " | ".join(reasons)) if reasons else ""
    raise ConfigError(
        f"resume=true: no run under {root} to continue (looked for a run dir with the same "
        f"config up to {', '.join(ALLOWED_TO_DIFFER)}, no metrics.json and a checkpoint in "
        f"checkpoints/){why}. Start a new run without resume=true, or give ckpt_path=FILE"
    )
