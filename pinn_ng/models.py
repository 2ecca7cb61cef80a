"""tanh multilayer perceptrons, the networks of every experiment in the paper, and the registry
of networks by name (:func:`register`, :func:`make`; the built-in one is ``mlp``)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from .precision import resolve_dtype
from .registry import Registry


class MLP(NamedTuple):
    """``init(key) -> params`` and ``apply(params, x) -> scalar``; unpacks as ``init, apply``."""

    init: Callable
    apply: Callable


def n_params(widths: Sequence[int]) -> int:
    """Number of weights and biases of a dense net with layer sizes ``widths``."""
    widths = tuple(widths)
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


#: Initialisation schemes of :func:`mlp`.
INITS = ("glorot_normal", "torch")


def mlp(widths: Sequence[int], dtype=None, init: str = "glorot_normal") -> MLP:
    """A tanh MLP with layer sizes ``widths`` (input dim first, output 1 last).

    Hidden layers use tanh, the output layer is linear, as in the paper.  ``params`` is a list
    of ``(W, b)`` pairs with ``W`` of shape ``(fan_in, fan_out)``.  ``init``:
    ``"glorot_normal"`` (default: W ~ N(0, 2/(fan_in + fan_out)), b = 0) or ``"torch"`` (the
    authors' reference code, PyTorch's ``nn.Linear`` default: W and b ~ U(±1/√fan_in)).  The
    start matters for the curvature methods: Hessian-free's early steps on Poisson 5d differ
    several-fold between the two (network ``mlp_torch`` in the registry).  ``apply(params, x)`` maps one point ``x`` of shape ``(widths[0],)`` to a scalar;
    vmap it for batches.  ``apply.tanh_mlp_widths`` records ``widths``: residuals of such a
    network take the structured path of :mod:`pinn_ng.channels` instead of folx.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise ValueError(f"widths must be >= 2 positive layer sizes, got {widths}")
    if widths[-1] != 1:
        raise ValueError(f"the PINN output must be scalar (last width 1), got {widths}")
    if init not in INITS:
        raise ValueError(f"unknown initialisation {init!r}; valid: {list(INITS)}")
    scheme = init
    dtype_ = resolve_dtype(dtype)
    d_in = widths[0]

    def init(key):
        params = []
        keys = jax.random.split(key, len(widths) - 1)
        for k, (fan_in, fan_out) in zip(keys, zip(widths[:-1], widths[1:])):
            if scheme == "torch":
                bound = 1.0 / jnp.sqrt(fan_in)
                k_w, k_b = jax.random.split(k)
                w = jax.random.uniform(k_w, (fan_in, fan_out), dtype_, -bound, bound)
                b = jax.random.uniform(k_b, (fan_out,), dtype_, -bound, bound)
            else:
                std = jnp.sqrt(2.0 / (fan_in + fan_out))
                w = std * jax.random.normal(k, (fan_in, fan_out), dtype=dtype_)
                b = jnp.zeros((fan_out,), dtype=dtype_)
            params.append((w, b))
        return params

    def apply(params, x):
        if x.shape != (d_in,):
            raise ValueError(
                f"apply expects one point of shape ({d_in},), got {x.shape}; vmap for batches"
            )
        h = x
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = params[-1]
        return (h @ w + b)[0]

    # marks the network for the structured forward-Laplacian path (pinn_ng.channels)
    apply.tanh_mlp_widths = widths
    return MLP(init, apply)


#: The networks by name: ``mlp``, then whatever plugins add (:func:`register`).
REGISTRY = Registry("network")


def register(name: str, **meta) -> Callable:
    """Decorator: register a network factory ``(widths, dtype) -> (init, apply)`` under
    ``name``: ``init(key) -> params`` (any pytree) and ``apply(params, x) -> scalar`` at one
    point ``x`` of shape ``(widths[0],)``.  Such a network trains with every optimizer through
    the folx path; the structured path and KFAC need :func:`mlp`.  A taken name raises
    ``ValueError``."""
    return REGISTRY.register(name, **meta)


register("mlp")(mlp)


@register("mlp_torch")
def mlp_torch(widths: Sequence[int], dtype=None) -> MLP:
    """:func:`mlp` initialised as the authors' reference code (PyTorch's default)."""
    return mlp(widths, dtype, init="torch")


def names() -> list[str]:
    """Names accepted by :func:`make`."""
    return REGISTRY.names()


def make(name: str, widths: Sequence[int], dtype=None) -> MLP:
    """Network ``name`` with layer sizes ``widths``: an ``(init, apply)`` pair.

    An unknown name raises ``KeyError`` listing the valid ones; a factory that returns anything
    but two callables raises ``TypeError`` naming where it was registered.
    """
    entry = REGISTRY.entry(name)
    net = entry.factory(widths, dtype)
    try:
        init, apply = net
    except (TypeError, ValueError):
        init = apply = None
    if not (callable(init) and callable(apply)):
        raise TypeError(f"network {name!r}: the factory registered by {entry.origin} returned "
                        f"{type(net).__name__}, not a pair (init, apply) of functions")
    return MLP(init, apply)
