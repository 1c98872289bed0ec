"""Friendlier messages for misspelt override keys.

Hydra rejects ``optimizer.lrr=0.1`` with "Key 'lrr' is not in struct" but does not say what the
valid keys are. When the command fails, we compose again with only the group choices and list the
keys that do exist under the bad key's parent, with the closest match first.
"""

from __future__ import annotations

import difflib

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf


def explain_unknown_keys(overrides: list[str]) -> list[str]:
    """One message per override whose key does not exist in the composed config."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra already printed the grammar error
        return []
    groups = [
        p.input_line
        for p in parsed
        if p.input_line is not None
        and "." not in p.key_or_group
        and not p.is_add()
        and not p.is_delete()
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("brisk.conf", version_base="1.3"):
            cfg = compose("config", overrides=[g for g in groups if not g.startswith("hydra")])
    except Exception:  # noqa: BLE001 - a bad group choice: Hydra's own message lists the options
        return []
    finally:
        GlobalHydra.instance().clear()
    messages = []
    for p in parsed:
        key = p.key_or_group
        if (
            "." not in key
            or p.is_add()
            or p.is_force_add()
            or p.is_delete()
            or key.startswith("hydra.")
        ):
            continue
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key)
            if isinstance(parent, DictConfig):
                valid = sorted(str(k) for k in parent)
                close = difflib.get_close_matches(leaf, valid, n=1)
                hint = f" Did you mean '{parent_key}.{close[0]}'?" if close else ""
                messages.append(
                    f"unknown key '{key}'.{hint} "
                    f"Valid keys under '{parent_key}': {', '.join(valid)}"
                )
            else:
                messages.append(
                    f"unknown key '{key}': '{parent_key}' is not a config group or section"
                )
    return messages


_MISSING = object()
