"""Residual functions of a network and their Jacobians: what every optimizer consumes.

Each residual depends on one collocation point only, so the Jacobian J = ∂r/∂θ (N x P) is
computed *per point*: ``vmap`` over points of the parameter gradient of that point's residual.
That is one reverse pass of a tiny graph per row, batched by XLA, and O(N·P) memory.
``jax.jacrev`` of the batched residual would instead run N backward passes through the whole
batch (O(N²) work and memory) and is only used as a reference in the tests.

Columns of J follow ``jax.flatten_util.ravel_pytree(params)``; the matrix-free products take
and return flat vectors in that same order.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .problems import Batch, Problem


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


@jax.jit
def _leaves_finite(params):
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)])


def check_finite_params(params) -> None:
    """Raise ``ValueError`` if a (concrete) parameter leaf holds NaN or inf.  No-op under tracing.

    One fused reduction on the device and a transfer of one flag per leaf (no copy of the
    parameters).  Inside a trace (e.g. a loop body closing over concrete parameters) the flags
    are abstract and the check is skipped.
    """
    if _is_traced(params):
        return
    try:
        flags = np.asarray(_leaves_finite(params))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        # staged into an enclosing trace: the flags are abstract
        return
    bad = [int(i) for i in np.flatnonzero(~flags)]
    if bad:
        raise ValueError(f"parameters contain non-finite values (NaN/inf) in leaves {bad}")


def matrix_free_products(residual: Callable):
    """``(jvp, vjp)`` of any ``residual(params, batch) -> r`` on flat vectors (ravel order):
    ``jvp(params, batch, v) = J v`` (one forward-mode pass), ``vjp(params, batch, u) = Jᵀ u``
    (one reverse-mode pass of the whole batch)."""

    def jvp(params, batch, v):
        _, unravel = ravel_pytree(params)
        return jax.jvp(lambda p: residual(p, batch), (params,), (unravel(v),))[1]

    def vjp(params, batch, u):
        _, pullback = jax.vjp(lambda p: residual(p, batch), params)
        return ravel_pytree(pullback(u)[0])[0]

    return jvp, vjp


def flatten_rows(tree, n: int):
    """Stack a pytree of per-row gradients (leading axis n) into an (n, P) matrix, ravel order."""
    return jnp.concatenate([leaf.reshape(n, -1) for leaf in jax.tree_util.tree_leaves(tree)],
                           axis=1)


class ResidualFn:
    """``residual_fn(params, batch) -> r`` for the network ``apply`` on ``problem``.

    Also offers (all jit-compiled, closures over the problem and network, nothing static on
    ``self``):

    - ``jacobian(params, batch)`` -> J (N, P), per point;
    - ``residual_and_jacobian(params, batch)`` -> (r, J) sharing the forward passes;
    - ``jvp(params, batch, v)`` -> J v (N,), for a flat ``v`` (P,);
    - ``vjp(params, batch, u)`` -> Jᵀ u (P,), flat;
    - ``point_jacobian(params, points, kind, scale)``: rows of J for a block of interior or
      boundary points, for memory-lean kernels built block by block.

    Called eagerly, it checks the batch shape and that parameters are finite.
    """

    def __init__(self, problem: Problem, apply: Callable, method: str = "folx"):
        self.problem = problem
        self.apply = apply
        self.method = method

        def point_residual(kind):
            if kind == "interior":
                return lambda p, x: problem.interior_residual(lambda y: apply(p, y), x, method)
            if kind == "boundary":
                return lambda p, x: problem.boundary_residual(lambda y: apply(p, y), x)
            raise ValueError(f"kind must be 'interior' or 'boundary', got {kind!r}")

        self._point = {k: point_residual(k) for k in ("interior", "boundary")}

        def residual(params, batch):
            n_i, n_b = batch.interior.shape[0], batch.boundary.shape[0]
            r_i = jax.vmap(self._point["interior"], (None, 0))(params, batch.interior)
            r_b = jax.vmap(self._point["boundary"], (None, 0))(params, batch.boundary)
            return jnp.concatenate([r_i / math.sqrt(n_i), r_b / math.sqrt(n_b)])

        def rows(params, points, kind, scale):
            vg = jax.vmap(jax.value_and_grad(self._point[kind]), (None, 0))(params, points)
            r, g = vg
            return r * scale, flatten_rows(g, points.shape[0]) * scale

        def residual_and_jacobian(params, batch):
            n_i, n_b = batch.interior.shape[0], batch.boundary.shape[0]
            r_i, j_i = rows(params, batch.interior, "interior", 1.0 / math.sqrt(n_i))
            r_b, j_b = rows(params, batch.boundary, "boundary", 1.0 / math.sqrt(n_b))
            return jnp.concatenate([r_i, r_b]), jnp.concatenate([j_i, j_b], axis=0)

        jvp, vjp = matrix_free_products(residual)
        self._residual = jax.jit(residual)
        self._residual_and_jacobian = jax.jit(residual_and_jacobian)
        self._jvp = jax.jit(jvp)
        self._vjp = jax.jit(vjp)
        self._rows = jax.jit(rows, static_argnums=(2,))

    def _check(self, params, batch) -> None:
        self.problem.check_batch(batch)
        check_finite_params(params)

    def __call__(self, params, batch: Batch):
        self._check(params, batch)
        return self._residual(params, batch)

    def loss(self, params, batch: Batch):
        """½‖r‖²."""
        r = self(params, batch)
        return 0.5 * jnp.dot(r, r)

    def jacobian(self, params, batch: Batch):
        """J = ∂r/∂θ, shape (N, P), per point; columns in ``ravel_pytree`` order."""
        self._check(params, batch)
        return self._residual_and_jacobian(params, batch)[1]

    def residual_and_jacobian(self, params, batch: Batch):
        """(r, J) in one pass (the per-point forward passes are shared)."""
        self._check(params, batch)
        return self._residual_and_jacobian(params, batch)

    def jvp(self, params, batch: Batch, v):
        """J v for a flat tangent ``v`` of shape (P,)."""
        self._check(params, batch)
        return self._jvp(params, batch, v)

    def vjp(self, params, batch: Batch, u):
        """Jᵀ u (flat, shape (P,)) for ``u`` of shape (N,): one backward pass of the batch."""
        self._check(params, batch)
        return self._vjp(params, batch, u)

    def point_jacobian(self, params, points, kind: str, scale: float):
        """(r_rows, J_rows) for a block of ``kind`` points, each row multiplied by ``scale``."""
        if kind not in self._point:
            raise ValueError(f"kind must be 'interior' or 'boundary', got {kind!r}")
        return self._rows(params, points, kind, scale)

    def __repr__(self) -> str:
        return f"ResidualFn(problem={self.problem.name!r}, method={self.method!r})"
