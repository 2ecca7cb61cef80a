"""A run's final parameters as ``final_params.npz``: :func:`save` and :func:`load`.

One array per leaf of the parameter pytree, named by its ``jax.tree_util`` key path
(``jax.tree_util.keystr``: ``[0][1]`` is the bias of the first layer of
:func:`pinn_ng.models.mlp`), stored exactly (float64 stays float64), plus ``__structure__``:
the nesting of dicts, lists and tuples as JSON, so that :func:`load` rebuilds the pytree
without the network.  A pytree with other node types (a namedtuple, a registered class) is
saved as well, with no structure: :func:`load` then needs ``like``, a pytree of the same
structure (e.g. the network's ``init(key)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import records
from .errors import UserError

#: The record's file name (in the run directory, beside ``meta.json``).
FILE = "final_params.npz"
STRUCTURE = "__structure__"


class ParamsError(UserError):
    """A parameter file cannot be read, or does not fit the pytree asked for."""


def _skeleton(node, path):
    """The JSON nesting of ``node`` (leaves by key path), or None for other node types."""
    from jax.tree_util import DictKey, SequenceKey, keystr

    kind = type(node)
    if kind is dict:
        if not all(isinstance(k, str) for k in node):
            return None
        out = {}
        for k in sorted(node):  # jax flattens dicts in sorted key order
            child = _skeleton(node[k], path + (DictKey(k),))
            if child is None:
                return None
            out[k] = child
        return {"dict": out}
    if kind in (list, tuple):
        children = [_skeleton(v, path + (SequenceKey(i),)) for i, v in enumerate(node)]
        if any(c is None for c in children):
            return None
        return {kind.__name__: children}
    if node is None:
        return {"none": None}
    if isinstance(node, (np.ndarray, np.generic, float, int)) or hasattr(node, "__jax_array__") \
            or type(node).__module__.startswith("jax"):
        return {"leaf": keystr(path)}
    return None


def save(path, params) -> None:
    """Write ``params`` (any pytree of arrays) to ``path`` (npz), atomically."""
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    arrays = {}
    for key_path, leaf in leaves:
        name = jax.tree_util.keystr(key_path)
        if name == STRUCTURE or name in arrays:
            raise ParamsError(f"parameter key path {name!r} cannot be stored (reserved or twice)")
        arrays[name] = np.asarray(leaf)
    arrays[STRUCTURE] = np.array(json.dumps(_skeleton(params, ())))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    records.atomic_write_bytes_via(path, write)


def _build(node, arrays):
    kind, value = next(iter(node.items()))
    if kind == "leaf":
        return arrays[value]
    if kind == "dict":
        return {k: _build(v, arrays) for k, v in value.items()}
    if kind == "list":
        return [_build(v, arrays) for v in value]
    if kind == "tuple":
        return tuple(_build(v, arrays) for v in value)
    return None


def load(path, like=None):
    """The pytree saved by :func:`save` (numpy arrays, dtypes as saved).

    ``like``: a pytree of the same structure (its leaves are only looked at for their key
    paths and shapes); needed where the file has no structure (node types other than dicts,
    lists and tuples), and checked against the file where given.
    """
    import jax

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise ParamsError(f"{path}: not a parameter file ({err})") from None
    structure = json.loads(str(arrays.pop(STRUCTURE, np.array("null"))))
    if like is None:
        if structure is None:
            raise ParamsError(f"{path}: the parameters are not made of dicts, lists and tuples "
                              "only; pass like= (a pytree of the same structure)")
        return _build(structure, arrays)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [jax.tree_util.keystr(p) for p, _ in leaves]
    if sorted(names) != sorted(arrays):
        raise ParamsError(f"{path}: its key paths {sorted(arrays)} do not match those of "
                          f"the pytree asked for {sorted(names)}")
    for name, (_, leaf) in zip(names, leaves):
        if np.shape(leaf) != arrays[name].shape:
            raise ParamsError(f"{path}: {name} has shape {arrays[name].shape}, the pytree "
                              f"asked for has {np.shape(leaf)}")
    return jax.tree_util.tree_unflatten(treedef, [arrays[n] for n in names])
