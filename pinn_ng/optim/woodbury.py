"""ENGD-W and SPRING: the natural-gradient step computed in sample space.

Push-through identity (PAPER.md): (JᵀJ + λI)⁻¹Jᵀ = Jᵀ(JJᵀ + λI)⁻¹, so the ENGD direction is
φ = Jᵀ(K + λI)⁻¹ r with the N x N kernel K = JJᵀ: O(N²P) for K plus O(N³) for its
factorisation, instead of O(P³).  SPRING (paper's Algorithm 1) adds momentum; with μ = 0 it is
exactly ENGD-W.  Step k = 1, 2, …:

    ζ_k = r_k − μ J_k φ_{k−1}
    φ_k = J_kᵀ (K_k + λI)⁻¹ ζ_k + μ φ_{k−1}
    direction = φ_k / √(1 − μ^{2k})          (bias correction; φ_k is stored uncorrected)
    θ ← θ − η_k · direction

with η_k = min(η, √C / ‖direction‖) for a fixed η and norm constraint C (so the step never
exceeds norm √C; C = 1e-3 in the reference code, ``norm_constraint=None`` disables the cap),
or η_k from the grid line search.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .common import (Diagnostics, check_damping, check_learning_rate, empty_diagnostics,
                     safe_direction, step_size)
from .curvature import KERNELS, as_curvature, kernel_blocked, kernel_lower_from_jacobian
from .solvers import (SOLVERS, cholesky_solve, nystrom_gpu, nystrom_standard, pcg,
                      symmetrize_lower)


class SampleSpaceState(NamedTuple):
    phi: jax.Array  # φ_{k−1}, uncorrected, flat (P,)
    count: jax.Array  # k − 1
    key: jax.Array  # PRNG key for the Nyström sketches, advanced every step
    diagnostics: Diagnostics


def _check_sketch_size(sketch_size, solver):
    if solver == "cholesky":
        return None
    if sketch_size is None:
        raise ValueError(f"solver {solver!r} needs sketch_size (ℓ, an int, or a fraction of N)")
    if isinstance(sketch_size, bool):
        raise ValueError(f"sketch_size must be an int >= 1 or a fraction in (0, 1], got {sketch_size!r}")
    if isinstance(sketch_size, int):
        if sketch_size <= 0:
            raise ValueError(f"sketch_size must be >= 1, got {sketch_size}")
        return sketch_size
    if isinstance(sketch_size, float) and 0.0 < sketch_size <= 1.0:
        return sketch_size
    raise ValueError(f"sketch_size must be an int >= 1 or a fraction in (0, 1], got {sketch_size!r}")


def _resolve_sketch(sketch_size, n: int) -> int:
    ell = math.ceil(sketch_size * n) if isinstance(sketch_size, float) else sketch_size
    if ell > n:
        raise ValueError(f"sketch_size ℓ = {ell} exceeds the batch size N = {n}")
    return ell


def sample_space(
    residual_fn,
    damping,
    momentum: float = 0.0,
    learning_rate="line_search",
    norm_constraint: float | None = None,
    solver: str = "cholesky",
    sketch_size=None,
    seed: int = 0,
    pcg_iters: int = 5,
    nystrom_shift: float | None = None,
    kernel: str = "dense",
    block_size: int = 512,
    track_effective_dimension: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The common implementation behind :func:`engd_woodbury` and :func:`spring`."""
    curv = as_curvature(residual_fn)
    damping = check_damping(damping)
    if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
        raise ValueError(f"momentum (μ) must be in [0, 1), got {momentum!r}")
    momentum = float(momentum)
    learning_rate = check_learning_rate(learning_rate)
    if norm_constraint is not None and not (float(norm_constraint) > 0.0):
        raise ValueError(f"norm_constraint (C) must be > 0 or None, got {norm_constraint!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {list(SOLVERS)}")
    sketch_size = _check_sketch_size(sketch_size, solver)
    if solver != "cholesky" and damping == 0.0:
        raise ValueError(f"solver {solver!r} needs damping (λ) > 0: its solve divides by λ")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel mode {kernel!r}; valid: {list(KERNELS)}")
    if kernel == "blocked" and not curv.fast:
        raise ValueError("kernel='blocked' needs the fast residual function "
                         "problem.residual_fn(apply), not a plain callable")
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not (isinstance(pcg_iters, int) and pcg_iters > 0):
        raise ValueError(f"pcg_iters must be a positive int, got {pcg_iters!r}")

    def init(params):
        flat, _ = ravel_pytree(params)
        return SampleSpaceState(
            phi=jnp.zeros_like(flat),
            count=jnp.zeros((), jnp.int32),
            key=jax.random.PRNGKey(seed),
            diagnostics=empty_diagnostics(flat.dtype, track_effective_dimension, solver),
        )

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del updates, extra_args  # the step is built from r and J, not from the gradient
        if params is None or batch is None:
            raise ValueError("this optimizer needs update(grads, state, params, batch=batch)")
        flat, unravel = ravel_pytree(params)
        dtype = flat.dtype
        count = state.count + 1
        key, sketch_key = jax.random.split(state.key)

        if kernel == "dense":
            r, jac = curv.residual_and_jacobian(params, batch)

            def jv(v):
                return jac @ v

            def jtu(u):
                return jac.T @ u

            def kmatmul(v):
                return jac @ (jac.T @ v)

            def k_lower():
                return kernel_lower_from_jacobian(jac, mirror=False)
        else:
            r = curv.residual(params, batch)
            k_blk = kernel_blocked(curv.source, params, batch, block_size)

            def jv(v):
                return curv.jvp(params, batch, v)

            def jtu(u):
                return curv.vjp(params, batch, u)

            def kmatmul(v):
                return symmetrize_lower(k_blk) @ v

            def k_lower():
                return k_blk

        n = r.shape[0]
        loss0 = 0.5 * jnp.dot(r, r)
        zeta = r - momentum * jv(state.phi) if momentum > 0.0 else r
        d_eff = None
        if solver == "cholesky":
            sol = cholesky_solve(k_lower(), damping, zeta, track_effective_dimension)
            u, d_eff = sol.u, sol.effective_dimension
            events = {"jitter": sol.jitter, "cholesky_fallback": sol.fallback}
        elif solver == "nystrom_gpu":
            ny = nystrom_gpu(kmatmul, n, _resolve_sketch(sketch_size, n), sketch_key, dtype,
                             damping, nystrom_shift)
            u = ny.solve(zeta)
            events = {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}
            d_eff = ny.effective_dimension() if track_effective_dimension else None
        else:
            ny = nystrom_standard(kmatmul, n, _resolve_sketch(sketch_size, n), sketch_key, dtype)
            events = {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}
            if solver == "nystrom":
                u = ny.solve(zeta, damping)
            else:
                u = pcg(lambda v: kmatmul(v[:, None])[:, 0], zeta, damping, ny, pcg_iters)
            d_eff = ny.effective_dimension(damping) if track_effective_dimension else None

        phi = jtu(u) + momentum * state.phi if momentum > 0.0 else jtu(u)
        if momentum > 0.0:
            correction = 1.0 / jnp.sqrt(1.0 - momentum ** (2 * count.astype(dtype)))
            direction = phi * correction
        else:
            direction = phi
        direction, nonfinite = safe_direction(direction)
        phi = jnp.where(nonfinite > 0, state.phi, phi)
        phi_norm = jnp.linalg.norm(direction)

        eta = step_size(learning_rate, curv.residual, unravel, batch, flat, direction, loss0)
        if learning_rate != "line_search" and norm_constraint is not None:
            cap = math.sqrt(norm_constraint) / jnp.maximum(phi_norm, jnp.finfo(dtype).tiny)
            eta = jnp.minimum(eta, cap)

        diag = Diagnostics(loss0, eta, phi_norm, d_eff, nonfinite=nonfinite, **events)
        new_state = SampleSpaceState(phi=phi, count=count, key=key, diagnostics=diag)
        return unravel(-eta * direction), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def engd_woodbury(residual_fn, damping, learning_rate="line_search", solver: str = "cholesky",
                  sketch_size=None, seed: int = 0, **options):
    """ENGD-W: φ = Jᵀ(K + λI)⁻¹ r, the ENGD direction computed in sample space.

    Args:
      residual_fn: ``problem.residual_fn(apply)`` (fast, per-point J) or any callable
        ``(params, batch) -> r`` (J by ``jax.jacrev``: small problems only).
      damping: λ in the paper (5d best: 3.17e-12 with line search, 6.80e-8 with η = 5.23e-2).
      learning_rate: a float η, or ``"line_search"`` (grid 2⁻³⁰…2⁰ on the current batch).
      solver: ``"cholesky"`` (exact), ``"nystrom"`` (standard randomized Nyström),
        ``"nystrom_gpu"`` (paper's Alg. 2), ``"nystrom_pcg"`` (Nyström-preconditioned CG,
        ``pcg_iters`` iterations, 5 in the reference code).
      sketch_size: ℓ for the Nyström solvers: an int, or a fraction of N (paper: 0.1).
      seed: seed of the sketches; the key in the state advances every step.
      **options: ``kernel`` ("dense" | "blocked"), ``block_size``, ``pcg_iters``,
        ``nystrom_shift``, ``track_effective_dimension``.
    """
    return sample_space(residual_fn, damping, momentum=0.0, learning_rate=learning_rate,
                        norm_constraint=None, solver=solver, sketch_size=sketch_size, seed=seed,
                        **options)


def spring(residual_fn, damping, momentum, learning_rate="line_search",
           norm_constraint: float | None = 1e-3, solver: str = "cholesky", sketch_size=None,
           seed: int = 0, **options):
    """SPRING for PINNs (paper's Algorithm 1): ENGD-W with momentum μ and bias correction.

    Args as :func:`engd_woodbury`, plus ``momentum`` (μ in [0, 1); 5d best with line search
    0.3115, with η = 6.35e-2: 0.827) and ``norm_constraint`` (C: with a fixed η the step is
    min(η, √C/‖direction‖)·direction; 1e-3 as in the reference code; None disables; ignored
    with the line search).  μ = 0 and ``norm_constraint=None`` give ENGD-W exactly.
    """
    return sample_space(residual_fn, damping, momentum=momentum, learning_rate=learning_rate,
                        norm_constraint=norm_constraint, solver=solver, sketch_size=sketch_size,
                        seed=seed, **options)


__all__ = ["engd_woodbury", "spring", "SampleSpaceState"]
