"""Command-line overrides that would be silently ignored or that a typo broke.

Two checks, both ending in a one-line ``plusultra: error:`` message:

* ``check_appended`` (called first thing in a run) refuses an appended key (``+key=value``) that
  nothing reads. The rule: an appended key is accepted only when it lands directly under a node
  with a ``_target_`` whose constructor takes it (a named parameter, or ``**kwargs``), because
  run.py instantiates every such node with all of its keys, so the key becomes a constructor
  argument. Anywhere else (the root, whose knobs reach groups only through interpolation, or a
  plain mapping such as ``data.fixture``) nothing would ever read it. Appended config groups
  (``+group=option``) and ``hydra.*`` keys are Hydra's business; ``++key=value`` (set or add)
  is the explicit escape hatch and is not checked.
* ``explain_composition_error`` turns Hydra's composition errors for an unknown option
  (``backbone=hybird``) or an unknown key (``trainer.max_epoch=1``) into one line with a
  "did you mean" (difflib) and, for options, the valid choices. It replaces Hydra's advice to
  add ``+``, which is exactly the trap above. A ``+key`` that already exists and an override
  that does not parse also get one line each.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from plusultra.errors import ConfigError, did_you_mean

# The config tree of the `plusultra` entrypoint (run.CONF_DIR; a test checks they agree).
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def config_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of ``cfg`` (mappings and their leaves; list items are not listed)."""
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        for k, v in node.items_ex(resolve=False):
            path = f"{prefix}{k}"
            if path == "hydra":
                continue
            keys.append(path)
            if isinstance(v, DictConfig):
                walk(v, path + ".")

    walk(cfg, "")
    return keys


def _node(cfg: DictConfig, path: str):
    """The node at dotted ``path`` (the root for ""), or None."""
    return cfg if not path else OmegaConf.select(cfg, path, default=None, throw_on_missing=False)


def _parameters(target: str) -> tuple[set[str], bool]:
    """Names a ``_target_`` accepts as keywords, and whether it takes ``**kwargs``.

    A target that does not import (or has no signature) counts as taking anything: building
    it fails later with Hydra's own message, which names the target.
    """
    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except (ImportError, ValueError, TypeError, HydraException):
        return set(), True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _existing_hint(key: str, value: str, cfg: DictConfig) -> str:
    """' (did you mean `x.y=value`?)' for a close existing key, else ''."""
    parent, _, leaf = key.rpartition(".")
    node = _node(cfg, parent)
    if isinstance(node, DictConfig):
        near = did_you_mean(leaf, [str(k) for k in node if k != leaf])
        near = f"{parent}.{near}" if parent and near else near
    else:
        near = did_you_mean(key, [k for k in config_keys(cfg) if k != key])
    return f" (did you mean `{near}={value}`?)" if near else ""


def check_appended(cfg: DictConfig, overrides: Sequence[str], choices: Mapping) -> None:
    """Raise ConfigError for a ``+key=value`` that nothing reads (module docstring: the rule).

    Args:
        cfg: The composed config (the run's ``cfg``).
        overrides: The command line's task overrides (``HydraConfig.get().overrides.task``).
        choices: ``HydraConfig.get().runtime.choices``: config groups, whose ``+group=option``
            appends a config file rather than a key.
    """
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if not ov.is_add() or key in choices or key.split(".")[0] == "hydra":
            continue
        value = ov.input_line.split("=", 1)[1] if "=" in ov.input_line else ""
        parent, _, leaf = key.rpartition(".")
        node = _node(cfg, parent)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if target is None:
            where = f"`{parent}` has no `_target_`" if parent else "the root is not constructed"
            raise ConfigError(
                f"{ov.input_line}: nothing reads `{key}`: an appended key must be a constructor "
                f"argument of a node with a `_target_`, and {where}"
                f"{_existing_hint(key, value, cfg)}"
            )
        if leaf in HYDRA_KEYS:
            continue
        named, var_kw = _parameters(str(target))
        if leaf not in named and not var_kw:
            near = did_you_mean(leaf, named)
            if near and near in node:
                hint = f" (did you mean `{parent}.{near}={value}`?)"
            elif near:
                hint = f" (did you mean `+{parent}.{near}={value}`?)"
            else:
                hint = ""
            raise ConfigError(
                f"{ov.input_line}: nothing reads `{key}`: {target} takes no argument `{leaf}`{hint}"
            )


def _user_override(overrides: Sequence[str], key: str) -> str | None:
    """The command-line override (as typed) that sets ``key``, if any."""
    for raw in overrides:
        if raw.split("=", 1)[0].lstrip("+~").split("@", 1)[0] == key:
            return raw
    return None


def _compose_keys(overrides: Sequence[str], skip: str | None) -> list[str]:
    """Dotted keys of the config composed with ``overrides`` minus ``skip`` (or with none)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for attempt in ([o for o in overrides if o != skip], []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                return config_keys(compose("config", overrides=attempt))
        except HydraException:
            continue
        finally:
            GlobalHydra.instance().clear()
    return []


def explain_composition_error(exc: BaseException, overrides: Sequence[str]) -> str | None:
    """One line for Hydra's unknown-option / unknown-key errors, with a did-you-mean; else None.

    Args:
        exc: The Hydra exception raised while composing the config.
        overrides: The command line as typed (``sys.argv[1:]``).
    """
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        typed = _user_override(overrides, group) or f"{group}={option}"
        near = did_you_mean(option, exc.options)
        hint = f" (did you mean '{near}'?)" if near else ""
        return (
            f"{typed}: no option '{option}' in group '{group}'{hint}. "
            f"Options: {', '.join(sorted(exc.options))}"
        )
    if isinstance(exc, OverrideParseException):
        first, *rest = [line.strip() for line in exc.message.splitlines() if line.strip()]
        return f"{exc.override}: {first}" + (f" ({' '.join(rest)})" if rest else "")
    exists = re.match(r"Could not append to config\. An item is already at '([^']+)'", str(exc))
    if exists:
        key = exists.group(1)
        typed = _user_override(overrides, key) or f"+{key}=..."
        return f"{typed}: `{key}` already exists; set it without +: `{typed.lstrip('+')}`"
    match = re.match(r"Could not override '([^']+)'\.", str(exc))
    if isinstance(exc, HydraException) and match:
        key = match.group(1)
        typed = _user_override(overrides, key) or key
        value = typed.split("=", 1)[1] if "=" in typed else "..."
        keys = _compose_keys(overrides, typed)
        parent, _, leaf = key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
        near = did_you_mean(leaf, siblings) if siblings else None
        near = (f"{parent}.{near}" if parent else near) if near else did_you_mean(key, keys)
        hint = f"; did you mean `{near}={value}`?" if near else ""
        return f"{typed}: the config has no key `{key}`{hint} (`plusultra --cfg job` lists them)"
    return None
