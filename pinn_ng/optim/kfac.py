"""KFAC and KFAC* for PINNs (Dangel, Müller & Zeinhofer, NeurIPS 2024) as optax blocks.

**Curvature.**  The Gauss–Newton matrix of ½‖r‖² with the rows of r scaled by 1/√N_Ω and
1/√N_∂Ω is G = G_Ω + G_∂Ω = JᵀJ.  KFAC keeps its diagonal blocks, one per linear layer with
weight and bias joined (W̃ = [W; b], shape (fan_in + 1, fan_out)), and replaces each block
by a sum of two Kronecker products, one per loss term.  The factors come from the
forward-Laplacian channels of :mod:`pinn_ng.channels`: the channels z̃_{n,s} entering the
layer (bias entry 1 on the value channel, 0 elsewhere) and the gradients g_{n,s} of the
point's residual with respect to the layer's output channels.  Point n's row of the block
is exactly Σ_s z̃_{n,s} ⊗ g_{n,s} (flattened row-major, as ``ravel_pytree`` orders W̃), so
with g already carrying the row scale 1/√N:

- boundary (value channel only, S = 1): A_∂Ω = (1/N) Σ_n z̃z̃ᵀ, B_∂Ω = Σ_n ggᵀ;
- interior, **KFAC-expand** (the default, every published run): the s ≠ s′ cross terms
  dropped, A_Ω = (1/(N·S)) Σ_{n,s} z̃z̃ᵀ, B_Ω = Σ_{n,s} ggᵀ;
- interior, **KFAC-reduce**: channels averaged first, A_Ω = (1/N) Σ_n z̄z̄ᵀ with
  z̄ = mean_s z̃, B_Ω = Σ_n (Σ_s g)(Σ_s g)ᵀ.

With one point and one channel each product is that point's exact block (tested).  In the
row-major order of ``ravel_pytree`` the block is A ⊗ B (A over the rows of W̃, B over its
columns): (A ⊗ B) vec(X) = vec(A X B).

**Over time.**  Each factor is an exponential moving average F ← βF + (1 − β)F_new,
initialised at the identity, without bias correction, recomputed every step (the published
runs: β per problem, identity initialisation).

**Solve.**  Per layer C = (A_Ω + λI) ⊗ (B_Ω + λI) + (A_∂Ω + λI) ⊗ (B_∂Ω + λI), the same λ on
all four factors, inverted exactly as a sum of two Kronecker products
(:func:`kronecker_sum_solve`, O(h_in³ + h_out³)).  The direction block emits C⁻¹∇L, uphill
like a gradient.

**Update rules.**

- :func:`kfac`: momentum on the directions, m_t = μ m_{t−1} + C⁻¹∇L_t (``optax.trace``),
  then the grid line search of ENGD-W (2⁻³⁰…2⁰, no step when nothing lowers the loss);
- :func:`kfac_star` (Martens & Grosse 2015, §7): Δ = −C⁻¹∇L, update δ_t = αΔ + μδ_{t−1}
  with (α, μ) minimising the damped quadratic model of the exact Gauss–Newton matrix along
  Δ and δ_{t−1} (:func:`scale_by_kfac_star`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from .. import channels
from .common import (Diagnostics, check_damping, check_scalar_or_schedule, empty_diagnostics,
                     is_static_zero, require_first, safe_direction, value_at)
from .step_size import step_size_chain

#: interior factor approximations (``approximation=``)
APPROXIMATIONS = ("expand", "reduce")

#: β of the published KFAC runs' reference code when none is given (its default); the
#: presets carry the tuned β of each problem
DEFAULT_EMA_DECAY = 0.95

#: α of KFAC*'s first step, when there is no previous update (the reference code's value)
DEFAULT_INITIAL_STEP_SIZE = 1e-6


# ------------------------------------------------------------------------- the factors


def interior_factors(h, g, approximation: str = "expand"):
    """(A_Ω, B_Ω) of one layer from its interior channels ``h`` (N, S, fan_in + 1) and
    gradients ``g`` (N, S, fan_out), g scaled by 1/√N_Ω (see the module docstring)."""
    n, s, _ = h.shape
    if approximation == "expand":
        a = jnp.einsum("nsi,nsj->ij", h, h) / (n * s)
        b = jnp.einsum("nso,nsp->op", g, g)
    elif approximation == "reduce":
        z = jnp.mean(h, axis=1)
        e = jnp.sum(g, axis=1)
        a = z.T @ z / n
        b = e.T @ e
    else:
        raise ValueError(f"unknown KFAC approximation {approximation!r}; valid: "
                         f"{list(APPROXIMATIONS)}")
    return a, b


def boundary_factors(h, g):
    """(A_∂Ω, B_∂Ω) of one layer from the value channel of the boundary points: ``h``
    (N, 1, fan_in + 1), ``g`` (N, 1, fan_out) scaled by 1/√N_∂Ω."""
    z, e = h[:, 0, :], g[:, 0, :]
    return z.T @ z / z.shape[0], e.T @ e


def layer_gradient(lin: channels.Linearization, layer: int):
    """∇L of one layer as the (fan_in + 1, fan_out) matrix W̃: Σ_n r_n Σ_s z̃_{n,s} g_{n,s}ᵀ."""
    h, g = lin.inputs[layer], lin.grads[layer]
    return jnp.einsum("nsi,nso->io", h * lin.r[:, None, None], g)


def ema(old, new, decay):
    """F ← βF + (1 − β)F_new, factor by factor (no bias correction)."""
    return jax.tree.map(lambda f, x: decay * f + (1.0 - decay) * x, old, new)


# ---------------------------------------------------------------------------- the solve


def _generalized_eigh(spd, sym):
    """(d, U) with Uᵀ spd U = I and Uᵀ sym U = diag(d): the pair (sym, spd) diagonalised.

    Through the Cholesky factor L of the positive definite ``spd``: the eigenvectors Q of the
    symmetric L⁻¹ sym L⁻ᵀ give U = L⁻ᵀ Q.  A failed Cholesky gives NaN, which the direction
    block turns into a skipped step (``nonfinite``).
    """
    chol = jnp.linalg.cholesky(spd)
    m = solve_triangular(chol, sym, lower=True)
    m = solve_triangular(chol, m.T, lower=True)
    d, q = jnp.linalg.eigh(0.5 * (m + m.T))
    return d, solve_triangular(chol.T, q, lower=False)


def kronecker_sum_solve(a1, b1, a2, b2, v):
    """X with (a1 ⊗ b1 + a2 ⊗ b2) vec(X) = vec(v), vec row-major: a1 X b1 + a2 X b2 = v.

    ``a1``, ``a2`` (m, m) and ``b1``, ``b2`` (n, n) symmetric, ``a1`` and ``b1`` positive
    definite; ``v`` (m, n).  With U, V from the generalized eigendecompositions of
    (a2, a1) and (b2, b1) (Uᵀa1U = I, Uᵀa2U = D_a, likewise V, D_b), X = U Y Vᵀ turns the
    equation into Y + D_a Y D_b = Uᵀ v V, solved entrywise: O(m³ + n³) instead of the
    O(m³n³) of a dense solve.  KFAC passes the interior factors as (a1, b1): with N·S
    channels they are better conditioned than the boundary ones.
    """
    da, u = _generalized_eigh(a1, a2)
    db, w = _generalized_eigh(b1, b2)
    y = (u.T @ v @ w) / (1.0 + da[:, None] * db[None, :])
    return u @ y @ w.T


# ----------------------------------------------------------------- the direction block


class KFACState(NamedTuple):
    interior: tuple  # per layer (A_Ω, B_Ω), EMA
    boundary: tuple  # per layer (A_∂Ω, B_∂Ω), EMA
    count: jax.Array
    diagnostics: Diagnostics


def _check_network(name, residual_fn):
    apply = getattr(residual_fn, "apply", None)
    if not hasattr(residual_fn, "channel_linearizations") or \
            channels.tanh_mlp_widths(apply) is None:
        raise ValueError(
            f"{name} needs pinn_ng.residuals.ResidualFn(problem, apply) of a "
            "pinn_ng.models.mlp network (its Kronecker factors come from the forward-Laplacian "
            f"channels of tanh MLPs); got {residual_fn!r}")


def _check_fraction(name, value, hi_open=True):
    if callable(value):
        raise ValueError(f"{name} must be a number in [0, 1), not a schedule")
    return check_scalar_or_schedule(name, value, 0.0, 1.0, hi_open=hi_open)


def scale_by_kfac(residual_fn, damping, ema_decay=DEFAULT_EMA_DECAY,
                  approximation: str = "expand") -> optax.GradientTransformationExtraArgs:
    """The KFAC direction C⁻¹∇L as a pytree (uphill, like a gradient).

    Must come first in a chain, called as ``update(None, state, params, batch=batch)``: it
    builds the factors and ∇L from the channels of the batch.  ``damping`` (λ, added to each
    of the four factors) may be a number, an array or a schedule; ``ema_decay`` (β ∈ [0, 1))
    a number or an array; ``approximation``: ``"expand"`` (default) or ``"reduce"``.
    ``residual_fn`` must be a ``ResidualFn`` of a ``pinn_ng.models.mlp`` network.
    """
    name = "scale_by_kfac"
    _check_network(name, residual_fn)
    damping = check_damping(damping)
    ema_decay = _check_fraction("ema_decay (β)", ema_decay)
    if approximation not in APPROXIMATIONS:
        raise ValueError(f"unknown KFAC approximation {approximation!r}; valid: "
                         f"{list(APPROXIMATIONS)}")

    def init(params):
        flat, _ = ravel_pytree(params)
        dtype = flat.dtype

        def identities():
            return tuple((jnp.eye(w.shape[0] + 1, dtype=dtype), jnp.eye(w.shape[1], dtype=dtype))
                         for w, _ in params)

        return KFACState(identities(), identities(), jnp.zeros((), jnp.int32),
                         empty_diagnostics(dtype, solver=None))

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        flat, unravel = require_first(name, updates, params, batch)
        dtype = flat.dtype
        lam = value_at(damping, state.count, dtype)
        beta = jnp.asarray(ema_decay, dtype)
        lin_i, lin_b = residual_fn.channel_linearizations(params, batch)
        new_i = tuple(interior_factors(h, g, approximation)
                      for h, g in zip(lin_i.inputs, lin_i.grads))
        # boundary residuals of u and ∇u (Neumann, Robin, u_t) carry every channel, as the
        # interior's do; Dirichlet ones the value channel alone
        new_b = tuple(boundary_factors(h, g) if h.shape[1] == 1 else
                      interior_factors(h, g, approximation)
                      for h, g in zip(lin_b.inputs, lin_b.grads))
        fac_i, fac_b = ema(state.interior, new_i, beta), ema(state.boundary, new_b, beta)

        pieces = []
        for layer, ((a1, b1), (a2, b2)) in enumerate(zip(fac_i, fac_b)):
            grad = layer_gradient(lin_i, layer) + layer_gradient(lin_b, layer)
            eye_a = jnp.eye(a1.shape[0], dtype=dtype)
            eye_b = jnp.eye(b1.shape[0], dtype=dtype)
            x = kronecker_sum_solve(a1 + lam * eye_a, b1 + lam * eye_b,
                                    a2 + lam * eye_a, b2 + lam * eye_b, grad)
            pieces.append(x.reshape(-1))  # [W; b] row-major = ravel order of (W, b)
        direction, nonfinite = safe_direction(jnp.concatenate(pieces))
        r = jnp.concatenate([lin_i.r, lin_b.r])
        diag = Diagnostics(0.5 * jnp.dot(r, r), jnp.linalg.norm(direction),
                           nonfinite=nonfinite)
        return unravel(direction), KFACState(fac_i, fac_b, state.count + 1, diag)

    return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------ KFAC*'s step


class KFACStarState(NamedTuple):
    delta: jax.Array  # δ_{t−1}, the previous update, flat (P,)
    count: jax.Array
    alpha: jax.Array  # α of the last step
    mu: jax.Array  # μ of the last step


def quadratic_model_step(jd, jp, r, d, p, lam):
    """(α, μ) minimising M(αΔ + μδ) = ∇Lᵀu + ½uᵀ(G + λI)u, G = JᵀJ, ∇L = Jᵀr.

    ``jd`` = JΔ, ``jp`` = Jδ (N,); ``d`` = Δ, ``p`` = δ (P,).  The 2 x 2 normal equations
    [[ΔᵀGΔ + λ‖Δ‖², ΔᵀGδ + λΔᵀδ], [·, δᵀGδ + λ‖δ‖²]] (α, μ) = −(∇LᵀΔ, ∇Lᵀδ); when they
    are singular (δ = 0, or δ parallel to Δ) the 1-D minimiser along Δ with μ = 0.
    """
    m00 = jnp.dot(jd, jd) + lam * jnp.dot(d, d)
    m01 = jnp.dot(jd, jp) + lam * jnp.dot(d, p)
    m11 = jnp.dot(jp, jp) + lam * jnp.dot(p, p)
    c0, c1 = jnp.dot(r, jd), jnp.dot(r, jp)
    det = m00 * m11 - m01 * m01
    regular = det > 1e-12 * m00 * m11
    safe = jnp.where(regular, det, 1.0)
    alpha2 = -(m11 * c0 - m01 * c1) / safe
    mu2 = -(m00 * c1 - m01 * c0) / safe
    alpha1 = -c0 / jnp.where(m00 > 0, m00, 1.0)
    return jnp.where(regular, alpha2, alpha1), jnp.where(regular, mu2, 0.0)


def scale_by_kfac_star(residual_fn, damping,
                       initial_step_size=DEFAULT_INITIAL_STEP_SIZE
                       ) -> optax.GradientTransformationExtraArgs:
    """KFAC*'s update δ_t = αΔ + μδ_{t−1} after a direction block (Martens & Grosse §7).

    The incoming updates are the uphill direction C⁻¹∇L, so Δ = −updates.  (α, μ) minimise
    the damped quadratic model with the exact Gauss–Newton products JΔ and Jδ (one forward
    linearisation of the batch, two JVPs; :func:`quadratic_model_step`).  The first step
    has no previous update: α = ``initial_step_size``, μ = 0.  ``damping`` is the model's
    λ (the same λ as the factors in :func:`kfac_star`).  Needs ``params`` and ``batch=``.
    """
    from ..residuals import as_operator

    op = as_operator(residual_fn)
    damping = check_damping(damping)
    check_scalar_or_schedule("initial_step_size", initial_step_size, 0.0, lo_open=True)

    def init(params):
        flat, _ = ravel_pytree(params)
        zero = jnp.zeros((), flat.dtype)
        return KFACStarState(jnp.zeros_like(flat), jnp.zeros((), jnp.int32), zero, zero)

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        if updates is None or params is None or batch is None:
            raise ValueError("scale_by_kfac_star comes after a direction block (e.g. "
                             "scale_by_kfac) and needs update(direction, state, params, "
                             "batch=batch)")
        flat, unravel = ravel_pytree(params)
        dtype = flat.dtype
        lam = value_at(damping, state.count, dtype)
        d = -ravel_pytree(updates)[0]
        p = state.delta
        r, jv, _ = op.linearize(params, batch)
        alpha, mu = quadratic_model_step(jv(d), jv(p), r, d, p, lam)
        first = state.count == 0
        alpha = jnp.where(first, jnp.asarray(value_at(initial_step_size, state.count, dtype)),
                          alpha)
        mu = jnp.where(first, 0.0, mu)
        delta, nonfinite = safe_direction(alpha * d + mu * p)
        alpha, mu = jnp.where(nonfinite > 0, 0.0, alpha), jnp.where(nonfinite > 0, 0.0, mu)
        return unravel(delta), KFACStarState(delta, state.count + 1, alpha, mu)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------- the optimizers


def kfac(residual_fn, damping, momentum, ema_decay=DEFAULT_EMA_DECAY,
         approximation: str = "expand", learning_rate="line_search"
         ) -> optax.GradientTransformationExtraArgs:
    """KFAC for PINNs with momentum and the grid line search.

    ``chain(scale_by_kfac(...), optax.trace(μ), step_size_chain(residual_fn, learning_rate))``:
    m_t = μ m_{t−1} + C⁻¹∇L_t, then θ ← θ − η m_t with η from the grid 2⁻³⁰…2⁰ (or a fixed
    η / schedule).

    Args:
      residual_fn: ``ResidualFn(problem, apply)`` of a ``pinn_ng.models.mlp`` network.
      damping: λ, added to all four Kronecker factors (Poisson 5d best: 1.2e-12).
      momentum: μ ∈ [0, 1) on the directions (5d best: 0.906); a number or an array.
      ema_decay: β of the factors' moving average (5d best: 0.959).
      approximation: ``"expand"`` (every published run) or ``"reduce"``.
      learning_rate: ``"line_search"`` (default) or η.
    """
    momentum = _check_fraction("momentum (μ)", momentum)
    blocks = [scale_by_kfac(residual_fn, damping, ema_decay, approximation)]
    if not is_static_zero(momentum):
        blocks.append(optax.trace(decay=momentum))
    blocks.append(step_size_chain(residual_fn, learning_rate))
    return optax.chain(*blocks)


def kfac_star(residual_fn, damping, ema_decay=DEFAULT_EMA_DECAY,
              approximation: str = "expand",
              initial_step_size=DEFAULT_INITIAL_STEP_SIZE
              ) -> optax.GradientTransformationExtraArgs:
    """KFAC*: the KFAC direction with α and μ from the exact Gauss–Newton quadratic model.

    ``chain(scale_by_kfac(...), scale_by_kfac_star(residual_fn, damping, ...))``.  Args as
    :func:`kfac` (5d best: λ = 2.8e-10, β = 0.900); no μ, no line search:
    ``initial_step_size`` is α of the first step (1e-6, the reference code's value).
    """
    return optax.chain(scale_by_kfac(residual_fn, damping, ema_decay, approximation),
                       scale_by_kfac_star(residual_fn, damping, initial_step_size))


__all__ = ["APPROXIMATIONS", "KFACStarState", "KFACState", "boundary_factors",
           "interior_factors", "kfac", "kfac_star", "kronecker_sum_solve", "layer_gradient",
           "quadratic_model_step", "scale_by_kfac", "scale_by_kfac_star"]
