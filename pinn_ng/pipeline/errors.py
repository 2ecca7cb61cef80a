"""Errors that are the user's input, not a bug: ``pinn-ng`` reports them as one line, exit 2.

Everything else (a bug) keeps its traceback; ``pinn-ng --debug`` (or ``PINN_NG_TRACEBACK=1``)
shows the traceback of a user error too.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a flag, a run specification, a preset, a file): the message, one line, names
    the offending key or value and the allowed values."""
