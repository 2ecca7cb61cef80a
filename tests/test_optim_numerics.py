"""Numerics of the optimizers not covered by test_optim.py (issue 9, §6), each against a dense
float64 reference computed here: Hessian-free's damping rule and backtracking, SPRING's
blocked kernel with momentum, the Nyström shift growth, and float32 runs.

Tolerances are stated from the conditioning of the system solved (eps = unit roundoff of the
dtype, cond = 2-norm condition number computed from the dense reference), never from sampling.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import models, optim, problems
from pinn_ng.optim import solvers
from pinn_ng.residuals import ResidualFn, scaled_residuals

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
SEEDS = [0, 1, 2]
#: (variant, seed): every seed jitted (one compilation per optimizer object, reused across
#: seeds on one xdist worker), the first seed also eagerly (an eager update re-traces its
#: loops on every call, seconds each: as in test_optim.py)
VARIANT_SEEDS = [pytest.param("jit", s, id=f"jit-{s}") for s in SEEDS] + [
    pytest.param("eager", SEEDS[0], id=f"eager-{SEEDS[0]}")]
#: the same with the eager case `slow` (opt in with -m slow), for a test whose eager case
#: costs 35–60 s
VARIANT_SEEDS_SLOW_EAGER = VARIANT_SEEDS[:-1] + [
    pytest.param("eager", SEEDS[0], id=f"eager-{SEEDS[0]}", marks=pytest.mark.slow)]


def with_variant_and_seed(test, seeds=VARIANT_SEEDS):
    test = pytest.mark.xdist_group(name=test.__name__)(test)
    return pytest.mark.parametrize("variant,seed", seeds, indirect=["variant"])(test)


@functools.lru_cache(maxsize=None)
def cached(factory, residual_fn, **hparams):
    """One optimizer object per configuration, so a jitted ``update`` compiles once."""
    return factory(residual_fn, **hparams)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.fixture(scope="module")
def tiny():
    """poisson2d, net 2-6-5-1 (P = 59), fast residual function."""
    problem = problems.get("poisson2d")
    init, apply = models.mlp((2, 6, 5, 1))
    return problem, init, apply, ResidualFn(problem, apply)


# ------------------------------------------------------------------ Hessian-free, one step

#: toy problem sizes: N residuals, P parameters
HF_N, HF_P = 8, 5


def toy_residual(theta, batch):
    """r(θ) = Aθ − b + γ‖θ − θ₀‖² c.

    At θ = θ₀ the quadratic term and its gradient vanish, so r and J = A are those of the linear
    part, and the Gauss–Newton model is exact for γ = 0 (ρ = 1); γ > 0 bends the loss along the
    step and lowers ρ continuously (ρ → −∞ as γ → ∞), so γ selects the damping branch.
    """
    shift = theta - batch["theta0"]
    return batch["a"] @ theta - batch["b"] + batch["gamma"] * jnp.dot(shift, shift) * batch["c"]


def toy_problem(seed, gamma=0.0):
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(HF_P)
    batch = {"a": rng.standard_normal((HF_N, HF_P)), "b": rng.standard_normal(HF_N),
             "c": rng.standard_normal(HF_N), "theta0": theta0, "gamma": np.float64(gamma)}
    return jnp.asarray(theta0), jax.tree_util.tree_map(jnp.asarray, batch)


def hf_reference(residual_fn, params, batch, damping, min_damping):
    """One Hessian-free step, densely in float64 (rules of pinn_ng/optim/hessian_free.py)."""
    theta, unravel = ravel_pytree(params)
    theta = np.asarray(theta)

    res_of = jax.jit(lambda w: residual_fn(unravel(w), batch))

    def loss(w):
        res = np.asarray(res_of(jnp.asarray(w)))
        return 0.5 * float(res @ res)

    r = np.asarray(res_of(jnp.asarray(theta)))
    jac = np.asarray(jax.jit(jax.jacrev(res_of))(jnp.asarray(theta)))
    loss0 = 0.5 * float(r @ r)
    grad = jac.T @ r
    a = jac.T @ jac + damping * np.eye(theta.size)
    d = np.linalg.solve(a, -grad)
    g_d = float(grad @ d)
    model = g_d + 0.5 * float(np.sum((jac @ d) ** 2))
    rho = (loss(theta + d) - loss0) / model if model < 0 else -np.inf
    lam = 1.5 * damping if rho < 0.25 else (damping * 2 / 3 if rho > 0.75 else damping)
    lam = max(lam, min_damping)
    alpha, margin = 0.0, np.inf
    for k in range(11):  # α ∈ {1, 1/2, …, 2⁻¹⁰}: the largest with Armijo decrease
        candidate = 2.0**-k
        gap = loss(theta + candidate * d) - (loss0 + 1e-2 * candidate * g_d)
        margin = min(margin, abs(gap) / max(loss0, 1e-300))
        if gap < 0:
            alpha = candidate
            break
    return dict(d=d, rho=rho, damping=lam, alpha=alpha, loss0=loss0, cond=np.linalg.cond(a),
                armijo_margin=margin, model=model, jac=jac, r=r)


def gamma_for_rho(seed, damping, rho_target):
    """γ of :func:`toy_residual` for which the reference ρ equals ``rho_target``.

    With d fixed by the linear part (independent of γ), L(θ₀ + d) = ½‖r₀ + Ad + γ‖d‖²c‖², so
    ρ(γ) = 1 + (γ s + ½ γ² t) / q with s = ‖d‖² cᵀ(r₀ + Ad), t = ‖d‖⁴‖c‖², q = the model
    decrease (< 0); ρ(γ) = ρ* is a quadratic equation in γ with one positive root.
    """
    theta, batch = toy_problem(seed)
    ref = hf_reference(toy_residual, theta, batch, damping, 0.0)
    d, c = ref["d"], np.asarray(batch["c"])
    s = float(d @ d) * float(c @ (ref["r"] + ref["jac"] @ d))
    t = float(d @ d) ** 2 * float(c @ c)
    q = ref["model"]
    # ½ t γ² + s γ + (1 − ρ*) q = 0
    return (-s + np.sqrt(s * s - 2.0 * t * (1.0 - rho_target) * q)) / t


#: case -> (initial damping, target ρ (None: γ = 0, the GN model is exact), min_damping)
HF_CASES = {
    "decrease": (1e-3, None, 1e-12),  # ρ = 1 > 3/4: λ ← 2/3 λ, full step
    "keep": (1e-2, 0.5, 1e-12),  # 1/4 ≤ ρ ≤ 3/4: λ unchanged, full step (Armijo holds)
    "increase": (1e-2, -1.0, 1e-12),  # ρ < 1/4: λ ← 3/2 λ; L(θ+d) > L0: backtracking, α < 1
    "floor": (1e-3, None, 1e-3),  # ρ = 1 but 2/3 λ < min_damping: λ stays at the floor
    "no_step": (1e-2, -1e20, 1e-12),  # so bent that no α ≥ 2⁻¹⁰ passes Armijo: no step
}


@pytest.mark.parametrize("case", list(HF_CASES))
@with_variant_and_seed
def test_hessian_free_step_matches_dense_reference(case, variant, seed):
    damping, rho_target, min_damping = HF_CASES[case]
    gamma = 0.0 if rho_target is None else gamma_for_rho(seed, damping, rho_target)
    theta, batch = toy_problem(seed, gamma)
    ref = hf_reference(toy_residual, theta, batch, damping, min_damping)
    # the case exercises the branch it names (and is not within rounding of a threshold)
    if case in ("decrease", "floor"):
        assert ref["rho"] > 0.75 + 1e-3
    elif case == "keep":
        assert 0.25 + 1e-3 < ref["rho"] < 0.75 - 1e-3 and ref["alpha"] == 1.0
    else:
        assert ref["rho"] < 0.25 - 1e-3
    if case == "increase":
        assert 0.0 < ref["alpha"] < 1.0
    if case == "no_step":
        assert ref["alpha"] == 0.0
    if case == "floor":
        assert ref["damping"] == min_damping > damping * 2 / 3
    assert ref["armijo_margin"] > 1e-8  # Armijo decided far from rounding

    # CG on P unknowns converges in P steps in exact arithmetic; 2P and a tiny tolerance make
    # it a direct solve here (cond(JᵀJ + λI) ≤ ~1e3).
    opt = cached(optim.hessian_free, toy_residual, damping=damping, cg_iters=2 * HF_P,
                 cg_tol=1e-14, min_damping=min_damping)
    update = variant(opt.update)
    state = opt.init(theta)
    upd, state = update(None, state, theta, batch=batch)
    diag = optim.diagnostics(state)
    # d solves (JᵀJ + λI) d = −∇L: rel. error ≲ cond(JᵀJ + λI)·eps, ×100 for CG's constants
    tol = 100 * ref["cond"] * EPS64
    assert float(diag["step_size"]) == ref["alpha"]
    assert rel_err(diag["phi_norm"], np.linalg.norm(ref["d"])) <= tol
    if ref["alpha"] > 0:
        assert rel_err(upd, ref["alpha"] * ref["d"]) <= tol
    else:
        assert np.all(np.asarray(upd) == 0.0)
    np.testing.assert_allclose(float(state.damping), ref["damping"], rtol=4 * EPS64)
    np.testing.assert_allclose(float(diag["loss"]), ref["loss0"], rtol=10 * EPS64)


@pytest.fixture(scope="module")
def hf_pinn(tiny):
    """Tiny PINN problem and its dense one-step reference (shared by both variants)."""
    problem, init, apply, fast = tiny
    params = init(jax.random.PRNGKey(0))
    batch = problem.sample(jax.random.PRNGKey(1), 20, 10)

    def plain(prm, b):
        return scaled_residuals(problem, lambda x: apply(prm, x), b)

    return params, batch, hf_reference(plain, params, batch, 1e-2, 1e-12)


@pytest.mark.parametrize("variant", ["jit"], indirect=True)  # eager: the toy test above
def test_hessian_free_pinn_step_matches_dense_reference(tiny, hf_pinn, variant):
    """The same one-step reference on the PINN (fast residual: matrix-free J·v, Jᵀ·u)."""
    fast = tiny[3]
    params, batch, ref = hf_pinn
    damping, p = 1e-2, 59
    assert ref["armijo_margin"] > 1e-8 and min(abs(ref["rho"] - 0.25),
                                               abs(ref["rho"] - 0.75)) > 1e-3
    opt = optim.hessian_free(fast, damping=damping, cg_iters=4 * p, cg_tol=1e-14)
    upd, state = variant(opt.update)(None, opt.init(params), params, batch=batch)
    # cond(JᵀJ + λI) = (‖J‖² + λ)/λ ≈ 1e3 here; CG in float64 at that conditioning reaches
    # rel. error ≲ cond·eps after ≲ a few·P iterations (4P given)
    tol = 100 * ref["cond"] * EPS64
    assert float(optim.diagnostics(state)["step_size"]) == ref["alpha"] > 0
    assert rel_err(flat(upd), ref["alpha"] * ref["d"]) <= tol
    np.testing.assert_allclose(float(state.damping), ref["damping"], rtol=4 * EPS64)


# ------------------------------------------------------ SPRING: blocked kernel with momentum


@pytest.fixture(scope="module")
def spring_dense_and_blocked(tiny):
    """One pair for all seeds, so the jitted variant compiles once."""
    fast = tiny[3]
    kw = dict(learning_rate=0.3, norm_constraint=1e-2)
    return (optim.spring(fast, SPRING_LAMBDA, 0.7, **kw),
            optim.spring(fast, SPRING_LAMBDA, 0.7, kernel="blocked", block_size=7, **kw))


SPRING_LAMBDA = 1e-4


@functools.partial(with_variant_and_seed, seeds=VARIANT_SEEDS_SLOW_EAGER)
def test_blocked_kernel_with_momentum_matches_dense(tiny, spring_dense_and_blocked, variant, seed):
    """Several SPRING steps (μ = 0.7, fresh batch each): kernel="blocked" equals "dense"."""
    problem, init, apply, fast = tiny
    dense, blocked = spring_dense_and_blocked
    lam = SPRING_LAMBDA
    p_d = p_b = init(jax.random.PRNGKey(seed))
    s_d, s_b = dense.init(p_d), blocked.init(p_b)
    up_d, up_b = variant(dense.update), variant(blocked.update)
    conds = []
    for k in range(3):
        batch = problem.sample(jax.random.fold_in(jax.random.PRNGKey(100 + seed), k), 23, 9)
        _, jac = fast.residual_and_jacobian(p_d, batch)
        kmat = np.asarray(jac @ jac.T)
        conds.append(np.linalg.cond(kmat + lam * np.eye(len(kmat))))
        u_d, s_d = up_d(None, s_d, p_d, batch=batch)
        u_b, s_b = up_b(None, s_b, p_b, batch=batch)
        p_d, p_b = optax.apply_updates(p_d, u_d), optax.apply_updates(p_b, u_b)
    # Both solve the same (K + λI) u = ζ with K formed by different (blocked vs whole) GEMMs:
    # each step differs by ≲ cond(K + λI)·eps, and momentum carries earlier steps' errors
    # (weights μ^j ≤ 1, 3 steps): ×100 for the constants and the accumulation.
    tol = 100 * max(conds) * EPS64
    assert tol <= 1e-8
    assert rel_err(otu.tree_get(s_b, "phi"), otu.tree_get(s_d, "phi")) <= tol
    assert rel_err(flat(p_b) - flat(init(jax.random.PRNGKey(seed))),
                   flat(p_d) - flat(init(jax.random.PRNGKey(seed)))) <= tol
    np.testing.assert_allclose(float(optim.diagnostics(s_b, u_b)["step_size"]),
                               float(optim.diagnostics(s_d, u_d)["step_size"]), rtol=tol)


# ------------------------------------------------------------------ Nyström shift growth


def low_rank_with_rounding_noise(n, rank, seed, noise):
    """K = Q diag(σ) Qᵀ: rank ``rank`` with σ from 1e4 down to 1e-4 (badly scaled), plus one
    eigenvalue −noise·σ_max, the size of the rounding error a floating-point K = JJᵀ carries
    in its null space (exaggerated).  Returns (K, the negative eigenvalue)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    sigma = np.zeros(n)
    sigma[:rank] = np.logspace(4, -4, rank)
    sigma[-1] = -noise * sigma[0]
    return (q * sigma) @ q.T, sigma[-1]


def recording(kmat):
    """kmatmul for K that also records the test matrix Ω it was applied to."""
    seen = []

    def kmatmul(v):
        seen.append(np.asarray(v))
        return kmat @ v

    return kmatmul, seen


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["nystrom", "nystrom_gpu"])
def test_nystrom_shift_grows_when_the_core_cholesky_fails(method, seed):
    """Full sketch (ℓ = N) of a badly scaled low-rank K carrying a negative eigenvalue
    −1e-10·‖K‖ (rounding noise, exaggerated): by Sylvester's law of inertia Ωᵀ(K + νI)Ω has a
    negative eigenvalue for every invertible Ω while ν < 1e-10·‖K‖, and the default
    ν₀ = eps·‖KΩ‖_F (≈ 2.5e-12·‖K‖ here) is below that, so the core Cholesky must fail and ν
    must grow.  The solve is then that of the shifted system (dense float64 reference)."""
    n, rank, lam = 40, 25, 1e-2
    k, negative = low_rank_with_rounding_noise(n, rank, seed, 1e-10)
    g = np.random.default_rng(seed + 1).standard_normal(n)
    kj = jnp.asarray(k)
    kmatmul, seen = recording(kj)
    key = jax.random.PRNGKey(seed)
    if method == "nystrom":
        ny = solvers.nystrom_standard(kmatmul, n, n, key, jnp.float64)
    else:
        ny = solvers.nystrom_gpu(kmatmul, n, n, key, jnp.float64, lam)
    nu, omega = float(ny.shift), seen[0]
    nu0 = EPS64 * np.linalg.norm(k @ omega)  # the default shift eps·‖Y‖_F, Y = KΩ
    assert float(ny.shift_grown) == 1.0
    assert nu0 < -negative < nu  # the default could not work; the grown shift is past it
    if method == "nystrom":
        # K̂ = U diag(max(s² − ν, 0)) Uᵀ with UsVᵀ = B, BBᵀ = K + νI (ℓ = N): K̂ is K with its
        # negative eigenvalue clipped to 0; solve (K̂ + λI)u = g
        sig, vecs = np.linalg.eigh(k)
        a = (vecs * np.maximum(sig, 0.0)) @ vecs.T + lam * np.eye(n)
        u = np.asarray(ny.solve(jnp.asarray(g), lam))
    else:
        # BBᵀ = K + νI (ℓ = N, Ω square): the solve is (K + (ν + λ)I) u = g
        a = k + (nu + lam) * np.eye(n)
        u = np.asarray(ny.solve(jnp.asarray(g)))
    # both solves end in a division by λ ((g − U(…))/λ, (g − Bw)/λ): rounding of size
    # eps·‖K‖ in the sketch reaches u amplified by ‖K‖/λ (here 1e6), and for Algorithm 2's
    # un-orthonormalised Gaussian Ω also by cond(Ω) (C⁻¹ undoes Ω; = 1 for the standard
    # variant's orthonormal Ω): rel. error ≲ cond(Ω)·(‖K‖ + λ)/λ·eps, ×100 for constants
    tol = 100 * np.linalg.cond(omega) * (np.linalg.norm(k, 2) + lam) / lam * EPS64
    assert tol <= 1e-4
    assert rel_err(u, np.linalg.solve(a, g)) <= tol


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["nystrom", "nystrom_gpu"])
def test_nystrom_default_shift_suffices_for_a_well_conditioned_kernel(method, seed):
    """K = AAᵀ + I (cond ≈ 1e2): the default shift ν = eps·‖KΩ‖_F works, nothing grows."""
    n, ell, lam = 40, 40, 1e-2
    rng = np.random.default_rng(seed)
    a_ = rng.standard_normal((n, n)) / np.sqrt(n)
    k = a_ @ a_.T + np.eye(n)
    g = rng.standard_normal(n)
    kmatmul, seen = recording(jnp.asarray(k))
    key = jax.random.PRNGKey(seed)
    if method == "nystrom":
        ny = solvers.nystrom_standard(kmatmul, n, ell, key, jnp.float64)
        u = np.asarray(ny.solve(jnp.asarray(g), lam))
    else:
        ny = solvers.nystrom_gpu(kmatmul, n, ell, key, jnp.float64, lam)
        u = np.asarray(ny.solve(jnp.asarray(g)))
    y = k @ seen[0]
    assert float(ny.shift_grown) == 0.0
    np.testing.assert_allclose(float(ny.shift), EPS64 * np.linalg.norm(y), rtol=1e-12)
    # full sketch: exact up to rounding, rel. error ≲ cond(Ω)·(‖K‖ + λ)/λ·eps (the division
    # by λ and the Gaussian Ω, as in the test above; cond(Ω) = 1 for the standard variant)
    a = k + lam * np.eye(n)
    tol = 100 * np.linalg.cond(seen[0]) * np.linalg.norm(a, 2) / lam * EPS64
    assert rel_err(u, np.linalg.solve(a, g)) <= tol


# ------------------------------------------------------------------------------- float32

F32_STEPS = 3
#: name -> (factory, kwargs); a small fixed η (no line search: its grid argmin is discrete and
#: may flip between precisions; η = 0.1 keeps the three steps from blowing up, which would
#: amplify any difference), λ large enough that float32 resolves the solve (see below)
F32_OPTIMIZERS = {
    "engd": (optim.engd, dict(damping=1e-2, learning_rate=0.1)),
    "engd_woodbury": (optim.engd_woodbury, dict(damping=1e-2, learning_rate=0.1)),
    "spring": (optim.spring, dict(damping=1e-2, momentum=0.5, learning_rate=0.1,
                                  norm_constraint=None)),
    # CG run to convergence (2P iterations, stop at rel. residual 1e-6, which float32 reaches
    # at this cond): both precisions then solve the same system; a truncated CG would instead
    # compare two different Krylov iterates, whose float32 drift is not governed by cond·eps
    "hessian_free": (optim.hessian_free, dict(damping=1e-1, cg_iters=118, cg_tol=1e-6)),
}


def _run(opt, params, batches):
    state = opt.init(params)
    update = jax.jit(opt.update)
    updates = []
    for batch in batches:
        upd, state = update(None, state, params, batch=batch)
        updates.append(upd)
        params = optax.apply_updates(params, upd)
    return params, state, updates


@pytest.mark.parametrize("name", list(F32_OPTIMIZERS))
def test_float32_run_matches_float64(name):
    """Three steps with float32 parameters and batches (x64 stays on: only the arrays are
    float32) track the float64 run, and stay float32 throughout."""
    problem = problems.get("poisson2d")
    init32, apply = models.mlp((2, 6, 5, 1), dtype=jnp.float32)
    fast = ResidualFn(problem, apply)
    factory, kw = F32_OPTIMIZERS[name]
    params32 = init32(jax.random.PRNGKey(0))
    batches32 = [problem.sample(jax.random.PRNGKey(10 + k), 20, 10, dtype=jnp.float32)
                 for k in range(F32_STEPS)]
    to64 = lambda t: jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), t)  # noqa: E731
    params64, batches64 = to64(params32), [to64(b) for b in batches32]

    end32, state32, updates32 = _run(factory(fast, **kw), params32, batches32)
    end64, state64, _ = _run(factory(fast, **kw), params64, batches64)

    for leaf in jax.tree_util.tree_leaves((end32, updates32)):
        assert leaf.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves(state32):
        assert leaf.dtype in (jnp.float32, jnp.int32, jnp.uint32), (name, leaf.dtype)

    # float32 rounds J, r and every product at eps32 ≈ 1.2e-7 (J itself comes out ~1e-7
    # relative of the float64 J); the solve amplifies that by cond(K + λI) = (‖K‖ + λ)/λ
    # (≈ 1.1e3 here for λ = 1e-2, ≈ 1.2e2 for HF's λ = 0.1: λ chosen for it), and three steps
    # carry it along: rel. error of the displacement θ₃ − θ₀ ≲ 100·cond·eps32 (≈ 1.4e-2 and
    # 1.4e-3; HF's CG stopping error cond·1e-6 ≈ 1e-4 is within that), against an O(1)
    # difference for a real discrepancy.  HF's λ (0.1) is its GGN system's damping.
    _, jac = fast.residual_and_jacobian(params64, batches64[0])
    kmat = np.asarray(jac @ jac.T)
    lam = kw["damping"]
    cond = np.linalg.cond(kmat + lam * np.eye(len(kmat)))
    tol = 100 * cond * EPS32
    start = flat(params64)
    err = rel_err(flat(end32) - start, flat(end64) - start)
    assert err <= tol, (name, err, tol, cond)
    assert np.isfinite(float(optim.diagnostics(state32)["loss"]))
