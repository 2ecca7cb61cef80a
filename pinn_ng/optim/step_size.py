"""Step-size blocks: the grid line search and the norm cap, as optax transformations.

They come after a direction block (``scale_by_engd``, ``scale_by_engd_woodbury``,
``scale_by_spring``), which emits the direction d (a pytree, pointing uphill like a
gradient), and turn it into the update −η·d:

- a fixed or scheduled η: :func:`scale_by_step_size` (``optax.scale_by_learning_rate(η)``
  that also records η_k);
- :func:`scale_by_grid_line_search`: η from the grid 2⁻³⁰…2⁰ on the current batch;
- :func:`scale_by_norm_constraint`: caps the step at norm √C, after a fixed η.

:func:`step_size_chain` assembles them as the paper's reference code does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .common import check_learning_rate, check_scalar_or_schedule, value_at
from ..residuals import as_operator

#: η ∈ {2⁻³⁰, 2⁻²⁹, …, 2⁰}: the grid of the ENGD reference code (31 values).
LINE_SEARCH_GRID_EXPONENTS = tuple(range(-30, 1))


def grid_line_search(loss_of_flat: Callable, flat, direction, loss0=None,
                     chunk_size: int | None = None):
    """Step size from the grid that minimises the loss along −direction on the current batch.

    The 31 candidate losses ``loss_of_flat(flat − η·direction)`` (and, with ``loss0=None``, the
    loss at η = 0) are evaluated ``chunk_size`` at a time: ``jax.lax.map`` over chunks of a
    vmapped evaluation, so peak memory is that of ``chunk_size`` evaluations (``None``: all in
    one vmapped pass).  Non-finite candidate losses count as +inf.  If no candidate lowers the
    loss below ``loss0``, the step size is 0 (no step).  Returns ``(eta, losses)`` (the 31
    grid losses).
    """
    etas = 2.0 ** jnp.asarray(LINE_SEARCH_GRID_EXPONENTS, flat.dtype)
    points = etas if loss0 is not None else jnp.concatenate([jnp.zeros((1,), flat.dtype), etas])

    def loss_at(eta):
        return loss_of_flat(flat - eta * direction)

    if chunk_size is None or chunk_size >= points.shape[0]:
        all_losses = jax.vmap(loss_at)(points)
    else:
        all_losses = jax.lax.map(loss_at, points, batch_size=chunk_size)
    if loss0 is None:
        loss0, losses = all_losses[0], all_losses[1:]
    else:
        losses = all_losses
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    i = jnp.argmin(losses)
    eta = jnp.where(losses[i] < loss0, etas[i], jnp.zeros((), flat.dtype))
    return eta, losses


class GridLineSearchState(NamedTuple):
    step_size: jax.Array  # η chosen at the last step (0: no step)


#: candidates evaluated at once by the line search of the optimizers: one, so that its peak
#: memory is that of one loss evaluation, for a small share of a step's time
DEFAULT_CHUNK_SIZE = 1


def scale_by_grid_line_search(residual_fn=None, chunk_size: int | None = DEFAULT_CHUNK_SIZE
                              ) -> optax.GradientTransformationExtraArgs:
    """−η·d with η from the grid 2⁻³⁰…2⁰ minimising the loss on the current batch.

    The loss at the candidate parameters θ − η·d comes from ``residual_fn`` (½‖r‖², called as
    ``residual_fn(params, batch)`` with the ``batch`` extra argument) or, when the transform is
    built without one, from a ``value_fn(params) -> loss`` extra argument (as optax's own line
    searches take it).  The loss at η = 0 is evaluated in the same batched pass, so a
    direction that lowers nothing gives no step.  Needs ``params``.  ``chunk_size``:
    candidates evaluated at once (:func:`grid_line_search`).
    """
    op = None if residual_fn is None else as_operator(residual_fn)

    def init(params):
        flat, _ = ravel_pytree(params)
        return GridLineSearchState(jnp.zeros((), flat.dtype))

    def update(updates, state, params=None, *, batch=None, value_fn=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("scale_by_grid_line_search needs update(d, state, params, ...)")
        if value_fn is None:
            if op is None or batch is None:
                raise ValueError("scale_by_grid_line_search needs batch= (when built with a "
                                 "residual_fn) or a value_fn= extra argument")

            def value_fn(p):
                r = op(p, batch)
                return 0.5 * jnp.dot(r, r)

        flat, unravel = ravel_pytree(params)
        d, _ = ravel_pytree(updates)
        eta, _ = grid_line_search(lambda w: value_fn(unravel(w)), flat, d,
                                  chunk_size=chunk_size)
        return unravel(-eta * d), GridLineSearchState(eta)

    return optax.GradientTransformationExtraArgs(init, update)


class StepSizeState(NamedTuple):
    count: jax.Array
    step_size: jax.Array  # η_k applied at the last step


def scale_by_step_size(learning_rate) -> optax.GradientTransformationExtraArgs:
    """−η_k·d for a fixed or scheduled η, as ``optax.scale_by_learning_rate(η)`` computes it,
    with η_k kept in the state so that :func:`pinn_ng.optim.diagnostics` reports it.

    ``learning_rate`` (η > 0) may be a number, an array or a schedule of the step count.
    """
    learning_rate = check_scalar_or_schedule("learning_rate (η)", learning_rate, 0.0,
                                             lo_open=True)

    def init(params):
        flat, _ = ravel_pytree(params)
        return StepSizeState(jnp.zeros((), jnp.int32), jnp.zeros((), flat.dtype))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        eta = value_at(learning_rate, state.count, state.step_size.dtype)
        updates = jax.tree.map(lambda u: -eta.astype(u.dtype) * u, updates)
        return updates, StepSizeState(state.count + 1, eta)

    return optax.GradientTransformationExtraArgs(init, update)


class NormConstraintState(NamedTuple):
    count: jax.Array
    norm_scale: jax.Array  # factor min(1, √C/‖u‖) applied at the last step


def scale_by_norm_constraint(norm_constraint) -> optax.GradientTransformationExtraArgs:
    """Cap the update's norm at √C: u ← u · min(1, √C/‖u‖).

    After ``optax.scale_by_learning_rate(η)`` this is the SPRING reference code's step
    θ ← θ − min(η, √C/‖d‖)·d (C = 1e-3 there; the paper writes the cap as C/‖φ‖).  The paper's
    reference code applies the cap only with a fixed η, not after the grid line search, and
    :func:`step_size_chain` does the same; chain it after the line search yourself if wanted.
    ``norm_constraint`` (C > 0) may be a number, an array or a schedule of the step count.
    """
    check_scalar_or_schedule("norm_constraint (C)", norm_constraint, 0.0, lo_open=True)

    def init(params):
        flat, _ = ravel_pytree(params)
        return NormConstraintState(jnp.zeros((), jnp.int32), jnp.ones((), flat.dtype))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        dtype = state.norm_scale.dtype
        cap = jnp.sqrt(value_at(norm_constraint, state.count, dtype))
        # optax's clipping does the capping; the scale it applied is kept for the diagnostics
        clipped, _ = optax.clip_by_global_norm(cap).update(updates, optax.EmptyState())
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, cap / jnp.maximum(norm, jnp.finfo(dtype).tiny))
        return clipped, NormConstraintState(state.count + 1, scale)

    return optax.GradientTransformationExtraArgs(init, update)


#: the reference code's C for SPRING with a fixed η
DEFAULT_NORM_CONSTRAINT = 1e-3

#: ``norm_constraint`` meaning "as the reference code": C = :data:`DEFAULT_NORM_CONSTRAINT`
#: with a fixed or scheduled η, no cap after the line search.  A string, so that
#: ``optax.inject_hyperparams`` keeps it static instead of turning it into an array.
REFERENCE_NORM_CONSTRAINT = "reference"


def step_size_chain(residual_fn, learning_rate, norm_constraint=None
                    ) -> optax.GradientTransformationExtraArgs:
    """The step after a direction block, as in the paper's reference code.

    ``learning_rate="line_search"``: :func:`scale_by_grid_line_search` (no cap, as the
    reference code).  A number or schedule η: :func:`scale_by_step_size`, followed by
    :func:`scale_by_norm_constraint` when ``norm_constraint`` is not None.

    ``norm_constraint``: C (a number, an array or a schedule), None (no cap) or
    ``"reference"`` (C = 1e-3 with a fixed or scheduled η, none with the line search).  An
    explicit C with the line search raises, whatever its value: the reference code never caps
    a line-search step, and a C that is silently dropped would look applied.  Chain
    :func:`scale_by_norm_constraint` after the line search yourself to cap it.
    """
    learning_rate = check_learning_rate(learning_rate)
    line_search = isinstance(learning_rate, str)
    if isinstance(norm_constraint, str):
        if norm_constraint != REFERENCE_NORM_CONSTRAINT:
            raise ValueError("norm_constraint must be a number, a schedule, None or "
                             f"{REFERENCE_NORM_CONSTRAINT!r}, got {norm_constraint!r}")
        norm_constraint = None if line_search else DEFAULT_NORM_CONSTRAINT
    if line_search:
        if norm_constraint is not None:
            raise ValueError(
                "norm_constraint (C) applies only with a fixed or scheduled learning_rate, as "
                "in the paper's reference code; with learning_rate='line_search' leave the "
                f"default ({REFERENCE_NORM_CONSTRAINT!r}) or pass None (or chain "
                "scale_by_norm_constraint after the line search yourself), got "
                f"{norm_constraint!r}")
        return scale_by_grid_line_search(residual_fn)
    steps = [scale_by_step_size(learning_rate)]
    if norm_constraint is not None:
        steps.append(scale_by_norm_constraint(norm_constraint))
    return optax.chain(*steps)

