"""ENGD in parameter space (Müller & Zeinhofer 2023): the P x P baseline the paper beats.

φ = (G + λI)⁻¹ ∇L with the Gramian G = JᵀJ and ∇L = Jᵀr; θ ← θ − η φ.  Options of the
reference code: an exponential moving average of G (``ema`` in {0, .3, .6, .9}) and starting
that average from the identity (``init_identity``).  Cost O(N P²) for G plus O(P³) for its
Cholesky, and P² memory: at the paper's 10d size (P = 118,145) G alone needs 112 GB.

:func:`engd` = ``optax.chain(scale_by_engd(...), step_size_chain(...))``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..residuals import as_operator
from .common import (Diagnostics, check_damping, empty_diagnostics, require_first,
                     safe_direction, value_at)
from .solvers import Cholesky, lstsq_solve
from .step_size import step_size_chain

#: How the P x P system (G + λI) φ = ∇L is solved.
ENGD_SOLVERS = ("cholesky", "lstsq")


class EngdState(NamedTuple):
    gramian: jax.Array | None  # EMA of G (only kept when ema > 0)
    count: jax.Array
    diagnostics: Diagnostics


def scale_by_engd(residual_fn, damping, *, ema: float = 0.0, init_identity: bool = False,
                  solver: str = "cholesky") -> optax.GradientTransformationExtraArgs:
    """The ENGD direction φ = (G + λI)⁻¹ Jᵀr as a pytree (uphill, like a gradient).

    Must come first in a chain and be called with ``updates=None`` and ``batch=``: it builds
    φ from r and J.  ``damping`` (λ) may be a number, an array or a schedule.  Other
    arguments as :func:`engd`.
    """
    op = as_operator(residual_fn)
    damping = check_damping(damping)
    if not (isinstance(ema, (int, float)) and 0.0 <= ema < 1.0):
        raise ValueError(f"ema must be in [0, 1), got {ema!r}")
    ema = float(ema)
    if solver not in ENGD_SOLVERS:
        raise ValueError(f"unknown ENGD solver {solver!r}; valid: {list(ENGD_SOLVERS)}")
    # the P x P system has no warm start to carry: the default Cholesky, stateless here
    exact = Cholesky() if solver == "cholesky" else None

    def init(params):
        flat, _ = ravel_pytree(params)
        gram = None
        if ema > 0.0:
            p = flat.shape[0]
            gram = jnp.eye(p, dtype=flat.dtype) if init_identity else jnp.zeros((p, p), flat.dtype)
        return EngdState(gram, jnp.zeros((), jnp.int32),
                         empty_diagnostics(flat.dtype, solver=exact))

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        flat, unravel = require_first("scale_by_engd", updates, params, batch)
        lam = value_at(damping, state.count, flat.dtype)
        r, jac = op.residual_and_jacobian(params, batch)
        gram = jac.T @ jac
        if ema > 0.0:
            gram = ema * state.gramian + (1.0 - ema) * gram
        if solver == "lstsq":
            u, events = lstsq_solve(gram, lam, jac.T @ r), {}
        else:
            sol = exact.solve(gram, jac.T @ r, lam)
            u, events = sol.u, sol.events
        direction, nonfinite = safe_direction(u)
        diag = Diagnostics(0.5 * jnp.dot(r, r), jnp.linalg.norm(direction), nonfinite=nonfinite,
                           **events)
        return unravel(direction), EngdState(gram if ema > 0.0 else None, state.count + 1, diag)

    return optax.GradientTransformationExtraArgs(init, update)


def engd(residual_fn, damping, learning_rate="line_search", *, ema: float = 0.0,
         init_identity: bool = False,
         solver: str = "cholesky") -> optax.GradientTransformationExtraArgs:
    """Parameter-space ENGD: ``chain(scale_by_engd(...), step_size_chain(...))``.

    Args:
      residual_fn: as for :func:`pinn_ng.optim.engd_woodbury`.
      damping: λ (5d best: 1e-8, no EMA, G initialised to I); a number or a schedule.
      learning_rate: η (a number or a schedule) or ``"line_search"`` (the reference code's
        grid search).
      ema: factor β of G_k = β G_{k−1} + (1 − β) J_kᵀJ_k; 0 uses the current Gramian only.
      init_identity: start the average from G_0 = I instead of 0 (no effect when ema = 0).
      solver: ``"cholesky"`` (O(P³/3), with the jitter policy of
        :func:`~pinn_ng.optim.solvers.cholesky_solve`) or ``"lstsq"``: minimum-norm least
        squares by SVD, what the ENGD reference code runs on the CPU (LAPACK gelsd).  The paper's
        "> 30x iteration speed" of ENGD-W is measured against that solver; on a 2-core CPU at
        P = 10,065 it costs several times a Cholesky step (``python bench/optim_speed.py``).
    """
    return optax.chain(scale_by_engd(residual_fn, damping, ema=ema, init_identity=init_identity,
                                     solver=solver),
                       step_size_chain(residual_fn, learning_rate))
