"""The sample-space kernel K = JJᵀ (N x N), formed without the P x P Gramian.

``kernel="dense"`` (default)
    J (N x P) is held in memory; K's lower block triangle is computed from row blocks of J
    (K is symmetric, so the upper blocks are mirrored, not recomputed: about half the flops of
    ``J @ J.T``, the dominant cost of an ENGD-W step).  Memory: N·P for J plus N² for K.
``kernel="blocked"``
    memory-lean: J is never held whole.  Row blocks of J (``block_size`` points, from the
    residual operator's :meth:`~pinn_ng.residuals.ResidualFn.row_blocks`) are recomputed per
    block of K (the Jacobian work grows to about (b + 3)/2 times one J for b blocks); products
    Jᵀu and Jv are matrix-free (one backward / forward pass of the batch).
    Memory: 2·block_size·P + N².
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..residuals import RowBlocks

KERNELS = ("dense", "blocked")


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


def kernel_from_row_blocks(blocks: RowBlocks, dtype):
    """K = J Jᵀ (lower triangle valid, upper zero) without holding J: memory-lean path.

    A scan over row blocks a computes J_a, an inner loop over c ≤ a recomputes J_c: XLA cannot
    keep the blocks alive across loop iterations, so peak memory stays at two row blocks of J
    plus K.
    """
    m = blocks.block_size

    def outer(k, a):
        j_a = blocks.rows(a)

        def inner(c, k):
            return jax.lax.dynamic_update_slice(k, j_a @ blocks.rows(c).T, (a * m, c * m))

        return jax.lax.fori_loop(0, a + 1, inner, k), None

    n_pad = blocks.n_blocks * m
    k, _ = jax.lax.scan(outer, jnp.zeros((n_pad, n_pad), dtype), jnp.arange(blocks.n_blocks))
    return k[: blocks.n, : blocks.n]


def kernel_blocked(residual_fn, params, batch, block_size: int):
    """K's lower triangle from ``residual_fn.row_blocks(params, batch, block_size)``."""
    return kernel_from_row_blocks(residual_fn.row_blocks(params, batch, block_size),
                                  batch.interior.dtype)
