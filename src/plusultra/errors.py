"""User-facing errors.

Every error a user can cause by bad input (a config key, a database, a file) is a
``PlusUltraError``. Entry points print its message as one paragraph and exit non-zero,
without a traceback; anything else is a bug and keeps its traceback. `did_you_mean` suggests
the closest valid name for a message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib ratio >= 0.6), or None."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return close[0] if close else None


class PlusUltraError(Exception):
    """Base class of errors caused by bad input rather than by a bug."""

    exit_code = 2


class ConfigError(PlusUltraError):
    """A config value is invalid; the message names the config key."""


class DataError(PlusUltraError):
    """A database or file does not follow the contract; the message names table/column/row."""
