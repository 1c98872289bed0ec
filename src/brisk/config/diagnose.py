"""How a bad command line reaches the user: brisk's one line, before Hydra says anything.

Hydra rejects ``optimizer.lrr=0.1`` with "Key 'lrr' is not in struct" and advice to append with
``+optimizer.lrr``, which is wrong for brisk's typed configs, and ``model=resnet21`` with its config
search path; both exit with 1. :func:`exit_on_composition_error`, called by ``train`` before Hydra
runs, composes the command line's config once in-process; when that fails it prints one line,
``brisk: error: ...``, naming the key or option, the closest valid one and every valid one, and
exits with status 2. A command line that composes goes on to Hydra untouched.

``_target_`` and ``_partial_`` (what ``instantiate`` reads) are never offered as keys to set:
:data:`HIDDEN_KEYS` keeps them out of these messages and out of ``train --help``
(:func:`help_config`, the ``brisk_help_config`` resolver of ``conf/hydra/default.yaml``).
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from brisk.config.extras import missing_extra_messages
from brisk.errors import USER_ERROR_EXIT

#: Keys that Hydra's ``instantiate`` reads; a user never sets them, so no listing shows them.
HIDDEN_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})

# flags after which Hydra composes another config than brisk's, or none: left to Hydra
_NOT_CHECKED = (
    "help",
    "hydra_help",
    "shell_completion",
    "config_path",
    "config_name",
    "config_dir",
    "experimental_rerun",
    "info",
)


def user_keys(node: DictConfig) -> list[str]:
    """The keys of ``node`` a user may set, sorted (without :data:`HIDDEN_KEYS` and ``hydra``)."""
    return sorted(str(k) for k in node if str(k) not in HIDDEN_KEYS and str(k) != "hydra")


def help_config(*, _root_: DictConfig) -> str:
    """The ``== Config ==`` part of ``train --help``: the composed config without ``hydra`` and
    :data:`HIDDEN_KEYS`, unresolved. ``$`` is doubled because Hydra fills the help template with
    ``string.Template``, which would read ``${task.name}`` as a placeholder."""
    container = OmegaConf.to_container(_root_, resolve=False, enum_to_str=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    text = OmegaConf.to_yaml(OmegaConf.create(_without_hidden(container)))
    return text.replace("$", "$$")


def _without_hidden(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_hidden(v) for k, v in value.items() if k not in HIDDEN_KEYS}
    if isinstance(value, list):
        return [_without_hidden(v) for v in value]
    return value


def exit_on_composition_error(argv: Sequence[str]) -> None:
    """``train``'s first step: if the command line does not compose, print ``brisk: error: ...``
    (after the composition error's traceback with ``HYDRA_FULL_ERROR=1``) and exit with 2.

    Should the check itself fail on something unforeseen, Hydra gets the command line as it is.
    """
    try:
        found = _check(argv)
    except Exception:  # noqa: BLE001 - never stop a run that Hydra may well accept
        return
    if found is None:
        return
    message, error = found
    if error is not None and os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    print(f"brisk: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)


def composition_error(argv: Sequence[str]) -> str | None:
    """Why the config of ``train ARGV`` cannot be composed, in one line; None when it composes.

    Checks the job a run would compose; of a sweep (``-m``), the first job, and that every option
    swept over exists.
    """
    found = _check(argv)
    return None if found is None else found[0]


def _check(argv: Sequence[str]) -> tuple[str, BaseException | None] | None:
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    if not args.overrides or any(getattr(args, flag, None) for flag in _NOT_CHECKED):
        return None
    with _hydra() as hydra:
        loader = hydra.config_loader
        try:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(args.overrides)
        except OverrideParseException as err:  # a grammar error: Hydra's text, in one line
            return f"cannot parse '{err.override}': {_one_line(err)}", err
        first_job, swept_options = _first_job(parsed)
        try:
            # RUN mode even for -m: a multirun composition skips missing options
            cfg = hydra.compose_config(
                "config", first_job, run_mode=RunMode.RUN, validate_sweep_overrides=False
            )
        except Exception as err:  # noqa: BLE001 - every composition failure gets one line
            return _explain(err, parsed, args.overrides, loader), err
        for group, option, line in swept_options:
            if not loader.repository.group_exists(group):
                continue
            options = [o for o in loader.get_group_options(group) if o]
            if option not in options:
                return _unknown_option(group, option, options, line), None
    multirun = args.multirun or OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN
    sweeps = [p.input_line for p in parsed if p.is_sweep_override()]
    if sweeps and not multirun:
        message = (
            f"'{sweeps[0]}' lists several values: add -m to run one job per value, or write a "
            "list as key=[a,b] (a string with commas: key='a,b')"
        )
        return message, None
    return None


@contextmanager
def _hydra() -> Iterator[Any]:
    """brisk's config tree, as ``train`` loads it; the global Hydra state is cleared after."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("brisk.conf", version_base="1.3"):
            yield GlobalHydra.instance().hydra
    finally:
        GlobalHydra.instance().clear()


def _first_job(parsed: list[Override]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The overrides of a sweep's first job, and (group, option, override) for every further
    option a group sweep names. Sweeps that are not discrete (Optuna's intervals) are left out."""
    job: list[str] = []
    swept: list[tuple[str, str, str]] = []
    for p in parsed:
        if not p.is_sweep_override():
            job.append(_line(p))
            continue
        if not p.is_discrete_sweep():
            continue
        key = p.get_key_element()
        try:
            values = list(p.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - a sweep only its sweeper expands: left to it
            continue
        if values:
            job.append(f"{key}={values[0]}")
        if "." not in p.key_or_group and not p.is_hydra_override():
            swept += [(p.key_or_group, str(v), _line(p)) for v in values[1:]]
    return job, swept


def _line(p: Override) -> str:
    """The override as typed."""
    return p.input_line or f"{p.get_key_element()}={p.get_value_element_as_str()}"


def _explain(err: BaseException, parsed: list[Override], overrides: list[str], loader: Any) -> str:
    extras = missing_extra_messages(overrides)  # a plugin's config is missing: say what to install
    if extras:
        return " ".join(extras)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        options = [o for o in (err.options or loader.get_group_options(group)) if o]
        line = next((_line(p) for p in parsed if p.key_or_group == group), group)
        return _unknown_option(group, option, options, line)
    unknown = _unknown_keys(parsed, loader)
    if unknown:
        return "; ".join(unknown)
    return _one_line(err)


def _unknown_option(group: str, option: str, options: list[str], line: str) -> str:
    close = closest(option, options)
    hint = f" Did you mean '{group}={close}'?" if close else ""
    return f"unknown option '{line}'.{hint} Valid options for '{group}': {', '.join(options)}"


def _unknown_keys(parsed: list[Override], loader: Any) -> list[str]:
    """One message per override whose key is not in the config its group choices compose."""
    chosen = [
        p
        for p in parsed
        if "." not in p.key_or_group
        and not (p.is_add() or p.is_force_add() or p.is_delete())
        and not p.is_sweep_override()
        and not p.is_hydra_override()
        and loader.repository.group_exists(p.key_or_group)
    ]
    groups = [_line(p) for p in chosen]
    group_keys = {p.key_or_group for p in chosen}
    try:
        cfg = loader.load_configuration("config", groups, run_mode=RunMode.RUN)
    except Exception:  # noqa: BLE001 - the group choices fail by themselves: Hydra's line
        return []
    return [
        message
        for p in parsed
        if not (p.is_add() or p.is_force_add() or p.is_delete() or p.is_hydra_override())
        and p.key_or_group not in group_keys
        for message in [unknown_key_message(cfg, p.key_or_group)]
        if message is not None
    ]


def unknown_key_message(cfg: DictConfig, key: str) -> str | None:
    """Why ``key`` cannot be set in ``cfg``, with the closest valid key; None if it can."""
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return None
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        close = closest(key, list(_all_keys(cfg)))
        hint = f" Did you mean '{close}'?" if close else ""
        return f"unknown key '{key}': '{parent_key}' is not a config group or section.{hint}"
    valid = user_keys(parent)
    close = closest(leaf, valid)
    if close:
        hint = f" Did you mean '{parent_key + '.' if parent_key else ''}{close}'?"
    else:  # the right name in another section: epochs=3 for trainer.epochs=3
        elsewhere = [k for k in _all_keys(cfg) if k.rpartition(".")[2] == leaf]
        hint = f" Did you mean '{elsewhere[0]}'?" if elsewhere else ""
    where = f"under '{parent_key}'" if parent_key else "at the top level"
    return f"unknown key '{key}'.{hint} Valid keys {where}: {', '.join(valid)}"


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice most like ``word`` (difflib's ratio of at least 0.6); of equally close ones, the
    one sharing the longest prefix: ``resnet21`` gives ``resnet20``, not ``resnet32``."""

    def score(choice: str) -> tuple[float, int]:
        prefix = len(os.path.commonprefix([word, choice]))
        return difflib.SequenceMatcher(None, word, choice).ratio(), prefix

    scored = [(score(c), c) for c in choices]
    scored = [(s, c) for s, c in scored if s[0] >= 0.6]
    return max(scored)[1] if scored else None


def _all_keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key in user_keys(node):
        path = f"{prefix}{key}"
        yield path
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _all_keys(child, f"{path}.")


def _one_line(err: BaseException) -> str:
    """Hydra's or OmegaConf's message in one line: the first line of the error and of its cause."""
    lines = [_first_line(err).removeprefix("Error merging override ")]
    if err.__cause__ is not None:
        lines.append(_first_line(err.__cause__))
    return ": ".join(line for line in lines if line) or type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else ""


def explain_unknown_keys(overrides: list[str]) -> list[str]:
    """After a failure Hydra reported itself (a later job of a sweep): one message per override
    whose key does not exist in the composed config."""
    try:
        parsed = OverridesParser.create().parse_overrides(
            [o for o in overrides if not o.startswith("-")]
        )
    except Exception:  # noqa: BLE001 - Hydra already printed the grammar error
        return []
    try:
        with _hydra() as hydra:
            return _unknown_keys(parsed, hydra.config_loader)
    except Exception:  # noqa: BLE001 - no more to say than Hydra did
        return []


_MISSING = object()
