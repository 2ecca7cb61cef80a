"""Differential operators of a scalar function of one point, ``f: R^D -> R``.

Three ways to get the Laplacian, all exact (no finite differences):

``"folx"`` (default)
    Forward-mode Taylor propagation ("forward Laplacian", Li et al. 2023) through the
    ``folx`` package: one forward pass carries value, gradient and Laplacian together.
    It avoids storing the reverse-mode tape and the D x D Hessian.  ``bench/laplacian.py``
    measures it against the other two at d = 5 and d = 100; it is the fastest at both.
``"fwd_rev"``
    forward-over-reverse: D Hessian-vector products ``jvp(grad f)`` along the unit vectors,
    summed on the diagonal.
``"hessian"``
    ``trace(jax.hessian(f)(x))``: the dense reference, used by the tests.

``dims`` restricts derivatives to a subset of coordinates (the spatial ones of a
time-dependent problem, whose input is ``(x_1..x_d, t)``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from folx import forward_laplacian as _folx_forward_laplacian

METHODS = ("folx", "fwd_rev", "hessian")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown Laplacian method {method!r}; valid: {list(METHODS)}")


def _restrict(f: Callable, x, dims):
    """``g(y) = f(x with x[dims] = y)`` and ``y0 = x[dims]``."""
    if dims is None:
        return f, x
    idx = jnp.asarray(dims)

    def g(y):
        return f(x.at[idx].set(y))

    return g, x[idx]


def value_grad_laplacian(
    f: Callable, dims: Sequence[int] | None = None, method: str = "folx"
) -> Callable:
    """The function ``x -> (f(x), grad_S f(x), Laplacian_S f(x))`` over coordinates ``S = dims``."""
    _check_method(method)

    def op(x):
        g, y = _restrict(f, x, dims)
        if method == "folx":
            out = _folx_forward_laplacian(g)(y)
            return out.x, out.jacobian.dense_array, out.laplacian
        if method == "fwd_rev":
            value, grad_g = jax.value_and_grad(g)(y)
            basis = jnp.eye(y.shape[0], dtype=y.dtype)
            hvp_diag = jax.vmap(lambda e: jax.jvp(jax.grad(g), (y,), (e,))[1] @ e)(basis)
            return value, grad_g, jnp.sum(hvp_diag)
        value, grad_g = jax.value_and_grad(g)(y)
        return value, grad_g, jnp.trace(jax.hessian(g)(y))

    return op


def laplacian(f: Callable, dims: Sequence[int] | None = None, method: str = "folx") -> Callable:
    """The function ``x -> Delta f(x)`` (over ``dims`` if given)."""
    op = value_grad_laplacian(f, dims=dims, method=method)
    return lambda x: op(x)[2]


def partial_derivative(f: Callable, index: int) -> Callable:
    """The function ``x -> d f / d x_index`` by one forward-mode JVP (e.g. the time derivative)."""

    def op(x):
        e = jnp.zeros_like(x).at[index].set(1.0)
        return jax.jvp(f, (x,), (e,))[1]

    return op


def time_derivative(f: Callable, time_index: int = -1) -> Callable:
    """``x -> d f / d t`` for inputs laid out as ``(x_1..x_d, t)``."""
    return partial_derivative(f, time_index)
