"""Shared fixtures: a tiny generated database and the real config, composed and shrunk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from plusultra.data.io.fixture import generate_fixture
from plusultra.run import CONF_DIR

REPO = Path(__file__).resolve().parents[1]

# Overrides that shrink the default experiment to seconds on CPU.
TINY = [
    "window=16",
    "horizon=2",
    "d_model=16",
    "depth=1",
    "n_heads=2",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "print_summary=false",
]


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory) -> Path:
    """6 symbols x 400 business days, generated once per session."""
    return generate_fixture(tmp_path_factory.mktemp("db") / "tiny.sqlite", 6, 400, seed=3)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The real root config with overrides, including the hydra node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides or [], return_hydra_config=True)


@pytest.fixture
def tiny_cfg(tiny_db, tmp_path) -> DictConfig:
    """The default experiment on `tiny_db`, shrunk, writing into tmp_path."""
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    (tmp_path / "run").mkdir()
    return cfg


def run_cli(args: list[str], out_dir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a console module (`plusultra.run`, `plusultra.cli.data`, ...) in a subprocess."""
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out_dir), "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread (and leave the shared cores to others); modules
    of such tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here: the conftest itself stays free of torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
