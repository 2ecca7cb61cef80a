"""Hessian-free optimisation on the Gauss–Newton system, the paper's baseline.

The algorithm of Martens, "Deep learning via Hessian-free optimization" (ICML 2010) with the
refinements of Martens & Sutskever, "Training deep and recurrent networks with Hessian-free
optimization" (2012), in the form of the ``hessianfree`` PyTorch package the paper's authors
ran (GGN curvature, no preconditioner).  Each step, on the step's batch, with L = ½‖r‖²:

1. **CG** on the damped quadratic m(x) = ½ xᵀ(JᵀJ + λI)x + ∇Lᵀx (exact matrix-free products:
   r is linearised once per step, so an iteration is one J·v and one Jᵀ·u pass).  It starts
   from x₀ = ``cg_decay_x0`` · (the previous step's final CG iterate) (Martens 2010 sec. 4.5;
   Martens & Sutskever sec. 10) and stops after iteration i when
   ``(m_i − m_{i−k}) / (m_i − m_0) < 5e-4`` with k = max(10, ⌊i/10⌋) and i > k (Martens'
   relative-progress test, sec. 4.4, as the package writes it), when ‖Ax − b‖ < 1e-5‖b‖, or
   after ``cg_max_iter`` iterations.
2. **CG backtracking** (Martens 2010 sec. 4.6): the iterates of iterations ⌈1.3ʲ⌉ − 1
   (j = 0, 1, …; iteration 0 is x₀) and the last one are kept; starting from the last, the
   search walks back through them while the loss on the batch keeps strictly decreasing and
   takes the lowest it saw (a non-finite loss counts as +∞).
3. **Levenberg–Marquardt damping** (Martens 2010 sec. 4.1), from the reduction ratio of the
   CG run, ρ = (L(θ + x_n) − L(θ + x₀)) / (m_n − m_0) with x_n the final (not the backtracked)
   iterate: λ ← 3/2·λ if ρ < 1/4, λ ← 2/3·λ if ρ > 3/4; the new λ serves the next step.
4. **Armijo line search** on the chosen direction d (Martens & Sutskever sec. 8.8):
   α = 1, 0.8, 0.8², … (20 tries), the first with L(θ + αd) ≤ L(θ) + 10⁻²·α·∇Lᵀd; if none
   passes, no step (α = 0).

Options (defaults): ``damping`` initial λ (0.1, the paper's logged 5d value; the package's
own default is 1.0), ``cg_max_iter`` (250, the package's), ``cg_decay_x0`` (0.95),
``use_cg_backtracking`` (True), ``use_linesearch`` (True; off: α = 1), ``adapt_damping``
(True; off: λ fixed), ``min_damping`` (0: the package has no floor).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from ..residuals import as_operator
from .common import Diagnostics, check_damping, empty_diagnostics, require_first, safe_direction

#: Martens' relative-progress test: window k = max(_MARTENS_MIN_WINDOW, ⌊i/10⌋), threshold ε.
_MARTENS_MIN_WINDOW = 10
_MARTENS_EPS = 5e-4
#: the package's residual test, ‖Ax − b‖ < tol·‖b‖, next to Martens' test.
_CG_TOL = 1e-5
#: storage grid of CG backtracking: iterations ⌈γʲ⌉ − 1.
_GRID_GAMMA = 1.3
#: Armijo line search: shrink factor, sufficient-decrease constant c, number of tries.
_LS_SHRINK = 0.8
_LS_C = 1e-2
_LS_TRIES = 20


class HessianFreeState(NamedTuple):
    damping: jax.Array  # λ for the next step (adapted by the LM rule)
    count: jax.Array
    step_size: jax.Array  # α of the line search at the last step (0: no step)
    cg_x0: jax.Array  # CG start of the next step: cg_decay_x0 · last final CG iterate (flat)
    cg_iterations: jax.Array  # CG iterations of the last step
    cg_chosen: jax.Array  # CG iteration whose iterate the backtracking took (0: x₀)
    diagnostics: Diagnostics


def storage_grid(cg_max_iter: int) -> np.ndarray:
    """CG iterations whose iterates backtracking keeps: ⌈1.3ʲ⌉ − 1 ≤ ``cg_max_iter``, sorted
    and distinct (0, 1, 2, 3, 4, 6, 8, 10, 13, …).  Float64 powers: for j ≤ 40 (iterations
    up to 36,118) 1.3ʲ stays ≥ 1.6e-6 (relative) from an integer, so the package's float32
    powers round to the same iterations."""
    out, j = set(), 0
    while True:
        it = math.ceil(_GRID_GAMMA ** j) - 1
        if it > cg_max_iter:
            return np.asarray(sorted(out), np.int32)
        out.add(it)
        j += 1


class _CG(NamedTuple):
    x: jax.Array  # final iterate x_n
    kept: jax.Array  # (len(grid) + 1, P): iterate of grid[s] in row s (last row: scratch)
    iterations: jax.Array  # n
    m_0: jax.Array  # m(x₀)
    m_n: jax.Array  # m(x_n)


def _cg(a_mul, b, x0, max_iter: int, grid: np.ndarray) -> _CG:
    """CG on A x = b from x0 with the package's stopping rules (module docstring, step 1),
    keeping the iterates of the grid's iterations."""
    dtype = b.dtype
    n_slots = len(grid)
    slot_of = np.full(max_iter + 1, n_slots, np.int32)  # iterations off the grid: scratch
    slot_of[grid] = np.arange(n_slots, dtype=np.int32)
    slot_of = jnp.asarray(slot_of)
    bound = _CG_TOL * jnp.linalg.norm(b)
    res = a_mul(x0) - b  # the package's sign: res = Ax − b, p₀ = −res
    # m(x) = ½ xᵀAx − bᵀx = ½ (res − b)ᵀx: no extra product per iteration
    m_hist = jnp.zeros(max_iter + 1, dtype).at[0].set(0.5 * jnp.dot(res - b, x0))
    kept = jnp.zeros((n_slots + 1,) + b.shape, dtype).at[0].set(x0)  # grid[0] = 0: x₀

    def body(c):
        i, x, res, p, rr, m_hist, kept, _ = c
        ap = a_mul(p)
        pap = jnp.dot(p, ap)
        # pᵀAp ≤ 0 only for p = 0 (b = 0) or a rounding-level curvature at λ = 0: stop there
        # with x unchanged, where the package would divide by it
        curved = pap > 0
        alpha = jnp.where(curved, rr / jnp.where(curved, pap, 1.0), 0.0)
        x = x + alpha * p
        res = res + alpha * ap
        i = i + 1
        m_i = 0.5 * jnp.dot(res - b, x)
        m_hist = m_hist.at[i].set(m_i)
        kept = kept.at[slot_of[i]].set(x)
        k = jnp.maximum(_MARTENS_MIN_WINDOW, i // 10)
        progress = (m_i - m_hist[jnp.maximum(i - k, 0)]) / (m_i - m_hist[0])
        res_norm = jnp.linalg.norm(res)
        done = ((k < i) & (progress < _MARTENS_EPS)) | (i >= max_iter) | jnp.isnan(res_norm) \
            | (res_norm < bound) | ~curved
        rr_new = jnp.dot(res, res)
        p = -res + (rr_new / rr) * p
        return i, x, res, p, rr_new, m_hist, kept, done

    init = (jnp.zeros((), jnp.int32), x0, res, -res, jnp.dot(res, res), m_hist, kept,
            jnp.zeros((), bool))
    i, x, _, _, _, m_hist, kept, _ = lax.while_loop(lambda c: ~c[-1], body, init)
    return _CG(x, kept, i, m_hist[0], m_hist[i])


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def _check_number(name, value, lo, hi):
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and lo <= float(value) <= hi)
    if not ok:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def hessian_free(residual_fn, damping: float = 0.1, cg_max_iter: int = 250,
                 cg_decay_x0: float = 0.95, use_cg_backtracking: bool = True,
                 use_linesearch: bool = True, adapt_damping: bool = True,
                 min_damping: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """Hessian-free (Martens 2010) with the paper's settings; the algorithm and the defaults
    are in the module docstring.

    Args:
      damping: initial λ of JᵀJ + λI (0.1: the paper's 5d run), adapted if ``adapt_damping``.
      cg_max_iter: most CG iterations per step (the paper's 5d run: 350).
      cg_decay_x0: CG starts from this times the previous step's CG solution (0: from zero).
      use_cg_backtracking: choose among the kept CG iterates (else the last one).
      use_linesearch: Armijo backtracking on the step length (else α = 1).
      adapt_damping: the Levenberg–Marquardt rule for λ (else λ stays fixed).
      min_damping: floor of the adapted λ.
    """
    op = as_operator(residual_fn)
    damping = check_damping(damping)
    if callable(damping):
        raise ValueError("hessian_free adapts its damping itself: give the initial λ as a number")
    if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, (int, np.integer)) \
            or cg_max_iter < 1:
        raise ValueError(f"cg_max_iter must be a positive int, got {cg_max_iter!r}")
    cg_max_iter = int(cg_max_iter)
    cg_decay_x0 = _check_number("cg_decay_x0", cg_decay_x0, 0.0, 1.0)
    min_damping = _check_number("min_damping", min_damping, 0.0, math.inf)
    if not math.isfinite(min_damping):
        raise ValueError(f"min_damping must be a number in [0, inf), got {min_damping!r}")
    use_cg_backtracking = _check_bool("use_cg_backtracking", use_cg_backtracking)
    use_linesearch = _check_bool("use_linesearch", use_linesearch)
    adapt_damping = _check_bool("adapt_damping", adapt_damping)
    grid = storage_grid(cg_max_iter) if use_cg_backtracking else np.zeros(1, np.int32)

    def init(params):
        flat, _ = ravel_pytree(params)
        zero = jnp.zeros((), jnp.int32)
        return HessianFreeState(jnp.asarray(damping, flat.dtype), zero, jnp.zeros((), flat.dtype),
                                jnp.zeros_like(flat), zero, zero,
                                empty_diagnostics(flat.dtype, solver=None))

    def update(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        flat, unravel = require_first("hessian_free", updates, params, batch)
        # one forward pass; every CG product below reuses its linearisation
        r, jv, jtu = op.linearize(params, batch)
        loss0 = 0.5 * jnp.dot(r, r)
        grad = jtu(r)
        lam = state.damping

        def loss_at(step):
            # non-finite losses count as +inf: "lower" then never picks a NaN
            res = op(unravel(flat + step), batch)
            value = 0.5 * jnp.dot(res, res)
            return jnp.where(jnp.isfinite(value), value, jnp.inf)

        cg = _cg(lambda v: jtu(jv(v)) + lam * v, -grad, state.cg_x0, cg_max_iter, grid)
        x_n, _ = safe_direction(cg.x)
        # L at x_n, at x₀ (for ρ) and at 0 (the line search's L(θ)), as one batched pass: one
        # traced forward pass instead of three to compile
        points = [cg.x] + [state.cg_x0] * adapt_damping + [jnp.zeros_like(flat)] * use_linesearch
        f_points = jax.vmap(loss_at)(jnp.stack(points))
        f_n = f_points[0]

        if use_cg_backtracking:
            # kept iterates of grid iterations < n, walked back from the last while the loss
            # strictly decreases (row −1 stands for x_n)
            below = jnp.searchsorted(jnp.asarray(grid), cg.iterations, side="left")

            def back(c):
                s, best, f_best, _ = c
                f = loss_at(cg.kept[s])
                lower = f < f_best
                return (s - 1, jnp.where(lower, s, best), jnp.where(lower, f, f_best), lower)

            _, best, f_d, _ = lax.while_loop(lambda c: c[3] & (c[0] >= 0), back,
                                             (below - 1, jnp.asarray(-1, jnp.int32), f_n,
                                              jnp.asarray(True)))
            d = jnp.where(best < 0, cg.x, cg.kept[jnp.maximum(best, 0)])
            chosen = jnp.where(best < 0, cg.iterations, jnp.asarray(grid)[jnp.maximum(best, 0)])
        else:
            d, f_d, chosen = cg.x, f_n, cg.iterations
        d, nonfinite = safe_direction(d)

        if adapt_damping:
            rho = (f_n - f_points[1]) / (cg.m_n - cg.m_0)
            lam_new = jnp.where(rho < 0.25, lam * 1.5, jnp.where(rho > 0.75, lam * (2 / 3), lam))
            lam_new = jnp.maximum(lam_new, min_damping)
        else:
            lam_new = lam

        if use_linesearch:
            # L(θ) as the package's line search takes it, a forward pass like every candidate's
            # (not ½‖r‖² of the linearisation): a zero direction then passes Armijo exactly
            f_zero = f_points[-1]
            f_d = jnp.where(nonfinite > 0, f_zero, f_d)
            slope = _LS_C * jnp.dot(grad, d)

            def shrink(c):
                i, alpha, f_alpha, _ = c
                ok = f_alpha <= f_zero + alpha * slope
                nxt = alpha * _LS_SHRINK
                # the next loss only if this α failed and another try remains
                f_nxt = lax.cond(ok | (i == _LS_TRIES - 1), lambda: f_alpha,
                                 lambda: loss_at(nxt * d))
                return (i + 1, jnp.where(ok, alpha, nxt), f_nxt, ok)

            one = jnp.ones((), flat.dtype)
            _, alpha, _, found = lax.while_loop(lambda c: ~c[3] & (c[0] < _LS_TRIES), shrink,
                                                (jnp.zeros((), jnp.int32), one, f_d,
                                                 jnp.asarray(False)))
            alpha = jnp.where(found, alpha, 0.0)
        else:
            alpha = jnp.ones((), flat.dtype)

        diag = Diagnostics(loss0, jnp.linalg.norm(d), nonfinite=nonfinite)
        new_state = HessianFreeState(lam_new, state.count + 1, alpha, cg_decay_x0 * x_n,
                                     cg.iterations, chosen.astype(jnp.int32), diag)
        return unravel(alpha * d), new_state

    return optax.GradientTransformationExtraArgs(init, update)
