"""Curvature access for the optimizers: residuals, J, matrix-free products, the kernel K = JJᵀ.

:func:`as_curvature` accepts either the fast residual function of the core
(:class:`pinn_ng.residuals.ResidualFn`: per-point Jacobian, O(N·P) memory) or any plain
callable ``residual_fn(params, batch) -> r``.  For a plain callable J falls back to
``jax.jacrev`` of the whole batched residual: correct, but N backward passes through the whole
batch, so only sensible for small problems.

The kernel ``K = JJᵀ`` (N x N) is formed without ever forming the P x P Gramian:

``kernel="dense"`` (default)
    J (N x P) is held in memory; K's lower block triangle is computed from row blocks of J
    (K is symmetric, so the upper blocks are mirrored, not recomputed: about half the flops of
    ``J @ J.T``, the dominant cost of an ENGD-W step).  Memory: N·P for J plus N² for K.
``kernel="blocked"``
    memory-lean: J is never held whole.  Row blocks of J (``block_size`` points) are
    recomputed per block of K (the Jacobian work grows to about (b + 3)/2 times one J for b
    blocks), products Jᵀu and Jv are matrix-free (one backward / forward pass of the batch).
    Memory: 2·block_size·P + N².  Only for the fast :class:`ResidualFn`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..residuals import ResidualFn, matrix_free_products

KERNELS = ("dense", "blocked")


class Curvature(NamedTuple):
    residual: Callable  # (params, batch) -> r (N,)
    residual_and_jacobian: Callable  # (params, batch) -> (r, J (N, P))
    jvp: Callable  # (params, batch, v (P,)) -> J v (N,)
    vjp: Callable  # (params, batch, u (N,)) -> Jᵀ u (P,)
    fast: bool  # True for a pinn_ng ResidualFn
    source: object  # the residual function given


def as_curvature(residual_fn) -> Curvature:
    if isinstance(residual_fn, ResidualFn):
        return Curvature(residual_fn, residual_fn.residual_and_jacobian, residual_fn.jvp,
                         residual_fn.vjp, True, residual_fn)
    if not callable(residual_fn):
        raise TypeError(f"residual_fn must be callable, got {type(residual_fn).__name__}")

    def residual_and_jacobian(params, batch):
        flat, unravel = ravel_pytree(params)
        r = residual_fn(params, batch)
        jac = jax.jacrev(lambda w: residual_fn(unravel(w), batch))(flat)
        return r, jac

    jvp, vjp = matrix_free_products(residual_fn)
    return Curvature(residual_fn, residual_and_jacobian, jvp, vjp, False, residual_fn)


def _bounds(n: int, n_blocks: int):
    edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def default_n_blocks(n: int) -> int:
    """Row blocks for the symmetric kernel product: blocks of about 512 rows, at most 8."""
    return int(min(8, max(1, math.ceil(n / 512))))


def kernel_lower_from_jacobian(jac, n_blocks: int | None = None, mirror: bool = True):
    """K = J Jᵀ from the lower block triangle of row-block products.

    With ``mirror=False`` the strictly-upper blocks are left at zero: enough for a Cholesky
    factorisation that reads only the lower triangle, and saves the O(N²) copy.
    """
    n = jac.shape[0]
    bounds = _bounds(n, n_blocks or default_n_blocks(n))
    blocks = {}
    for a, (a0, a1) in enumerate(bounds):
        for c, (c0, c1) in enumerate(bounds[: a + 1]):
            blocks[a, c] = jac[a0:a1] @ jac[c0:c1].T
    rows = []
    for a, (a0, a1) in enumerate(bounds):
        row = []
        for c, (c0, c1) in enumerate(bounds):
            if c <= a:
                row.append(blocks[a, c])
            elif mirror:
                row.append(blocks[c, a].T)
            else:
                row.append(jnp.zeros((a1 - a0, c1 - c0), jac.dtype))
        rows.append(row)
    return jnp.block(rows)


def kernel_blocked(residual_fn: ResidualFn, params, batch, block_size: int):
    """K = J Jᵀ (lower triangle valid, upper zero) without holding J: memory-lean path.

    Points of both kinds are stacked and padded to a multiple of ``block_size``; each point's
    row is the gradient of its own (interior or boundary) residual times its scale (0 for
    padding).  A scan over row blocks a computes J_a, an inner loop over c ≤ a recomputes J_c:
    XLA cannot keep the blocks alive across loop iterations, so peak memory stays at two row
    blocks of J plus K.
    """
    n_i, n_b = batch.interior.shape[0], batch.boundary.shape[0]
    n = n_i + n_b
    m = int(block_size)
    n_blk = math.ceil(n / m)
    n_pad = n_blk * m
    dtype = batch.interior.dtype
    pts = jnp.concatenate([batch.interior, batch.boundary])
    pts = jnp.concatenate([pts, jnp.broadcast_to(pts[:1], (n_pad - n, pts.shape[1]))])
    is_int = jnp.arange(n_pad) < n_i
    scale = jnp.where(is_int, 1.0 / math.sqrt(n_i), 1.0 / math.sqrt(n_b)).astype(dtype)
    scale = jnp.where(jnp.arange(n_pad) < n, scale, 0.0)
    pts_b = pts.reshape(n_blk, m, -1)
    int_b = is_int.reshape(n_blk, m)
    scale_b = scale.reshape(n_blk, m)

    def rows(a):
        x, flag, s = pts_b[a], int_b[a], scale_b[a]
        _, j_int = residual_fn.point_jacobian(params, x, "interior", 1.0)
        _, j_bnd = residual_fn.point_jacobian(params, x, "boundary", 1.0)
        return jnp.where(flag[:, None], j_int, j_bnd) * s[:, None]

    def outer(k, a):
        j_a = rows(a)

        def inner(c, k):
            blk = j_a @ rows(c).T
            return jax.lax.dynamic_update_slice(k, blk, (a * m, c * m))

        k = jax.lax.fori_loop(0, a + 1, inner, k)
        return k, None

    k0 = jnp.zeros((n_pad, n_pad), dtype)
    k, _ = jax.lax.scan(outer, k0, jnp.arange(n_blk))
    return k[:n, :n]
