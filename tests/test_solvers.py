"""Solver objects (pinn_ng.optim.solvers): each against a dense float64 solve on fresh random
SPD systems, the events each reports, keyword-only options, errors for options that do not
apply, static under jit, and the presets' strings mapped to objects with the same numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import models, optim, problems
from pinn_ng.optim import solvers
from pinn_ng.optim.common import Diagnostics, empty_diagnostics
from pinn_ng.optim.solvers import Cholesky, Nystrom, NystromGPU, NystromPCG, as_solver
from pinn_ng.residuals import ResidualFn, scaled_residuals

EPS64 = float(np.finfo(np.float64).eps)
N = 24


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def spd_system(seed, n=N, rank=None):
    """A fresh random PSD K = AAᵀ (rank ``rank``, full by default, ‖K‖ of order 1) and g."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, rank or n)) / math.sqrt(n)
    return a @ a.T, rng.standard_normal(n)


def dense_solve(k, lam, g):
    return np.linalg.solve(k + lam * np.eye(k.shape[0]), g)


SEEDS = (0, 1, 2)
KEY = jax.random.PRNGKey(7)


@pytest.mark.parametrize("seed", SEEDS)
def test_cholesky_equals_dense_solve_reading_the_lower_triangle(seed):
    k, g = spd_system(seed)
    lam = 1e-3
    solver = Cholesky()
    # the upper triangle is garbage: the solve must read only the lower one
    k_lower = np.tril(k) + np.triu(np.full_like(k, np.nan), 1)
    sol = solver.solve(jnp.asarray(k_lower), jnp.asarray(g), lam, solver.init())
    a = k + lam * np.eye(N)
    tol = 100 * np.linalg.cond(a) * EPS64
    assert tol <= 1e-9
    assert rel_err(sol.u, dense_solve(k, lam, g)) <= tol
    assert float(sol.events["jitter"]) == 0.0 and float(sol.events["cholesky_fallback"]) == 0.0
    assert int(sol.state.rung) == 0 and sol.effective_dimension is None


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("make", [lambda: Nystrom(N), lambda: NystromGPU(N),
                                  lambda: NystromGPU(1.0), lambda: NystromPCG(N, iters=3)],
                         ids=["nystrom", "nystrom_gpu", "nystrom_gpu-fraction", "nystrom_pcg"])
def test_nystrom_at_full_sketch_is_exact(seed, make):
    """ℓ = N: the sketch spans K's range, so the solve is exact to 1e-10 (K's norm is of order
    1 and λ = 0.1: cond(K + λI) ≈ 40; the GPU variant's Gaussian Ω adds cond(Ω) ≈ N)."""
    k, g = spd_system(seed)
    lam = 0.1
    solver = make()
    sol = solver.solve(jnp.asarray(k), jnp.asarray(g), lam, solver.init(),
                       jax.random.fold_in(KEY, seed), effective_dimension=True)
    assert rel_err(sol.u, dense_solve(k, lam, g)) <= 1e-10
    sigma = np.linalg.eigvalsh(k)
    d_eff = np.sum(sigma / (sigma + lam))
    assert abs(float(sol.effective_dimension) - d_eff) <= 1e-10 * d_eff
    assert float(sol.events["shift_grown"]) == 0.0 and float(sol.events["nystrom_shift"]) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_nystrom_pcg_converges_from_a_small_sketch(seed):
    """A sketch of ℓ = 6 < N preconditions CG; enough iterations reach the dense solve."""
    k, g = spd_system(seed)
    lam = 0.1
    sol = NystromPCG(6, iters=60).solve(jnp.asarray(k), jnp.asarray(g), lam, None, KEY)
    assert rel_err(sol.u, dense_solve(k, lam, g)) <= 1e-10
    # sketch-and-solve alone with the same ℓ is only an approximation
    approx = Nystrom(6).solve(jnp.asarray(k), jnp.asarray(g), lam, None, KEY)
    assert rel_err(approx.u, dense_solve(k, lam, g)) > 1e-6


@pytest.mark.parametrize("solver", [Nystrom(8), NystromGPU(8), NystromPCG(8, iters=2)],
                         ids=lambda s: type(s).__name__)
def test_kernel_as_matrix_or_product_gives_the_same_bits(solver):
    """K or V -> K V: the same products, so the same bits (the matrix's lower triangle is
    mirrored, which reproduces a symmetric K exactly)."""
    k, g = spd_system(3)
    k = jnp.asarray(k)
    a = solver.solve(k, jnp.asarray(g), 0.1, None, KEY)
    b = solver.solve(lambda v: k @ v, jnp.asarray(g), 0.1, None, KEY)
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))


def test_cholesky_warm_start_carries_the_rung_and_none_reports_failure():
    """A singular K (rank 5 of 24) with λ = 0: the ladder jitters and, warm-started, starts the
    next solve at the rung it needed; ``jitter="none"`` reports the failure instead."""
    k, g = spd_system(4, rank=5)
    k, g = jnp.asarray(k), jnp.asarray(g)
    warm = Cholesky(jitter_warm_start=True)
    sol = warm.solve(k, g, 0.0, warm.init())
    rung = int(sol.state.rung)
    assert rung >= 1 and float(sol.events["jitter"]) == pytest.approx(
        float(solvers.jitter_ladder(k, rung)), rel=1e-12)
    again = warm.solve(k, g, 0.0, sol.state)
    assert int(again.state.rung) == rung
    # without the warm start, the state stays at rung 0
    assert int(Cholesky().solve(k, g, 0.0, None).state.rung) == 0
    failed = Cholesky(jitter="none").solve(k, g, 0.0, None)
    assert float(failed.events["solve_failed"]) == 1.0 and float(failed.events["jitter"]) == 0
    assert np.all(np.isnan(np.asarray(failed.u)))


@pytest.mark.parametrize("solver,events", [
    (Cholesky(), {"jitter", "cholesky_fallback"}),
    (Cholesky(jitter_warm_start=True), {"jitter", "cholesky_fallback"}),
    (Cholesky(jitter="none"), {"jitter", "cholesky_fallback", "solve_failed"}),
    (Nystrom(4), {"nystrom_shift", "shift_grown"}),
    (NystromGPU(4, shift=1e-7), {"nystrom_shift", "shift_grown"}),
    (NystromPCG(4), {"nystrom_shift", "shift_grown"}),
], ids=lambda v: ",".join(sorted(v)) if isinstance(v, set) else str(v))
def test_each_solver_reports_its_own_events(solver, events):
    """``events`` names what ``solve`` returns, and the empty diagnostics hold exactly those
    fields (plus ``nonfinite``, which every step reports)."""
    k, g = spd_system(5)
    sol = solver.solve(jnp.asarray(np.tril(k)), jnp.asarray(g), 1e-2, solver.init(), KEY)
    assert set(solver.events) == events == set(sol.events)
    diag = empty_diagnostics(jnp.float64, solver=solver)
    present = {f for f, v in diag._asdict().items() if v is not None}
    assert present == events | {"loss", "phi_norm", "nonfinite"}
    assert set(Diagnostics._fields) >= events


def test_empty_diagnostics_takes_objects_not_names():
    with pytest.raises(TypeError, match="solver object"):
        empty_diagnostics(jnp.float64, solver="nystrom")
    none = empty_diagnostics(jnp.float64)
    assert none.jitter is None and none.nystrom_shift is None and none.nonfinite is not None


def test_options_are_keyword_only(tiny):
    fast = tiny[3]
    with pytest.raises(TypeError):
        Cholesky(True)
    with pytest.raises(TypeError):
        NystromGPU(8, 1e-7)
    with pytest.raises(TypeError):
        NystromPCG(8, 5)
    with pytest.raises(TypeError):
        optim.engd_woodbury(fast, 1e-3, 1.0, "nystrom")
    with pytest.raises(TypeError):
        optim.spring(fast, 1e-3, 0.5, 1.0, 1e-3)
    with pytest.raises(TypeError):
        optim.scale_by_spring(fast, 1e-3, 0.5, "cholesky")
    with pytest.raises(TypeError):
        optim.scale_by_engd_woodbury(fast, 1e-3, "cholesky")
    with pytest.raises(TypeError):
        optim.engd(fast, 1e-3, 1.0, 0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="cholesky", sketch_size=10), "sketch_size=10 applies to solver='nystrom', "
     "solver='nystrom_gpu' or solver='nystrom_pcg' only, got solver='cholesky'"),
    (dict(solver="nystrom", sketch_size=10, pcg_iters=3), "pcg_iters=3 applies to "
     "solver='nystrom_pcg' only"),
    (dict(solver="nystrom_pcg", sketch_size=10, nystrom_shift=1e-7), "nystrom_shift=1e-07 "
     "applies to solver='nystrom_gpu' only"),
    (dict(solver="nystrom_gpu", sketch_size=10, jitter_warm_start=True), "jitter_warm_start="
     "True applies to solver='cholesky' only"),
    (dict(solver="nystrom_gpu", sketch_size=10, jitter_warm_start=False), "applies to "
     "solver='cholesky' only"),
    (dict(solver="cholesky", pcg_iters=5), "applies to solver='nystrom_pcg' only"),
    (dict(solver=Nystrom(10), sketch_size=5), "is an object: set its options on it"),
    (dict(solver=Cholesky(), jitter="none"), "is an object"),
    (dict(solver="nystrom_gpu"), "needs sketch_size"),
    (dict(solver="lu"), "unknown solver 'lu'; valid"),
    (dict(solver=42), "or a solver object"),
])
def test_flat_options_that_do_not_apply_raise(kwargs, match):
    import re
    with pytest.raises(ValueError, match=re.escape(match)):
        as_solver(**kwargs)


def test_optimizers_and_make_reject_options_that_do_not_apply(tiny):
    fast = tiny[3]
    with pytest.raises(ValueError, match="nystrom_shift=1e-07 applies to solver='nystrom_gpu'"):
        optim.make("spring", fast, damping=1e-3, momentum=0.5, solver="nystrom",
                   sketch_size=0.1, nystrom_shift=1e-7)
    with pytest.raises(ValueError, match="is an object"):
        optim.engd_woodbury(fast, 1e-3, solver=NystromGPU(0.1), sketch_size=0.2)
    with pytest.raises(ValueError, match="needs damping"):
        optim.engd_woodbury(fast, 0.0, solver=Nystrom(4))


@pytest.mark.parametrize("make,match", [
    (lambda: Nystrom(0), "sketch_size must be >= 1"),
    (lambda: Nystrom(1.5), r"fraction in \(0, 1\]"),
    (lambda: NystromGPU(True), "sketch_size must be an int"),
    (lambda: NystromGPU(4, shift=-1.0), "shift"),
    (lambda: NystromGPU(4, shift="small"), "shift"),
    (lambda: NystromPCG(4, iters=0), "iters must be a positive int"),
    (lambda: Cholesky(jitter="some"), "jitter must be one of"),
    (lambda: Cholesky(jitter_warm_start=1), "jitter_warm_start must be True or False"),
    (lambda: Cholesky(jitter="none", jitter_warm_start=True), "must be False"),
])
def test_bad_solver_fields_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_solve_errors_are_clear():
    k, g = spd_system(6)
    k, g = jnp.asarray(k), jnp.asarray(g)
    with pytest.raises(TypeError, match="Cholesky factorises K itself"):
        Cholesky().solve(lambda v: k @ v, g, 1e-3)
    with pytest.raises(ValueError, match="needs key="):
        Nystrom(4).solve(k, g, 1e-3)
    with pytest.raises(ValueError, match=f"exceeds the batch size N = {N}"):
        NystromGPU(N + 1).solve(k, g, 1e-3, None, KEY)


def test_solvers_are_hashable_and_static_under_jit():
    """Equal objects hash alike, so a jitted function with the solver static compiles once
    per distinct solver."""
    assert hash(NystromGPU(0.1, shift=1e-7)) == hash(NystromGPU(0.1, shift=1e-7))
    assert NystromGPU(8) != Nystrom(8) and NystromPCG(8, iters=3) != NystromPCG(8)
    assert len({Cholesky(), Cholesky(), Cholesky(jitter="none"), Nystrom(8), Nystrom(8)}) == 3
    traces = []

    def solve(solver, k, g):
        traces.append(solver)
        return solver.solve(k, g, 0.1, solver.init(), KEY).u

    jitted = jax.jit(solve, static_argnums=0)
    k, g = spd_system(8)
    k, g = jnp.asarray(k), jnp.asarray(g)
    for solver in (Cholesky(), Cholesky(), Nystrom(N), Nystrom(N)):
        assert rel_err(jitted(solver, k, g), dense_solve(np.asarray(k), 0.1, g)) <= 1e-10
    assert traces == [Cholesky(), Nystrom(N)]


# --- the optimizers with objects and with the presets' strings ---------------------------


@pytest.fixture(scope="module")
def tiny():
    """poisson2d, net 2-6-5-1 (P = 59), fast and plain residual functions."""
    problem = problems.get("poisson2d")
    init, apply = models.mlp((2, 6, 5, 1))

    def plain(params, batch):
        return scaled_residuals(problem, lambda x: apply(params, x), batch)

    return problem, init, apply, ResidualFn(problem, apply), plain


#: each preset string with its flat options, and the object it stands for
STRING_AND_OBJECT = {
    "cholesky": (dict(), Cholesky()),
    "cholesky-warm": (dict(jitter_warm_start=True), Cholesky(jitter_warm_start=True)),
    "cholesky-none": (dict(jitter="none"), Cholesky(jitter="none")),
    "nystrom": (dict(solver="nystrom", sketch_size=1.0), Nystrom(1.0)),
    "nystrom_gpu": (dict(solver="nystrom_gpu", sketch_size=30), NystromGPU(30)),
    "nystrom_gpu-shift": (dict(solver="nystrom_gpu", sketch_size=30, nystrom_shift=1e-9),
                          NystromGPU(30, shift=1e-9)),
    "nystrom_pcg": (dict(solver="nystrom_pcg", sketch_size=30, pcg_iters=4),
                    NystromPCG(30, iters=4)),
}


@pytest.mark.parametrize("case", list(STRING_AND_OBJECT))
def test_preset_strings_map_to_equal_objects(case):
    flat_opts, obj = STRING_AND_OBJECT[case]
    options = dict(flat_opts)
    mapped = as_solver(options.pop("solver", "cholesky"), **options)
    assert mapped == obj and hash(mapped) == hash(obj) and type(mapped) is type(obj)


#: two optimizer runs per case cost a few compilations: the default run checks one exact and
#: one sketched solver, the slow run every case
FAST_CASES = ("nystrom_gpu-shift",)  # the warm start: test_optim's jitter tests


@pytest.mark.parametrize("case", [c if c in FAST_CASES else pytest.param(c, marks=pytest.mark.slow)
                                  for c in STRING_AND_OBJECT])
def test_string_configuration_equals_its_object_and_the_dense_reference(tiny, case):
    """Two SPRING steps with the preset string and with the object give the same bits, and
    the first step is the dense float64 direction Jᵀ(K + λ'I)⁻¹ r / √(1 − μ²) (step 1 has no
    momentum term, only the bias correction; N = 30 < P = 59, so K + λI is well conditioned at
    λ = 1e-3).  λ' = λ, except with a fixed Nyström shift ν: at ℓ = N the sketch is exactly
    K + νI, so λ' = λ + ν."""
    problem, init, apply, fast, plain = tiny
    flat_opts, obj = STRING_AND_OBJECT[case]
    params = init(jax.random.PRNGKey(11))
    batches = [problem.sample(jax.random.PRNGKey(20 + i), 20, 10) for i in range(2)]
    lam, mu = 1e-3, 0.5
    runs = []
    for solver_kw in (flat_opts, {"solver": obj}):
        opt = optim.spring(fast, lam, mu, learning_rate=1.0, norm_constraint=None, seed=5,
                           **solver_kw)
        update = jax.jit(opt.update)
        state, p, out = opt.init(params), params, []
        for batch in batches:
            u, state = update(None, state, p, batch=batch)
            p = optax.apply_updates(p, u)
            out.append((ravel_pytree(u)[0], optim.diagnostics(state)))
        runs.append(out)
    for (u_s, d_s), (u_o, d_o) in zip(*runs):
        np.testing.assert_array_equal(np.asarray(u_s), np.asarray(u_o))
        assert d_s.keys() == d_o.keys()
        assert set(obj.events) <= set(d_s)
        for key in d_s:
            np.testing.assert_array_equal(np.asarray(d_s[key]), np.asarray(d_o[key]))
    theta, unravel = ravel_pytree(params)
    r = np.asarray(plain(params, batches[0]))
    jac = np.asarray(jax.jacfwd(lambda th: plain(unravel(th), batches[0]))(theta))
    shift = getattr(obj, "shift", None) or 0.0
    a = jac @ jac.T + (lam + shift) * np.eye(r.shape[0])
    phi = jac.T @ np.linalg.solve(a, r) / math.sqrt(1.0 - mu**2)  # step 1's bias correction
    # ℓ = N: exact up to rounding, amplified by cond(Ω) ≲ 10·N for the Gaussian Ω of the GPU
    # variant (1 for the orthonormal one), as in tests/test_optim.py
    amplification = 10 * r.shape[0] if isinstance(obj, NystromGPU) else 1
    tol = 100 * amplification * np.linalg.cond(a) * EPS64
    assert tol <= 1e-6
    assert rel_err(-np.asarray(runs[0][0][0]), phi) <= tol


def test_inject_hyperparams_spring_at_the_published_line_search_setting(tiny):
    """The README's λ-sweep recipe at SPRING's published setting runs, the λ and μ it injects
    are state, and the default cap stays static (a string, not an array)."""
    problem, init, apply, fast, plain = tiny
    params = init(jax.random.PRNGKey(2))
    batch = problem.sample(jax.random.PRNGKey(3), 20, 10)
    opt = optim.inject_hyperparams(optim.spring)(fast, damping=1e-3, momentum=0.3115,
                                                 learning_rate="line_search",
                                                 solver=NystromGPU(0.5))
    state = opt.init(params)
    assert set(state.hyperparams) == {"damping", "momentum"}
    updates, state = jax.jit(opt.update)(None, state, params, batch=batch)
    flat = ravel_pytree(updates)[0]
    assert np.all(np.isfinite(np.asarray(flat))) and float(jnp.linalg.norm(flat)) > 0
    assert float(optim.diagnostics(state)["loss"]) > 0


@pytest.mark.parametrize("c", [1e-6, 1e2])
def test_norm_constraint_matches_the_dense_reference(c):
    """u · min(1, √C/‖u‖) on a pytree, as a dense float64 reference computes it, capped
    (C = 1e-6) and not (C = 1e2), with a scheduled C and the factor recorded."""
    rng = np.random.default_rng(9)
    tree = {"w": jnp.asarray(rng.standard_normal((3, 4))),
            "b": jnp.asarray(rng.standard_normal(5))}
    flat = np.asarray(ravel_pytree(tree)[0])
    for norm_constraint in (c, optax.constant_schedule(c)):
        block = optim.scale_by_norm_constraint(norm_constraint)
        out, state = jax.jit(block.update)(tree, block.init(tree))
        scale = min(1.0, math.sqrt(c) / np.linalg.norm(flat))
        assert rel_err(ravel_pytree(out)[0], scale * flat) <= 4 * EPS64
        assert float(state.norm_scale) == pytest.approx(scale, rel=4 * EPS64)
        assert int(state.count) == 1
