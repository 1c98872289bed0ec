"""Valid intervals of numeric config keys, and the check a config dataclass runs on itself.

A schema dataclass (``schema.py``, ``whitening/settings.py``, ...) lists its keys' ranges in
``RANGES`` and checks them in ``__post_init__`` through :func:`check_ranges`, so each rule lives
beside the key and its default. ``validate_config`` builds every typed group of the composed config
(``OmegaConf.to_object``), which runs those checks before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from brisk.errors import ConfigValueError


@dataclass(frozen=True)
class Range:
    """A valid interval for one key: ``low``/``high`` bounds (closed unless ``*_open``)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False  # null is valid (and means "off" or "default")

    def describe(self) -> str:
        """The valid values in words, for the one-line error naming the key."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f" in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            bounds = f" {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            bounds = f" {'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            bounds = ""
        return ("null or " if self.optional else "") + kind + bounds

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` lies in the range; booleans, NaN and infinities never do."""
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and float(value) != int(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Range(1, integer=True)
OPTIONAL_POSITIVE_INT = Range(1, integer=True, optional=True)
NONNEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NONNEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)  # (0, 1)
MOMENTUM = Range(0, 1, high_open=True)  # [0, 1)

# "key[]" applies the range to every element of a list value.
RangeTable = Mapping[str, Range]


def range_problems(section: str, values: Any, ranges: RangeTable) -> list[str]:
    """``section.key=value (expected ...)`` for every key of ``values`` outside its range.

    ``values`` is a mapping or an object with the keys as attributes; absent keys are skipped.
    """
    problems = []
    for spec, rule in ranges.items():
        name = spec.removesuffix("[]")
        if isinstance(values, Mapping):
            if name not in values:
                continue
            value = values[name]
        elif hasattr(values, name):
            value = getattr(values, name)
        else:
            continue
        key = f"{section}.{name}"
        if spec.endswith("[]"):
            if isinstance(value, str) or not isinstance(value, Iterable):
                problems.append(f"{key}={show(value)} (expected a list of {rule.describe()})")
                continue
            problems += [
                f"{key}[{i}]={show(item)} (expected {rule.describe()})"
                for i, item in enumerate(value)
                if not rule.accepts(item)
            ]
        elif not rule.accepts(value):
            problems.append(f"{key}={show(value)} (expected {rule.describe()})")
    return problems


def raise_problems(problems: list[str]) -> None:
    """One :class:`ConfigValueError` naming every problem, or nothing when there is none."""
    if problems:
        raise ConfigValueError("; ".join(problems))


def check_ranges(section: str, values: Any, ranges: RangeTable, *extra: str) -> None:
    """Raise one :class:`ConfigValueError` for the out-of-range keys (and ``extra`` problems)."""
    raise_problems(range_problems(section, values, ranges) + [p for p in extra if p])


def show(value: Any) -> str:
    """A value as the user would type it in an override."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, ListConfig | DictConfig):
        return str(OmegaConf.to_container(value))
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, str) else str(value)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
