"""The fused ENGD / ENGD-W / SPRING updates as they were before the optax blocks (issue 9).

Kept verbatim in structure (one function computes the direction, the step size and the cap) so
that tests/test_compose.py can show the chained blocks give the same steps to 1e-12.  Only the
solver and kernel helpers are shared with the library.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from pinn_ng.optim.kernels import kernel_lower_from_jacobian
from pinn_ng.optim.solvers import cholesky_solve, nystrom_gpu, nystrom_standard
from pinn_ng.optim.step_size import grid_line_search
from pinn_ng.residuals import as_operator


class FusedState(NamedTuple):
    phi: jax.Array
    count: jax.Array
    key: jax.Array
    step_size: jax.Array


def _step_size(learning_rate, op, unravel, batch, flat, direction, loss0):
    if learning_rate != "line_search":
        return jnp.asarray(learning_rate, flat.dtype)

    def loss_of_flat(w):
        res = op(unravel(w), batch)
        return 0.5 * jnp.dot(res, res)

    return grid_line_search(loss_of_flat, flat, direction, loss0)[0]


def fused_sample_space(residual_fn, damping, momentum=0.0, learning_rate="line_search",
                       norm_constraint=None, solver="cholesky", sketch_size=None, seed=0):
    op = as_operator(residual_fn)

    def init(params):
        flat, _ = ravel_pytree(params)
        return FusedState(jnp.zeros_like(flat), jnp.zeros((), jnp.int32),
                          jax.random.PRNGKey(seed), jnp.zeros((), flat.dtype))

    def update(updates, state, params=None, *, batch=None):
        flat, unravel = ravel_pytree(params)
        dtype = flat.dtype
        count = state.count + 1
        key, sketch_key = jax.random.split(state.key)
        r, jac = op.residual_and_jacobian(params, batch)
        n = r.shape[0]
        loss0 = 0.5 * jnp.dot(r, r)
        zeta = r - momentum * (jac @ state.phi) if momentum > 0.0 else r
        if solver == "cholesky":
            u = cholesky_solve(kernel_lower_from_jacobian(jac, mirror=False), damping, zeta).u
        elif solver == "nystrom_gpu":
            ell = math.ceil(sketch_size * n) if isinstance(sketch_size, float) else sketch_size
            u = nystrom_gpu(lambda v: jac @ (jac.T @ v), n, ell, sketch_key, dtype,
                            damping).solve(zeta)
        else:
            ell = math.ceil(sketch_size * n) if isinstance(sketch_size, float) else sketch_size
            u = nystrom_standard(lambda v: jac @ (jac.T @ v), n, ell, sketch_key,
                                 dtype).solve(zeta, damping)
        phi = jac.T @ u + momentum * state.phi if momentum > 0.0 else jac.T @ u
        if momentum > 0.0:
            direction = phi / jnp.sqrt(1.0 - momentum ** (2 * count.astype(dtype)))
        else:
            direction = phi
        eta = _step_size(learning_rate, op, unravel, batch, flat, direction, loss0)
        if learning_rate != "line_search" and norm_constraint is not None:
            cap = math.sqrt(norm_constraint) / jnp.maximum(jnp.linalg.norm(direction),
                                                           jnp.finfo(dtype).tiny)
            eta = jnp.minimum(eta, cap)
        return unravel(-eta * direction), FusedState(phi, count, key, eta)

    return optax.GradientTransformationExtraArgs(init, update)


def fused_engd(residual_fn, damping, learning_rate="line_search"):
    op = as_operator(residual_fn)

    def init(params):
        flat, _ = ravel_pytree(params)
        return FusedState(jnp.zeros_like(flat), jnp.zeros((), jnp.int32),
                          jax.random.PRNGKey(0), jnp.zeros((), flat.dtype))

    def update(updates, state, params=None, *, batch=None):
        flat, unravel = ravel_pytree(params)
        r, jac = op.residual_and_jacobian(params, batch)
        loss0 = 0.5 * jnp.dot(r, r)
        direction = cholesky_solve(jac.T @ jac, damping, jac.T @ r).u
        eta = _step_size(learning_rate, op, unravel, batch, flat, direction, loss0)
        return unravel(-eta * direction), state._replace(count=state.count + 1, step_size=eta)

    return optax.GradientTransformationExtraArgs(init, update)
