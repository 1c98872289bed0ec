"""Errors that are the user's to fix: a bad config value, a missing or malformed file.

The CLI reports a :class:`UserError` as one line naming the key or file and what was expected, and
exits with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it; ``status.json`` keeps
it). Anything else is a bug in brisk and keeps its traceback.

This module imports nothing from brisk or its dependencies, so any package may raise these errors.
"""

from __future__ import annotations

#: The exit status of a run stopped by a :class:`UserError` (Hydra's own errors exit with 1).
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem the user can fix by changing a config value or a file; the message says how."""


class ConfigValueError(UserError, ValueError):
    """A config value outside its valid range; the message names every offending key."""


class UnsafeFileError(UserError):
    """A data or cache file holding something other than plain data (e.g. a code-running pickle)."""
