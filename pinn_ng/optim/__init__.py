"""Optimizers of the paper as optax transformations, built from a residual function.

    opt = pinn_ng.optim.spring(residual_fn, damping=1e-8, momentum=0.9, learning_rate=0.05)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, batch=batch)
    params = optax.apply_updates(params, updates)

``residual_fn`` is ``problem.residual_fn(apply)`` (per-point Jacobian, matrix-free products) or
any callable ``(params, batch) -> r`` (J then falls back to ``jax.jacrev``: correct, but only
sensible for small problems).  The natural-gradient family builds its step from r and J and
ignores ``grads`` (pass ``None``; :func:`uses_grads` tells).  Where each path pays:

- ``engd``: G = JᵀJ is P x P: O(NP²) + O(P³) time, P² memory (the baseline).
- ``engd_woodbury`` / ``spring`` with ``solver="cholesky"``: O(N²P) for K (lower blocks only)
  + O(N³/3); memory N·P for J and N² for K.  ``kernel="blocked"`` holds only row blocks of J.
- ``solver="nystrom"`` / ``"nystrom_gpu"``: O(NPℓ) for KΩ = J(JᵀΩ), never forming K; the
  standard variant adds a QR and an SVD of N x ℓ matrices, the GPU-efficient one only an
  ℓ x ℓ Cholesky.  ``"nystrom_pcg"``: the standard sketch as a CG preconditioner.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import optax

from . import solvers
from .baselines import adam, lbfgs, sgd
from .common import EVENT_FIELDS, Diagnostics, grid_line_search
from .engd import engd
from .hessian_free import hessian_free
from .woodbury import engd_woodbury, spring


class _Spec(NamedTuple):
    factory: Callable
    uses_grads: bool


_REGISTRY = {
    "sgd": _Spec(sgd, True),
    "adam": _Spec(adam, True),
    "lbfgs": _Spec(lbfgs, True),
    "hessian_free": _Spec(hessian_free, False),
    "engd": _Spec(engd, False),
    "engd_woodbury": _Spec(engd_woodbury, False),
    "spring": _Spec(spring, False),
}
_PLANNED = {"kfac": "KFAC for PINNs (Dangel, Müller & Zeinhofer 2024) is planned, not implemented"}


def names() -> list[str]:
    """Names accepted by :func:`make`."""
    return list(_REGISTRY)


def _spec(name: str) -> _Spec:
    if name in _PLANNED:
        raise NotImplementedError(_PLANNED[name])
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown optimizer {name!r}; valid optimizers: {names()}") from None


def make(name: str, residual_fn, **hparams) -> optax.GradientTransformationExtraArgs:
    """Build optimizer ``name`` for ``residual_fn`` with keyword hyper-parameters."""
    spec = _spec(name)
    try:
        return spec.factory(residual_fn, **hparams)
    except TypeError as err:  # a missing or unknown hyper-parameter: say which optimizer
        if "argument" not in str(err):
            raise
        raise ValueError(f"optimizer {name!r}: {err}") from None


def uses_grads(name: str) -> bool:
    """Whether ``update`` reads its ``grads`` argument (False for the natural-gradient family)."""
    return _spec(name).uses_grads


def diagnostics(state) -> dict:
    """The last step's diagnostics as a dict of scalars ({} for the optax baselines).

    Keys: ``loss``, ``step_size``, ``phi_norm``, ``nonfinite``, the solver's numerical events
    (``jitter`` and ``cholesky_fallback`` for Cholesky solves, ``nystrom_shift`` and
    ``shift_grown`` for the Nyström sketches; see :class:`Diagnostics`),
    ``effective_dimension`` (when tracked) and ``damping`` (Hessian-free's adaptive λ).
    """
    diag = getattr(state, "diagnostics", None)
    if not isinstance(diag, Diagnostics):
        return {}
    out = {k: v for k, v in diag._asdict().items() if v is not None}
    if hasattr(state, "damping"):
        out["damping"] = state.damping
    return out


__all__ = [
    "EVENT_FIELDS",
    "Diagnostics",
    "adam",
    "diagnostics",
    "engd",
    "engd_woodbury",
    "grid_line_search",
    "hessian_free",
    "lbfgs",
    "make",
    "names",
    "sgd",
    "solvers",
    "spring",
    "uses_grads",
]
