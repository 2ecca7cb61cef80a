"""Shared core: problems, models, operators, residual Jacobians (issue 2)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import pinn_ng
from pinn_ng import models, operators, problems
from pinn_ng.problems import Batch
from pinn_ng.residuals import ResidualFn, scaled_residuals

ALL = problems.names()
#: the raw-scale variants differ from poisson10d/100d by a constant only
#: (test_high_dim_poisson_is_trained_normalised): their J is the same code path
PATHS = [name for name in ALL if not name.endswith("_raw")]
SMALL_WIDTHS = {"poisson100d": (100, 8, 1)}


def small_net(problem, seed=0):
    widths = SMALL_WIDTHS.get(problem.name, (problem.input_dim, 12, 10, 1))
    init, apply = models.mlp(widths)
    return init(jax.random.PRNGKey(seed)), apply


def test_registry_names():
    assert set(ALL) >= {"poisson2d", "poisson5d", "poisson10d", "poisson100d", "heat4d", "logfp9d"}


def test_unknown_problem_lists_valid_names():
    with pytest.raises(KeyError) as err:
        problems.get("poisson7d")
    for name in ALL:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name,widths,p",
    [
        ("poisson5d", (5, 64, 64, 48, 48, 1), 10_065),
        ("poisson10d", (10, 256, 256, 128, 128, 1), 118_145),
        ("logfp9d", (10, 256, 256, 128, 128, 1), 118_145),
        ("poisson100d", (100, 768, 768, 512, 512, 1), 1_325_057),
        ("heat4d", (5, 256, 256, 128, 128, 1), 116_865),
    ],
)
def test_paper_nets(name, widths, p):
    problem = problems.get(name)
    assert problem.widths == widths
    assert problem.n_params == p
    init, _ = models.mlp(problem.widths)
    flat, _ = ravel_pytree(init(jax.random.PRNGKey(0)))
    assert flat.shape == (p,)
    assert flat.dtype == jnp.float64


#: the raw-scale problems share their twin's exact solution, source and sampler (only the
#: scaling differs): their per-problem data checks run with -m slow
_DATA_CASES = [pytest.param(n, marks=pytest.mark.slow) if n.endswith("_raw") else n for n in ALL]


@pytest.mark.parametrize("name", _DATA_CASES)
def test_exact_solution_has_zero_residual(name):
    problem = problems.get(name)
    batch = problem.sample(jax.random.PRNGKey(ALL.index(name)), 64, 32)
    r = scaled_residuals(problem, problem.exact, batch)
    assert r.shape == (96,)
    assert r.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(r))) <= 1e-8, name

    def perturbed(x):
        return problem.exact(x) + 1e-3 * jnp.sin(1.0 + jnp.sum(x))

    r_p = scaled_residuals(problem, perturbed, batch)
    n_i = batch.interior.shape[0]
    assert float(jnp.max(jnp.abs(r_p[:n_i]))) > 1e-5
    assert float(jnp.max(jnp.abs(r_p[n_i:]))) > 1e-5


@pytest.mark.parametrize("name", _DATA_CASES)
def test_samplers_geometry(name):
    problem = problems.get(name)
    batch = problem.sample(jax.random.PRNGKey(3), 500, 400)
    xi, xb = np.asarray(batch.interior), np.asarray(batch.boundary)
    assert xi.shape == (500, problem.input_dim) and xb.shape == (400, problem.input_dim)
    d = problem.spatial_dim
    lo, hi = (-5.0, 5.0) if name.startswith("logfp") else (0.0, 1.0)
    assert np.all((xi[:, :d] > lo) & (xi[:, :d] < hi))
    if problem.time_dependent:
        assert np.all((xi[:, d] > 0) & (xi[:, d] < 1))
    if name.startswith("poisson"):
        on_face = np.any((xb == 0.0) | (xb == 1.0), axis=1)
        assert np.all(on_face)
        assert np.all((xb >= 0) & (xb <= 1))
    elif name.startswith("heat"):
        initial, side = xb[:200], xb[200:]
        assert np.all(initial[:, d] == 0.0)
        assert np.all(np.any((side[:, :d] == 0.0) | (side[:, :d] == 1.0), axis=1))
        assert np.all((side[:, d] >= 0) & (side[:, d] <= 1))
    else:  # log-FP: initial points
        assert np.all(xb[:, d] == 0.0)
        assert np.all((xb[:, :d] >= lo) & (xb[:, :d] <= hi))


def test_eval_set_is_fixed_and_sized():
    problem = problems.get("poisson5d")
    a, b = problem.eval_points(), problem.eval_points()
    assert a.shape == (10 * 3000, 5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("d", [2, pytest.param(5, marks=pytest.mark.slow), 100])
@pytest.mark.parametrize("method", ["folx", "fwd_rev"])
def test_laplacian_matches_hessian_trace(d, method):
    key = jax.random.PRNGKey(d)
    k_net, k_x = jax.random.split(key)
    init, apply = models.mlp((d, 24, 16, 1))
    params = init(k_net)
    f = lambda x: apply(params, x)  # noqa: E731
    xs = jax.random.uniform(k_x, (4, d), dtype=jnp.float64)
    fast = jax.vmap(operators.laplacian(f, method=method))(xs)
    ref = jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(xs)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", [  # folx by default; the others with -m slow
    "folx", *(pytest.param(m, marks=pytest.mark.slow) for m in ("fwd_rev", "hessian"))])
def test_partial_laplacian_and_gradient(method):
    init, apply = models.mlp((5, 16, 1))
    params = init(jax.random.PRNGKey(7))
    f = lambda x: apply(params, x)  # noqa: E731
    x = jax.random.uniform(jax.random.PRNGKey(8), (5,), dtype=jnp.float64)
    val, grad, lap = operators.value_grad_laplacian(f, dims=[0, 1, 2, 3], method=method)(x)
    hess = jax.hessian(f)(x)
    np.testing.assert_allclose(float(lap), float(jnp.trace(hess[:4, :4])), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(f)(x)[:4]), rtol=1e-12)
    np.testing.assert_allclose(float(val), float(f(x)), rtol=1e-14)
    dt = operators.time_derivative(f)(x)
    np.testing.assert_allclose(float(dt), float(jax.grad(f)(x)[4]), rtol=1e-12)


def test_unknown_laplacian_method():
    with pytest.raises(ValueError, match="folx"):
        operators.laplacian(jnp.sum, method="finite_differences")


#: The default run checks Poisson 2d and the log-FP problem here (heat's channels and J:
#: test_channels' dense references); heat 4+1d runs with -m slow, like the same-operator
#: problems (tests/conftest.py).
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n == "heat4d" else n for n in PATHS])
def test_jacobian_matches_jacfwd_and_products(name):
    """Both residual paths (channels of the MLP, per-point folx) against jax.jacfwd of the
    plain batched residual: r to 1e-12, J and the products to 1e-10 (a few hundred flops per
    entry, O(1) values: well above eps·cond of these tiny well-scaled nets)."""
    problem = problems.get(name)
    params, apply = small_net(problem)
    k_b, k_v, k_u = jax.random.split(jax.random.PRNGKey(ALL.index(name)), 3)
    batch = problem.sample(k_b, 7, 5)
    flat, unravel = ravel_pytree(params)

    def plain(w):
        return scaled_residuals(problem, lambda x: apply(unravel(w), x), batch)

    # jitted, each side one program: one compilation instead of one per primitive (same values)
    r_ref, j_ref = jax.jit(lambda w: (plain(w), jax.jacfwd(plain)(w)))(flat)
    scale = float(jnp.max(jnp.abs(j_ref)))
    v = jax.random.normal(k_v, flat.shape, dtype=jnp.float64)
    u = jax.random.normal(k_u, (12,), dtype=jnp.float64)
    assert ResidualFn(problem, apply).method == "structured"  # the default for models.mlp
    for method in ("structured", "folx"):
        rf = ResidualFn(problem, apply, method=method)
        r, j, (r2, j2), jv, vjp = jax.jit(lambda p, b: (
            rf(p, b), rf.jacobian(p, b), rf.residual_and_jacobian(p, b), rf.jvp(p, b, v),
            rf.vjp(p, b, u)))(params, batch)
        np.testing.assert_allclose(np.asarray(r), np.asarray(r_ref), rtol=1e-12, atol=1e-14)
        assert j.shape == (12, flat.shape[0])
        np.testing.assert_allclose(np.asarray(j), np.asarray(j_ref), rtol=1e-10,
                                   atol=1e-12 * scale)
        np.testing.assert_allclose(np.asarray(r2), np.asarray(r), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(j2), np.asarray(j), rtol=1e-12,
                                   atol=1e-14 * scale)
        np.testing.assert_allclose(np.asarray(jv), np.asarray(j_ref @ v), rtol=1e-10,
                                   atol=1e-12 * scale)
        np.testing.assert_allclose(np.asarray(vjp), np.asarray(j_ref.T @ u), rtol=1e-10,
                                   atol=1e-12 * scale)


def test_point_jacobian_rows():
    problem = problems.get("poisson2d")
    params, apply = small_net(problem)
    batch = problem.sample(jax.random.PRNGKey(0), 6, 4)
    rf = ResidualFn(problem, apply)
    r, j = rf.residual_and_jacobian(params, batch)
    rb, jb = rf.point_jacobian(params, batch.boundary[1:3], "boundary", 1 / 2.0)
    np.testing.assert_allclose(np.asarray(jb), np.asarray(j[7:9]), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(rb), np.asarray(r[7:9]), rtol=1e-13)
    with pytest.raises(ValueError, match="interior"):
        rf.point_jacobian(params, batch.boundary, "edge", 1.0)


def test_jacobian_at_paper_5d_size_shape():
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(0))
    j = ResidualFn(problem, apply).jacobian(params, batch)
    assert j.shape == (3500, 10_065)
    assert bool(jnp.all(jnp.isfinite(j)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, None.__class__])
def test_bad_batch_sizes(bad):
    problem = problems.get("poisson2d")
    with pytest.raises(ValueError, match="positive integer"):
        problem.sample(jax.random.PRNGKey(0), bad, 10)
    with pytest.raises(ValueError, match="positive integer"):
        problem.sample(jax.random.PRNGKey(0), 10, bad)


def test_wrong_point_dimension():
    problem = problems.get("poisson5d")
    with pytest.raises(ValueError, match=r"\(5,\)"):
        problem.exact(jnp.zeros(4))
    params, apply = small_net(problem)
    bad = Batch(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
    rf = ResidualFn(problem, apply)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        rf(params, bad)
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        scaled_residuals(problem, problem.exact, bad)
    with pytest.raises(ValueError, match="shape"):
        apply(params, jnp.zeros((3, 5)))


def test_non_finite_params():
    problem = problems.get("poisson2d")
    params, apply = small_net(problem)
    params[0] = (params[0][0].at[0, 0].set(jnp.nan), params[0][1])
    batch = problem.sample(jax.random.PRNGKey(0), 5, 5)
    rf = ResidualFn(problem, apply)
    for call in (rf, rf.jacobian, rf.residual_and_jacobian):
        with pytest.raises(ValueError, match="non-finite"):
            call(params, batch)


def test_bad_widths():
    with pytest.raises(ValueError):
        models.mlp((5, 0, 1))
    with pytest.raises(ValueError, match="scalar"):
        models.mlp((5, 8, 2))


def test_metrics_and_errors():
    pred, exact = jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 2.0, 5.0])
    assert float(pinn_ng.metrics.rms_l2(pred, exact)) == pytest.approx(np.sqrt(4 / 3), rel=1e-14)
    assert float(pinn_ng.metrics.relative_l2(pred, exact)) == pytest.approx(2 / np.sqrt(30),
                                                                            rel=1e-14)
    problem = problems.get("poisson10d")
    # a "network" equal to u* + 0.01 has RMS error 0.01 on the problem as trained
    apply = lambda p, x: problem.exact_fn(x) + p  # noqa: E731
    errs = problem.errors(apply, jnp.asarray(0.01))
    assert errs["rms_l2"] == pytest.approx(0.01, rel=1e-10)
    assert errs["l2"] == pytest.approx(0.01, rel=1e-10)


@pytest.mark.parametrize("name, scale", [("poisson10d", 1.34), ("poisson100d", 33.47)])
def test_high_dim_poisson_is_trained_normalised(name, scale):
    """u* and f are divided by c, the RMS of the raw u* (the paper's training problem); the
    ``_raw`` variant is the same PDE at the raw scale."""
    problem, raw = problems.get(name), problems.get(name + "_raw")
    assert problem.solution_scale == scale and raw.solution_scale == 1.0
    pts = problem.eval_points()
    u_scaled = np.asarray(jax.vmap(problem.exact_fn)(pts))
    u_raw = np.asarray(jax.vmap(raw.exact_fn)(pts))
    np.testing.assert_allclose(u_scaled * scale, u_raw, rtol=1e-14)
    assert float(np.sqrt(np.mean(u_raw**2))) == pytest.approx(scale, rel=0.02)
    assert float(np.sqrt(np.mean(u_scaled**2))) == pytest.approx(1.0, rel=0.02)
    # interior residual of the exact solution: −Δu* − f = 0 at both scales; of u = 0 it is
    # −f, divided by c on the trained problem
    x = pts[3]
    d = problem.input_dim
    f_raw = -2.0 * d if name == "poisson100d" else 0.0
    zero = jnp.zeros(())
    r_scaled = problem.interior_jet_fn(zero, jnp.zeros(d), zero, x)
    r_raw = raw.interior_jet_fn(zero, jnp.zeros(d), zero, x)
    assert float(r_raw) == pytest.approx(-f_raw, abs=1e-12)
    assert float(r_scaled) == pytest.approx(-f_raw / scale, abs=1e-12)


def test_import_does_not_enable_x64_and_float64_needs_it():
    code = (
        "import jax, pinn_ng\n"
        "assert not jax.config.jax_enable_x64\n"
        "try:\n"
        "    pinn_ng.models.mlp((2, 4, 1))\n"
        "except pinn_ng.PrecisionError as e:\n"
        "    assert 'enable_x64' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no PrecisionError')\n"
        "init, apply = pinn_ng.models.mlp((2, 4, 1), dtype='float32')\n"
        "p = init(jax.random.PRNGKey(0))\n"
        "assert p[0][0].dtype == 'float32'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
