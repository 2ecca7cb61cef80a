"""The optimizers as composable optax blocks (issue 9): the chains equal the fused updates,
hyper-parameters can be arrays, schedules and injected state, diagnostics are found in any
wrapped state, and incoming updates are never silently dropped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import models, optim, problems
from pinn_ng.residuals import ResidualFn

from fused_reference import fused_engd, fused_sample_space


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Run ``opt.update`` jitted and eagerly (as chex.all_variants does for optax)."""
    return jax.jit if request.param == "jit" else (lambda f: f)


@pytest.fixture(scope="module")
def setup():
    problem = problems.get("poisson2d")
    init, apply = models.mlp((2, 6, 5, 1))
    # K from J on both sides (the structured sample space rounds differently; it is tested
    # against dense references in test_channels.py)
    rf = ResidualFn(problem, apply, method="folx")
    params = init(jax.random.PRNGKey(4))
    batches = [problem.sample(jax.random.PRNGKey(10 + k), 30, 12) for k in range(4)]
    return problem, rf, params, batches


def _run(opt, params, batches, variant):
    update = variant(opt.update)
    state = opt.init(params)
    steps = []
    for batch in batches:
        updates, state = update(None, state, params, batch=batch)
        params = optax.apply_updates(params, updates)
        steps.append(np.asarray(ravel_pytree(updates)[0]))
    return np.stack(steps), params, state


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


CASES = {
    "engd_woodbury-line_search": (lambda rf: optim.engd_woodbury(rf, 1e-6),
                                  lambda rf: fused_sample_space(rf, 1e-6)),
    "engd_woodbury-eta": (lambda rf: optim.engd_woodbury(rf, 1e-6, learning_rate=0.3),
                          lambda rf: fused_sample_space(rf, 1e-6, learning_rate=0.3)),
    "spring-eta-cap": (lambda rf: optim.spring(rf, 1e-6, 0.8, learning_rate=0.5,
                                               norm_constraint=1e-4),
                       lambda rf: fused_sample_space(rf, 1e-6, 0.8, 0.5, norm_constraint=1e-4)),
    "spring-line_search": (lambda rf: optim.spring(rf, 1e-6, 0.5),
                           lambda rf: fused_sample_space(rf, 1e-6, 0.5)),
    "spring-nystrom_gpu": (lambda rf: optim.spring(rf, 1e-4, 0.5, learning_rate=0.2,
                                                   norm_constraint=None, solver="nystrom_gpu",
                                                   sketch_size=20, seed=3),
                           lambda rf: fused_sample_space(rf, 1e-4, 0.5, 0.2,
                                                         solver="nystrom_gpu", sketch_size=20,
                                                         seed=3)),
    "engd_woodbury-nystrom": (lambda rf: optim.engd_woodbury(rf, 1e-4, 0.2, solver="nystrom",
                                                             sketch_size=0.5, seed=1),
                              lambda rf: fused_sample_space(rf, 1e-4, 0.0, 0.2,
                                                            solver="nystrom", sketch_size=0.5,
                                                            seed=1)),
    "engd-line_search": (lambda rf: optim.engd(rf, 1e-6), lambda rf: fused_engd(rf, 1e-6)),
    "engd-eta": (lambda rf: optim.engd(rf, 1e-6, learning_rate=0.3),
                 lambda rf: fused_engd(rf, 1e-6, learning_rate=0.3)),
}


#: every case jitted; two eagerly too (an eager step re-traces its loops: 10–20 s a case)
EAGER_CASES = ("engd_woodbury-eta", "spring-eta-cap")


#: jitted cases the default run leaves to -m slow: ENGD's P x P step and the Nyström solvers
#: (each also checked against its dense reference in test_optim and test_solvers)
SLOW_CASES = ("engd-line_search", "engd-eta", "spring-nystrom_gpu", "engd_woodbury-nystrom")


@pytest.mark.parametrize("variant,case", [
    pytest.param("jit", c, marks=pytest.mark.slow) if c in SLOW_CASES else ("jit", c)
    for c in CASES] + [("eager", c) for c in EAGER_CASES], indirect=["variant"])
def test_chain_equals_fused_update(setup, variant, case):
    """Four steps (fresh batches) of the chained optimizer equal the pre-refactor fused code.

    Both run the same float64 operations in a different grouping (e.g. −min(η, √C/‖d‖)·d
    against optax's clipping of η·d), so the first step differs by a few ulps: 1e-12
    relative.  Later steps solve with K + λI (λ = 1e-6) from parameters and momentum that
    already differ by those ulps, which the solve amplifies: 1e-10.
    """
    _, rf, params, batches = setup
    chained, fused = CASES[case]
    steps_c, params_c, state_c = _run(chained(rf), params, batches, variant)
    steps_f, params_f, state_f = _run(fused(rf), params, batches, variant)
    assert np.all(np.linalg.norm(steps_f, axis=1) > 0), "every reference step moved"
    for k in range(len(batches)):
        assert _rel(steps_c[k], steps_f[k]) <= (1e-12 if k == 0 else 1e-10), (case, k)
    assert _rel(ravel_pytree(params_c)[0], ravel_pytree(params_f)[0]) <= 1e-12
    # the recorded step size agrees too (line search: the grid value; fixed η: min(η, cap)),
    # to the last step's tolerance: under the cap it is √C/‖d‖ of that step's direction
    eta_c = float(optim.diagnostics(state_c)["step_size"])
    np.testing.assert_allclose(eta_c, float(state_f.step_size), rtol=1e-10)


def test_public_blocks_with_optax_step_give_algorithm_1(setup):
    """The public blocks composed by hand with optax's own step (as the docs show) give the
    fused SPRING step with its cap, to the tolerances of test_chain_equals_fused_update."""
    _, rf, params, batches = setup
    by_hand = optax.chain(optim.scale_by_spring(rf, 1e-6, 0.8),
                          optax.scale_by_learning_rate(0.5),
                          optim.scale_by_norm_constraint(1e-4))
    a, _, _ = _run(by_hand, params, batches, jax.jit)
    b, _, _ = _run(fused_sample_space(rf, 1e-6, 0.8, 0.5, norm_constraint=1e-4), params,
                   batches, jax.jit)
    assert np.all(np.linalg.norm(b, axis=1) > 0)
    for k in range(len(batches)):
        assert _rel(a[k], b[k]) <= (1e-12 if k == 0 else 1e-10), k


def test_clip_before_natural_gradient_block_raises(setup):
    _, rf, params, batches = setup
    grads = jax.grad(lambda p: rf.loss(p, batches[0]))(params)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optim.engd_woodbury(rf, 1e-6))
    with pytest.raises(ValueError, match="must come first in an optax.chain"):
        opt.update(grads, opt.init(params), params, batch=batches[0])
    # a gradient handed to the block directly is refused too (it would be discarded)
    for opt in (optim.engd(rf, 1e-6), optim.spring(rf, 1e-6, 0.5), optim.hessian_free(rf)):
        with pytest.raises(ValueError, match="update\\(None, state, params, batch=batch\\)"):
            opt.update(grads, opt.init(params), params, batch=batches[0])


def test_transforms_after_the_block_apply(setup):
    """Clipping *after* the direction block caps the step: nothing is dropped."""
    _, rf, params, batches = setup
    opt = optax.chain(optim.engd_woodbury(rf, 1e-6, learning_rate=1.0),
                      optax.clip_by_global_norm(1e-3))
    updates, state = jax.jit(opt.update)(None, opt.init(params), params, batch=batches[0])
    norm = float(jnp.linalg.norm(ravel_pytree(updates)[0]))
    diag = optim.diagnostics(state)
    assert float(diag["phi_norm"]) > 1e-3  # the unclipped step would be longer
    np.testing.assert_allclose(norm, 1e-3, rtol=1e-12)
    assert float(diag["step_size"]) == 1.0  # η of the step block; the clip comes after it


def test_inject_hyperparams_changes_damping_without_recompiling(setup):
    _, rf, params, batches = setup
    # C given explicitly: the default "reference" stays static
    opt = optim.inject_hyperparams(optim.spring)(rf, damping=1e-6, momentum=0.5,
                                                 learning_rate=0.2, norm_constraint=1e-3)
    traces = []

    @jax.jit
    def step(params, state, batch):
        traces.append(1)  # runs once per compilation
        updates, state = opt.update(None, state, params, batch=batch)
        return updates, state

    state0 = opt.init(params)
    assert set(state0.hyperparams) == {"damping", "momentum", "learning_rate",
                                       "norm_constraint"}
    for lam in (1e-6, 1e-4, 1e-2):
        state = state0._replace(hyperparams={**state0.hyperparams,
                                             "damping": jnp.asarray(lam)})
        updates, state = step(params, state, batches[0])
        fresh = optim.spring(rf, lam, 0.5, learning_rate=0.2)
        ref, _ = jax.jit(fresh.update)(None, fresh.init(params), params, batch=batches[0])
        assert _rel(ravel_pytree(updates)[0], ravel_pytree(ref)[0]) <= 1e-12, lam
        # diagnostics are found inside the injected state
        assert np.isfinite(float(optim.diagnostics(state)["loss"]))
    assert len(traces) == 1


def test_learning_rate_schedule(setup, variant):
    """η_k from an optax schedule: the applied step size is η_k (no cap), per step."""
    _, rf, params, batches = setup
    schedule = optax.exponential_decay(0.4, transition_steps=1, decay_rate=0.5)
    opt = optim.spring(rf, 1e-6, 0.5, learning_rate=schedule, norm_constraint=None)
    update = variant(opt.update)
    state = opt.init(params)
    for k, batch in enumerate(batches):
        updates, state = update(None, state, params, batch=batch)
        np.testing.assert_allclose(float(optim.diagnostics(state)["step_size"]),
                                   float(schedule(jnp.asarray(k, jnp.int32))), rtol=1e-12)
        params = optax.apply_updates(params, updates)


def test_damping_and_momentum_schedules(setup):
    """A schedule of λ and μ gives, at step k, the step of the fixed values λ_k, μ_k."""
    _, rf, params, batches = setup
    lam = optax.linear_schedule(1e-3, 1e-5, transition_steps=2)
    block = optim.scale_by_spring(rf, lam, optax.constant_schedule(0.0))
    state = block.init(params)
    for k, batch in enumerate(batches[:3]):
        d, state = jax.jit(block.update)(None, state, params, batch=batch)
        # λ_k as optax evaluates a schedule in the step: at the int32 count (float32 here)
        fixed = optim.scale_by_engd_woodbury(rf, float(lam(jnp.asarray(k, jnp.int32))))
        ref, _ = fixed.update(None, fixed.init(params), params, batch=batch)
        assert _rel(ravel_pytree(d)[0], ravel_pytree(ref)[0]) <= 1e-12, k


def test_line_search_with_value_fn(setup):
    """The grid line search also takes an optax-style value_fn extra argument."""
    _, rf, params, batches = setup
    batch = batches[0]
    d = jax.grad(lambda p: rf.loss(p, batch))(params)
    ls = optim.scale_by_grid_line_search()
    u1, s1 = ls.update(d, ls.init(params), params, value_fn=lambda p: rf.loss(p, batch))
    ls2 = optim.scale_by_grid_line_search(rf)
    u2, s2 = ls2.update(d, ls2.init(params), params, batch=batch)
    assert float(s1.step_size) == float(s2.step_size) > 0
    flat_d = ravel_pytree(d)[0]
    np.testing.assert_allclose(ravel_pytree(u1)[0], -float(s1.step_size) * flat_d, rtol=1e-15)
    assert float(rf.loss(optax.apply_updates(params, u1), batch)) < float(rf.loss(params, batch))
    with pytest.raises(ValueError, match="value_fn"):
        ls.update(d, ls.init(params), params)


def test_norm_cap_with_line_search_is_explicit(setup):
    """With the line search an explicit C raises whatever its value (the reference code's own
    C = 1e-3 too, plain or injected as an array): it is never silently dropped."""
    _, rf, params, _ = setup
    for c in (1e-2, 1e-3, jnp.asarray(1e-3), optax.constant_schedule(1e-3)):
        with pytest.raises(ValueError, match="applies only with a fixed or scheduled"):
            optim.spring(rf, 1e-6, 0.5, norm_constraint=c)
    injected = optim.inject_hyperparams(optim.spring)(rf, 1e-6, 0.5, norm_constraint=1e-3)
    with pytest.raises(ValueError, match="applies only with a fixed or scheduled"):
        injected.init(params)
    with pytest.raises(ValueError, match="applies only with a fixed or scheduled"):
        optim.step_size_chain(rf, "line_search", 1e-3)
    optim.spring(rf, 1e-6, 0.5, norm_constraint=None)  # fine: no cap, as documented


def test_inject_hyperparams_spring_at_the_published_line_search_setting(setup):
    """SPRING's published 5d setting (line search, λ = 2.09e-10, μ = 0.0633) under
    inject_hyperparams: the default C stays static (no cap after the line search) and the
    injected steps equal the plain ones."""
    _, rf, params, batches = setup
    kw = dict(damping=2.09e-10, momentum=0.0633, learning_rate="line_search")
    injected = optim.inject_hyperparams(optim.spring)(rf, **kw)
    state = injected.init(params)
    assert set(state.hyperparams) == {"damping", "momentum"}
    steps, _, _ = _run(injected, params, batches[:2], jax.jit)
    ref, _, _ = _run(optim.spring(rf, **kw), params, batches[:2], jax.jit)
    assert np.all(np.linalg.norm(ref, axis=1) > 0)
    for k in range(2):
        assert _rel(steps[k], ref[k]) <= 1e-12, k


def test_diagnostics_tree_get_on_wrapped_states(setup):
    _, rf, params, batches = setup
    inner = optim.engd_woodbury(rf, 1e-6)
    wrapped = optax.chain(optax.identity(), optax.apply_every(1))
    opt = optax.chain(inner, wrapped)
    updates, state = jax.jit(opt.update)(None, opt.init(params), params, batch=batches[0])
    diag = optim.diagnostics(state)
    assert set(diag) >= {"loss", "phi_norm", "step_size", "jitter", "cholesky_fallback",
                         "nonfinite"}
    assert otu.tree_get(state, "diagnostics") is not None
    np.testing.assert_allclose(float(diag["loss"]), float(rf.loss(params, batches[0])),
                               rtol=1e-12)


def test_make_lists_valid_hyperparameters(setup):
    _, rf, _, _ = setup
    with pytest.raises(ValueError, match="unknown hyper-parameter 'dampng'.*valid: damping"):
        optim.make("spring", rf, dampng=1e-6, momentum=0.5)
    with pytest.raises(ValueError, match="missing hyper-parameter 'momentum'"):
        optim.make("spring", rf, damping=1e-6)


def test_step_size_is_the_eta_of_the_step_blocks(setup):
    """``step_size`` is η_k of θ ← θ − η_k·d_k, d_k the direction the step-size blocks
    receive (after momentum), for every optimizer that has one: η itself for a fixed η (also
    after KFAC's momentum, where ‖updates‖/‖φ‖ is not η), the grid's η, min(η, √C/‖d‖) under
    the cap, KFAC*'s α."""
    problem, _, params, batches = setup
    rf = ResidualFn(problem, models.mlp((2, 6, 5, 1))[1])  # KFAC needs the channels
    eta, c = 0.1, 1e-6
    cases = {
        "kfac-eta": (optim.kfac(rf, 1e-3, 0.9, learning_rate=eta), lambda s, d: eta),
        "kfac-line_search": (optim.kfac(rf, 1e-3, 0.9),
                             lambda s, d: otu.tree_get(s, "step_size")),
        "kfac_star": (optim.kfac_star(rf, 1e-3), lambda s, d: otu.tree_get(s, "alpha")),
        "spring-eta-cap": (optim.spring(rf, 1e-6, 0.5, learning_rate=eta, norm_constraint=c),
                           lambda s, d: min(eta, np.sqrt(c) / float(d["phi_norm"]))),
        "engd-eta": (optim.engd(rf, 1e-6, learning_rate=eta), lambda s, d: eta),
    }
    for name, (opt, expected) in cases.items():
        update = jax.jit(opt.update)
        state, p = opt.init(params), params
        for batch in batches[:3]:
            updates, state = update(None, state, p, batch=batch)
            p = optax.apply_updates(p, updates)
            diag = optim.diagnostics(state)
            np.testing.assert_allclose(float(diag["step_size"]),
                                       float(expected(state, diag)), rtol=1e-12, err_msg=name)
        assert float(diag["step_size"]) > 0, name
        if name == "kfac-eta":  # momentum after the direction: the ratio is not η
            ratio = float(jnp.linalg.norm(ravel_pytree(updates)[0])) / float(diag["phi_norm"])
            assert abs(ratio - eta) > 1e-3 * eta
