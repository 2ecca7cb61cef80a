"""Pieces shared by the optimizers: diagnostics, hyper-parameter checks and values."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class Diagnostics(NamedTuple):
    """Per-step scalars a direction block keeps in its state (read them with
    :func:`pinn_ng.optim.diagnostics`, which also adds the step size of the chain).

    ``loss``: ½‖r‖² at the parameters before the step, on the step's batch.  ``phi_norm``:
    ‖φ‖ of the direction.  ``effective_dimension``: tr(K(K+λI)⁻¹) or None when not tracked.

    Numerical events, each its own field (None where the solver has no such event):

    - ``jitter``: the extra shift δ added to λ so that the Cholesky of K + λI (or G + λI)
      worked; 0 when λ alone sufficed (see :func:`pinn_ng.optim.solvers.cholesky_solve`).
    - ``cholesky_fallback``: 1 if every jittered Cholesky failed and the eigendecomposition
      fallback ran.
    - ``nystrom_shift``: the shift ν the Nyström sketch used; ``shift_grown``: 1 if ν had to
      grow past its default for the core Cholesky to succeed.
    - ``nonfinite``: 1 if the direction was non-finite and the step was skipped (the direction
      is replaced by zeros, so parameters are left unchanged, never NaN).

    None of these ends a run: the training loop stops only on a non-finite loss or parameters,
    or on ``solve_failed``: 1 if the solve failed and was *not* repaired (only reported under
    the Cholesky option ``jitter="none"``, which studies when the factorisation fails).
    """

    loss: jax.Array
    phi_norm: jax.Array
    effective_dimension: jax.Array | None = None
    jitter: jax.Array | None = None
    cholesky_fallback: jax.Array | None = None
    nystrom_shift: jax.Array | None = None
    shift_grown: jax.Array | None = None
    nonfinite: jax.Array | None = None
    solve_failed: jax.Array | None = None


#: Diagnostics that count as numerical events; the training loop counts the steps where each
#: is > 0 (``TrainResult.events``, ``meta.json``'s ``events``, summary.csv).
EVENT_FIELDS = ("jitter", "cholesky_fallback", "shift_grown", "nonfinite")


def empty_diagnostics(dtype, track_effective_dimension: bool = False, solver=None
                      ) -> Diagnostics:
    """Initial diagnostics: ``nonfinite``, the effective dimension when tracked, and the event
    fields ``solver`` reports (a solver object of :mod:`pinn_ng.optim.solvers`, whose
    ``events`` name them; None: no solver events)."""
    if isinstance(solver, str):
        raise TypeError(f"empty_diagnostics takes a solver object, not the name {solver!r} "
                        "(pinn_ng.optim.solvers.as_solver maps names to objects)")
    nan = jnp.asarray(jnp.nan, dtype)
    zero = jnp.zeros((), dtype)
    events = () if solver is None else tuple(solver.events)
    return Diagnostics(nan, zero, nan if track_effective_dimension else None, nonfinite=zero,
                       **{name: zero for name in events})


def _is_array(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _concrete_float(value):
    """float(value) for a Python number or concrete scalar array; None if traced."""
    if _is_array(value):
        if isinstance(value, jax.core.Tracer):
            return None
        if np.ndim(value) != 0:
            raise ValueError(f"expected a scalar, got an array of shape {np.shape(value)}")
        return float(value)
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def check_scalar_or_schedule(name: str, value, lo: float, hi: float = math.inf,
                             lo_open: bool = False, hi_open: bool = True):
    """Validate an ``optax.ScalarOrSchedule`` hyper-parameter; return it unchanged.

    A schedule (callable of the step count) and a traced array pass unchecked (their values
    are only known inside the step); a number or concrete array must lie in the interval.
    """
    if callable(value):
        return value
    try:
        x = _concrete_float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a schedule, got {value!r}") from None
    if x is None:
        return value
    ok = (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok or math.isnan(x):
        if hi == math.inf:
            what = "positive and finite" if lo == 0 and lo_open else f">= {lo:g} and finite"
            raise ValueError(f"{name} must be {what}, got {value!r}")
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo:g}, {hi:g}{rb}, got {value!r}")
    return value


def value_at(hyperparam, count, dtype):
    """The value of a ScalarOrSchedule at step ``count`` (0-based, as optax schedules)."""
    return jnp.asarray(hyperparam(count) if callable(hyperparam) else hyperparam, dtype)


def is_static_zero(value) -> bool:
    """True for a Python number equal to 0 (a branch can be skipped at trace time)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def require_first(name: str, updates, params, batch):
    """Blocks that build their direction from r and J must come first in a chain, be called
    with ``updates=None`` (never silently drop incoming updates) and get params and batch.
    Returns ``ravel_pytree(params)``: the flat parameters and how to unflatten a direction."""
    if updates is not None:
        raise ValueError(
            f"{name} builds its direction from the residuals r and their Jacobian J, not from "
            "incoming updates; it must come first in an optax.chain and be called as "
            "update(None, state, params, batch=batch). Got updates (a gradient, or the output "
            "of an earlier transform such as clipping): put such transforms after it.")
    if params is None or batch is None:
        raise ValueError(f"{name} needs update(None, state, params, batch=batch)")
    return ravel_pytree(params)


def check_damping(damping):
    """λ: a ScalarOrSchedule, finite and >= 0."""
    return check_scalar_or_schedule("damping (λ)", damping, 0.0)


def check_learning_rate(learning_rate):
    """``"line_search"``, or η as a ScalarOrSchedule (positive and finite)."""
    if isinstance(learning_rate, str):
        if learning_rate != "line_search":
            raise ValueError("learning_rate must be a positive number, a schedule or "
                             f"'line_search', got {learning_rate!r}")
        return learning_rate
    return check_scalar_or_schedule("learning_rate (η)", learning_rate, 0.0, lo_open=True)


def safe_direction(direction):
    """(direction or zeros, nonfinite flag): never let NaN/inf reach the parameters."""
    ok = jnp.all(jnp.isfinite(direction))
    return jnp.where(ok, direction, 0.0), 1.0 - ok.astype(direction.dtype)
