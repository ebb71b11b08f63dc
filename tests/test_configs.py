"""Every config option composes, matches its target's signature, and builds."""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from plusultra.run import CONF_DIR
from tests.conftest import compose_config

CONF = Path(CONF_DIR)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_", "defaults"}
# Arguments that run.py passes when it instantiates (known only at run time).
RUNTIME_ARGS = {"n_features", "features", "logger", "callbacks", "n_classes"}


def _target_nodes(node, path="") -> list[tuple[str, dict]]:
    """Every mapping with a `_target_` inside a plain container, with its dotted path."""
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path, node))
        for k, v in node.items():
            found += _target_nodes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _target_nodes(v, f"{path}[{i}]")
    return found


def check_signature(target: str, keys: set[str], where: str) -> None:
    """Config keys must be parameters of the target; its required parameters must be given."""
    obj = get_object(target)
    params = inspect.signature(obj).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = keys - set(params) - HYDRA_KEYS
        assert not unknown, f"{where}: {target} has no parameter(s) {sorted(unknown)}"
    required = {
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    missing = required - keys - RUNTIME_ARGS
    assert not missing, f"{where}: {target} needs {sorted(missing)}"


def test_groups_found():
    for group in (
        "data",
        "features",
        "backbone",
        "head",
        "loss",
        "curriculum",
        "simulator",
        "hardware",
        "trainer",
        "logger",
        "paths",
        "optim",
        "evaluation",
    ):
        assert group in GROUPS, group
    assert ("data", "synthetic") in OPTIONS and ("data", "sqlite") in OPTIONS
    assert {("hardware", h) for h in ("cpu", "rtx4090", "h100")} <= set(OPTIONS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_matches_target_signature(group, option, tiny_db):
    """Compose each option and check every `_target_` node against its signature."""
    cfg = compose_config([f"{group}={option}", "data.path=" + str(tiny_db)])
    assert cfg.hydra.runtime.choices[group] == option
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra")
    nodes = _target_nodes(container)
    assert nodes
    for path, node in nodes:
        check_signature(node["_target_"], set(node), f"conf {path} ({group}={option})")


def test_raw_yaml_targets_resolve():
    """Every `_target_` written in any YAML file imports."""
    for path in CONF.rglob("*.yaml"):
        for where, node in _target_nodes(yaml.safe_load(path.read_text()) or {}):
            assert get_object(node["_target_"]) is not None, f"{path}:{where}"


BUILDABLE = [
    (g, o)
    for g, o in OPTIONS
    if g
    in {
        "backbone",
        "head",
        "loss",
        "optim",
        "curriculum",
        "simulator",
        "evaluation",
        "guardrails",
        "features",
        "logger",
        "data",
        "trainer",
    }
]


@pytest.mark.parametrize(("group", "option"), BUILDABLE, ids=[f"{g}={o}" for g, o in BUILDABLE])
def test_every_option_builds(group, option, tiny_db, tmp_path):
    cfg = compose_config(
        [
            f"{group}={option}",
            f"data.path={tiny_db}",
            "periods_per_year=252",  # run.py resolves the null default from the data
            f"paths.output_dir={tmp_path}",
            f"hydra.runtime.output_dir={tmp_path}",
        ]
    )
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    extra = {"backbone": {"n_features": 5}, "data": {"features": None}}.get(group, {})
    if group == "data":
        extra = {"features": instantiate(cfg.features, _convert_="all")}
    obj = instantiate(cfg[group], _convert_="all", **extra)
    assert obj is not None
    assert type(obj).__module__.split(".")[0] in {"plusultra", "torch", "lightning"}


@pytest.mark.parametrize("backbone", [o for g, o in OPTIONS if g == "backbone"])
def test_root_knobs_reach_every_backbone(backbone):
    cfg = compose_config([f"backbone={backbone}", "depth=7", "d_model=48", "n_heads=3"])
    assert (cfg.backbone.depth, cfg.backbone.d_model) == (7, 48)
    assert cfg.backbone.get("n_heads", 3) == 3  # tcn and ssm have no attention heads
    assert cfg.head.d_model == 48


def test_window_and_horizon_reach_data_head_and_evaluation():
    cfg = compose_config(["window=33", "horizon=3"])
    assert (cfg.data.window, cfg.data.horizon, cfg.head.horizon) == (33, 3, 3)
    assert cfg.evaluation.signal_step is None  # the last step the model predicts


@pytest.mark.parametrize("hw", ["rtx4090", "h100"])
def test_gpu_hardware_configs(hw):
    cfg = compose_config([f"hardware={hw}"])
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.compile is True
    assert cfg.data.batch_size >= 64 and cfg.data.num_workers >= 8 and cfg.data.pin_memory
    assert cfg.matmul_precision == "high"


def test_cpu_hardware_is_default():
    cfg = compose_config()
    assert cfg.hydra.runtime.choices.hardware == "cpu"
    assert cfg.trainer.accelerator == "cpu" and cfg.compile is False


def test_large_hybrid_recipe_builds_the_planned_model():
    """experiment=hybrid_large: 16 blocks, 8 heads, 2048-bar windows, every feature."""
    from plusultra.data.features.pipeline import REGISTRY

    cfg = compose_config(["experiment=hybrid_large"])
    assert (cfg.depth, cfg.n_heads, cfg.window, cfg.backbone.depth) == (16, 8, 2048, 16)
    assert cfg.hydra.runtime.choices.features == "full"
    n_features = len(REGISTRY) + len(cfg.features.indicators) + len(cfg.features.regimes)
    model = instantiate(cfg.backbone, n_features=n_features, _convert_="all")
    assert len(model.blocks) == 16
    dilations = [b.conv.conv.dilation[0] for b in model.blocks]
    assert dilations[:6] == [1, 2, 4, 8, 16, 32] and model.n_tokens(2048) == 255


NATURAL_LOSS = {
    "regression": "mse",
    "quantile": "pinball",
    "calibrated": "calibrated",
    "policy": "sharpe",
}


@pytest.mark.parametrize("head", sorted(f.stem for f in (CONF / "head").glob("*.yaml")))
def test_every_head_composes_with_its_natural_loss(head):
    """`head=X` alone picks the head's loss (head/*.yaml defaults), and the pair is compatible."""
    from plusultra.models.losses import check_compatible

    cfg = compose_config([f"head={head}", "horizon=2", "d_model=8"])
    assert cfg.hydra.runtime.choices.loss == NATURAL_LOSS[head]
    check_compatible(instantiate(cfg.head, _convert_="all"), instantiate(cfg.loss, _convert_="all"))


@pytest.mark.parametrize(
    ("overrides", "loss"),
    [
        (["head=policy", "loss=cvar"], "cvar"),
        (["loss=sortino", "head=policy"], "sortino"),  # the order on the command line is moot
        (["head=quantile", "loss=pinball", "loss.quantiles=[0.2,0.5,0.8]"], "pinball"),
        (["loss=huber"], "huber"),
    ],
)
def test_loss_on_the_command_line_beats_the_heads_default(overrides, loss):
    cfg = compose_config(overrides)
    assert cfg.hydra.runtime.choices.loss == loss
    assert cfg.loss._target_ == compose_config([f"loss={loss}"]).loss._target_


# ---------------------------------------------------------------- periods_per_year: one source


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        (pd.bdate_range("2020-01-01", periods=300), 252),  # business days
        (pd.date_range("2020-01-01", periods=300, freq="D"), 365),  # every day (crypto)
        (pd.date_range("2015-01-02", periods=200, freq="W-FRI"), 52),  # weekly
        (pd.date_range("2000-01-31", periods=120, freq="ME"), 12),  # month ends
        (pd.date_range("2000-03-31", periods=40, freq="QE"), 4),  # quarter ends
        (
            pd.DatetimeIndex(
                [
                    d + pd.Timedelta(hours=h)
                    for d in pd.bdate_range("2021-01-04", periods=30)
                    for h in range(10, 17)
                ]
            ),
            7 * 252,  # 7 hourly bars a business day
        ),
    ],
    ids=["daily", "calendar-daily", "weekly", "monthly", "quarterly", "hourly"],
)
def test_periods_per_year_from_bar_spacing(dates, expected):
    from plusultra.data.datasets.calendar import periods_per_year

    assert periods_per_year(dates) == expected
    holidays = dates.delete([5, 30])  # a few missing bars do not move the median spacing
    assert periods_per_year(holidays) == expected


def test_periods_per_year_root_key_overrides_and_is_checked():
    from plusultra.data.datasets.calendar import resolve_periods_per_year
    from plusultra.errors import ConfigError, DataError

    days = pd.bdate_range("2020-01-01", periods=50)
    assert resolve_periods_per_year(None, days) == 252
    assert resolve_periods_per_year(260, days) == 260
    for bad in (0, 52.5, True, "252"):
        with pytest.raises(ConfigError, match="periods_per_year"):
            resolve_periods_per_year(bad, days)
    with pytest.raises(DataError, match="set periods_per_year"):
        resolve_periods_per_year(None, days[:1])


def test_periods_per_year_is_one_root_key():
    """Metrics and the realistic simulator's accrual read the root key, nothing else."""
    cfg = compose_config(["simulator=realistic", "periods_per_year=52"])
    assert cfg.periods_per_year == 52
    assert cfg.evaluation.periods_per_year == 52 and cfg.simulator.periods_per_year == 52
    assert compose_config().periods_per_year is None  # null: derived from the data
    for path in CONF.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("periods_per_year:"):
                value = line.split(":", 1)[1].split("#")[0].strip()
                assert value in ("null", "${periods_per_year}"), f"{path}: {line}"
