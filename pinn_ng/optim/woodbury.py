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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..residuals import as_operator, has_row_blocks, sample_space
from .common import (Diagnostics, check_damping, check_scalar_or_schedule, empty_diagnostics,
                     is_static_zero, require_first, safe_direction, value_at)
from .kernels import KERNELS, kernel_from_row_blocks
from .solvers import (JITTER_POLICIES, SOLVERS, cholesky_solve, nystrom_gpu, nystrom_standard,
                      pcg, symmetrize_lower)
from .step_size import REFERENCE_NORM_CONSTRAINT, step_size_chain


class SampleSpaceState(NamedTuple):
    phi: jax.Array  # φ_{k−1}, uncorrected, flat (P,)
    count: jax.Array  # k − 1
    key: jax.Array  # PRNG key for the Nyström sketches, advanced every step
    diagnostics: Diagnostics
    jitter_rung: jax.Array  # rung of the last step's Cholesky jitter (warm start; else 0)


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


def _sample_space(name, residual_fn, damping, momentum, solver, sketch_size, seed, pcg_iters,
                  nystrom_shift, kernel, block_size, track_effective_dimension,
                  jitter_warm_start, jitter="ladder"):
    """The direction block behind :func:`scale_by_engd_woodbury` and :func:`scale_by_spring`.

    ``momentum`` may be a Python 0 (ENGD-W: no J·φ product), a number, an array or a schedule.
    """
    op = as_operator(residual_fn)
    damping = check_damping(damping)
    momentum = check_scalar_or_schedule("momentum (μ)", momentum, 0.0, 1.0)
    use_momentum = not is_static_zero(momentum)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {list(SOLVERS)}")
    sketch_size = _check_sketch_size(sketch_size, solver)
    if nystrom_shift is not None and solver != "nystrom_gpu":
        # the standard sketch sets its own shift ν = eps·‖Y‖_F: never ignore one silently
        raise ValueError(f"nystrom_shift applies to solver='nystrom_gpu' only, got {solver!r}")
    if solver != "cholesky" and is_static_zero(damping):
        raise ValueError(f"solver {solver!r} needs damping (λ) > 0: its solve divides by λ")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel mode {kernel!r}; valid: {list(KERNELS)}")
    if kernel == "blocked" and not has_row_blocks(op):
        raise ValueError("kernel='blocked' needs a residual operator with row_blocks, e.g. "
                         "pinn_ng.residuals.ResidualFn(problem, apply), not a plain callable")
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not (isinstance(pcg_iters, int) and pcg_iters > 0):
        raise ValueError(f"pcg_iters must be a positive int, got {pcg_iters!r}")
    if not isinstance(jitter_warm_start, bool):
        raise ValueError(f"jitter_warm_start must be True or False, got {jitter_warm_start!r}")
    if jitter_warm_start and solver != "cholesky":
        raise ValueError(f"jitter_warm_start applies to solver='cholesky' only, got {solver!r}")
    if jitter not in JITTER_POLICIES:
        raise ValueError(f"jitter must be one of {list(JITTER_POLICIES)}, got {jitter!r}")
    if jitter != "ladder" and solver != "cholesky":
        raise ValueError(f"jitter={jitter!r} applies to solver='cholesky' only, got {solver!r}")
    if jitter == "none" and jitter_warm_start:
        raise ValueError("jitter='none' never jitters: jitter_warm_start must be False")
    no_jitter = jitter == "none"

    def init(params):
        flat, _ = ravel_pytree(params)
        return SampleSpaceState(
            phi=jnp.zeros_like(flat),
            count=jnp.zeros((), jnp.int32),
            key=jax.random.PRNGKey(seed),
            diagnostics=empty_diagnostics(flat.dtype, track_effective_dimension, solver,
                                          solve_failed=no_jitter),
            jitter_rung=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        require_first(name, updates, params, batch)
        flat, unravel = ravel_pytree(params)
        dtype = flat.dtype
        lam = value_at(damping, state.count, dtype)
        count = state.count + 1
        key, sketch_key = jax.random.split(state.key)

        if kernel == "dense" and solver == "cholesky":
            ss = sample_space(op, params, batch)
            r, jv, jtu = ss.r, ss.jv, ss.jtu

            def k_lower():
                return ss.kernel

            kmatmul = None  # only the Nyström sketches multiply by K
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

        n = r.shape[0]
        if use_momentum:
            mu = value_at(momentum, state.count, dtype)
            zeta = r - mu * jv(state.phi)
        else:
            zeta = r
        d_eff = None
        rung = jnp.zeros((), jnp.int32)
        if solver == "cholesky":
            sol = cholesky_solve(k_lower(), lam, zeta, track_effective_dimension,
                                 start_rung=state.jitter_rung if jitter_warm_start else 0,
                                 jitter=jitter)
            u, d_eff = sol.u, sol.effective_dimension
            if jitter_warm_start:
                rung = sol.rung
            events = {"jitter": sol.jitter, "cholesky_fallback": sol.fallback}
            if no_jitter:
                events["solve_failed"] = sol.failed
        elif solver == "nystrom_gpu":
            ny = nystrom_gpu(kmatmul, n, _resolve_sketch(sketch_size, n), sketch_key, dtype,
                             lam, nystrom_shift)
            u = ny.solve(zeta)
            events = {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}
            d_eff = ny.effective_dimension() if track_effective_dimension else None
        else:
            ny = nystrom_standard(kmatmul, n, _resolve_sketch(sketch_size, n), sketch_key, dtype)
            events = {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}
            if solver == "nystrom":
                u = ny.solve(zeta, lam)
            else:
                u = pcg(lambda v: kmatmul(v[:, None])[:, 0], zeta, lam, ny, pcg_iters)
            d_eff = ny.effective_dimension(lam) if track_effective_dimension else None

        if use_momentum:
            phi = jtu(u) + mu * state.phi
            direction = phi / jnp.sqrt(1.0 - mu ** (2 * count.astype(dtype)))
        else:
            phi = direction = jtu(u)
        direction, nonfinite = safe_direction(direction)
        phi = jnp.where(nonfinite > 0, state.phi, phi)
        diag = Diagnostics(0.5 * jnp.dot(r, r), jnp.linalg.norm(direction), d_eff,
                           nonfinite=nonfinite, **events)
        new_state = SampleSpaceState(phi=phi, count=count, key=key, diagnostics=diag,
                                     jitter_rung=rung)
        return unravel(direction), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def scale_by_engd_woodbury(residual_fn, damping, solver: str = "cholesky", sketch_size=None,
                           seed: int = 0, pcg_iters: int = 5, nystrom_shift=None,
                           kernel: str = "dense", block_size: int = 512,
                           track_effective_dimension: bool = False,
                           jitter_warm_start: bool = False, jitter: str = "ladder"
                           ) -> optax.GradientTransformationExtraArgs:
    """The ENGD-W direction φ = Jᵀ(K + λI)⁻¹ r as a pytree (uphill, like a gradient).

    Must come first in a chain and be called with ``updates=None`` and ``batch=``: it builds
    φ from r and J.  ``damping`` (λ) may be a number, an array or a schedule.  Other
    arguments as :func:`engd_woodbury`.
    """
    return _sample_space("scale_by_engd_woodbury", residual_fn, damping, 0.0, solver,
                         sketch_size, seed, pcg_iters, nystrom_shift, kernel, block_size,
                         track_effective_dimension, jitter_warm_start, jitter)


def scale_by_spring(residual_fn, damping, momentum, solver: str = "cholesky", sketch_size=None,
                    seed: int = 0, pcg_iters: int = 5, nystrom_shift=None,
                    kernel: str = "dense", block_size: int = 512,
                    track_effective_dimension: bool = False, jitter_warm_start: bool = False,
                    jitter: str = "ladder") -> optax.GradientTransformationExtraArgs:
    """SPRING's bias-corrected direction φ_k / √(1 − μ^{2k}) as a pytree (Algorithm 1).

    φ_k (uncorrected) is kept in the state.  ``damping`` (λ) and ``momentum`` (μ ∈ [0, 1)) may
    be numbers, arrays or schedules; a Python μ = 0 is exactly :func:`scale_by_engd_woodbury`.
    Must come first in a chain (``updates=None``, ``batch=``).
    """
    return _sample_space("scale_by_spring", residual_fn, damping, momentum, solver, sketch_size,
                         seed, pcg_iters, nystrom_shift, kernel, block_size,
                         track_effective_dimension, jitter_warm_start, jitter)


def engd_woodbury(residual_fn, damping, learning_rate="line_search", solver: str = "cholesky",
                  sketch_size=None, seed: int = 0, pcg_iters: int = 5, nystrom_shift=None,
                  kernel: str = "dense", block_size: int = 512,
                  track_effective_dimension: bool = False,
                  jitter_warm_start: bool = False, jitter: str = "ladder"
                  ) -> optax.GradientTransformationExtraArgs:
    """ENGD-W: φ = Jᵀ(K + λI)⁻¹ r, the ENGD direction computed in sample space.

    ``chain(scale_by_engd_woodbury(...), step_size_chain(residual_fn, learning_rate))``.

    Args:
      residual_fn: ``ResidualFn(problem, apply)`` (fast, per-point J) or any callable
        ``(params, batch) -> r`` (J by ``jax.jacrev``: small problems only).
      damping: λ in the paper (5d best: 3.17e-12 with line search, 6.80e-8 with η = 5.23e-2);
        a number, an array or a schedule.
      learning_rate: η (a number or a schedule), or ``"line_search"`` (grid 2⁻³⁰…2⁰ on the
        current batch).
      solver: ``"cholesky"`` (exact), ``"nystrom"`` (standard randomized Nyström),
        ``"nystrom_gpu"`` (paper's Alg. 2), ``"nystrom_pcg"`` (Nyström-preconditioned CG,
        ``pcg_iters`` iterations, 5 in the reference code).
      sketch_size: ℓ for the Nyström solvers: an int, or a fraction of N (paper: 0.1).
      seed: seed of the sketches; the key in the state advances every step.
      pcg_iters: see ``solver``.
      nystrom_shift: ν of ``solver="nystrom_gpu"`` (see
        :func:`~pinn_ng.optim.solvers.nystrom_gpu`); any other solver raises if it is given.
      kernel: ``"dense"`` (J held, K from its lower blocks) or ``"blocked"`` (memory-lean: J
        recomputed in ``block_size``-row blocks; see :mod:`pinn_ng.optim.kernels`).
      track_effective_dimension: also report tr(K(K+λI)⁻¹) in the diagnostics.
      jitter_warm_start: (``solver="cholesky"``) start each step's jitter ladder at the rung
        the previous step needed (see :func:`~pinn_ng.optim.solvers.cholesky_solve`): where
        λ alone fails every step, as at the paper's 5d λ = 3.17e-12, this saves one failed
        O(N³/3) factorisation per step; the damping a step uses is then λ + δ of that rung
        even where a lower rung would have done.  Off by default.
      jitter: (``solver="cholesky"``) ``"ladder"`` (default: a failed factorisation of
        K + λI is retried with a growing jitter, then an eigh fallback) or ``"none"`` (the
        paper's reference code: λ alone; a failed factorisation ends the run as diverged, with
        its step, through the diagnostic ``solve_failed``).  For studies of the numerics.
    """
    return optax.chain(
        scale_by_engd_woodbury(residual_fn, damping, solver, sketch_size, seed, pcg_iters,
                               nystrom_shift, kernel, block_size, track_effective_dimension,
                               jitter_warm_start, jitter),
        step_size_chain(residual_fn, learning_rate))


def spring(residual_fn, damping, momentum, learning_rate="line_search",
           norm_constraint=REFERENCE_NORM_CONSTRAINT, solver: str = "cholesky", sketch_size=None,
           seed: int = 0, pcg_iters: int = 5, nystrom_shift=None, kernel: str = "dense",
           block_size: int = 512, track_effective_dimension: bool = False,
           jitter_warm_start: bool = False, jitter: str = "ladder"
           ) -> optax.GradientTransformationExtraArgs:
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
        scale_by_spring(residual_fn, damping, momentum, solver, sketch_size, seed, pcg_iters,
                        nystrom_shift, kernel, block_size, track_effective_dimension,
                        jitter_warm_start, jitter),
        step_size_chain(residual_fn, learning_rate, norm_constraint))


__all__ = ["SampleSpaceState", "engd_woodbury", "scale_by_engd_woodbury", "scale_by_spring",
           "spring"]
