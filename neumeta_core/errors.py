"""The one exception class for input a user got wrong: a file, a flag, a width.

Callers at the edge (the `neumeta` command, the service's loader) report it in one line; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, with a message that says what was wrong and what is valid."""
