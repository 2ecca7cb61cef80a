"""Hessian-free optimisation (Martens 2010) on the Gauss–Newton system, the paper's baseline.

Each step solves (JᵀJ + λI) d = −∇L by truncated conjugate gradients with exact matrix-free
products (the residual is linearised once per step with ``jax.linearize``, so each CG
iteration is one linear J·v and one transposed Jᵀ·u pass, with no forward pass; the paper uses
100–350 iterations), then adapts the Levenberg–Marquardt damping λ from the reduction
ratio ρ = (L(θ + d) − L(θ)) / (q(d) − q(0)) of the quadratic model q(d) = ∇Lᵀd + ½‖Jd‖²:
λ ← 3/2·λ if ρ < 1/4, λ ← 2/3·λ if ρ > 3/4.  A step that does not lower the loss on the batch
is backtracked (α = 1, 1/2, …, 2⁻¹⁰, Armijo condition); if none lowers the loss, no step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..residuals import as_operator
from .common import Diagnostics, check_damping, empty_diagnostics, require_first, safe_direction
from .solvers import conjugate_gradient


_BACKTRACK_STEPS = 11


class HessianFreeState(NamedTuple):
    damping: jax.Array  # current (adaptive) λ
    count: jax.Array
    step_size: jax.Array  # α accepted by the backtracking at the last step (0: no step)
    diagnostics: Diagnostics


def hessian_free(residual_fn, damping: float = 0.1, cg_iters: int = 100, cg_tol: float = 1e-10,
                 min_damping: float = 1e-12) -> optax.GradientTransformationExtraArgs:
    """Args: ``damping`` initial λ (5d best: 0.1, adaptive), ``cg_iters`` CG iterations (5d best
    350), ``cg_tol`` relative CG tolerance, ``min_damping`` floor of the adaptive λ."""
    op = as_operator(residual_fn)
    damping = check_damping(damping)
    if callable(damping):
        raise ValueError("hessian_free adapts its damping itself: give the initial λ as a number")
    if not (isinstance(cg_iters, int) and cg_iters > 0):
        raise ValueError(f"cg_iters must be a positive int, got {cg_iters!r}")

    def init(params):
        flat, _ = ravel_pytree(params)
        return HessianFreeState(jnp.asarray(damping, flat.dtype), jnp.zeros((), jnp.int32),
                                jnp.zeros((), flat.dtype), empty_diagnostics(flat.dtype, solver=None))

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        require_first("hessian_free", updates, params, batch)
        flat, unravel = ravel_pytree(params)
        # one forward pass; every product below reuses its linearisation
        r, jv, jtu = op.linearize(params, batch)
        loss0 = 0.5 * jnp.dot(r, r)
        grad = jtu(r)
        lam = state.damping

        def ggn(v):
            return jtu(jv(v)) + lam * v

        d, _ = conjugate_gradient(ggn, -grad, maxiter=cg_iters, tol=cg_tol)
        d, nonfinite = safe_direction(d)
        jd = jv(d)
        g_d = jnp.dot(grad, d)
        model = g_d + 0.5 * jnp.dot(jd, jd)

        def loss_at(alpha):
            res = op(unravel(flat + alpha * d), batch)
            return 0.5 * jnp.dot(res, res)

        # backtracking on the CG step (Martens 2010, sec. 4.6): α ∈ {1, 1/2, …, 2⁻¹⁰}, the
        # largest with Armijo decrease; the candidate losses come from one batched pass.
        alphas = 2.0 ** -jnp.arange(_BACKTRACK_STEPS, dtype=flat.dtype)
        losses = jax.vmap(loss_at)(alphas)
        losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
        ok = losses < loss0 + 1e-2 * alphas * g_d
        first = jnp.argmax(ok)
        eta = jnp.where(ok[first], alphas[first], 0.0)
        # damping follows the reduction ratio of the full step
        rho = jnp.where(model < 0, (losses[0] - loss0) / model, -jnp.inf)
        lam_new = jnp.where(rho < 0.25, 1.5 * lam, jnp.where(rho > 0.75, lam * (2.0 / 3.0), lam))
        lam_new = jnp.maximum(lam_new, min_damping)
        diag = Diagnostics(loss0, jnp.linalg.norm(d), nonfinite=nonfinite)
        return unravel(eta * d), HessianFreeState(lam_new, state.count + 1, eta, diag)

    return optax.GradientTransformationExtraArgs(init, update)
