"""Numerics of the optimizers not covered by test_optim.py (issue 9, §6), each against a dense
float64 reference computed here: Hessian-free over several steps (and each option off),
SPRING's blocked kernel with momentum, the Nyström shift growth, and float32 runs.

Tolerances are stated from the conditioning of the system solved (eps = unit roundoff of the
dtype, cond = 2-norm condition number computed from the dense reference), never from sampling.
"""

import functools
import math

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


# ------------------------------------------------------------------------------ Hessian-free

#: the hessian_free defaults, written out here: the paper's logged λ, the rest the defaults of
#: the ``hessianfree`` package the paper's authors ran
HF_DEFAULTS = dict(damping=0.1, cg_max_iter=250, cg_decay_x0=0.95, use_cg_backtracking=True,
                   use_linesearch=True, adapt_damping=True, min_damping=0.0)
#: toy least-squares problem: N residuals, P parameters; steps compared per run
HF_N, HF_P, HF_STEPS = 60, 40, 4


def toy_residual(theta, batch):
    """r(θ) = Aθ − b + γ‖θ − θ_c‖² c: a least-squares problem bent along c.

    A has singular values 1 … 0.3: with a compact spectrum CG stops after ~15 < P iterations
    and two implementations agree to rounding.  (An outlier or a cluster of eigenvalues makes
    a truncated CG's iterates drift apart by orders of magnitude more than eps after a dozen
    iterations; the comparison would then measure CG's instability, not the algorithm.)  b has
    a large part outside range(A), so r stays large and its curvature Σ rᵢ∇²rᵢ, which the
    Gauss–Newton model leaves out, moves ρ widely while J = A + 2γ c(θ − θ_c)ᵀ stays near A.
    """
    shift = theta - batch["center"]
    return batch["a"] @ theta - batch["b"] + batch["gamma"] * jnp.dot(shift, shift) * batch["c"]


def toy_residual_and_jacobian(theta, batch):
    """(r, J) of :func:`toy_residual` in NumPy, J by hand."""
    shift = theta - batch["center"]
    r = batch["a"] @ theta - batch["b"] + batch["gamma"] * (shift @ shift) * batch["c"]
    return r, batch["a"] + 2.0 * batch["gamma"] * np.outer(batch["c"], shift)


def toy_problem(seed, gamma=0.03, outside=10.0, steps=HF_STEPS, center_at_start=False):
    """θ₀ and ``steps`` NumPy batches (a fresh b each); ``outside``: ‖part of b outside
    range(A)‖ / √N."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((HF_N, HF_P)))
    v, _ = np.linalg.qr(rng.standard_normal((HF_P, HF_P)))
    a = u * np.geomspace(1.0, 0.3, HF_P) @ v.T
    c = rng.standard_normal(HF_N) / np.sqrt(HF_N)
    theta = rng.standard_normal(HF_P) / np.sqrt(HF_P)
    center = theta.copy() if center_at_start else theta + rng.standard_normal(HF_P) / np.sqrt(HF_P)

    def target():
        w = rng.standard_normal(HF_N)
        w -= u @ (u.T @ w)
        return u @ rng.standard_normal(HF_P) + outside * np.sqrt(HF_N) * w / np.linalg.norm(w)

    return theta, [dict(a=a, b=target(), c=c, center=center, gamma=np.float64(gamma))
                   for _ in range(steps)]


def hf_reference(residual_and_jacobian, theta, batches, damping, cg_max_iter, cg_decay_x0,
                 use_cg_backtracking, use_linesearch, adapt_damping, min_damping):
    """Hessian-free densely in float64 NumPy, one dict per step: Martens (2010) and Martens &
    Sutskever (2012) as the ``hessianfree`` package runs them.

    ``margin``: the smallest relative distance of any decision (CG stopping tests,
    backtracking comparisons, ρ against 1/4 and 3/4, Armijo) from its threshold.
    """
    grid = sorted({math.ceil(1.3**j) - 1 for j in range(64)})
    keep = {g for g in grid if g <= cg_max_iter} if use_cg_backtracking else {0}
    theta = np.array(theta, np.float64)
    lam, x0 = float(damping), np.zeros_like(theta)
    steps = []
    for batch in batches:
        r, jac = residual_and_jacobian(theta, batch)
        a = jac.T @ jac + lam * np.eye(theta.size)
        b = -(jac.T @ r)
        at = theta.copy()

        def loss(step):
            res = residual_and_jacobian(at + step, batch)[0]
            return 0.5 * float(res @ res)

        def model(x):  # the damped quadratic CG minimises
            return 0.5 * x @ a @ x - b @ x

        x, m, kept, margins = x0.copy(), [model(x0)], {0: x0.copy()}, []
        res = a @ x - b
        p, rr, i, reason = -res, res @ res, 0, None
        while reason is None:
            ap = a @ p
            step = rr / (p @ ap)
            x, res, i = x + step * p, res + step * ap, i + 1
            m.append(model(x))
            if i in keep:
                kept[i] = x.copy()
            k = max(10, i // 10)
            if k < i:
                progress = (m[i] - m[i - k]) / (m[i] - m[0])
                margins.append(abs(progress / 5e-4 - 1.0))
                reason = "martens" if progress < 5e-4 else None
            res_norm, bound = np.linalg.norm(a @ x - b), 1e-5 * np.linalg.norm(b)
            margins.append(abs(res_norm / bound - 1.0))
            if reason is None and res_norm < bound:
                reason = "tolerance"
            if reason is None and i >= cg_max_iter:
                reason = "max_iter"
            rr_new = res @ res
            p, rr = -res + rr_new / rr * p, rr_new
        f_n = loss(x)
        d, chosen, f_d = x, i, f_n
        if use_cg_backtracking:
            for it in sorted((it for it in kept if it < i), reverse=True):
                f = loss(kept[it])
                margins.append(abs(f - f_d) / f_d)
                if not f < f_d:
                    break
                d, chosen, f_d = kept[it], it, f
        rho = (f_n - loss(x0)) / (m[i] - m[0])
        lam_next = lam
        if adapt_damping:
            margins += [abs(rho - 0.25), abs(rho - 0.75)]
            lam_next = max(1.5 * lam if rho < 0.25 else lam * (2 / 3) if rho > 0.75 else lam,
                           min_damping)
        alpha, loss0 = 1.0, loss(np.zeros_like(theta))
        if use_linesearch:
            for _ in range(20):
                gap = loss(alpha * d) - (loss0 + 1e-2 * alpha * float(b @ -d))
                if np.any(d != 0):  # d = x₀ = 0 ties exactly, on both sides
                    margins.append(abs(gap) / loss0)
                if gap <= 0:
                    break
                alpha *= 0.8
            else:
                alpha = 0.0
        theta = theta + alpha * d
        steps.append(dict(theta=theta.copy(), damping=lam_next, alpha=alpha, chosen=chosen,
                          iterations=i, reason=reason, rho=rho, loss0=loss0,
                          x0=cg_decay_x0 * x, margin=min(margins), damping_used=lam))
        lam, x0 = lam_next, cg_decay_x0 * x
    return steps


#: case -> (hyper-parameters over HF_DEFAULTS, toy_problem arguments)
HF_CASES = {
    "paper": ({}, {}),
    "cold_start": (dict(cg_decay_x0=0.0), {}),
    "max_iter": (dict(cg_max_iter=6), {}),
    "no_cg_backtracking": (dict(use_cg_backtracking=False), {}),
    "no_linesearch": (dict(use_linesearch=False), {}),
    "fixed_damping": (dict(adapt_damping=False), {}),
    "damping_floor": (dict(min_damping=0.09), {}),
    # bent so hard that no α passes Armijo: no step, λ grows, CG restarts from 0.95·x_n
    "no_step": (dict(use_cg_backtracking=False), dict(gamma=1e4, center_at_start=True,
                                                      steps=2)),
}


def run_hessian_free(opt, params, batches, update=None):
    """(params, state) after each step of ``opt`` (jitted) on ``batches``."""
    update = update or jax.jit(opt.update)
    state, out = opt.init(params), []
    for batch in batches:
        upd, state = update(None, state, params, batch=batch)
        params = optax.apply_updates(params, upd)
        out.append((params, state))
    return out


def assert_matches_reference(out, ref):
    """Every step: the same discrete decisions, and values to 1e-10.

    The decisions (CG iterations, chosen iterate, ρ's branch, α) are ≥ 1e-9 relative from
    their thresholds (checked on the reference), far above the rounding of both sides.  In
    between, CG on a system with cond ≲ 1e2 stopped well before P iterations agrees to
    ≲ 1e3·eps ≈ 2e-13 per step; 1e-10 leaves room for four steps through a nonlinear r.
    """
    for k, ((params, state), want) in enumerate(zip(out, ref)):
        assert want["margin"] > 1e-9, (k, want["margin"])
        diag = optim.diagnostics(state)
        assert int(state.cg_iterations) == want["iterations"] == int(diag["cg_iterations"]), k
        assert int(state.cg_chosen) == want["chosen"], k
        np.testing.assert_allclose(float(state.step_size), want["alpha"], rtol=1e-10)
        np.testing.assert_allclose(float(diag["damping"]), want["damping"], rtol=1e-10)
        np.testing.assert_allclose(float(diag["loss"]), want["loss0"], rtol=1e-10)
        assert rel_err(flat(params), want["theta"]) <= 1e-10, k
        if k + 1 < len(ref):  # the next CG start (the last step's is used by no step here)
            err = np.linalg.norm(np.asarray(state.cg_x0) - want["x0"])
            assert err <= 1e-10 * np.linalg.norm(want["x0"]), k


@functools.lru_cache(maxsize=None)
def toy_optimizer(case):
    """One optimizer object per case, so its jitted ``update`` compiles once for all seeds."""
    return optim.hessian_free(toy_residual, **HF_CASES[case][0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(HF_CASES))
def test_hessian_free_matches_dense_reference(case, seed):
    """HF_STEPS consecutive steps (fresh batch each; the warm start and λ carried over) equal a
    dense float64 reference of the same algorithm, for the paper's settings and each option
    switched off."""
    options, problem_args = HF_CASES[case]
    theta, batches = toy_problem(seed, **problem_args)
    ref = hf_reference(toy_residual_and_jacobian, theta, batches, **{**HF_DEFAULTS, **options})
    jbatches = [jax.tree_util.tree_map(jnp.asarray, b) for b in batches]
    out = run_hessian_free(toy_optimizer(case), jnp.asarray(theta), jbatches)
    assert_matches_reference(out, ref)


@pytest.mark.slow  # an eager variant (tests/conftest.py keeps one eager update by default)
def test_hessian_free_eager_equals_jitted():
    """Called eagerly, the update takes the same decisions and values as jitted."""
    theta, batches = toy_problem(0, steps=2)
    jbatches = [jax.tree_util.tree_map(jnp.asarray, b) for b in batches]
    opt = toy_optimizer("paper")
    jitted = run_hessian_free(opt, jnp.asarray(theta), jbatches)
    eager = run_hessian_free(opt, jnp.asarray(theta), jbatches, update=opt.update)
    for (p_j, s_j), (p_e, s_e) in zip(jitted, eager):
        assert int(s_j.cg_iterations) == int(s_e.cg_iterations)
        assert int(s_j.cg_chosen) == int(s_e.cg_chosen)
        assert float(s_j.step_size) == float(s_e.step_size)
        assert rel_err(p_e, p_j) <= 1e-12


def test_hessian_free_reference_cases_cover_every_branch():
    """The toy cases above exercise each rule (on the reference, so this is cheap): both CG
    stopping tests and the iteration cap, backtracking to an earlier iterate, every branch of
    the damping rule and its floor, a shortened step and no step at all."""
    runs = {case: [hf_reference(toy_residual_and_jacobian, *toy_problem(seed, **args),
                                **{**HF_DEFAULTS, **options}) for seed in SEEDS]
            for case, (options, args) in HF_CASES.items()}
    paper = [s for run in runs["paper"] for s in run]
    assert {s["reason"] for runs_ in runs.values() for run in runs_ for s in run} == {
        "martens", "tolerance", "max_iter"}
    assert any(s["chosen"] < s["iterations"] for s in paper)
    assert any(0 < s["alpha"] < 1 for s in paper)
    ratios = [s["damping"] / s["damping_used"] for s in paper]
    assert {round(q, 12) for q in ratios} == {1.5, 1.0, round(2 / 3, 12)}
    assert all(s["reason"] == "max_iter" for run in runs["max_iter"] for s in run)
    assert any(s["damping"] == 0.09 for run in runs["damping_floor"] for s in run)
    assert all(s["alpha"] == 0.0 for run in runs["no_step"] for s in run)


#: λ of the PINN comparison.  The tiny PINN's JᵀJ has a few eigenvalues far above a large
#: cluster; at small λ a truncated CG's iterates then drift apart between two implementations
#: by far more than eps (1e-6 after two steps at λ = 1: CG's finite-precision instability, not
#: a difference of algorithm).  λ = 50 keeps cond(JᵀJ + λI) ≲ 10 over the three steps.
HF_PINN_DAMPING = 50.0


@pytest.fixture(scope="module")
def hf_pinn(tiny):
    """Tiny PINN (P = 59), three fresh batches, and the dense reference on the plain residual
    (whole-batch J by jax.jacrev, independent of ResidualFn's per-point J)."""
    problem, init, apply, fast = tiny
    params = init(jax.random.PRNGKey(0))
    batches = [problem.sample(jax.random.PRNGKey(10 + k), 20, 10) for k in range(3)]
    theta0, unravel = ravel_pytree(params)

    def plain(w, batch):
        return scaled_residuals(problem, lambda x: apply(unravel(w), x), batch)

    res = jax.jit(plain)
    jac = jax.jit(jax.jacrev(plain))

    def residual_and_jacobian(theta, batch):
        w = jnp.asarray(theta)
        return np.asarray(res(w, batch)), np.asarray(jac(w, batch))

    ref = hf_reference(residual_and_jacobian, np.asarray(theta0), batches,
                       **{**HF_DEFAULTS, "damping": HF_PINN_DAMPING})
    return params, batches, ref


def test_hessian_free_pinn_matches_dense_reference(tiny, hf_pinn):
    """The same reference on the PINN with the matrix-free products of ResidualFn."""
    params, batches, ref = hf_pinn
    opt = optim.hessian_free(tiny[3], **{**HF_DEFAULTS, "damping": HF_PINN_DAMPING})
    assert_matches_reference(run_hessian_free(opt, params, batches), ref)


def test_hessian_free_defaults_are_the_papers():
    assert optim.hyperparameters("hessian_free") == HF_DEFAULTS


@pytest.mark.parametrize("kwargs,match", [
    (dict(damping=-1.0), "damping"),
    (dict(damping=lambda count: 0.1), "adapts its damping itself"),
    (dict(cg_max_iter=0), "cg_max_iter must be a positive int, got 0"),
    (dict(cg_max_iter=10.0), "cg_max_iter must be a positive int"),
    (dict(cg_max_iter=True), "cg_max_iter must be a positive int"),
    (dict(cg_decay_x0=1.5), r"cg_decay_x0 must be a number in \[0, 1\], got 1.5"),
    (dict(cg_decay_x0="0.95"), "cg_decay_x0 must be a number"),
    (dict(min_damping=-1e-3), "min_damping must be a number"),
    (dict(min_damping=float("inf")), "min_damping must be a number"),
    (dict(use_cg_backtracking=1), "use_cg_backtracking must be a bool"),
    (dict(use_linesearch="yes"), "use_linesearch must be a bool"),
    (dict(adapt_damping=None), "adapt_damping must be a bool"),
])
def test_hessian_free_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.hessian_free(toy_residual, **kwargs)


def test_hessian_free_storage_grid():
    """Iterations ⌈1.3ʲ⌉ − 1 up to the cap (Martens 2010 sec. 4.6, as the package stores them)."""
    from pinn_ng.optim.hessian_free import storage_grid
    assert storage_grid(350).tolist() == [0, 1, 2, 3, 4, 6, 8, 10, 13, 17, 23, 30, 39, 51, 66,
                                          86, 112, 146, 190, 247, 321]
    assert storage_grid(1).tolist() == [0, 1]


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
    np.testing.assert_allclose(float(optim.diagnostics(s_b)["step_size"]),
                               float(optim.diagnostics(s_d)["step_size"]), rtol=tol)


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
    # λ large enough that CG is stable (see HF_PINN_DAMPING): both precisions then take the
    # same decisions and their iterates differ by cond·eps32, not by CG's rounding drift
    "hessian_free": (optim.hessian_free, dict(damping=HF_PINN_DAMPING)),
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


@pytest.mark.parametrize("name", [  # ENGD-W by default, the others with -m slow
    n if n == "engd_woodbury" else pytest.param(n, marks=pytest.mark.slow)
    for n in F32_OPTIMIZERS])
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
    # (≈ 1.1e3 here for λ = 1e-2, ≈ 1.2 for HF's λ = 50), and three steps carry it along:
    # rel. error of the displacement θ₃ − θ₀ ≲ 100·cond·eps32 (≈ 1.4e-2 and 1.5e-5), against
    # an O(1) difference for a real discrepancy.  HF's λ is its GGN system's damping; at its
    # λ the two precisions stop CG at the same iteration.
    _, jac = fast.residual_and_jacobian(params64, batches64[0])
    kmat = np.asarray(jac @ jac.T)
    lam = kw["damping"]
    cond = np.linalg.cond(kmat + lam * np.eye(len(kmat)))
    tol = 100 * cond * EPS32
    start = flat(params64)
    err = rel_err(flat(end32) - start, flat(end64) - start)
    assert err <= tol, (name, err, tol, cond)
    assert np.isfinite(float(optim.diagnostics(state32)["loss"]))
