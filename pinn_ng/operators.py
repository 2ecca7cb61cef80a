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
time-dependent problem, whose input is ``(x_1..x_d, t)``).  ``weights`` gives instead a
diagonal second-order operator Σᵢ aᵢ ∂ᵢᵢf with one coefficient per coordinate (the wave
operator, anisotropic diffusion), by the same three methods.
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


def _weighted(f: Callable, weights: Sequence[float], method: str) -> Callable:
    """``x -> (f(x), ∇f(x), Σᵢ aᵢ ∂ᵢᵢf(x))`` for constant coefficients ``a = weights``.

    A Laplacian sums ∂ᵢᵢ with weight 1; in the coordinates yᵢ = xᵢ/√|aᵢ| it sums |aᵢ| ∂ᵢᵢ.
    So the positive and the negative coefficients are each one Laplacian of ``f`` along a
    scaled restriction, by ``method``, and ∇f comes from one reverse pass.
    """
    a = [float(w) for w in weights]

    def op(x):
        if len(a) != x.shape[0]:
            raise ValueError(f"weights has {len(a)} entries for a point of dimension "
                             f"{x.shape[0]}")
        value, grad = jax.value_and_grad(f)(x)
        total = jnp.zeros((), value.dtype)
        for sign in (1.0, -1.0):
            idx = [i for i, w in enumerate(a) if sign * w > 0]
            if not idx:
                continue
            ii = jnp.asarray(idx)
            root = jnp.sqrt(jnp.asarray([abs(a[i]) for i in idx], x.dtype))
            # moves from x (y = 0) rather than rebuilding x from y: x itself is exact
            g = lambda y, ii=ii, root=root: f(x.at[ii].add(root * y))  # noqa: E731
            lap = value_grad_laplacian(g, method=method)(jnp.zeros(len(idx), x.dtype))[2]
            total = total + sign * lap
        return value, grad, total

    return op


def value_grad_laplacian(
    f: Callable, dims: Sequence[int] | None = None, method: str = "folx",
    weights: Sequence[float] | None = None,
) -> Callable:
    """The function ``x -> (f(x), grad_S f(x), Laplacian_S f(x))`` over coordinates ``S = dims``.

    With ``weights`` (one per coordinate; ``dims`` must be None): ``x -> (f(x), ∇f(x),
    Σᵢ aᵢ ∂ᵢᵢf(x))``, the gradient over every coordinate.
    """
    _check_method(method)
    if weights is not None:
        if dims is not None:
            raise ValueError("give dims or weights, not both")
        return _weighted(f, weights, method)

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
