"""Plugins: files, modules and installed packages that add problems, networks and optimizers.

A plugin registers names with the ``register`` decorators of :mod:`pinn_ng.problems`,
:mod:`pinn_ng.models` and :mod:`pinn_ng.optim`; a registered name then works wherever a
built-in one does (``pinn-ng run``, presets, tuning, tables, figures).  :func:`load` loads them
from three places, in this order:

1. entry points of installed packages, groups ``pinn_ng.problems``, ``pinn_ng.networks`` and
   ``pinn_ng.optimizers``.  Loading an entry point imports its module, whose ``register``
   decorators register the names.  If the object it names is a factory that is not registered
   yet (an undecorated function), it is registered under the entry point's name with the
   defaults of that ``register`` (for an optimizer: ``uses_grads=False``, hyper-parameters
   from its signature);
2. the environment variable ``PINN_NG_PLUGINS``: an ``os.pathsep``-separated list of ``.py``
   files (relative to the working directory) or importable module names;
3. the ``specs`` given, e.g. a preset's ``plugins`` (:mod:`pinn_ng.pipeline.config` makes
   their paths absolute against the preset file).

Every ``pinn-ng`` command calls :func:`load` before it reads a name, and the Snakefile exports
the preset's plugins in ``PINN_NG_PLUGINS`` to every job.  Loading is idempotent: a file or
module already loaded is skipped.  A plugin that fails to import raises :class:`PluginError`,
one line naming the plugin and the error (``pinn-ng`` prints it without a traceback).

This module is the runtime's, not the library's: the library never loads plugins on its own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types

from .pipeline.errors import UserError

#: The environment variable that lists plugins (``os.pathsep``-separated files or modules).
ENV_VAR = "PINN_NG_PLUGINS"
#: Entry-point group -> the module whose ``register`` it feeds.
GROUPS = {"pinn_ng.problems": "pinn_ng.problems", "pinn_ng.networks": "pinn_ng.models",
          "pinn_ng.optimizers": "pinn_ng.optim"}


class PluginError(UserError):
    """A plugin could not be loaded: one line naming the plugin and the error."""


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return f"{type(err).__name__}: {' '.join(str(text).split())}"


def is_path(spec: str) -> bool:
    """Whether a plugin ``spec`` is a file (ends in ``.py`` or has a path separator) rather
    than a module name."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    return spec.endswith(".py") or any(s in spec for s in seps)


def resolve(specs, base_dir) -> list[str]:
    """``specs`` with the paths made absolute against ``base_dir``; module names unchanged."""
    out = []
    for spec in specs:
        spec = str(spec).strip()
        if is_path(spec):
            spec = os.path.abspath(os.path.join(base_dir, os.path.expanduser(spec)))
        out.append(spec)
    return out


def from_env(environ=None) -> list[str]:
    """The plugins listed in ``PINN_NG_PLUGINS`` (empty entries dropped)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [s.strip() for s in value.split(os.pathsep) if s.strip()]


def env_with(specs, environ=None) -> dict[str, str]:
    """``{PINN_NG_PLUGINS: …}`` listing the plugins of ``environ`` and then ``specs``, paths
    absolute (so that a job in another working directory finds them), each once; ``{}`` if
    there are none.  The Snakefile exports it so that every job loads the preset's plugins."""
    seen = []
    for spec in resolve(from_env(environ), os.getcwd()) + resolve(specs, os.getcwd()):
        if spec not in seen:
            seen.append(spec)
    return {ENV_VAR: os.pathsep.join(seen)} if seen else {}


def _module_name(path: str) -> str:
    """A module name of its own for each plugin file (two files may share a stem)."""
    stem = "".join(c if c.isalnum() else "_" for c in os.path.basename(path)[:-3])
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    return f"_pinn_ng_plugin_{stem}_{digest}"


def _load_file(spec: str) -> None:
    path = os.path.realpath(os.path.abspath(os.path.expanduser(spec)))
    name = _module_name(path)
    if name in sys.modules:
        return
    if not os.path.isfile(path):
        raise PluginError(f"plugin {spec}: no such file")
    if not path.endswith(".py"):
        raise PluginError(f"plugin {spec}: not a .py file (a plugin is a .py file or a "
                          "module name)")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module.__pinn_ng_plugin_file__ = True  # registries name the file as the origin
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error of the user's file: one line
        del sys.modules[name]
        raise PluginError(f"plugin {spec}: {_one_line(err)}") from err


def _load_module(spec: str) -> None:
    try:
        importlib.import_module(spec)
    except Exception as err:  # noqa: BLE001 - any error of the user's module: one line
        raise PluginError(f"plugin {spec}: {_one_line(err)}") from err


def load_one(spec: str) -> None:
    """Load one plugin: a ``.py`` file or a module name (a no-op if already loaded)."""
    spec = str(spec).strip()
    if not spec:
        return
    (_load_file if is_path(spec) else _load_module)(spec)


def _entry_points(group: str):
    from importlib.metadata import entry_points

    return entry_points(group=group)


def load_entry_points() -> None:
    """Load the entry points of the groups in :data:`GROUPS` (see the module docstring)."""
    for group, target in GROUPS.items():
        for ep in _entry_points(group):
            what = f"plugin {ep.name} (entry point {ep.value} in group {group})"
            try:
                obj = ep.load()
            except Exception as err:  # noqa: BLE001 - the installed package's error: one line
                raise PluginError(f"{what}: {_one_line(err)}") from err
            if isinstance(obj, types.ModuleType):
                continue  # importing it registered its names
            module = importlib.import_module(target)
            registry = module.REGISTRY
            if any(registry.get(n) is obj for n in registry.names()):
                continue  # its module's decorator registered it
            if not callable(obj):
                raise PluginError(f"{what}: names a {type(obj).__name__}, not a module or a "
                                  "factory")
            try:
                module.register(ep.name)(obj)
            except (TypeError, ValueError) as err:
                raise PluginError(f"{what}: {_one_line(err)}") from err


def load(specs=(), *, environ=None, entry_points: bool = True) -> list[str]:
    """Load the plugins: entry points, then ``PINN_NG_PLUGINS``, then ``specs``.

    Returns the files and modules loaded from the environment and ``specs`` (in that order).
    Raises :class:`PluginError` for the first plugin that fails.
    """
    if entry_points:
        load_entry_points()
    listed = from_env(environ) + [str(s).strip() for s in specs if str(s).strip()]
    for spec in listed:
        load_one(spec)
    return listed


__all__ = ["ENV_VAR", "GROUPS", "PluginError", "env_with", "from_env", "is_path", "load",
           "load_entry_points", "load_one", "resolve"]
