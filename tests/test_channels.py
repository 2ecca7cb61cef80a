"""The structured forward-Laplacian path (pinn_ng.channels) against folx and dense references,
in float64 (issue 10).  Residuals and J of both paths against jax.jacfwd on every problem:
tests/test_core.py::test_jacobian_matches_jacfwd_and_products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pinn_ng import channels, models, problems
from pinn_ng.residuals import ResidualFn


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def small_net(problem):
    return models.mlp((problem.input_dim, 7, 6, 5, 1))


@pytest.mark.parametrize("seed", [0])
@pytest.mark.parametrize("name", problems.names())
def test_jet_matches_hessian_reference(name, seed):
    problem = problems.get(name)
    init, apply = small_net(problem)
    params = init(jax.random.PRNGKey(seed))
    x = problem.sample(jax.random.PRNGKey(50 + seed), 6, 3).interior

    @jax.jit  # one compilation instead of one per primitive (same arithmetic)
    def both(params, x):
        f = lambda y: apply(params, y)  # noqa: E731
        hess = jax.vmap(jax.hessian(f))(x)
        lap = jnp.einsum("njj->n", hess[:, : problem.spatial_dim, : problem.spatial_dim])
        return (channels.jet(params, x, problem.lap_dims), jax.vmap(f)(x),
                jax.vmap(jax.grad(f))(x), lap)

    jet, value, grad, lap = both(params, x)
    # a handful of flops per entry, all O(1) values: agreement to a few ulps
    np.testing.assert_allclose(jet.value, value, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jet.grad, grad, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jet.laplacian, lap, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["poisson5d", pytest.param("poisson100d", marks=pytest.mark.slow)])
def test_structured_jacobian_at_the_paper_width(name):
    """The paper's nets (P = 10,065 / 1,325,057), a few points: rows equal folx's."""
    problem = problems.get(name)
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(3))
    batch = problem.sample(jax.random.PRNGKey(4), 4, 2)
    r_s, j_s = ResidualFn(problem, apply, method="structured").residual_and_jacobian(params, batch)
    r_f, j_f = ResidualFn(problem, apply, method="folx").residual_and_jacobian(params, batch)
    assert rel(r_s, r_f) <= 1e-12
    assert rel(j_s, j_f) <= 1e-10


def test_structured_products_and_row_blocks():
    problem = problems.get("logfp9d")
    init, apply = small_net(problem)
    params = init(jax.random.PRNGKey(5))
    batch = problem.sample(jax.random.PRNGKey(6), 11, 7)
    rf = ResidualFn(problem, apply, method="structured")
    p_count = sum(w.size + b.size for w, b in params)
    v = jax.random.normal(jax.random.PRNGKey(7), (p_count,))
    u = jax.random.normal(jax.random.PRNGKey(8), (batch.size,))

    @jax.jit  # one compilation instead of one per primitive (same arithmetic)
    def paths(params, batch):
        blocks = rf.row_blocks(params, batch, 5)
        return (rf.residual_and_jacobian(params, batch)[1], rf.jvp(params, batch, v),
                rf.vjp(params, batch, u),
                jnp.concatenate([blocks.rows(a) for a in range(blocks.n_blocks)]))

    jac, jv, vjp, stacked = paths(params, batch)
    assert jac.shape == (batch.size, p_count)
    assert rel(jv, jac @ v) <= 1e-12
    assert rel(vjp, jac.T @ u) <= 1e-12
    assert rel(stacked[: batch.size], jac) <= 1e-14
    assert float(jnp.max(jnp.abs(stacked[batch.size:]))) == 0.0


def test_method_errors():
    problem = problems.get("poisson2d")
    assert ResidualFn(problem, small_net(problem).apply).method == "structured"
    with pytest.raises(ValueError, match="structured.*models.mlp"):
        ResidualFn(problem, lambda p, x: jnp.sum(x), method="structured")
    with pytest.raises(ValueError, match="unknown residual method"):
        ResidualFn(problem, small_net(problem).apply, method="taylor")
    # any other network takes the general per-point path
    assert ResidualFn(problem, lambda p, x: jnp.sum(x)).method == "folx"


@pytest.mark.parametrize("name", problems.names())
def test_sample_space_matches_dense_reference(name):
    """K (lower triangle), J v and Jᵀ u of the structured sample space, which never assembles
    J, against folx's J on fresh random inputs."""
    problem = problems.get(name)
    init, apply = small_net(problem)
    params = init(jax.random.PRNGKey(11))
    batch = problem.sample(jax.random.PRNGKey(12), 9, 5)
    step = jax.jit(lambda p, b, v, u: (lambda s: (s.r, s.kernel, s.jv(v), s.jtu(u)))(
        ResidualFn(problem, apply, method="structured").sample_space(p, b)))
    r_f, j_f = ResidualFn(problem, apply, method="folx").residual_and_jacobian(params, batch)
    rng = np.random.default_rng(13)
    v, u = rng.standard_normal(j_f.shape[1]), rng.standard_normal(j_f.shape[0])
    r, k, jv, jtu = step(params, batch, v, u)
    j_f = np.asarray(j_f)
    assert rel(r, r_f) <= 1e-12
    assert rel(np.tril(k), np.tril(j_f @ j_f.T)) <= 1e-12
    n_i = batch.interior.shape[0]
    assert float(np.max(np.abs(np.asarray(k)[:n_i, n_i:]))) == 0.0  # never computed
    assert rel(jv, j_f @ v) <= 1e-12
    assert rel(jtu, j_f.T @ u) <= 1e-12


@pytest.mark.parametrize("name", ["poisson2d", "heat4d"])
def test_sample_space_on_the_blas_matches_dense_reference(name, monkeypatch):
    """With the BLAS's products, the boundary rows join J's layer blocks and K is one ?syrk
    per layer over all N rows: K, J v and Jᵀ u against folx's J (float64, fresh inputs)."""
    from pinn_ng import blas

    monkeypatch.setenv(blas.ENV, "blas")  # read when the sample space is traced
    rows = []
    real = blas._syrk_lower_into
    monkeypatch.setattr(blas, "_syrk_lower_into",
                        lambda out, ps: rows.append([p.shape[0] for p in ps]) or real(out, ps))
    problem = problems.get(name)
    init, apply = small_net(problem)
    params = init(jax.random.PRNGKey(21))
    batch = problem.sample(jax.random.PRNGKey(22), 11, 6)
    step = jax.jit(lambda p, b, v, u: (lambda s: (s.kernel, s.jv(v), s.jtu(u)))(
        ResidualFn(problem, apply, method="structured").sample_space(p, b)))
    j_f = np.asarray(ResidualFn(problem, apply, method="folx").jacobian(params, batch))
    rng = np.random.default_rng(23)
    v, u = rng.standard_normal(j_f.shape[1]), rng.standard_normal(j_f.shape[0])
    k, jv, jtu = jax.block_until_ready(step(params, batch, v, u))
    assert rows == [[j_f.shape[0]] * 4]  # one call, every layer's block with all N rows
    assert rel(np.tril(k), np.tril(j_f @ j_f.T)) <= 1e-12
    assert not np.any(np.triu(np.asarray(k), 1))
    assert rel(jv, j_f @ v) <= 1e-12
    assert rel(jtu, j_f.T @ u) <= 1e-12


@pytest.mark.parametrize("way", ["channels", "rows", "cheaper"])
def test_kernel_block_channels_equal_rows(way, monkeypatch):
    """Both ways of a layer's J_a J_bᵀ (channel pairs, rows of J), forced for every layer by
    the flop counts kernel_block compares, and the cheaper of the two."""
    forced = {"channels": (0, 1), "rows": (1, 0)}
    if way in forced:
        monkeypatch.setattr(channels, "_channel_flops", lambda a, b, layer: forced[way])
    problem = problems.get("heat4d")
    init, _ = small_net(problem)
    params = init(jax.random.PRNGKey(14))
    x = problem.sample(jax.random.PRNGKey(15), 8, 6)

    def lin(points, lap_dims):
        if lap_dims is None:
            def of_jet(value, y):
                return value ** 2
        else:
            def of_jet(jet, y):
                return jet.laplacian * jet.value - jnp.sin(jet.grad[:, -1])
        return channels.linearize(params, points, lap_dims, of_jet, 0.7)

    # jitted: the same arithmetic as eager, compiled once per case instead of once per op
    a = jax.jit(lambda pts: lin(pts, problem.lap_dims))(x.interior)
    b = jax.jit(lambda pts: lin(pts, None))(x.boundary)
    ja, jb = jax.jit(channels.jacobian)(a), jax.jit(channels.jacobian)(b)
    # a fresh function per case: jax caches traces by function, not by the patched globals
    block = jax.jit(lambda left, right: channels.kernel_block(left, right))
    for left, right, jl, jr in ((a, a, ja, ja), (b, a, jb, ja), (b, b, jb, jb)):
        ref = np.asarray(jl) @ np.asarray(jr).T
        assert rel(block(left, right), ref) <= 1e-13
