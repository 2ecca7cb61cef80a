"""The sample-space kernel K = JJᵀ (N x N), formed without the P x P Gramian.

``kernel="dense"`` (default)
    J (N x P) is held in memory; K's lower block triangle is computed from row blocks of J
    (K is symmetric, so the upper blocks are mirrored, not recomputed: about half the flops of
    ``J @ J.T``, the dominant cost of an ENGD-W step).  Memory: N·P for J plus N² for K.
    The products run on XLA's dot or on the BLAS that SciPy links, whichever the machine runs
    faster (:mod:`pinn_ng.blas`; ``PINN_NG_BLAS=xla|blas|auto``).
``kernel="blocked"``
    memory-lean: J is never held whole.  Row blocks of J (``block_size`` points, from the
    residual operator's :meth:`~pinn_ng.residuals.ResidualFn.row_blocks`) are recomputed per
    block of K (the Jacobian work grows to about (b + 3)/2 times one J for b blocks); products
    Jᵀu and Jv are matrix-free (one backward / forward pass of the batch).
    Memory: 2·block_size·P + N².
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..gram import default_n_blocks, kernel_lower_from_jacobian
from ..residuals import RowBlocks

KERNELS = ("dense", "blocked")

__all__ = ["KERNELS", "default_n_blocks", "kernel_from_row_blocks", "kernel_lower_from_jacobian"]


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
