"""Registries of named factories: problems, networks, optimizers.

One small class for every concept that the command line and the pipeline find by name.  A
registry maps a name to a factory and its metadata; ``register`` is a decorator, so a plugin
adds a name the same way the built-ins do::

    from pinn_ng import problems

    @problems.register("poisson3d_exp")
    def _():
        return problems.Problem(...)

The instances live beside what they register (``pinn_ng.problems.REGISTRY``,
``pinn_ng.models.REGISTRY``, ``pinn_ng.optim.REGISTRY``); :mod:`pinn_ng.plugins` loads the
plugins that add to them.
"""

from __future__ import annotations

import re
import sys
from typing import Callable, NamedTuple

#: A registered name: a letter, then letters, digits and underscores (it becomes part of run
#: ids, file names and figure names).
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Entry(NamedTuple):
    """A registered factory, its metadata and where it was registered (a module or a file)."""

    factory: Callable
    meta: dict
    origin: str


def origin_of(factory: Callable) -> str:
    """Where ``factory`` was defined: the plugin file for a module loaded from a path
    (:mod:`pinn_ng.plugins`), else its module's name."""
    module_name = getattr(factory, "__module__", None) or "?"
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if path and getattr(module, "__pinn_ng_plugin_file__", False):
        return path
    return module_name


class Registry:
    """Names of one ``kind`` (``"problem"``, ``"network"``, ``"optimizer"``) -> factories.

    Names keep the order in which they were registered (built-ins first).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta) -> Callable[[Callable], Callable]:
        """Decorator: register the decorated factory under ``name`` with ``meta``; returns the
        factory unchanged.  A taken or malformed name raises ``ValueError``."""
        self.check_name(name)

        def decorate(factory: Callable) -> Callable:
            if not callable(factory):
                raise TypeError(f"{self.kind} {name!r}: register() decorates a factory "
                                f"(a callable), got {type(factory).__name__}")
            self.add(name, factory, **meta)
            return factory

        return decorate

    def add(self, name: str, factory: Callable, **meta) -> None:
        """Register ``factory`` under ``name`` (what :meth:`register` does, without a decorator)."""
        self.check_name(name)
        taken = self._entries.get(name)
        if taken is not None:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {taken.origin}); "
                             f"choose another name")
        self._entries[name] = Entry(factory, dict(meta), origin_of(factory))

    def check_name(self, name) -> None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ValueError(f"{self.kind} name {name!r} is not valid: a letter, then letters, "
                             "digits or underscores")

    def names(self) -> list[str]:
        """The registered names, built-ins first."""
        return list(self._entries)

    def __contains__(self, name) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable "name" (a list from a preset) is not one
            return False

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; an unknown name raises ``KeyError`` listing the valid
        ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind}s: "
                           f"{self.names()}") from None

    def get(self, name: str) -> Callable:
        """The factory registered under ``name`` (``KeyError`` listing the valid names)."""
        return self.entry(name).factory

    def meta(self, name: str) -> dict:
        """The metadata given to :meth:`register` for ``name`` (a copy)."""
        return dict(self.entry(name).meta)

    def origin(self, name: str) -> str:
        """Where ``name`` was registered (a module name, or a plugin file)."""
        return self.entry(name).origin

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


__all__ = ["Entry", "NAME_PATTERN", "Registry", "origin_of"]
