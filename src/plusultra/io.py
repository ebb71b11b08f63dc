"""Atomic file writes: a temporary file in the target's directory, then a rename.

A reader never sees a half-written file, and a killed process leaves at most a `.tmp` file
that no glob of results picks up.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _finite(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically; returns the final path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """Write JSON atomically; NaN and infinities become null."""
    return write_text_atomic(path, json.dumps(_finite(obj), indent=2) + "\n")


def write_parquet_atomic(path: str | os.PathLike, frame: pd.DataFrame, index: bool = False) -> Path:
    """Write a DataFrame as parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        frame.to_parquet(tmp, index=index)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
