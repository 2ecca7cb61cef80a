"""Optimizers of the paper as composable optax transformations, built from a residual function.

    opt = pinn_ng.optim.spring(residual_fn, damping=1e-8, momentum=0.9, learning_rate=0.05)
    state = opt.init(params)
    updates, state = opt.update(None, state, params, batch=batch)
    params = optax.apply_updates(params, updates)

``residual_fn`` is ``pinn_ng.residuals.ResidualFn(problem, apply)`` (per-point Jacobian,
matrix-free products) or any callable ``(params, batch) -> r`` (J then falls back to
``jax.jacrev``: correct, but only sensible for small problems).

**By name.**  :func:`make`, :func:`names`, :func:`hyperparameters` and :func:`uses_grads`
read one registry (``REGISTRY``); :func:`register` adds an optimizer of your own to it, and
:mod:`pinn_ng.plugins` loads such registrations for the command line and the pipeline.

**Blocks.**  Each natural-gradient optimizer is an ``optax.chain`` of a *direction* block and
a *step-size* block, like optax's own aliases (``adam = chain(scale_by_adam, scale_by_lr)``):

- directions: :func:`scale_by_engd`, :func:`scale_by_engd_woodbury`, :func:`scale_by_spring`,
  :func:`scale_by_kfac` (the preconditioned direction φ as a pytree, uphill like a gradient).
  They build φ from r and J, so they come first in a chain and take ``updates=None``
  (anything else raises);
- step sizes: :func:`scale_by_step_size` (``optax.scale_by_learning_rate(η)`` that records
  η_k), :func:`scale_by_grid_line_search`, :func:`scale_by_norm_constraint` (SPRING's cap);
  :func:`step_size_chain` combines them as the paper's reference code does.

``engd = chain(scale_by_engd, step)``, ``engd_woodbury = chain(scale_by_engd_woodbury, step)``,
``spring = chain(scale_by_spring, step)``, ``kfac = chain(scale_by_kfac, optax.trace(μ),
line search)``, ``kfac_star = chain(scale_by_kfac, scale_by_kfac_star)`` (:mod:`.kfac`).
Damping, momentum, η and C accept numbers, arrays and ``optax`` schedules;
:func:`inject_hyperparams` makes them state, so a sweep over λ does not recompile.
:func:`diagnostics` reads the per-step scalars out of any chained or wrapped state
(``optax.tree_utils.tree_get``).  Where each path pays:

- ``engd``: G = JᵀJ is P x P: O(NP²) + O(P³) time, P² memory (the baseline).
- ``engd_woodbury`` / ``spring`` with ``solver="cholesky"``: O(N²P) for K (lower blocks only)
  + O(N³/3); memory N·P for J and N² for K.  ``kernel="blocked"`` holds only row blocks of J.
- ``solver="nystrom"`` / ``"nystrom_gpu"``: O(NPℓ) for KΩ = J(JᵀΩ), never forming K; the
  standard variant adds a QR and an SVD of N x ℓ matrices, the GPU-efficient one only an
  ℓ x ℓ Cholesky.  ``"nystrom_pcg"``: the standard sketch as a CG preconditioner.

**Solvers.**  ``solver=`` takes an object, :class:`Cholesky`, :class:`Nystrom`,
:class:`NystromGPU` or :class:`NystromPCG` (:mod:`.solvers`), or the presets' name of one with
flat options (``solver="nystrom_gpu", sketch_size=0.1``), mapped to the object by
:func:`.solvers.as_solver`: the one mapping :func:`make`, the presets and direct calls share.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Callable

import optax
import optax.tree_utils as otu

from ..registry import Registry
from . import solvers
from .baselines import adam, lbfgs, sgd
from .common import EVENT_FIELDS, Diagnostics
from .engd import engd, scale_by_engd
from .hessian_free import hessian_free
from .kfac import kfac, kfac_star, scale_by_kfac, scale_by_kfac_star
from .solvers import Cholesky, Nystrom, NystromGPU, NystromPCG
from .step_size import (grid_line_search, scale_by_grid_line_search, scale_by_norm_constraint,
                        scale_by_step_size, step_size_chain)
from .woodbury import engd_woodbury, scale_by_engd_woodbury, scale_by_spring, spring


#: The optimizers by name: the paper's, then whatever plugins add (:func:`register`).
REGISTRY = Registry("optimizer")


def register(name: str, *, uses_grads: bool = False, hyperparameters=None) -> Callable:
    """Decorator: register an optimizer factory ``(residual_fn, **hparams) ->
    optax.GradientTransformationExtraArgs`` under ``name``, for :func:`make`, ``pinn-ng run
    --optimizer name``, presets and tuning spaces.

    ``uses_grads``: whether ``update`` reads its ``grads`` argument (the training loop then
    computes the gradient of ½‖r‖²; otherwise it passes ``None``).  ``hyperparameters``:
    ``{name: default}`` (``inspect.Parameter.empty`` where required) when the factory takes
    ``**kwargs``; by default they are read from the factory's signature.  A factory may also
    return a plain ``optax.GradientTransformation``: :func:`make` adds the ``batch=`` extra
    argument support.  A taken name raises ``ValueError`` naming who registered it.
    """
    if hyperparameters is not None:
        if not isinstance(hyperparameters, Mapping) or not all(
                isinstance(k, str) and k.isidentifier() for k in hyperparameters):
            raise TypeError(f"optimizer {name!r}: hyperparameters must be a mapping "
                            f"{{name: default}}, got {hyperparameters!r}")
        hyperparameters = dict(hyperparameters)
    return REGISTRY.register(name, uses_grads=bool(uses_grads), hyperparameters=hyperparameters)


register("sgd", uses_grads=True)(sgd)
register("adam", uses_grads=True)(adam)
register("lbfgs", uses_grads=True)(lbfgs)
register("hessian_free")(hessian_free)
register("engd")(engd)
register("engd_woodbury")(engd_woodbury)
register("spring")(spring)
register("kfac")(kfac)
register("kfac_star")(kfac_star)

#: Arguments that :func:`inject_hyperparams` turns into state (numbers or schedules).
HYPERPARAMS = ("damping", "momentum", "learning_rate", "norm_constraint", "ema_decay")


def names() -> list[str]:
    """Names accepted by :func:`make` (the built-ins first, then registered plugins)."""
    return REGISTRY.names()


def hyperparameters(name: str) -> dict:
    """``{hyper-parameter: default}`` of optimizer ``name`` (``inspect.Parameter.empty``
    where required): as registered, else from the factory's signature without
    ``residual_fn``."""
    entry = REGISTRY.entry(name)
    declared = entry.meta.get("hyperparameters")
    if declared is not None:
        return dict(declared)
    sig = inspect.signature(entry.factory)
    return {k: p.default for k, p in sig.parameters.items()
            if k != "residual_fn" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make(name: str, residual_fn, **hparams) -> optax.GradientTransformationExtraArgs:
    """Build optimizer ``name`` for ``residual_fn`` with keyword hyper-parameters.

    An unknown or missing hyper-parameter raises ``ValueError`` naming it and the valid ones;
    a factory that returns no optax transformation raises ``TypeError`` naming where it was
    registered.  The sample-space optimizers map a preset's ``solver`` name and its flat
    options (``sketch_size``, ``nystrom_shift``, ``jitter_warm_start``, ``jitter``,
    ``pcg_iters``) to a solver object (:func:`.solvers.as_solver`); a flat option that does
    not apply to that solver raises ``ValueError``.
    """
    entry = REGISTRY.entry(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(f"optimizer {name!r}: unknown hyper-parameter"
                         f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid)}")
    missing = [k for k, d in valid.items() if d is inspect.Parameter.empty and k not in hparams]
    if missing:
        raise ValueError(f"optimizer {name!r}: missing hyper-parameter"
                         f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    if entry.meta.get("hyperparameters") is not None:  # declared defaults: make passes them
        hparams = {**{k: d for k, d in valid.items() if d is not inspect.Parameter.empty},
                   **hparams}
    opt = entry.factory(residual_fn, **hparams)
    if isinstance(opt, optax.GradientTransformationExtraArgs):
        return opt
    if isinstance(opt, optax.GradientTransformation):
        return optax.with_extra_args_support(opt)  # ignores batch=, as sgd and adam do
    raise TypeError(f"optimizer {name!r}: the factory registered by {entry.origin} returned "
                    f"{type(opt).__name__}, not an optax.GradientTransformation")


def uses_grads(name: str) -> bool:
    """Whether ``update`` reads its ``grads`` argument (False for the natural-gradient family,
    which is called with ``None``)."""
    return REGISTRY.entry(name).meta["uses_grads"]


def inject_hyperparams(factory: Callable, hyperparams=HYPERPARAMS) -> Callable:
    """``optax.inject_hyperparams`` for the factories of this module.

    The arguments named in ``hyperparams`` (those the factory has) become arrays in the state,
    ``state.hyperparams[name]``, so that changing them (a λ sweep, a schedule) does not
    recompile a jitted step; every other argument (``residual_fn``, ``solver``, sizes, seeds)
    stays static.  So does a non-numeric value of a hyper-parameter (optax passes it through):
    ``learning_rate="line_search"``, ``norm_constraint=None`` or SPRING's default
    ``norm_constraint="reference"`` (give C as a number to sweep it).
    """
    params = inspect.signature(factory).parameters
    static = tuple(k for k in params if k not in hyperparams)
    return optax.inject_hyperparams(factory, static_args=static)


def _unique(state, key, tuple_name=None):
    def keep(path, value):
        return tuple_name is None or getattr(path[-1], "tuple_name", None) == tuple_name

    found = otu.tree_get_all_with_path(state, key, filtering=keep)
    return found[0][1] if len(found) == 1 else None


def diagnostics(state) -> dict:
    """The last step's diagnostics as a dict of scalars ({} for the optax baselines).

    Works on any chained or wrapped state (``optax.tree_utils``).  Keys: ``loss``,
    ``phi_norm``, ``step_size``, ``nonfinite``, the solver's numerical events (``jitter`` and
    ``cholesky_fallback`` for Cholesky solves, ``nystrom_shift`` and ``shift_grown`` for the
    Nyström sketches; see :class:`Diagnostics`), ``effective_dimension`` (when tracked) and
    ``damping`` and ``cg_iterations`` (Hessian-free's adaptive λ and its CG iterations).

    ``step_size`` is η_k of the step θ ← θ − η_k·d_k, where d_k is the direction the
    step-size blocks receive (φ for ENGD and ENGD-W, the bias-corrected momentum direction for
    SPRING, the momentum trace m_k for KFAC), as the block that chose it recorded it: the
    fixed or scheduled η (:func:`scale_by_step_size`) or the line search's η, times the norm
    cap's factor min(1, √C/‖η d‖) when there is one; Hessian-free's α; KFAC*'s α (its step is
    α·Δ + μ·δ).  Absent when no such block recorded one (e.g. a chain ending in
    ``optax.scale_by_learning_rate``); transforms chained after the step-size blocks (a
    clipping) are not in it.
    """
    diag = _unique(state, "diagnostics")
    if not isinstance(diag, Diagnostics):
        return {}
    out = {k: v for k, v in diag._asdict().items() if v is not None}
    eta = _unique(state, "step_size")
    if eta is None:
        eta = _unique(state, "alpha", "KFACStarState")
    if eta is not None:
        cap = _unique(state, "norm_scale")
        out["step_size"] = eta if cap is None else eta * cap
    for key in ("damping", "cg_iterations"):
        value = _unique(state, key, "HessianFreeState")
        if value is not None:
            out[key] = value
    return out


__all__ = [
    "Cholesky",
    "EVENT_FIELDS",
    "HYPERPARAMS",
    "REGISTRY",
    "Diagnostics",
    "adam",
    "diagnostics",
    "engd",
    "engd_woodbury",
    "grid_line_search",
    "hessian_free",
    "hyperparameters",
    "inject_hyperparams",
    "kfac",
    "kfac_star",
    "lbfgs",
    "make",
    "names",
    "Nystrom",
    "NystromGPU",
    "NystromPCG",
    "register",
    "scale_by_engd",
    "scale_by_engd_woodbury",
    "scale_by_grid_line_search",
    "scale_by_kfac",
    "scale_by_kfac_star",
    "scale_by_norm_constraint",
    "scale_by_spring",
    "scale_by_step_size",
    "sgd",
    "solvers",
    "spring",
    "step_size_chain",
    "uses_grads",
]
