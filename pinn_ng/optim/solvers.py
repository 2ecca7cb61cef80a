"""Solvers for the damped sample-space system (K + λI) u = g, K = JJᵀ symmetric PSD.

**Solver objects** (what the optimizers take, lineax-style): :class:`Cholesky`,
:class:`Nystrom`, :class:`NystromGPU` and :class:`NystromPCG`.  Each is a frozen, hashable
dataclass (static under ``jax.jit``) with ``init()`` (its state, e.g. Cholesky's warm-start
rung) and ``solve(K or kmatmul, rhs, damping, state, key)``, which returns a
:class:`Solution`: u, the new state, and the solver's own numerical events (the
:class:`~pinn_ng.optim.common.Diagnostics` fields it fills, named by its ``events``).
:func:`as_solver` maps the presets' strings with their flat options to these objects.

The functions behind them:

- :func:`cholesky_solve`: exact.  Cholesky, not ``eigh``: a third of the flops of a
  symmetric eigensolver, and it reads only the lower triangle (so K's upper blocks need not
  be formed).  When K + λI is not numerically positive definite (tiny λ against K's rounding
  error, the usual case at the paper's λ), a jitter grows from 500·eps·mean(diag K) until the
  factorisation succeeds; only if that fails too does an eigendecomposition run (see its
  docstring for the policy and its cost).
- :func:`lstsq_solve`: minimum-norm least squares by SVD, as the ENGD reference code solves
  its P x P system on the CPU.
- :func:`nystrom_standard`: randomized Nyström approximation (Frangella, Tropp & Udell,
  "Randomized Nyström preconditioning", Alg. 2.1): orthonormalised Gaussian test matrix,
  shift ν = eps·‖Y‖_F, Cholesky of the core, thin SVD.
- :func:`nystrom_gpu`: the paper's GPU-efficient Algorithm 2: no QR, no SVD; keep B with
  BBᵀ ≈ K + νI and solve with an ℓ x ℓ Cholesky of BᵀB + λI through the Woodbury identity.
  By default ν = eps·‖Y‖_F as in the standard variant, so ℓ = N reproduces the exact solve; the
  reference code's fixed ν = 1e-7 is available as ``shift=1e-7``.
- :func:`pcg`: Nyström-preconditioned conjugate gradients (sketch-and-precondition).

The Nyström functions take ``kmatmul(V) -> K @ V`` for ``V`` of shape (N, k), so K may be
explicit or applied as J(JᵀV) (O(N·P·ℓ), never forming K).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from pinn_ng import blas

SOLVERS = ("cholesky", "nystrom", "nystrom_gpu", "nystrom_pcg")


class CholeskySolution(NamedTuple):
    u: jax.Array
    jitter: jax.Array  # extra shift added to λ so that the Cholesky worked (0: none)
    fallback: jax.Array  # 1.0 if every jittered Cholesky failed and the eigh fallback ran
    effective_dimension: jax.Array | None
    #: the rung of the jitter ladder that worked (0: λ alone, k ≥ 1: δ_k); on the eigh
    #: fallback the rung the solve started from.  Feed it back as ``start_rung`` to warm-start.
    rung: jax.Array | None = None
    #: ``jitter="none"`` only: 1.0 if the Cholesky of K + λI failed (``u`` is then NaN)
    failed: jax.Array | None = None


#: Jitter policies of :func:`cholesky_solve`: ``"ladder"`` (the default, below) or ``"none"``
#: (λ alone; a failed factorisation is reported, never repaired).
JITTER_POLICIES = ("ladder", "none")


#: Jitter policy of :func:`cholesky_solve`: the first extra shift is
#: ``_JITTER0_EPS · eps · mean(diag K)`` (≈ 1.1e-13 · mean(diag K) in float64), then it grows
#: ``_JITTER_GROWTH``-fold, at most ``_JITTER_TRIES`` times (up to ≈ 1.1e-6 · mean(diag K)).
_JITTER0_EPS = 500.0
_JITTER_GROWTH = 10.0
_JITTER_TRIES = 8


def _first_jitter(k_lower):
    """δ_1 = 500·eps·mean(|diag K|), non-finite diagonal entries ignored."""
    dtype = k_lower.dtype
    diag = jnp.diagonal(k_lower)
    scale = jnp.mean(jnp.where(jnp.isfinite(diag), jnp.abs(diag), 0.0))
    return _JITTER0_EPS * jnp.finfo(dtype).eps * jnp.maximum(scale, jnp.finfo(dtype).tiny)


def _rung_jitter(jitter0, rung):
    """δ_k = δ_1·10^(k−1) for k ≥ 1, 0 at rung 0."""
    rung = jnp.asarray(rung, jnp.int32)
    growth = _JITTER_GROWTH ** (jnp.maximum(rung, 1) - 1).astype(jitter0.dtype)
    return jnp.where(rung > 0, jitter0 * growth, jnp.zeros_like(jitter0))


def jitter_ladder(k_lower, rung):
    """δ_k of :func:`cholesky_solve`'s policy for ``k_lower``: 0 at rung 0, else
    500·eps·mean(|diag K|)·10^(k−1) (non-finite diagonal entries ignored)."""
    return _rung_jitter(_first_jitter(k_lower), rung)


def cholesky_solve(k_lower, damping, g, effective_dimension: bool = False,
                   start_rung=0, jitter: str = "ladder") -> CholeskySolution:
    """u = (K + λI)⁻¹ g from the lower triangle of K, robust to rounding (policy below).

    **Why a policy is needed.**  K = JJᵀ of a PINN is numerically rank-deficient: on the
    paper's 5d problem (P = 10,065, N = 3500) about 800 of K's eigenvalues lie below the
    paper's λ = 3.17e-12 while ‖K‖ ≈ 1.5e5, so the rounding error of *any* float64 K
    (≈ eps·‖K‖ ≈ 3e-11, whichever GEMM forms it) exceeds λ and K + λI is not numerically
    positive definite: its Cholesky fails although the exact matrix is.

    **Policy** (GPyTorch's ``psd_safe_cholesky`` idea, relative to K's scale):

    1. Cholesky of K + λI (the requested λ, no change when it succeeds).
    2. On failure (non-finite factor), add a jitter δ = 500·eps·mean(diag K) (≈ 1e-13
       relative in float64: the level of K's own rounding error) and retry, growing δ ten-fold
       at most 8 times.  The step then solves (K + (λ + δ)I) u = g: a positive definite system
       a distance δ from the requested one, so the direction is the ENGD direction with damping
       λ + δ.  ``jitter`` reports δ (0 when step 1 worked).  Each retry costs one more
       Cholesky, O(N³/3); at the paper's 5d λ almost every step needs one.
    3. If every jittered factorisation fails (e.g. non-finite entries in K), the
       eigendecomposition fallback runs: eigenvalues clipped at 0 and a pseudo-inverse of the
       spectrum below ``N·eps·max(σ + λ)``; ``fallback`` reports it (an eigendecomposition
       costs several Cholesky factorisations).

    With ``effective_dimension=True`` it also returns tr(K(K + λ'I)⁻¹) at the damping λ'
    actually used (λ + δ).

    **Warm start** (``start_rung`` = k > 0, e.g. the ``rung`` of the previous step's
    solution): step 1 tries δ_k at once instead of λ alone, and the ladder climbs from there.
    Where λ alone fails step after step (the paper's 5d λ: 66 of 76 ENGD-W steps) this saves
    the failed factorisation, one O(N³/3) Cholesky per step, at the price of using δ_k also
    in a step where a lower rung would have done.  ``start_rung`` is clipped to [0, 8].

    **No jitter** (``jitter="none"``): one Cholesky of K + λI, as the paper's reference code
    does; if it fails, ``failed`` is 1 and ``u`` is NaN (no jitter, no fallback), so that a
    study of the factorisation itself sees every failure.
    """
    if jitter not in JITTER_POLICIES:
        raise ValueError(f"unknown jitter policy {jitter!r}; valid: {list(JITTER_POLICIES)}")
    n = k_lower.shape[0]
    dtype = k_lower.dtype
    eye = jnp.eye(n, dtype=dtype)
    damping = jnp.asarray(damping, dtype)
    start = jnp.clip(jnp.asarray(start_rung, jnp.int32), 0, _JITTER_TRIES)
    jitter0 = _first_jitter(k_lower)

    def factor(jitter):
        return blas.cholesky_lower(k_lower + (damping + jitter) * eye)

    def solve(chol, shift):
        u = cho_solve((chol, True), g)
        d_eff = None
        if effective_dimension:
            # tr(K (K+λI)⁻¹) = N − λ tr((K+λI)⁻¹) = N − λ ‖L⁻¹‖_F²
            l_inv = solve_triangular(chol, eye, lower=True)
            d_eff = n - shift * jnp.sum(l_inv**2)
        return u, d_eff

    # Step 1 outside any control flow: an N x N factor that enters a cond or a while_loop costs
    # XLA copies.  Only vectors cross into the cond below.  (With effective_dimension, a failed
    # first factor also pays its triangular inverse: tracked runs only.)
    zero = jnp.zeros((), dtype)
    if jitter == "none":
        chol = factor(zero)
        ok = jnp.all(jnp.isfinite(chol))
        u, d_eff = solve(chol, damping)
        nan = jnp.full_like(u, jnp.nan)
        return CholeskySolution(jnp.where(ok, u, nan), zero, zero,
                                None if d_eff is None else jnp.where(ok, d_eff, jnp.nan),
                                jnp.zeros((), jnp.int32), 1.0 - ok.astype(dtype))
    shift0 = _rung_jitter(jitter0, start)
    chol0 = factor(shift0)
    ok0 = jnp.all(jnp.isfinite(chol0))
    u0, d_eff0 = solve(chol0, damping + shift0)

    def first_try():
        return u0, d_eff0, shift0, zero, start

    def with_jitter():
        def failed(carry):
            i, _, chol = carry
            return (i <= _JITTER_TRIES) & ~jnp.all(jnp.isfinite(chol))

        def retry(carry):
            i, _, _ = carry
            jitter = _rung_jitter(jitter0, i)
            return i + 1, jitter, factor(jitter)

        i, jitter, chol = jax.lax.while_loop(
            failed, retry, (start + 1, zero, jnp.full_like(k_lower, jnp.nan)))
        ok = jnp.all(jnp.isfinite(chol))

        def via_cholesky(_):
            return solve(chol, damping + jitter)

        def via_eigh(_):
            k_full = symmetrize_lower(k_lower)
            k_full = jnp.where(jnp.isfinite(k_full), k_full, 0.0)
            sigma, vecs = jnp.linalg.eigh(k_full)
            sigma = jnp.maximum(sigma, 0.0)
            denom = sigma + damping
            tol = jnp.finfo(dtype).eps * jnp.maximum(jnp.max(denom), 1e-300) * n
            inv = jnp.where(denom > tol, 1.0 / jnp.where(denom > tol, denom, 1.0), 0.0)
            u = vecs @ (inv * (vecs.T @ g))
            d_eff = jnp.sum(sigma * inv) if effective_dimension else None
            return u, d_eff

        u, d_eff = jax.lax.cond(ok, via_cholesky, via_eigh, None)
        return (u, d_eff, jnp.where(ok, jitter, zero), 1.0 - ok.astype(dtype),
                jnp.where(ok, i - 1, start))

    u, d_eff, jitter, fallback, rung = jax.lax.cond(ok0, first_try, with_jitter)
    return CholeskySolution(u, jitter, fallback, d_eff, rung)


def lstsq_solve(a, damping, g) -> jax.Array:
    """u = argmin ‖(A + λI) u − g‖ of minimum norm, by SVD (LAPACK's gelsd semantics).

    What the ENGD reference code does for its P x P system on the CPU (``solver="lstsq"``):
    about ten times the cost of a Cholesky, kept to time ENGD as the paper ran it.  ``a``
    must be the full symmetric matrix.  Singular values below ``eps·max(M, N)·σ_max`` are
    treated as zero (NumPy's and JAX's default cut-off).
    """
    n = a.shape[0]
    return jnp.linalg.lstsq(a + damping * jnp.eye(n, dtype=a.dtype), g)[0]


def symmetrize_lower(k_lower):
    """Full symmetric matrix from one whose lower triangle is valid."""
    low = jnp.tril(k_lower)
    return low + jnp.tril(low, -1).T


def _shift(y):
    return jnp.finfo(y.dtype).eps * jnp.linalg.norm(y)


#: On a failed core Cholesky the Nyström shift ν grows by this factor, at most _SHIFT_TRIES times.
_SHIFT_GROWTH = 100.0
_SHIFT_TRIES = 6


def _core(y, omega, shift):
    """B = Y_ν C⁻¹ with CᵀC = Ωᵀ Y_ν (C upper), Y_ν = Y + νΩ.

    Ωᵀ(K + νI)Ω is only as well conditioned as ν allows: with a tiny ν and a nearly singular
    K (typical of PINN kernels) its Cholesky can fail in floating point, more often for the
    un-orthonormalised Ω of the GPU variant.  Documented fallback: ν grows 100-fold until
    the factor is finite (at most 6 times).  Returns (B, ν used, 1.0 if ν had to grow).
    """

    def factor(nu):
        y_nu = y + nu * omega
        core = omega.T @ y_nu
        return y_nu, jnp.linalg.cholesky(0.5 * (core + core.T))  # lower L = Cᵀ

    def failed(carry):
        i, _, _, chol = carry
        return (i < _SHIFT_TRIES) & ~jnp.all(jnp.isfinite(chol))

    def grow(carry):
        i, nu, _, _ = carry
        nu = jnp.maximum(nu * _SHIFT_GROWTH, jnp.finfo(y.dtype).tiny)
        return (i + 1, nu) + factor(nu)

    nu0 = jnp.asarray(shift, y.dtype)
    i, nu, y_nu, chol = jax.lax.while_loop(failed, grow, (0, nu0) + factor(nu0))
    # B = Y_ν C⁻¹ = Y_ν L⁻ᵀ  ->  Bᵀ = L⁻¹ Y_νᵀ
    b = solve_triangular(chol, y_nu.T, lower=True).T
    return b, nu, (i > 0).astype(y.dtype)


class StandardNystrom(NamedTuple):
    """K̂ = U diag(eigvals) Uᵀ (rank ℓ, eigenvalues descending)."""

    u: jax.Array
    eigvals: jax.Array
    shift: jax.Array  # the shift ν used
    shift_grown: jax.Array  # 1.0 if the core Cholesky needed a larger shift ν

    def solve(self, g, damping):
        """(K̂ + λI)⁻¹ g = U diag(1/(Λ+λ)) Uᵀ g + (g − UUᵀg)/λ."""
        ug = self.u.T @ g
        return self.u @ (ug / (self.eigvals + damping)) + (g - self.u @ ug) / damping

    def effective_dimension(self, damping):
        return jnp.sum(self.eigvals / (self.eigvals + damping))

    def precondition(self, g, damping):
        """P⁻¹g for the Nyström preconditioner: (λ_ℓ+λ) U (Λ+λ)⁻¹ Uᵀ g + (I − UUᵀ) g."""
        ug = self.u.T @ g
        lam_l = self.eigvals[-1]
        return (lam_l + damping) * (self.u @ (ug / (self.eigvals + damping))) + g - self.u @ ug


def _check_sketch(n: int, sketch_size: int) -> None:
    if not 0 < sketch_size <= n:
        raise ValueError(f"sketch_size must be in [1, N={n}], got {sketch_size}")


def nystrom_standard(kmatmul: Callable, n: int, sketch_size: int, key, dtype) -> StandardNystrom:
    """Standard randomized Nyström of K (Frangella et al. Alg. 2.1): QR, shift, Cholesky, SVD."""
    _check_sketch(n, sketch_size)
    omega = jax.random.normal(key, (n, sketch_size), dtype=dtype)
    omega, _ = jnp.linalg.qr(omega)
    y = kmatmul(omega)
    b, nu, grown = _core(y, omega, _shift(y))
    u, s, _ = jnp.linalg.svd(b, full_matrices=False)
    return StandardNystrom(u, jnp.maximum(s**2 - nu, 0.0), nu, grown)


class GpuNystrom(NamedTuple):
    """B with BBᵀ ≈ K + νI and L = chol(BᵀB + λI); damping λ baked in."""

    b: jax.Array
    chol: jax.Array
    damping: jax.Array
    shift: jax.Array  # the shift ν used
    shift_grown: jax.Array  # 1.0 if the core Cholesky needed a larger shift ν

    def solve(self, g):
        """(BBᵀ + λI)⁻¹ g = (g − B L⁻ᵀ L⁻¹ Bᵀ g) / λ  (Woodbury)."""
        w = cho_solve((self.chol, True), self.b.T @ g)
        return (g - self.b @ w) / self.damping

    def effective_dimension(self):
        sig = jnp.maximum(jnp.linalg.eigvalsh(self.b.T @ self.b), 0.0)
        return jnp.sum(sig / (sig + self.damping))


def nystrom_gpu(kmatmul: Callable, n: int, sketch_size: int, key, dtype, damping,
                shift: float | None = None) -> GpuNystrom:
    """The paper's GPU-efficient randomized Nyström (Algorithm 2): Cholesky only."""
    _check_sketch(n, sketch_size)
    omega = jax.random.normal(key, (n, sketch_size), dtype=dtype)
    y = kmatmul(omega)
    nu = _shift(y) if shift is None else jnp.asarray(shift, dtype)
    b, nu, grown = _core(y, omega, nu)
    small = b.T @ b + damping * jnp.eye(sketch_size, dtype=dtype)
    return GpuNystrom(b, jnp.linalg.cholesky(small), jnp.asarray(damping, dtype), nu, grown)


def conjugate_gradient(matvec: Callable, b, x0=None, maxiter: int = 100, tol: float = 0.0,
                       precond: Callable | None = None):
    """(Preconditioned) conjugate gradients for a symmetric positive definite operator.

    Stops after ``maxiter`` iterations or once ‖b − A x‖ ≤ tol·‖b‖.  Unlike a textbook loop it
    also stops cleanly at an exact solution (rᵀz = 0), where the next step would divide 0 by 0.
    Returns ``(x, iterations)``.
    """
    precond = precond or (lambda v: v)
    x = jnp.zeros_like(b) if x0 is None else x0
    r = b - matvec(x)
    z = precond(r)
    p = z
    rz = jnp.dot(r, z)
    stop = tol * jnp.linalg.norm(b)
    tiny = jnp.finfo(b.dtype).tiny

    def cond(carry):
        i, _, r, _, _, rz = carry
        return (i < maxiter) & (jnp.linalg.norm(r) > stop) & (jnp.abs(rz) > tiny)

    def body(carry):
        i, x, r, z, p, rz = carry
        ap = matvec(p)
        pap = jnp.dot(p, ap)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = jnp.dot(r, z)
        beta = rz_new / rz
        return i + 1, x, r, z, z + beta * p, rz_new

    i, x, *_ = jax.lax.while_loop(cond, body, (0, x, r, z, p, rz))
    return x, i


def pcg(kmatvec: Callable, g, damping, precond: StandardNystrom, maxiter: int, tol: float = 0.0):
    """Solve (K + λI) u = g by CG preconditioned with a standard Nyström approximation.

    Starts from the sketch-and-solve answer and runs at most ``maxiter`` iterations (the
    reference code uses 5), stopping early once ‖residual‖ ≤ tol·‖g‖.
    """
    u, _ = conjugate_gradient(lambda v: kmatvec(v) + damping * v, g,
                              x0=precond.solve(g, damping), maxiter=maxiter, tol=tol,
                              precond=lambda v: precond.precondition(v, damping))
    return u


# ---------------------------------------------------------------------------------------------
# Solver objects: what the optimizers take.  Frozen dataclasses, so they are hashable and can
# be static arguments of jax.jit; options are keyword-only, as in optax.


class Solution(NamedTuple):
    """What a solver object's ``solve`` returns."""

    u: jax.Array  # (K + λI)⁻¹ rhs, exactly or approximately
    state: Any  # the solver's state for the next solve (None for a stateless solver)
    #: the solver's numerical events, ``{field: scalar}``: exactly the
    #: :class:`~pinn_ng.optim.common.Diagnostics` fields named by the solver's ``events``
    events: dict
    effective_dimension: jax.Array | None = None  # tr(K(K+λI)⁻¹) when asked for, else None


class CholeskyState(NamedTuple):
    rung: jax.Array  # the jitter rung the last solve used (kept only with jitter_warm_start)


class Solver:
    """Base of the solver objects.

    ``events``: the :class:`~pinn_ng.optim.common.Diagnostics` fields ``solve`` reports.
    ``needs_matrix``: ``solve`` factorises K itself (pass K, of which it reads the lower
    triangle) rather than only multiplying by it.  ``needs_damping``: the solve divides by λ,
    so λ must be > 0.
    """

    events: tuple = ()
    needs_matrix = False
    needs_damping = False

    def init(self):
        """The state of the first solve (None: stateless)."""
        return None

    def solve(self, kernel, rhs, damping, state=None, key=None, *,
              effective_dimension: bool = False) -> Solution:
        """Solve (K + λI) u = rhs; ``kernel`` is K (lower triangle read) or ``V -> K @ V``."""
        raise NotImplementedError(f"{type(self).__name__}.solve")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cholesky(Solver):
    """Exact solve by Cholesky with the jitter policy of :func:`cholesky_solve`.

    ``jitter``: ``"ladder"`` (default: a failed factorisation is retried with a growing jitter,
    then an eigh fallback) or ``"none"`` (λ alone, as the paper's reference code; a failure is
    reported as ``solve_failed`` with u = NaN).  ``jitter_warm_start``: start each solve's
    ladder at the rung the previous one needed (the state carries it): where λ alone fails
    every step this saves one failed O(N³/3) factorisation per step, at the price of using
    that rung's δ also where a lower rung would have done.

    Events: ``jitter`` (δ added to λ, 0 if none) and ``cholesky_fallback``; with
    ``jitter="none"`` also ``solve_failed``.
    """

    jitter_warm_start: bool = False
    jitter: str = "ladder"

    needs_matrix = True

    def __post_init__(self):
        if not isinstance(self.jitter_warm_start, bool):
            raise ValueError(
                f"jitter_warm_start must be True or False, got {self.jitter_warm_start!r}")
        if self.jitter not in JITTER_POLICIES:
            raise ValueError(f"jitter must be one of {list(JITTER_POLICIES)}, got {self.jitter!r}")
        if self.jitter == "none" and self.jitter_warm_start:
            raise ValueError("jitter='none' never jitters: jitter_warm_start must be False")

    @property
    def events(self) -> tuple:
        base = ("jitter", "cholesky_fallback")
        return base + ("solve_failed",) if self.jitter == "none" else base

    def init(self) -> CholeskyState:
        return CholeskyState(jnp.zeros((), jnp.int32))

    def solve(self, kernel, rhs, damping, state=None, key=None, *,
              effective_dimension: bool = False) -> Solution:
        """u = (K + λI)⁻¹ rhs from K's lower triangle (``key`` is unused)."""
        del key
        if callable(kernel):
            raise TypeError("Cholesky factorises K itself: pass K (its lower triangle is "
                            "read), not a product function V -> K V")
        state = self.init() if state is None else state
        sol = cholesky_solve(kernel, damping, rhs, effective_dimension,
                             start_rung=state.rung if self.jitter_warm_start else 0,
                             jitter=self.jitter)
        rung = sol.rung if self.jitter_warm_start else jnp.zeros((), jnp.int32)
        events = {"jitter": sol.jitter, "cholesky_fallback": sol.fallback}
        if self.jitter == "none":
            events["solve_failed"] = sol.failed
        return Solution(sol.u, CholeskyState(rung), events, sol.effective_dimension)


def check_sketch_size(sketch_size):
    """ℓ as given: an int >= 1 (columns) or a fraction of N in (0, 1]; raise otherwise."""
    if isinstance(sketch_size, bool):
        raise ValueError(
            f"sketch_size must be an int >= 1 or a fraction in (0, 1], got {sketch_size!r}")
    if isinstance(sketch_size, numbers.Integral):
        if sketch_size <= 0:
            raise ValueError(f"sketch_size must be >= 1, got {sketch_size}")
        return int(sketch_size)
    if isinstance(sketch_size, float) and 0.0 < sketch_size <= 1.0:
        return sketch_size
    raise ValueError(
        f"sketch_size must be an int >= 1 or a fraction in (0, 1], got {sketch_size!r}")


def _as_kmatmul(kernel) -> Callable:
    if callable(kernel):
        return kernel
    return lambda v: symmetrize_lower(kernel) @ v


def _need_key(solver, key):
    if key is None:
        raise ValueError(f"{type(solver).__name__}.solve needs key=: a PRNG key for its sketch")


@dataclasses.dataclass(frozen=True)
class _Sketched(Solver):
    """A randomized Nyström solver: ``sketch_size`` ℓ is an int, or a fraction of N (the
    paper's large-batch runs: 0.1), resolved as ⌈ℓ·N⌉ when the batch size N is known."""

    sketch_size: int | float

    events = ("nystrom_shift", "shift_grown")
    needs_damping = True

    def __post_init__(self):
        object.__setattr__(self, "sketch_size", check_sketch_size(self.sketch_size))

    def columns(self, n: int) -> int:
        """ℓ for a batch of N = ``n`` rows."""
        ss = self.sketch_size
        ell = math.ceil(ss * n) if isinstance(ss, float) else ss
        if ell > n:
            raise ValueError(f"sketch_size ℓ = {ell} exceeds the batch size N = {n}")
        return ell


@dataclasses.dataclass(frozen=True)
class Nystrom(_Sketched):
    """Sketch-and-solve with the standard randomized Nyström approximation
    (:func:`nystrom_standard`).  Events: ``nystrom_shift`` (ν) and ``shift_grown``."""

    def solve(self, kernel, rhs, damping, state=None, key=None, *,
              effective_dimension: bool = False) -> Solution:
        _need_key(self, key)
        n = rhs.shape[0]
        ny = nystrom_standard(_as_kmatmul(kernel), n, self.columns(n), key, rhs.dtype)
        d_eff = ny.effective_dimension(damping) if effective_dimension else None
        return Solution(ny.solve(rhs, damping), state,
                        {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}, d_eff)


@dataclasses.dataclass(frozen=True)
class NystromGPU(_Sketched):
    """The paper's GPU-efficient Nyström solve (Algorithm 2, :func:`nystrom_gpu`): Cholesky
    factorisations only.  ``shift``: ν (None: eps·‖KΩ‖_F, so that ℓ = N is exact; the
    reference code's 1e-7 as ``shift=1e-7``).  Events: ``nystrom_shift`` and ``shift_grown``."""

    _: dataclasses.KW_ONLY
    shift: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.shift is not None:
            ok = isinstance(self.shift, numbers.Real) and not isinstance(self.shift, bool)
            if not ok or not (math.isfinite(self.shift) and self.shift >= 0):
                raise ValueError(f"shift (ν) must be None or a finite number >= 0, "
                                 f"got {self.shift!r}")
            object.__setattr__(self, "shift", float(self.shift))

    def solve(self, kernel, rhs, damping, state=None, key=None, *,
              effective_dimension: bool = False) -> Solution:
        _need_key(self, key)
        n = rhs.shape[0]
        ny = nystrom_gpu(_as_kmatmul(kernel), n, self.columns(n), key, rhs.dtype, damping,
                         self.shift)
        d_eff = ny.effective_dimension() if effective_dimension else None
        return Solution(ny.solve(rhs), state,
                        {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown}, d_eff)


@dataclasses.dataclass(frozen=True)
class NystromPCG(_Sketched):
    """Conjugate gradients on K + λI preconditioned with the standard Nyström sketch
    (:func:`pcg`), started from the sketch-and-solve answer; ``iters`` iterations (5 in the
    reference code).  Events: ``nystrom_shift`` and ``shift_grown`` of the sketch."""

    _: dataclasses.KW_ONLY
    iters: int = 5

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.iters, bool) or not isinstance(self.iters, numbers.Integral) \
                or self.iters <= 0:
            raise ValueError(f"iters must be a positive int, got {self.iters!r}")
        object.__setattr__(self, "iters", int(self.iters))

    def solve(self, kernel, rhs, damping, state=None, key=None, *,
              effective_dimension: bool = False) -> Solution:
        _need_key(self, key)
        n = rhs.shape[0]
        kmatmul = _as_kmatmul(kernel)
        ny = nystrom_standard(kmatmul, n, self.columns(n), key, rhs.dtype)
        u = pcg(lambda v: kmatmul(v[:, None])[:, 0], rhs, damping, ny, self.iters)
        d_eff = ny.effective_dimension(damping) if effective_dimension else None
        return Solution(u, state, {"nystrom_shift": ny.shift, "shift_grown": ny.shift_grown},
                        d_eff)


#: The presets' solver names and the objects they stand for (see :func:`as_solver`).
SOLVER_CLASSES = {"cholesky": Cholesky, "nystrom": Nystrom, "nystrom_gpu": NystromGPU,
                  "nystrom_pcg": NystromPCG}

#: The flat options of the optimizer factories and presets: the solvers each applies to, and
#: the solver field it sets.
FLAT_OPTIONS = {
    "jitter_warm_start": (("cholesky",), "jitter_warm_start"),
    "jitter": (("cholesky",), "jitter"),
    "sketch_size": (("nystrom", "nystrom_gpu", "nystrom_pcg"), "sketch_size"),
    "nystrom_shift": (("nystrom_gpu",), "shift"),
    "pcg_iters": (("nystrom_pcg",), "iters"),
}


def _only(names) -> str:
    quoted = [f"solver={n!r}" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def as_solver(solver="cholesky", **options) -> Solver:
    """A solver object from a preset string and flat options, or an object unchanged.

    ``solver``: a :class:`Solver` (``Cholesky(...)``, ``Nystrom(ℓ)``, ...) or one of
    ``"cholesky"``, ``"nystrom"``, ``"nystrom_gpu"``, ``"nystrom_pcg"``.  ``options``: the flat
    options ``jitter_warm_start``, ``jitter``, ``sketch_size``, ``nystrom_shift``,
    ``pcg_iters``; None means not given.  A flat option that does not apply to the chosen
    solver raises ``ValueError`` (it would otherwise be silently ignored), as does any flat
    option next to a solver object (set it on the object).
    """
    unknown = sorted(set(options) - set(FLAT_OPTIONS))
    if unknown:
        raise TypeError(f"unknown solver option(s) {unknown}; valid: {list(FLAT_OPTIONS)}")
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(solver, Solver):
        if given:
            raise ValueError(
                f"solver={solver!r} is an object: set its options on it, not as flat "
                f"option(s) {', '.join(sorted(given))}")
        return solver
    if not isinstance(solver, str):
        raise ValueError(f"solver must be one of {list(SOLVERS)} or a solver object "
                         f"({', '.join(c.__name__ for c in SOLVER_CLASSES.values())}), "
                         f"got {solver!r}")
    if solver not in SOLVER_CLASSES:
        raise ValueError(f"unknown solver {solver!r}; valid: {list(SOLVERS)}")
    for name, value in given.items():
        applies, _ = FLAT_OPTIONS[name]
        if solver not in applies:
            raise ValueError(f"{name}={value!r} applies to {_only(applies)} only, "
                             f"got solver={solver!r}")
    fields = {FLAT_OPTIONS[k][1]: v for k, v in given.items()}
    if solver == "cholesky":
        return Cholesky(**fields)
    if "sketch_size" not in fields:
        raise ValueError(f"solver {solver!r} needs sketch_size (ℓ, an int, or a fraction of N)")
    return SOLVER_CLASSES[solver](fields.pop("sketch_size"), **fields)
