"""tanh multilayer perceptrons, the networks of every experiment in the paper."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from .precision import resolve_dtype


class MLP(NamedTuple):
    """``init(key) -> params`` and ``apply(params, x) -> scalar``; unpacks as ``init, apply``."""

    init: Callable
    apply: Callable


def n_params(widths: Sequence[int]) -> int:
    """Number of weights and biases of a dense net with layer sizes ``widths``."""
    widths = tuple(widths)
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def mlp(widths: Sequence[int], dtype=None) -> MLP:
    """A tanh MLP with layer sizes ``widths`` (input dim first, output 1 last).

    Hidden layers use tanh, the output layer is linear, as in the paper.  ``params`` is a list
    of ``(W, b)`` pairs with ``W`` of shape ``(fan_in, fan_out)``; weights are drawn with
    the Glorot/Xavier-normal scheme (PyTorch's ``nn.Linear`` default in the reference code is
    uniform; any sensible scheme carries over since every optimizer sees the same start), biases
    at zero.  ``apply(params, x)`` maps one point ``x`` of shape ``(widths[0],)`` to a scalar;
    vmap it for batches.  ``apply.tanh_mlp_widths`` records ``widths``: residuals of such a
    network take the structured path of :mod:`pinn_ng.channels` instead of folx.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise ValueError(f"widths must be >= 2 positive layer sizes, got {widths}")
    if widths[-1] != 1:
        raise ValueError(f"the PINN output must be scalar (last width 1), got {widths}")
    dtype_ = resolve_dtype(dtype)
    d_in = widths[0]

    def init(key):
        params = []
        keys = jax.random.split(key, len(widths) - 1)
        for k, (fan_in, fan_out) in zip(keys, zip(widths[:-1], widths[1:])):
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
