"""Products of J with itself: the sample-space kernel K = JJᵀ from row blocks of a dense J.

K is symmetric, so only its lower block triangle is computed (about half the flops of
``J @ J.T``, the dominant cost of an ENGD-W step).  Shared by the residual operators
(:mod:`pinn_ng.residuals`, which mix these blocks with kernel blocks from the channels) and the
optimizers (:mod:`pinn_ng.optim.kernels`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def _bounds(n: int, n_blocks: int):
    edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def default_n_blocks(n: int) -> int:
    """Row blocks for the symmetric kernel product: blocks of about 512 rows, at most 8."""
    return int(min(8, max(1, math.ceil(n / 512))))


def kernel_lower_from_jacobian(jac, n_blocks: int | None = None, mirror: bool = True,
                               below=None, backend: str | None = None):
    """K = J Jᵀ from the lower block triangle of row-block products.

    ``jac`` is J (N, P), or a sequence of its column blocks (each (N, P_l), e.g. one per
    layer), whose products are summed: J need not be assembled.  With ``mirror=False`` the
    strictly-upper blocks are left at zero: enough for a Cholesky factorisation that reads only
    the lower triangle, and saves the O(N²) copy.

    ``below=(B, C)`` (``mirror=False`` only) appends rows under K: the result is the lower
    triangle of [[K, Bᵀ], [B, C]] (B (M, N), C (M, M) with its lower triangle valid), upper
    blocks zero, assembled in one pass rather than K first and then a copy of it into the
    bigger matrix (one N² copy less).

    ``backend`` (``"xla"``, ``"blas"``, ``"auto"``; default ``$PINN_NG_BLAS``, else auto): who
    computes the products, see :mod:`pinn_ng.blas`.  The BLAS computes K's whole lower
    triangle in one ``?syrk`` per column block (``n_blocks`` is then unused).
    """
    from . import blas

    parts = [jac] if hasattr(jac, "shape") else list(jac)
    n, dtype = parts[0].shape[0], parts[0].dtype
    if below is not None and mirror:
        raise ValueError("below= needs mirror=False (only the lower triangle is assembled)")
    if dtype in (jnp.float32, jnp.float64) and blas.kernel_backend(backend, parts) == "blas":
        k = blas.kernel_lower(parts, backend="blas")
        if mirror:
            return k + jnp.tril(k, -1).T
        if below is None:
            return k
        return jnp.block([[k, jnp.zeros((n, below[1].shape[0]), dtype)], list(below)])
    bounds = _bounds(n, n_blocks or default_n_blocks(n))
    blocks = {}
    for a, (a0, a1) in enumerate(bounds):
        for c, (c0, c1) in enumerate(bounds[: a + 1]):
            blocks[a, c] = sum(j[a0:a1] @ j[c0:c1].T for j in parts)
    rows = []
    for a, (a0, a1) in enumerate(bounds):
        row = []
        for c, (c0, c1) in enumerate(bounds):
            if c <= a:
                row.append(blocks[a, c])
            elif mirror:
                row.append(blocks[c, a].T)
            else:
                row.append(jnp.zeros((a1 - a0, c1 - c0), dtype))
        if below is not None:
            row.append(jnp.zeros((a1 - a0, below[1].shape[0]), dtype))
        rows.append(row)
    if below is not None:
        rows.append(list(below))
    return jnp.block(rows)
