"""PDE features beyond the paper's Dirichlet problems, on both derivative paths: a diagonal
second-order operator Σᵢ aᵢ ∂ᵢᵢu, boundary residuals of u and ∇u (several per point), and
problems without an exact solution.  Residuals, J, K and the products of the structured
(channels) and folx paths against dense float64 references (jax.hessian, jax.jacfwd)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import channels, models, operators, optim
from pinn_ng.optim.kfac import layer_gradient
from pinn_ng.problems import (Batch, Problem, box_boundary_sampler, load_reference,
                              uniform_sampler)
from pinn_ng.residuals import ResidualFn, row_scales
from pinn_ng.train import train

def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------ problems


def _wave(k_residuals: int = 2) -> Problem:
    """u_tt − u_xx = 0 on (0,1)², u* = sin(πx) cos(πt): u and u_t on the whole boundary."""

    def exact(x):
        return jnp.sin(jnp.pi * x[0]) * jnp.cos(jnp.pi * x[1])

    def boundary(value, grad, x):
        e, de = jax.value_and_grad(exact)(x)
        return jnp.stack([value - e, grad[1] - de[1]])

    return Problem(
        name="wave_t", description="wave 1+1d", input_dim=2, widths=(2, 8, 1), n_interior=10,
        n_boundary=5, exact_fn=exact, interior_jet_fn=lambda v, g, lap, x: lap,
        sample_interior_fn=uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=box_boundary_sampler([0, 0], [1, 1]), time_dependent=True,
        operator_diag=(-1.0, 1.0), boundary_jet_fn=boundary, n_boundary_residuals=k_residuals)


def _robin() -> Problem:
    """−Δu + u·u_y = f on (0,1)², a Robin side ∂u/∂n + u = g at x = 0, Dirichlet elsewhere;
    no exact solution needed for the residuals (here none given)."""

    def boundary(value, grad, x):
        robin = -grad[0] + 2.0 * value - jnp.cos(x[1])
        return jnp.where(x[0] == 0.0, robin, value - x[1] ** 2)

    return Problem(
        name="robin_t", description="Robin", input_dim=2, widths=(2, 8, 1), n_interior=10,
        n_boundary=5, interior_jet_fn=lambda v, g, lap, x: -lap + v * g[1] - jnp.sum(x),
        sample_interior_fn=uniform_sampler([0, 0], [1, 1]),
        sample_boundary_fn=box_boundary_sampler([0, 0], [1, 1]), boundary_jet_fn=boundary)


def _anisotropic() -> Problem:
    """−(2u_xx + 0.5u_yy + 0·u_zz) = f, Dirichlet from u* (the classic boundary path)."""

    def exact(x):
        return jnp.sin(x[0]) * jnp.exp(x[1]) + x[2]

    return Problem(
        name="aniso_t", description="anisotropic", input_dim=3, widths=(3, 8, 1),
        n_interior=10, n_boundary=5, exact_fn=exact,
        interior_jet_fn=lambda v, g, lap, x: -lap - (2.0 - 0.5) * jnp.sin(x[0]) * jnp.exp(x[1]),
        sample_interior_fn=uniform_sampler([0] * 3, [1] * 3),
        sample_boundary_fn=box_boundary_sampler([0] * 3, [1] * 3),
        operator_diag=(2.0, 0.5, 0.0))


def _kg3() -> Problem:
    """Klein–Gordon 2+1d, u_tt − Δu + u³ = 0, with three boundary residuals per point."""

    def boundary(value, grad, x):
        return jnp.stack([value, grad[2] - x[0], grad[0] * grad[1] + value])

    return Problem(
        name="kg_t", description="Klein-Gordon", input_dim=3, widths=(3, 8, 1),
        n_interior=10, n_boundary=5, interior_jet_fn=lambda v, g, lap, x: lap + v**3,
        sample_interior_fn=uniform_sampler([0] * 3, [1] * 3),
        sample_boundary_fn=box_boundary_sampler([0] * 3, [1] * 3), time_dependent=True,
        operator_diag=(-1.0, -1.0, 1.0), boundary_jet_fn=boundary, n_boundary_residuals=3)


PROBLEMS = {"wave": _wave, "robin": _robin, "anisotropic": _anisotropic, "kg3": _kg3}


def dense_residual(problem: Problem, apply, params, batch: Batch):
    """r from jax.hessian and jax.grad at every point: the reference, independent of both paths."""

    def point(x, kind):
        f = lambda y: apply(params, y)  # noqa: E731
        value, grad, hess = f(x), jax.grad(f)(x), jax.hessian(f)(x)
        if kind == "boundary":
            if problem.boundary_jet_fn is None:
                return jnp.reshape(value - problem.exact_fn(x), (1,))
            return jnp.reshape(problem.boundary_jet_fn(value, grad, x), (-1,))
        if problem.operator_diag is not None:
            lap = jnp.dot(jnp.asarray(problem.operator_diag), jnp.diag(hess))
        else:
            lap = jnp.trace(hess[:problem.spatial_dim, :problem.spatial_dim])
        return problem.interior_jet_fn(value, grad, lap, x)

    s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])
    r_i = jax.vmap(lambda x: point(x, "interior"))(batch.interior)
    r_b = jax.vmap(lambda x: point(x, "boundary"))(batch.boundary).reshape(-1)
    return jnp.concatenate([r_i * s_i, r_b * s_b])


def dense_reference(problem, apply, params, batch):
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def ref(w, batch):
        fn = lambda v: dense_residual(problem, apply, unravel(v), batch)  # noqa: E731
        return fn(w), jax.jacfwd(fn)(w)

    return ref(flat, batch)


def _setup(name, seed, apply_kind="mlp"):
    problem = PROBLEMS[name]()
    key_p, key_b = jax.random.split(jax.random.PRNGKey(seed))
    if apply_kind == "mlp":
        init, apply = models.mlp((problem.input_dim, 6, 5, 1))
    else:
        init, apply = _sine_net(problem.input_dim)
    # jitted: one compilation each instead of one per primitive (same values)
    params = jax.jit(init)(key_p)
    batch = jax.jit(lambda key: problem.sample(key, 7, 4, dtype=jnp.float64))(key_b)
    return problem, apply, params, batch


def _sine_net(d):
    """A network that is not a models.mlp: a dict pytree, sin and softplus layers, a skip."""

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"w": jax.random.normal(k1, (d, 5)), "b": jax.random.normal(k2, (5,)),
                "v": jax.random.normal(k3, (5,)) / 3, "skip": jnp.arange(1.0, d + 1) / 10}

    def apply(p, x):
        h = jnp.sin(x @ p["w"] + p["b"])
        return jax.nn.softplus(h) @ p["v"] + jnp.dot(p["skip"], x) ** 2

    return init, apply


# ------------------------------------------------------------------------------ operators


@pytest.mark.parametrize("method", [  # folx by default; the others with -m slow
    m if m == "folx" else pytest.param(m, marks=pytest.mark.slow) for m in operators.METHODS])
def test_weighted_operator_matches_hessian(method):
    key = jax.random.PRNGKey(3)
    a = (1.5, -0.7, 0.0, 2.0)
    w = jax.random.normal(key, (4, 6))

    def f(x):
        return jnp.sum(jnp.tanh(x @ w) ** 2) + jnp.prod(jnp.sin(x))

    x = jax.random.uniform(jax.random.PRNGKey(4), (3, 4))
    value, grad, lap = jax.jit(jax.vmap(
        operators.value_grad_laplacian(f, method=method, weights=a)))(x)
    ref = jnp.einsum("j,njj->n", jnp.asarray(a), jax.vmap(jax.hessian(f))(x))
    np.testing.assert_allclose(value, jax.vmap(f)(x), rtol=1e-13)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(f))(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lap, ref, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="dims or weights"):
        operators.value_grad_laplacian(f, dims=(0,), weights=a)


def test_channels_jet_with_weights():
    init, apply = models.mlp((3, 7, 6, 1))
    params = init(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 3))
    a = (0.3, -2.0, 1.1)
    jet = channels.jet(params, x, (0, 1, 2), weights=a)
    hess = jax.vmap(jax.hessian(lambda y: apply(params, y)))(x)
    ref = jnp.einsum("j,njj->n", jnp.asarray(a), hess)
    np.testing.assert_allclose(jet.laplacian, ref, rtol=1e-12, atol=1e-13)
    out, _ = channels.forward(params, x, (0, 1, 2), weights=a)
    np.testing.assert_allclose(out[:, -1], ref, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="one entry per input coordinate"):
        channels.jet(params, x, (0,), weights=(1.0, 2.0))


# ------------------------------------------------------------------ residuals and J, both paths


#: every feature on the structured path; folx (any network) on the Robin boundary, the others
#: with -m slow (folx's own path is checked on every paper problem in test_core)
@pytest.mark.parametrize("name,method", [
    (n, m) if m == "structured" or n == "robin" else pytest.param(n, m, marks=pytest.mark.slow)
    for m in ("structured", "folx") for n in sorted(PROBLEMS)])
def test_residual_and_jacobian_match_dense(name, method):
    problem, apply, params, batch = _setup(name, seed=sorted(PROBLEMS).index(name))
    r_ref, j_ref = dense_reference(problem, apply, params, batch)
    n = 7 + problem.n_boundary_residuals * 4
    assert j_ref.shape[0] == n
    rf = ResidualFn(problem, apply, method=method)
    structured = method == "structured"
    v = jax.random.normal(jax.random.PRNGKey(7), (j_ref.shape[1],))
    u = jax.random.normal(jax.random.PRNGKey(8), (n,))

    # one program for every path (compiled once rather than once per function; same values)
    @jax.jit
    def paths(params, batch):
        out = {"r": rf(params, batch)}
        out["r_j"], out["jac"] = rf.residual_and_jacobian(params, batch)
        out["r_b"], out["j_b"] = rf.point_jacobian(params, batch.boundary, "boundary",
                                                   row_scales(7, 4)[1])
        if structured:  # the structured path's own kernel and products, built without J
            out["jv"], out["vjp"] = rf.jvp(params, batch, v), rf.vjp(params, batch, u)
            ss = rf.sample_space(params, batch)
            out.update(ss_r=ss.r, kernel=ss.kernel, ss_jv=ss.jv(v), ss_jtu=ss.jtu(u))
        # row blocks (4 rows each, the last padded: n is odd): J with zero rows appended
        blocks = rf.row_blocks(params, batch, 4)
        assert blocks.n == n
        out["stacked"] = jnp.concatenate([blocks.rows(a) for a in range(blocks.n_blocks)])
        return out

    out = paths(params, batch)
    assert rel(out["r"], r_ref) <= 1e-12
    assert rel(out["r_j"], r_ref) <= 1e-12
    assert rel(out["jac"], j_ref) <= 1e-10
    assert rel(out["r_b"], r_ref[7:]) <= 1e-12
    assert rel(out["j_b"], j_ref[7:]) <= 1e-10
    stacked = out["stacked"]
    assert rel(stacked[:n], j_ref) <= 1e-10
    assert float(jnp.max(jnp.abs(stacked[n:]))) == 0.0
    if not structured:  # folx's K and products come from J (tested elsewhere)
        return
    assert rel(out["jv"], j_ref @ v) <= 1e-10
    assert rel(out["vjp"], j_ref.T @ u) <= 1e-10
    assert rel(out["ss_r"], r_ref) <= 1e-12
    assert rel(jnp.tril(out["kernel"]), jnp.tril(j_ref @ j_ref.T)) <= 1e-10
    assert rel(out["ss_jv"], j_ref @ v) <= 1e-10
    assert rel(out["ss_jtu"], j_ref.T @ u) <= 1e-10


@pytest.mark.parametrize("name", ["wave", "robin"])
def test_any_network_through_folx(name):
    """A pure apply(params, x) that is not a models.mlp: folx ("auto" picks it) to 1e-10."""
    problem, apply, params, batch = _setup(name, seed=11, apply_kind="sine")
    r_ref, j_ref = dense_reference(problem, apply, params, batch)
    rf = ResidualFn(problem, apply)
    assert rf.method == "folx"
    r, jac = rf.residual_and_jacobian(params, batch)
    assert rel(r, r_ref) <= 1e-12
    assert rel(jac, j_ref) <= 1e-10
    with pytest.raises(ValueError, match="needs a pinn_ng.models.mlp"):
        ResidualFn(problem, apply, method="structured")
    with pytest.raises(ValueError, match="pinn_ng.models.mlp"):
        optim.scale_by_kfac(rf, damping=1e-3)


def test_kfac_factors_use_the_gradient_channels_at_the_boundary():
    """KFAC's gradient from the channels equals Jᵀr when boundary residuals use ∇u (k = 2)."""
    problem, apply, params, batch = _setup("wave", seed=2)
    rf = ResidualFn(problem, apply)

    @jax.jit  # one compilation instead of one per primitive (same values)
    def gradient(params, batch):
        lin_i, lin_b = rf.channel_linearizations(params, batch)
        assert lin_b.inputs[0].shape[:2] == (8, 4)  # 4 points x 2 residuals, S = D + 2
        return jnp.concatenate([(layer_gradient(lin_i, k) + layer_gradient(lin_b, k)).reshape(-1)
                                for k in range(len(params))])

    r_ref, j_ref = dense_reference(problem, apply, params, batch)
    assert rel(gradient(params, batch), j_ref.T @ r_ref) <= 1e-10


@pytest.mark.slow
def test_kfac_step_with_gradient_boundary_residuals():
    problem, apply, params, batch = _setup("wave", seed=2)
    rf = ResidualFn(problem, apply)
    opt = optim.scale_by_kfac(rf, damping=1e-3)
    state = opt.init(params)
    upd, state = jax.jit(lambda p, s: opt.update(None, s, p, batch=batch))(params, state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(upd))


# ------------------------------------------------------------------------ checks and errors


def test_problem_checks_are_one_clear_error():
    base = _wave()
    fields = {k: v for k, v in base.__dict__.items()}
    with pytest.raises(ValueError, match="operator_diag must be 2 finite numbers"):
        Problem(**{**fields, "operator_diag": (1.0,)})
    with pytest.raises(ValueError, match="Dirichlet data need exact_fn"):
        Problem(**{**fields, "exact_fn": None, "boundary_jet_fn": None,
                   "n_boundary_residuals": 1})
    with pytest.raises(ValueError, match="n_boundary_residuals=2 needs boundary_jet_fn"):
        Problem(**{**fields, "boundary_jet_fn": None})
    with pytest.raises(TypeError, match="interior_jet_fn must be a function"):
        Problem(**{**fields, "interior_jet_fn": None})
    wrong = Problem(**{**fields, "n_boundary_residuals": 3})
    _, apply, params, batch = _setup("wave", 0)
    with pytest.raises(ValueError, match="expected n_boundary_residuals=3"):
        ResidualFn(wrong, apply, method="folx")(params, batch)


def _npz(tmp_path, x, u, name="ref.npz", **extra):
    path = tmp_path / name
    np.savez(path, x=x, u=u, **extra)
    return str(path)


def test_reference_and_missing_error_metric(tmp_path):
    base = _robin()
    assert base.error_metric is None
    init, apply = models.mlp((2, 6, 1))
    params = init(jax.random.PRNGKey(0))
    errs = base.errors(apply, params)
    assert all(math.isnan(v) for v in errs.values())

    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (20, 2)))
    u = np.sin(x[:, 0]) + x[:, 1]
    prob = Problem(**{**base.__dict__, "reference_path": _npz(tmp_path, x, u)})
    assert prob.error_metric == "reference"
    np.testing.assert_array_equal(prob.eval_points(jnp.float64), x)
    pred = np.asarray(jax.vmap(lambda y: apply(params, y))(jnp.asarray(x)))
    errs = prob.errors(apply, params)
    np.testing.assert_allclose(errs["rms_l2"], np.sqrt(np.mean((pred - u) ** 2)), rtol=1e-12)
    np.testing.assert_allclose(errs["rel_l2"], np.linalg.norm(pred - u) / np.linalg.norm(u),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="errors only on the reference points"):
        prob.errors(apply, params, jnp.zeros((3, 2)))
    np.savez(tmp_path / "only_x.npz", x=x)
    with pytest.raises(ValueError, match="no key 'u'"):
        load_reference(tmp_path / "only_x.npz")
    with pytest.raises(ValueError, match="cannot read it"):
        Problem(**{**base.__dict__, "reference_path": str(tmp_path / "missing.npz")})
    with pytest.raises(ValueError, match="points of dimension 3"):
        Problem(**{**base.__dict__, "reference_path": _npz(tmp_path, np.ones((4, 3)),
                                                            np.ones(4), "d3.npz")})
    with pytest.raises(ValueError, match=r"u \(M,\)"):
        load_reference(_npz(tmp_path, x, u[:5], "short.npz"))
    with pytest.raises(ValueError, match="not both"):
        Problem(**{**_wave().__dict__, "reference_path": _npz(tmp_path, x, u)})


def test_train_records_a_missing_error_as_nan():
    """No error metric: the loss trains, the rows' errors are NaN (not a divergence)."""
    problem = _robin()
    init, apply = models.mlp((2, 6, 1))
    params = init(jax.random.PRNGKey(0))
    rf = ResidualFn(problem, apply)
    opt = optim.make("adam", rf, learning_rate=1e-2)
    res = train(problem, apply, params, opt, rf, uses_grads=True, max_steps=4, eval_every=2,
                n_interior=20, n_boundary=12, progress=False, log=lambda m: None)
    assert not res.diverged and res.steps == 4
    assert all(math.isnan(row["l2"]) for row in res.rows)
    assert res.rows[-1]["loss"] < res.rows[0]["loss"]
