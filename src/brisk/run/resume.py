"""Where a run continues from, and whether it may.

A checkpoint carries the run's *identity config* (the resolved config without the keys that only say
how to launch it). The rules, in order:

1. ``last.pt`` in the run's own directory wins: that is an elastic restart, a preempted run started
   again, or a re-run of a finished one. A ``ckpt_path`` pointing elsewhere is ignored, with a
   warning.
2. ``ckpt_path=PATH`` continues that checkpoint's run in this run's directory.
3. ``resume=auto`` continues the newest run under ``paths.output_dir/runs`` with the same identity,
in
   its own directory.
4. Otherwise the run starts fresh; ``init_from=PATH`` then loads weights only (a brisk checkpoint or
a
   bare state dict), with a fresh optimizer, schedule and step 0.

Continuing a checkpoint whose identity differs from this config's is refused, listing every
differing key, unless ``resume_strict=false``: the new optimizer hyper-parameters and the new
schedule (for the new length, from the restored step) then apply, and are logged.

A run is never started over silently. When the ``last.pt`` a run would continue cannot be read (cut
off, empty), the run continues from its newest readable checkpoint (``best.pt``) and says so, or,
with none, is refused with one line naming the file, the reason and what to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from brisk.errors import UserError
from brisk.run.checkpoint import (
    CheckpointError,
    UnreadableCheckpoint,
    config_fingerprint,
    load_checkpoint,
    read_checkpoint,
)
from brisk.run.run_dir import RunPaths

log = logging.getLogger("brisk")

# Keys that say how to launch a run, not what the run is: they are not part of its identity.
# Where the numbers are sent (``logger``) is one of them.
LAUNCH_KEYS = ("resume", "ckpt_path", "resume_strict", "eval_only", "paths", "hydra", "logger")
# Keys that change how fast a run goes or how often it reports, not what it computes: a resume may
# change them without resume_strict=false.
RUNTIME_KEYS = (
    "trainer.threads",
    "trainer.num_workers",
    "trainer.worker_start_method",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.device",
    "trainer.backend",
)


# A value read from the environment (``${oc.env:NAME}``), anywhere in a config string.
_READS_ENVIRONMENT = re.compile(r"\$\{\s*oc\.env\s*:")
# A plain interpolation of another key (``${task.name}``), followed to find what it reads.
_REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")
# Where a run's files and data are may come from the environment: these are never recorded whole.
_LOCATION_PREFIXES = ("paths.", "hydra.")


def refuse_environment_values(cfg: DictConfig) -> None:
    """Refuse a config whose identity reads the environment: status.json, checkpoints and
    TensorBoard record the identity resolved, and a value from the environment may be a secret
    (a token). Locations (``paths.*``) may read it; the keys of the identity may not, directly
    or through another key."""
    raw = _flatten(OmegaConf.to_container(cfg, resolve=False))
    launch = tuple(f"{key}." for key in LAUNCH_KEYS)

    def reads_environment(key: str, seen: frozenset[str]) -> bool:
        text = str(raw.get(key, ""))
        if _READS_ENVIRONMENT.search(text):
            return True
        return any(
            ref not in seen
            and not f"{ref}.".startswith(_LOCATION_PREFIXES)
            and reads_environment(ref, seen | {ref})
            for ref in _REFERENCE.findall(text)
        )

    offending = [
        f"{key}={raw[key]}"
        for key in raw
        if not f"{key}.".startswith(launch) and reads_environment(key, frozenset({key}))
    ]
    if offending:
        raise UserError(
            f"{', '.join(offending)}: a run does not record values read from the environment "
            "(status.json, checkpoints and TensorBoard keep the resolved config, and the value "
            "may be a secret); give the value itself, or read the environment in paths.* only"
        )


def identity_yaml(cfg: DictConfig) -> str:
    """The config that says what the run is, as sorted YAML (its hash names the run); refused
    when it reads the environment (:func:`refuse_environment_values`)."""
    refuse_environment_values(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    for key in LAUNCH_KEYS:
        container.pop(key, None)
    if container.get("init_from") is None:  # absent, as in runs made before the key existed
        container.pop("init_from", None)
    trainer = container.get("trainer")
    if isinstance(trainer, dict) and not (trainer.get("ema") or {}).get("enabled"):
        trainer.pop("ema", None)  # off: the same run as before the key existed
    return yaml.safe_dump(container, sort_keys=True)


def config_diff(saved_yaml: str, current_yaml: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: saved -> current`` for every dotted key whose value differs."""
    saved = _flatten(yaml.safe_load(saved_yaml) or {})
    current = _flatten(yaml.safe_load(current_yaml) or {})
    return [
        f"{key}: {saved.get(key, '<absent>')} -> {current.get(key, '<absent>')}"
        for key in sorted(saved.keys() | current.keys())
        if saved.get(key) != current.get(key) and key not in ignore
    ]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in flat.items()}


@dataclass
class ResumePlan:
    """Where the run writes, and what it starts from."""

    run_dir: Path
    checkpoint: Path | None = None  # continue this run's state
    state: dict[str, Any] | None = None  # the checkpoint, read once
    new_hparams: bool = False  # resume_strict=false accepted differences
    changed: list[str] = field(default_factory=list)
    init_from: Path | None = None  # weights only

    @property
    def resumes(self) -> bool:
        """A checkpoint is continued (not a fresh start, nor weights only via ``init_from``)."""
        return self.checkpoint is not None


def plan_resume(cfg: DictConfig, run_dir: Path, identity: str) -> ResumePlan:
    """Apply the rules of this module; raises :class:`UserError` before any work when refused."""
    init_from = cfg.get("init_from")
    if init_from and cfg.ckpt_path:
        raise UserError(
            f"init_from={init_from} and ckpt_path={cfg.ckpt_path} both given: ckpt_path continues "
            "a run (its optimizer, schedule and step), init_from starts a new one from weights; "
            "give one"
        )
    target = _continue_from(cfg, run_dir, identity)
    if target is None:
        return ResumePlan(run_dir, init_from=Path(init_from) if init_from else None)
    run_dir, checkpoint, state = target
    if checkpoint is None or state is None:
        # stopped during a stage (the teacher's): that stage continues itself
        return ResumePlan(run_dir, init_from=Path(init_from) if init_from else None)
    if init_from:
        log.info("init_from=%s is not applied: the run continues %s", init_from, checkpoint)
    saved_yaml = state.get("config_yaml")
    if not isinstance(saved_yaml, str):
        log.warning("%s records no config: it cannot be checked against this one", checkpoint)
        return ResumePlan(run_dir, checkpoint, state)
    changed = config_diff(saved_yaml, identity, ignore=RUNTIME_KEYS)
    strict = cfg.get("resume_strict", True)
    if changed and strict:
        raise UserError(
            f"{checkpoint} was written by a run with another config; differing keys: "
            + "; ".join(changed)
            + ". Resume with the checkpoint's values, start from its weights with init_from=PATH, "
            "or apply the new values to the resumed run with resume_strict=false"
        )
    if changed:
        log.warning(
            "resume_strict=false: continuing %s with the new values of %s",
            checkpoint,
            "; ".join(changed),
        )
    return ResumePlan(run_dir, checkpoint, state, new_hparams=bool(changed), changed=changed)


def _continue_from(
    cfg: DictConfig, run_dir: Path, identity: str
) -> tuple[Path, Path | None, dict[str, Any] | None] | None:
    own = RunPaths(run_dir)
    if own.last.is_file():
        if cfg.ckpt_path and Path(cfg.ckpt_path).resolve() != own.last.resolve():
            log.warning(
                "ckpt_path=%s is ignored: this run directory already has %s, and a run always "
                "continues its own last checkpoint (use another hydra.run.dir to start from "
                "ckpt_path)",
                cfg.ckpt_path,
                own.last,
            )
        return (run_dir, *continue_point(own))
    if cfg.ckpt_path:
        checkpoint = Path(cfg.ckpt_path)
        return run_dir, checkpoint, read_resume_state(checkpoint)
    if cfg.resume != "auto":
        return None
    runs = Path(cfg.paths.output_dir) / "runs"
    previous = latest_run_with(runs, config_fingerprint(identity), exclude=run_dir)
    if previous is None:
        log.info("resume=auto: no earlier run of this config under %s; starting fresh", runs)
        return None
    log.info("resume=auto: continuing %s", previous)
    paths = RunPaths(previous)
    if not paths.last.is_file():
        return previous, None, None
    return (previous, *continue_point(paths))


def continue_point(paths: RunPaths) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of a run: ``last.pt``, or ``best.pt`` when ``last.pt``
    cannot be read (logged, with the steps that are trained again).

    Raises :class:`UserError` naming the file, the reason and the way out when the run has no
    readable checkpoint: a run is never started over in place of the one it should continue.
    """
    try:
        return paths.last, read_resume_state(paths.last)
    except UnreadableCheckpoint as exc:
        problem = str(exc)
    if paths.best.is_file():
        try:
            state = read_resume_state(paths.best)
        except UnreadableCheckpoint as exc:
            problem += f"; {paths.best.name} cannot be read either ({exc})"
        else:
            log.warning(
                "%s; continuing from %s at step %d instead (the steps after it are trained again)",
                problem,
                paths.best,
                state["step"],
            )
            return paths.best, state
    raise UserError(
        f"{problem}; the run has no other readable checkpoint: move {paths.last} aside to start "
        "this run again from step 0, or use another hydra.run.dir"
    )


def latest_run_with(runs_root: Path, fingerprint: str, exclude: Path) -> Path | None:
    """The newest run directory under ``runs_root`` whose checkpoints have this fingerprint.

    A run stopped in its first stage (a teacher being fitted) has only the stage's
    ``<run>/<stage>/checkpoints/last.pt``, which counts too. A run whose ``last.pt`` cannot be read
    is known by its ``best.pt``. Files that are not brisk checkpoints (foreign, a bare tensor) are
    skipped with a warning. When no run matches but some run's checkpoints cannot be read at all
    (so whose they are is unknown), the resume is refused rather than started over.
    """
    candidates: list[tuple[float, Path]] = []
    unknown: list[tuple[float, str]] = []
    checkpoints = [
        *runs_root.glob("*/checkpoints/last.pt"),
        *runs_root.glob("*/*/checkpoints/last.pt"),
    ]
    for last in checkpoints:
        folder = last.parents[1] if last.parents[2] == runs_root else last.parents[2]
        if folder.resolve() == exclude.resolve():
            continue
        found, problem = _fingerprint_of(last)
        if found is None and problem is not None:
            unknown.append((last.stat().st_mtime, problem))
        elif found == fingerprint:
            candidates.append((last.stat().st_mtime, folder))
    chosen = max(candidates) if candidates else None
    for _, problem in sorted(unknown):
        log.warning("resume=auto: skipping %s (whose run it is cannot be told)", problem)
    if chosen is None and unknown:
        raise UserError(
            f"resume=auto: no readable checkpoint of this config under {runs_root}, and "
            f"{len(unknown)} unreadable one(s) of an unknown config there ({max(unknown)[1]}): "
            "move what cannot be read aside to start fresh, or continue a readable checkpoint "
            "with ckpt_path=PATH"
        )
    return chosen[1] if chosen else None


def _fingerprint_of(last: Path) -> tuple[str | None, str | None]:
    """The config fingerprint of ``last`` (or of its ``best.pt``, when ``last`` cannot be read),
    and why it is unknown when neither can be read."""
    problem = None
    for path in (last, last.with_name("best.pt")):
        if not path.is_file():
            continue
        try:
            state = load_checkpoint(path)
        except UnreadableCheckpoint as exc:
            problem = problem or str(exc)
            continue
        except CheckpointError as exc:  # someone else's file (a bare tensor): not ours
            log.warning("resume=auto: skipping %s", exc)
            return None, None
        found = state.get("config_fingerprint")
        return (found if isinstance(found, str) else None), None
    return None, problem


def read_resume_state(path: Path) -> dict[str, Any]:
    """A brisk checkpoint with all a resume needs, or a :class:`UserError` naming the file."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist (ckpt_path or resume)")
    state = load_checkpoint(path)
    needed = ("model", "optimizer", "scheduler", "step", "epoch")
    if any(k not in state for k in needed):
        raise UserError(
            f"{path} is not a brisk training checkpoint (it lacks the optimizer/scheduler/step "
            "state a resume needs); to start from its weights only, use init_from=PATH"
        )
    return state


def load_weights(model: nn.Module, path: Path | str, key: str = "init_from") -> dict[str, Any]:
    """The weights of a brisk checkpoint, or of a bare state dict, into ``model``: ``init_from``,
    and ``eval_only``'s ``ckpt_path``. Every problem is a :class:`UserError` naming ``key``.

    Returns what the file holds when it is a brisk checkpoint (its ``step``, say), else ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}={path}: the file does not exist")
    try:
        state = read_checkpoint(path)
    except CheckpointError as exc:
        raise UserError(f"{key}={path}: {exc}") from exc
    saved: dict[str, Any] = {}
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        saved, state = state, state["model"]  # a brisk checkpoint
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapping
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"{key}={path}: expected a brisk checkpoint or a state dict of tensors, "
            f"found a {type(state).__name__}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise UserError(
            f"{key}={path} does not fit the model: "
            + "; ".join(
                f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("shape differs", shapes),
                )
                if keys
            )
        )
    model.load_state_dict(state)
    fresh = "; optimizer, schedule and step start fresh" if key == "init_from" else ""
    log.info("%s=%s: weights loaded%s", key, path, fresh)
    return saved


def _plain(value: Any) -> Any:
    """Tuples come back from a checkpoint as lists: compare them as equal."""
    return tuple(value) if isinstance(value, list | tuple) else value


def apply_new_hparams(
    optimizer: Optimizer,
    scheduler: LRScheduler,
    fresh_groups: list[dict[str, Any]],
    total_steps: int,
) -> None:
    """``resume_strict=false``: this config's optimizer values and schedule, from the restored step.

    ``fresh_groups`` are the param-group settings this config built (before the checkpoint's were
    loaded); the schedule object was built for this config's length, and its saved position
    (``last_epoch``) is kept, so the learning rate continues this config's curve at the current
    step.
    """
    changes: list[str] = []
    for index, (group, fresh) in enumerate(zip(optimizer.param_groups, fresh_groups, strict=True)):
        for key, value in fresh.items():
            if key in ("lr",):  # set from the schedule below
                continue
            if _plain(group.get(key)) != _plain(value):
                changes.append(f"group {index} {key} {group.get(key)} -> {value}")
                group[key] = value
    base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    scheduler.base_lrs = base_lrs
    step = scheduler.last_epoch
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is not None:
        for group, base, factor in zip(optimizer.param_groups, base_lrs, lambdas, strict=True):
            group["lr"] = base * factor(step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    log.warning(
        "resume_strict=false: optimizer %s; schedule rebuilt for %d steps from step %d "
        "(lr now %.6g)",
        "; ".join(changes) or "unchanged",
        total_steps,
        step,
        optimizer.param_groups[0]["lr"],
    )
