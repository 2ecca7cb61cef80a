"""Pieces shared by the optimizers: the grid line search, diagnostics, argument checks."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

#: η ∈ {2⁻³⁰, 2⁻²⁹, …, 2⁰}: the grid of the ENGD reference code (31 values).
LINE_SEARCH_GRID_EXPONENTS = tuple(range(-30, 1))


class Diagnostics(NamedTuple):
    """Per-step scalars, kept in the optimizer state (see :func:`pinn_ng.optim.diagnostics`).

    ``loss``: ½‖r‖² at the parameters before the step, on the step's batch.  ``step_size``: η
    applied (0 when the line search found no decrease).  ``phi_norm``: ‖φ‖ of the direction.
    ``effective_dimension``: tr(K(K+λI)⁻¹) or None when not tracked.

    Numerical events, each its own field (None where the solver has no such event):

    - ``jitter``: the extra shift δ added to λ so that the Cholesky of K + λI (or G + λI)
      succeeded; 0 when λ alone sufficed (see :func:`pinn_ng.optim.solvers.cholesky_solve`).
    - ``cholesky_fallback``: 1 if every jittered Cholesky failed and the eigendecomposition
      fallback ran.
    - ``nystrom_shift``: the shift ν the Nyström sketch used; ``shift_grown``: 1 if ν had to
      grow past its default for the core Cholesky to succeed.
    - ``nonfinite``: 1 if the direction was non-finite and the step was skipped (parameters
      left unchanged, never NaN).

    None of these ends a run: the training loop stops only on a non-finite loss or parameters.
    """

    loss: jax.Array
    step_size: jax.Array
    phi_norm: jax.Array
    effective_dimension: jax.Array | None = None
    jitter: jax.Array | None = None
    cholesky_fallback: jax.Array | None = None
    nystrom_shift: jax.Array | None = None
    shift_grown: jax.Array | None = None
    nonfinite: jax.Array | None = None


#: Diagnostics that count as numerical events; the training loop counts the steps where each
#: is > 0 (``TrainResult.events``, ``meta.json``'s ``events``, summary.csv).
EVENT_FIELDS = ("jitter", "cholesky_fallback", "shift_grown", "nonfinite")


def empty_diagnostics(dtype, track_effective_dimension: bool = False,
                      solver: str | None = "cholesky") -> Diagnostics:
    """Initial diagnostics with the fields ``solver`` reports (None: only ``nonfinite``)."""
    nan = jnp.asarray(jnp.nan, dtype)
    zero = jnp.zeros((), dtype)
    chol = solver == "cholesky"
    nys = solver is not None and solver.startswith("nystrom")
    return Diagnostics(nan, zero, zero, nan if track_effective_dimension else None,
                       jitter=zero if chol else None,
                       cholesky_fallback=zero if chol else None,
                       nystrom_shift=zero if nys else None,
                       shift_grown=zero if nys else None, nonfinite=zero)


def grid_line_search(loss_of_flat: Callable, flat, direction, loss0):
    """Step size from the grid that minimises the loss along −direction on the current batch.

    The 31 candidate losses ``loss_of_flat(flat − η·direction)`` are evaluated in one batched
    (vmapped) pass.  Non-finite candidate losses count as +inf.  If no candidate lowers the loss
    below ``loss0``, the step size is 0 (no step).  Returns ``(eta, losses)``.
    """
    etas = 2.0 ** jnp.asarray(LINE_SEARCH_GRID_EXPONENTS, flat.dtype)
    losses = jax.vmap(lambda eta: loss_of_flat(flat - eta * direction))(etas)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    i = jnp.argmin(losses)
    eta = jnp.where(losses[i] < loss0, etas[i], jnp.zeros((), flat.dtype))
    return eta, losses


def step_size(learning_rate, residual: Callable, unravel: Callable, batch, flat, direction,
              loss0):
    """η for θ ← θ − η·direction: the fixed ``learning_rate``, or the grid line search of the
    loss ½‖residual(θ, batch)‖² on the current batch when it is ``"line_search"``."""
    if learning_rate != "line_search":
        return jnp.asarray(learning_rate, flat.dtype)

    def loss_of_flat(w):
        res = residual(unravel(w), batch)
        return 0.5 * jnp.dot(res, res)

    return grid_line_search(loss_of_flat, flat, direction, loss0)[0]


def check_damping(damping) -> float:
    try:
        value = float(damping)
    except (TypeError, ValueError):
        raise ValueError(f"damping (λ) must be a number >= 0, got {damping!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"damping (λ) must be finite and >= 0, got {damping!r}")
    return value


def check_learning_rate(learning_rate):
    """``"line_search"`` or a positive finite float."""
    if isinstance(learning_rate, str):
        if learning_rate != "line_search":
            raise ValueError(
                f"learning_rate must be a positive float or 'line_search', got {learning_rate!r}"
            )
        return learning_rate
    try:
        value = float(learning_rate)
    except (TypeError, ValueError):
        raise ValueError(
            f"learning_rate must be a positive float or 'line_search', got {learning_rate!r}"
        ) from None
    if not (value > 0.0 and value < float("inf")):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    return value


def safe_direction(direction):
    """(direction or zeros, nonfinite flag): never let NaN/inf reach the parameters."""
    ok = jnp.all(jnp.isfinite(direction))
    return jnp.where(ok, direction, 0.0), 1.0 - ok.astype(direction.dtype)
