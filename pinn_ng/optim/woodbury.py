"""ENGD-W and SPRING: the natural-gradient step computed in sample space.

The paper's push-through identity (JᵀJ + λI)⁻¹Jᵀ = Jᵀ(JJᵀ + λI)⁻¹ makes the ENGD direction
φ = Jᵀ(K + λI)⁻¹ r, with the N x N kernel K = JJᵀ: O(N²P) for K plus O(N³) for its
factorisation, instead of O(P³).  SPRING (paper's Algorithm 1) adds momentum; with μ = 0 it is
exactly ENGD-W.  Step k = 1, 2, …:

    ζ_k = r_k − μ J_k φ_{k−1}
    φ_k = J_kᵀ (K_k + λI)⁻¹ ζ_k + μ φ_{k−1}
    direction = φ_k / √(1 − μ^{2k})          (bias correction; φ_k is stored uncorrected)
    θ ← θ − η_k · direction

with η_k = min(η, √C / ‖direction‖) for a fixed η and norm constraint C (so the step never
exceeds norm √C; C = 1e-3 in the reference code, ``norm_constraint=None`` disables the cap),
or η_k from the grid line search.

Blocks: :func:`scale_by_engd_woodbury` and :func:`scale_by_spring` give the direction;
:mod:`~pinn_ng.optim.step_size` turns it into the step.  :func:`engd_woodbury` and
:func:`spring` chain them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..residuals import as_operator, has_row_blocks, sample_space
from .common import (Diagnostics, check_damping, check_scalar_or_schedule, empty_diagnostics,
                     is_static_zero, require_first, safe_direction, value_at)
from .kernels import KERNELS, kernel_from_row_blocks
from .solvers import Solver, as_solver, symmetrize_lower
from .step_size import REFERENCE_NORM_CONSTRAINT, step_size_chain


class SampleSpaceState(NamedTuple):
    phi: jax.Array  # φ_{k−1}, uncorrected, flat (P,)
    count: jax.Array  # k − 1
    key: jax.Array  # PRNG key for the Nyström sketches, advanced every step
    diagnostics: Diagnostics
    solver_state: object  # the solver's state (Cholesky: its warm-start rung; Nyström: None)

    @property
    def jitter_rung(self) -> jax.Array:
        """The rung of the last step's Cholesky jitter (0 without a warm start)."""
        return getattr(self.solver_state, "rung", jnp.zeros((), jnp.int32))


def _sample_space(name, residual_fn, damping, momentum, solver: Solver, seed, kernel,
                  block_size, track_effective_dimension):
    """The direction block behind :func:`scale_by_engd_woodbury` and :func:`scale_by_spring`.

    ``momentum`` may be a Python 0 (ENGD-W: no J·φ product), a number, an array or a schedule.
    """
    op = as_operator(residual_fn)
    damping = check_damping(damping)
    momentum = check_scalar_or_schedule("momentum (μ)", momentum, 0.0, 1.0)
    use_momentum = not is_static_zero(momentum)
    if solver.needs_damping and is_static_zero(damping):
        raise ValueError(f"solver {solver!r} needs damping (λ) > 0: its solve divides by λ")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel mode {kernel!r}; valid: {list(KERNELS)}")
    if kernel == "blocked" and not has_row_blocks(op):
        raise ValueError("kernel='blocked' needs a residual operator with row_blocks, e.g. "
                         "pinn_ng.residuals.ResidualFn(problem, apply), not a plain callable")
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")

    def init(params):
        flat, _ = ravel_pytree(params)
        return SampleSpaceState(
            phi=jnp.zeros_like(flat),
            count=jnp.zeros((), jnp.int32),
            key=jax.random.PRNGKey(seed),
            diagnostics=empty_diagnostics(flat.dtype, track_effective_dimension, solver),
            solver_state=solver.init(),
        )

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        flat, unravel = require_first(name, updates, params, batch)
        dtype = flat.dtype
        lam = value_at(damping, state.count, dtype)
        count = state.count + 1
        key, sketch_key = jax.random.split(state.key)

        if kernel == "dense" and solver.needs_matrix:
            ss = sample_space(op, params, batch)
            r, jv, jtu = ss.r, ss.jv, ss.jtu

            def k_lower():
                return ss.kernel

            kmatmul = None  # a solver that factorises K never multiplies by it
        elif kernel == "dense":
            r, jac = op.residual_and_jacobian(params, batch)

            def jv(v):
                return jac @ v

            def jtu(u):
                return jac.T @ u

            def kmatmul(v):
                return jac @ (jac.T @ v)

            k_lower = None
        else:
            r = op(params, batch)
            k_blk = kernel_from_row_blocks(op.row_blocks(params, batch, block_size), dtype)

            def jv(v):
                return op.jvp(params, batch, v)

            def jtu(u):
                return op.vjp(params, batch, u)

            def kmatmul(v):
                return symmetrize_lower(k_blk) @ v

            def k_lower():
                return k_blk

        if use_momentum:
            mu = value_at(momentum, state.count, dtype)
            zeta = r - mu * jv(state.phi)
        else:
            zeta = r
        sol = solver.solve(k_lower() if solver.needs_matrix else kmatmul, zeta, lam,
                           state.solver_state, sketch_key,
                           effective_dimension=track_effective_dimension)
        u = sol.u

        if use_momentum:
            phi = jtu(u) + mu * state.phi
            direction = phi / jnp.sqrt(1.0 - mu ** (2 * count.astype(dtype)))
        else:
            phi = direction = jtu(u)
        direction, nonfinite = safe_direction(direction)
        phi = jnp.where(nonfinite > 0, state.phi, phi)
        diag = Diagnostics(0.5 * jnp.dot(r, r), jnp.linalg.norm(direction),
                           sol.effective_dimension, nonfinite=nonfinite, **sol.events)
        new_state = SampleSpaceState(phi=phi, count=count, key=key, diagnostics=diag,
                                     solver_state=sol.state)
        return unravel(direction), new_state

    return optax.GradientTransformationExtraArgs(init, update)



def _solver(solver, sketch_size, nystrom_shift, jitter_warm_start, jitter, pcg_iters) -> Solver:
    return as_solver(solver, sketch_size=sketch_size, nystrom_shift=nystrom_shift,
                     jitter_warm_start=jitter_warm_start, jitter=jitter, pcg_iters=pcg_iters)


def scale_by_engd_woodbury(residual_fn, damping, *, solver="cholesky", sketch_size=None,
                           nystrom_shift=None, jitter_warm_start=None, jitter=None,
                           pcg_iters=None, seed: int = 0, kernel: str = "dense",
                           block_size: int = 512, track_effective_dimension: bool = False
                           ) -> optax.GradientTransformationExtraArgs:
    """The ENGD-W direction φ = Jᵀ(K + λI)⁻¹ r as a pytree (uphill, like a gradient).

    Must come first in a chain and be called with ``updates=None`` and ``batch=``: it builds
    φ from r and J.  ``damping`` (λ) may be a number, an array or a schedule.  Other
    arguments as :func:`engd_woodbury`.
    """
    return _sample_space(
        "scale_by_engd_woodbury", residual_fn, damping, 0.0,
        _solver(solver, sketch_size, nystrom_shift, jitter_warm_start, jitter, pcg_iters),
        seed, kernel, block_size, track_effective_dimension)


def scale_by_spring(residual_fn, damping, momentum, *, solver="cholesky", sketch_size=None,
                    nystrom_shift=None, jitter_warm_start=None, jitter=None, pcg_iters=None,
                    seed: int = 0, kernel: str = "dense", block_size: int = 512,
                    track_effective_dimension: bool = False
                    ) -> optax.GradientTransformationExtraArgs:
    """SPRING's bias-corrected direction φ_k / √(1 − μ^{2k}) as a pytree (Algorithm 1).

    φ_k (uncorrected) is kept in the state.  ``damping`` (λ) and ``momentum`` (μ ∈ [0, 1)) may
    be numbers, arrays or schedules; a Python μ = 0 is exactly :func:`scale_by_engd_woodbury`.
    Must come first in a chain (``updates=None``, ``batch=``).
    """
    return _sample_space(
        "scale_by_spring", residual_fn, damping, momentum,
        _solver(solver, sketch_size, nystrom_shift, jitter_warm_start, jitter, pcg_iters),
        seed, kernel, block_size, track_effective_dimension)


def engd_woodbury(residual_fn, damping, learning_rate="line_search", *, solver="cholesky",
                  sketch_size=None, nystrom_shift=None, jitter_warm_start=None, jitter=None,
                  pcg_iters=None, seed: int = 0, kernel: str = "dense", block_size: int = 512,
                  track_effective_dimension: bool = False
                  ) -> optax.GradientTransformationExtraArgs:
    """ENGD-W: φ = Jᵀ(K + λI)⁻¹ r, the ENGD direction computed in sample space.

    ``chain(scale_by_engd_woodbury(...), step_size_chain(residual_fn, learning_rate))``.
    Everything after ``learning_rate`` is keyword-only.

    Args:
      residual_fn: ``ResidualFn(problem, apply)`` (fast, per-point J) or any callable
        ``(params, batch) -> r`` (J by ``jax.jacrev``: small problems only).
      damping: λ in the paper (5d best: 3.17e-12 with line search, 6.80e-8 with η = 5.23e-2);
        a number, an array or a schedule.
      learning_rate: η (a number or a schedule), or ``"line_search"`` (grid 2⁻³⁰…2⁰ on the
        current batch).
      solver: a solver object of :mod:`pinn_ng.optim.solvers` (``Cholesky(...)``,
        ``Nystrom(ℓ)``, ``NystromGPU(ℓ, shift=...)``, ``NystromPCG(ℓ, iters=...)``), or the
        presets' name of one with flat options: ``"cholesky"`` (exact, the default),
        ``"nystrom"`` (standard randomized Nyström), ``"nystrom_gpu"`` (paper's Alg. 2),
        ``"nystrom_pcg"`` (Nyström-preconditioned CG).  A flat option that does not apply to
        the named solver raises, as does a flat option next to an object.
      sketch_size: (Nyström names) ℓ: an int, or a fraction of N (paper: 0.1).
      nystrom_shift: (``"nystrom_gpu"``) ν, see :class:`~pinn_ng.optim.solvers.NystromGPU`.
      jitter_warm_start: (``"cholesky"``) start each step's jitter ladder at the rung the
        previous step needed (see :class:`~pinn_ng.optim.solvers.Cholesky`).  Off by default.
      jitter: (``"cholesky"``) ``"ladder"`` (default) or ``"none"`` (the paper's reference
        code: λ alone; a failed factorisation ends the run as diverged, with its step, through
        the diagnostic ``solve_failed``).  For studies of the numerics.
      pcg_iters: (``"nystrom_pcg"``) CG iterations (5 by default, as the reference code).
      seed: seed of the sketches; the key in the state advances every step.
      kernel: ``"dense"`` (J held, K from its lower blocks) or ``"blocked"`` (memory-lean: J
        recomputed in ``block_size``-row blocks; see :mod:`pinn_ng.optim.kernels`).
      track_effective_dimension: also report tr(K(K+λI)⁻¹) in the diagnostics.
    """
    return optax.chain(
        scale_by_engd_woodbury(residual_fn, damping, solver=solver, sketch_size=sketch_size,
                               nystrom_shift=nystrom_shift, jitter_warm_start=jitter_warm_start,
                               jitter=jitter, pcg_iters=pcg_iters, seed=seed, kernel=kernel,
                               block_size=block_size,
                               track_effective_dimension=track_effective_dimension),
        step_size_chain(residual_fn, learning_rate))


def spring(residual_fn, damping, momentum, learning_rate="line_search", *,
           norm_constraint=REFERENCE_NORM_CONSTRAINT, solver="cholesky", sketch_size=None,
           nystrom_shift=None, jitter_warm_start=None, jitter=None, pcg_iters=None,
           seed: int = 0, kernel: str = "dense", block_size: int = 512,
           track_effective_dimension: bool = False) -> optax.GradientTransformationExtraArgs:
    """SPRING for PINNs (paper's Algorithm 1): ENGD-W with momentum μ and bias correction.

    ``chain(scale_by_spring(...), step_size_chain(residual_fn, learning_rate, C))``.

    Args as :func:`engd_woodbury`, plus ``momentum`` (μ in [0, 1), a number or a schedule; 5d
    best with line search 0.3115, with η = 6.35e-2: 0.827) and ``norm_constraint`` (C: with a
    fixed or scheduled η the step is min(η, √C/‖direction‖)·direction; None disables).  The
    default ``"reference"`` does what the paper's reference code does: C = 1e-3 with a fixed
    or scheduled η, no cap after the grid line search.  An explicit C (a number, an array, a
    schedule) with ``learning_rate="line_search"`` raises, 1e-3 included, so that a cap is
    never silently dropped (see :func:`~pinn_ng.optim.step_size.step_size_chain`).  Under
    :func:`~pinn_ng.optim.inject_hyperparams` the default stays static; pass C explicitly to
    make it state.  μ = 0 and ``norm_constraint=None`` give ENGD-W exactly.
    """
    return optax.chain(
        scale_by_spring(residual_fn, damping, momentum, solver=solver, sketch_size=sketch_size,
                        nystrom_shift=nystrom_shift, jitter_warm_start=jitter_warm_start,
                        jitter=jitter, pcg_iters=pcg_iters, seed=seed, kernel=kernel,
                        block_size=block_size,
                        track_effective_dimension=track_effective_dimension),
        step_size_chain(residual_fn, learning_rate, norm_constraint))


__all__ = ["SampleSpaceState", "engd_woodbury", "scale_by_engd_woodbury", "scale_by_spring",
           "spring"]
