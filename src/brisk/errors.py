"""Errors that are the user's to fix: a bad config value, a missing or malformed file.

The CLI reports a :class:`UserError` as one line naming the key or file and what was expected, and
exits with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it; ``status.json`` keeps it).
Anything else is a bug in brisk and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix by changing a config value or a file; the message says how."""
