"""KFAC and KFAC* for PINNs (issue 11) against independent dense float64 references, on fresh
random inputs: the channels' per-point Jacobian identity, the exact one-point Kronecker
blocks, the factors' invariants, the Kronecker-sum solve, the EMA, the full direction, KFAC*'s
(α, μ), the line search with momentum, and a few training steps."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import channels, models, optim, problems, train
from pinn_ng.optim.step_size import LINE_SEARCH_GRID_EXPONENTS
from pinn_ng.residuals import ResidualFn, row_scales

K = importlib.import_module("pinn_ng.optim.kfac")  # the package re-exports kfac(), a function


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def setup(name, widths_hidden=(5, 4), n_i=4, n_b=3, seed=0):
    problem = problems.get(name)
    init, apply = models.mlp((problem.input_dim, *widths_hidden, 1))
    rf = ResidualFn(problem, apply)
    params = init(jax.random.PRNGKey(100 + seed))
    # the tests move biases off zero too, so that no bias entry is trivially zero
    key = jax.random.PRNGKey(200 + seed)
    params = [(w, 0.3 * jax.random.normal(jax.random.fold_in(key, i), b.shape))
              for i, (w, b) in enumerate(params)]
    batch = problem.sample(jax.random.PRNGKey(300 + seed), n_i, n_b)
    return problem, apply, rf, params, batch


def per_layer(flat_row, params):
    """Split a flat (P,) row into per-layer (fan_in + 1, fan_out) matrices [W; b]."""
    out, start = [], 0
    for w, _ in params:
        size = (w.shape[0] + 1) * w.shape[1]
        out.append(flat_row[start:start + size].reshape(w.shape[0] + 1, w.shape[1]))
        start += size
    return out


#: last-layer interior B (expand): g on the output channels is the residual's constant
#: coefficients on them (Poisson: −1 on the Laplacian; heat: +1 on ∂ₜ, −¼ on the Laplacian)
#: times 1/√N, so B = Σ coefficient²; log-FP's g depends on the point (nonlinear residual)
LAST_B = {"poisson2d": 1.0, "heat4d": 1.0 + 0.25 ** 2, "logfp9d": None}


@pytest.mark.parametrize("name", ["poisson2d", "heat4d", "logfp9d"])
def test_point_jacobian_and_factor_invariants(name):
    """∂r_n/∂W̃ = Σ_s z̃_{n,s} g_{n,s}ᵀ against jax.grad of each point's own residual, its
    Laplacian by jax.hessian (independent of the channels); boundary points likewise.  The
    factors' invariants: bias corner of A is 1/S (interior, expand) and 1 (boundary); the
    last-layer interior B is Σ coefficient² (:data:`LAST_B`)."""
    # a hidden-to-hidden layer on Poisson; one hidden layer elsewhere (compilation time)
    problem, apply, rf, params, batch = setup(name, (5, 4) if name == "poisson2d" else (4,))
    s_i, s_b = row_scales(batch.interior.shape[0], batch.boundary.shape[0])

    def interior(p, x):
        return s_i * problem.interior_residual(lambda y: apply(p, y), x, "hessian")

    def boundary(p, x):
        return s_b * problem.boundary_residual(lambda y: apply(p, y), x)

    @jax.jit
    def both(params, batch):
        lin_i, lin_b = rf.channel_linearizations(params, batch)
        refs = [(jax.vmap(fn, (None, 0))(params, pts), jax.vmap(jax.grad(fn), (None, 0))(params, pts))
                for fn, pts in ((interior, batch.interior), (boundary, batch.boundary))]
        return lin_i, lin_b.value_channel(), refs

    lin_i, lin_b, refs = both(params, batch)
    for lin, (ref_r, ref) in zip((lin_i, lin_b), refs):
        np.testing.assert_allclose(lin.r, ref_r, rtol=1e-11)
        for layer, (w_ref, b_ref) in enumerate(ref):
            got = jnp.einsum("nsi,nso->nio", lin.inputs[layer], lin.grads[layer])
            want = jnp.concatenate([w_ref, b_ref[:, None, :]], axis=1)
            assert rel(got, want) < 1e-11, (name, layer)

    s = problem.input_dim + 2
    assert lin_i.inputs[0].shape[1] == s
    for layer in range(len(params)):
        a_i, _ = K.interior_factors(lin_i.inputs[layer], lin_i.grads[layer])
        a_b, _ = K.boundary_factors(lin_b.inputs[layer], lin_b.grads[layer])
        np.testing.assert_allclose(a_i[-1, -1], 1.0 / s, rtol=1e-14)
        np.testing.assert_allclose(a_b[-1, -1], 1.0, rtol=1e-14)
    if LAST_B[name] is not None:
        _, b_last = K.interior_factors(lin_i.inputs[-1], lin_i.grads[-1])
        np.testing.assert_allclose(b_last, [[LAST_B[name]]], rtol=1e-13)


def _dense_layer_blocks(fn, params):
    """J's per-layer column blocks of the residual vector fn(params) (jax.jacrev)."""
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacrev(lambda w: fn(unravel(w))))(flat)
    blocks, start = [], 0
    for w, _ in params:
        size = (w.shape[0] + 1) * w.shape[1]
        blocks.append(jac[:, start:start + size])
        start += size
    return blocks


def test_one_point_kronecker_blocks_are_exact():
    """Boundary KFAC with one point is the exact Gauss–Newton block J_lᵀJ_l; so is the interior
    block with one point and one channel (S = 1), built here from a nonlinear residual of the
    value alone.  Also fixes the vec convention: A ⊗ B in ravel_pytree's (row-major) order."""
    problem, apply, rf, params, batch = setup("poisson2d", (4,), n_i=1, n_b=1, seed=1)
    x_b = batch.boundary[:1]

    @jax.jit
    def boundary_factors(params, batch):
        lin_b = rf.channel_linearizations(params, batch)[1].value_channel()
        return [K.boundary_factors(h, g) for h, g in zip(lin_b.inputs, lin_b.grads)]

    blocks = _dense_layer_blocks(
        lambda p: jax.vmap(lambda x: problem.boundary_residual(lambda y: apply(p, y), x))(x_b),
        params)
    for layer, (jl, (a, b)) in enumerate(zip(blocks, boundary_factors(params, batch))):
        assert rel(np.kron(a, b), jl.T @ jl) < 1e-12, layer

    # interior, S = 1: r(x) = sin(u(x)) − x₁ u(x)² on one point
    x = batch.interior[:1]

    def res_of_value(value, x):
        return jnp.sin(value) - x[:, 0] * value ** 2

    @jax.jit
    def interior_factors(params, x):
        lin = channels.linearize(params, x, None, res_of_value, 1.0)
        assert lin.inputs[0].shape[1] == 1
        return {approx: [K.interior_factors(h, g, approx) for h, g in zip(lin.inputs, lin.grads)]
                for approx in K.APPROXIMATIONS}

    blocks = _dense_layer_blocks(
        lambda p: res_of_value(jax.vmap(lambda y: apply(p, y))(x), x), params)
    for approx, factors in interior_factors(params, x).items():
        for layer, (jl, (a, b)) in enumerate(zip(blocks, factors)):
            assert rel(np.kron(a, b), jl.T @ jl) < 1e-12, (approx, layer)


def test_kronecker_sum_solve_matches_dense():
    rng = np.random.default_rng(3)

    def spd(n, rank=None):
        m = rng.standard_normal((n, rank or n))
        return m @ m.T + (0.1 * np.eye(n) if rank is None else 0.0)

    m, n = 5, 3
    a1, b1 = spd(m), spd(n)
    a2, b2 = spd(m, rank=2), spd(n, rank=1)  # the second pair only semi-definite
    v = rng.standard_normal((m, n))
    x = K.kronecker_sum_solve(*map(jnp.asarray, (a1, b1, a2, b2, v)))
    dense = np.linalg.solve(np.kron(a1, b1) + np.kron(a2, b2), v.reshape(-1))
    assert rel(np.asarray(x).reshape(-1), dense) < 1e-11


def _dense_direction(grad_fn, params, batch, factors_i, factors_b, lam):
    """C⁻¹∇L with C built densely (np.kron) from the given factors, ∇L = grad_fn(params, batch)
    (jax.grad of the loss)."""
    grad = ravel_pytree(grad_fn(params, batch))[0]
    out = []
    for g, (a1, b1), (a2, b2) in zip(per_layer(grad, params), factors_i, factors_b):
        ia, ib = np.eye(a1.shape[0]), np.eye(b1.shape[0])
        c = np.kron(a1 + lam * ia, b1 + lam * ib) + np.kron(a2 + lam * ia, b2 + lam * ib)
        out.append(np.linalg.solve(c, np.asarray(g).reshape(-1)))
    return np.concatenate(out)


@pytest.mark.parametrize("approximation", ["expand",
                                           pytest.param("reduce", marks=pytest.mark.slow)])
def test_ema_from_identity_and_direction(approximation):
    """After one step from I the factors are βI + (1−β)F; the direction is the dense C⁻¹∇L."""
    _, _, rf, params, batch = setup("heat4d", (4,), n_i=6, n_b=4, seed=4)
    beta, lam = 0.8, 1e-3
    block = K.scale_by_kfac(rf, lam, beta, approximation)
    upd, state = jax.jit(block.update)(None, block.init(params), params, batch=batch)

    @jax.jit
    def new_factors(params, batch):
        lin_i, lin_b = rf.channel_linearizations(params, batch)
        lin_b = lin_b.value_channel()
        return [(K.interior_factors(hi, gi, approximation), K.boundary_factors(hb, gb))
                for hi, gi, hb, gb in zip(lin_i.inputs, lin_i.grads, lin_b.inputs, lin_b.grads)]

    for layer, (new_i, new_b) in enumerate(new_factors(params, batch)):
        for got, new in zip(state.interior[layer] + state.boundary[layer], new_i + new_b):
            want = beta * np.eye(new.shape[0]) + (1 - beta) * np.asarray(new)
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    want = _dense_direction(jax.jit(jax.grad(rf.loss)), params, batch, state.interior,
                            state.boundary, lam)
    assert rel(ravel_pytree(upd)[0], want) < 1e-9
    assert float(state.diagnostics.nonfinite) == 0.0


def test_kfac_star_alpha_mu_minimise_dense_quadratic_model():
    """(α, μ) of KFAC*'s second step against the least-squares minimiser of the dense model
    ½‖J u + r‖² + ½λ‖u‖² over u = αΔ + μδ (a different route than the 2 x 2 equations);
    then a few more steps on the same batch lower the loss."""
    _, _, rf, params, batch = setup("poisson2d", (6,), n_i=8, n_b=5, seed=5)
    lam = 1e-2
    opt = optim.kfac_star(rf, lam, ema_decay=0.7, initial_step_size=1e-2)
    update = jax.jit(opt.update)
    state = opt.init(params)
    u1, state = update(None, state, params, batch=batch)
    params1 = optax.apply_updates(params, u1)
    u2, state2 = update(None, state, params1, batch=batch)

    # Δ of the second step, densely from the factors it used (the direction itself:
    # test_ema_from_identity_and_direction)
    d = -_dense_direction(jax.jit(jax.grad(rf.loss)), params1, batch, state2[0].interior,
                          state2[0].boundary, lam)
    delta_prev = np.asarray(ravel_pytree(u1)[0])
    r, jac = rf.residual_and_jacobian(params1, batch)
    basis = np.stack([d, delta_prev], axis=1)
    lhs = np.concatenate([np.asarray(jac) @ basis, np.sqrt(lam) * basis])
    rhs = -np.concatenate([np.asarray(r), np.zeros(d.shape[0])])
    (alpha, mu), *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
    star = state2[1]
    np.testing.assert_allclose([float(star.alpha), float(star.mu)], [alpha, mu], rtol=1e-8)
    assert rel(ravel_pytree(u2)[0], alpha * d + mu * delta_prev) < 1e-8
    # the first step: α = initial_step_size along Δ, no momentum
    assert float(state[1].alpha) == 1e-2 and float(state[1].mu) == 0.0
    loss0, p, state = float(rf.loss(params, batch)), optax.apply_updates(params1, u2), state2
    for _ in range(6):
        u, state = update(None, state, p, batch=batch)
        p = optax.apply_updates(p, u)
    final = float(rf.loss(p, batch))
    assert np.isfinite(final) and final < 0.5 * loss0, (loss0, final)
    assert optim.diagnostics(state)["nonfinite"] == 0


def test_line_search_and_momentum_match_numpy_reference():
    """Three KFAC steps against NumPy: m = μm + d, η = argmin over the grid of the loss (no
    step if none is lower), θ ← θ − ηm.  d = C⁻¹∇L densely from the factors of the step
    (the direction block itself: test_ema_from_identity_and_direction).  Every step lowers
    the loss of its (fresh) batch."""
    _, _, rf, params, _ = setup("poisson2d", (6,), n_i=10, n_b=6, seed=6)
    problem = problems.get("poisson2d")
    lam, mu, beta = 1e-4, 0.6, 0.9
    opt = optim.kfac(rf, lam, mu, ema_decay=beta)
    update, loss, grad = jax.jit(opt.update), jax.jit(rf.loss), jax.jit(jax.grad(rf.loss))
    state = opt.init(params)
    flat, unravel = ravel_pytree(params)
    ref = np.asarray(flat)
    m = np.zeros_like(ref)
    etas = 2.0 ** np.asarray(LINE_SEARCH_GRID_EXPONENTS, float)
    for k in range(3):
        batch = problem.sample(jax.random.PRNGKey(400 + k), 10, 6)
        u, state = update(None, state, params, batch=batch)
        m = mu * m + _dense_direction(grad, unravel(jnp.asarray(ref)), batch,
                                      state[0].interior, state[0].boundary, lam)
        loss0 = float(loss(unravel(jnp.asarray(ref)), batch))
        losses = [float(loss(unravel(jnp.asarray(ref - e * m)), batch)) for e in etas]
        i = int(np.argmin(losses))
        eta = etas[i] if losses[i] < loss0 else 0.0
        ref = ref - eta * m
        params = optax.apply_updates(params, u)
        assert rel(ravel_pytree(params)[0], ref) < 1e-10, k
        assert eta > 0 and float(loss(params, batch)) < loss0, k


def _recorder(n_steps):
    """An optimizer that never moves and reports the first coordinate of its batch."""

    def init(params):
        return jnp.zeros(())

    def update(updates, state, params=None, *, batch=None, **kw):
        return jax.tree.map(jnp.zeros_like, params), batch.interior[0, 0]

    return optax.GradientTransformationExtraArgs(init, update)


def test_batch_every_reuses_batches():
    problem, apply, rf, params, _ = setup("poisson2d", n_i=5, n_b=3, seed=7)

    def seen(batch_every):
        res = train.train(problem, apply, params, _recorder(6), rf, uses_grads=False,
                          diagnostics=lambda s: {"x": s}, n_interior=5, n_boundary=3,
                          max_steps=6, eval_every=1, batch_every=batch_every, progress=False,
                          log=lambda m: None)
        return [row["x"] for row in res.rows[1:]]

    every3, every1 = seen(3), seen(1)
    assert every3[0] == every3[1] == every3[2] != every3[3] == every3[4] == every3[5]
    assert len(set(every1)) == 6
    assert every3[0] == every1[0] and every3[3] == every1[1]  # block j uses batch j
    with pytest.raises(ValueError, match="batch_every"):
        train.train(problem, apply, params, _recorder(1), rf, uses_grads=False, max_steps=1,
                    batch_every=0)


def test_needs_an_mlp_and_valid_options():
    """One clear error for a network without channels, an unknown approximation, β = 1."""
    problem, _, rf, params, _ = setup("poisson2d", (3,))
    plain = ResidualFn(problem, lambda p, x: models.mlp((2, 3, 1)).apply(p, x), method="folx")
    for name in ("kfac", "kfac_star"):
        with pytest.raises(ValueError, match="pinn_ng.models.mlp"):
            optim.make(name, plain, damping=1e-3, **({"momentum": 0.5} if name == "kfac"
                                                      else {}))
    with pytest.raises(ValueError, match="approximation"):
        optim.kfac(rf, 1e-3, 0.5, approximation="full")
    with pytest.raises(ValueError, match="ema_decay"):
        optim.kfac_star(rf, 1e-3, ema_decay=1.0)
    # λ, μ and β become state under inject_hyperparams (a sweep does not recompile)
    state = optim.inject_hyperparams(optim.kfac)(rf, damping=1e-3, momentum=0.5,
                                                 ema_decay=0.9).init(params)
    assert {"damping", "momentum", "ema_decay"} <= set(state.hyperparams)
