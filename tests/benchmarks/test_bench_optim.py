"""pytest-benchmark micro-benchmarks of the optimizers (skipped by the default ``pytest`` run).

One ENGD-W / SPRING step (fixed η, Cholesky and GPU-efficient Nyström) on poisson5d with the
paper's net at N = 700, and the two Nyström variants on that kernel.  Compiled ahead of time,
checked once (finite step; Nyström at ℓ = N against the exact solve), ``block_until_ready`` in
the timed call.  Run with the command in README "Benchmarks".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pinn_ng import models, optim, problems
from pinn_ng.optim import solvers
from pinn_ng.residuals import ResidualFn

ROUNDS = 5
N = (600, 100)


@pytest.fixture(scope="module")
def setup5d():
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)
    params = init(jax.random.PRNGKey(1))
    batch = problem.sample(jax.random.PRNGKey(0), *N)
    return ResidualFn(problem, apply), params, batch


STEPS = {
    "engd_woodbury": lambda rf: optim.engd_woodbury(rf, 1e-8, learning_rate=0.05),
    "spring": lambda rf: optim.spring(rf, 1e-8, 0.9, learning_rate=0.05),
    "engd_woodbury_nystrom_gpu": lambda rf: optim.engd_woodbury(
        rf, 1e-7, learning_rate=0.05, solver="nystrom_gpu", sketch_size=0.1),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_step_5d(benchmark, setup5d, name):
    rf, params, batch = setup5d
    opt = STEPS[name](rf)
    state = opt.init(params)

    def step(params, state, batch):
        updates, state = opt.update(None, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step).lower(params, state, batch).compile()
    new, _ = compiled(params, state, batch)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new))
    benchmark.pedantic(lambda: jax.block_until_ready(compiled(params, state, batch)),
                       rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("variant", ["standard", "gpu_efficient"])
def test_nystrom_40_percent(benchmark, setup5d, variant):
    rf, params, batch = setup5d
    jac = rf.jacobian(params, batch)
    k = jac @ jac.T
    n = k.shape[0]
    g = jax.random.normal(jax.random.PRNGKey(2), (n,), dtype=k.dtype)
    lam = 1e-7

    def solve(k, g, key, ell):
        if variant == "standard":
            return solvers.nystrom_standard(lambda v: k @ v, n, ell, key, k.dtype).solve(g, lam)
        return solvers.nystrom_gpu(lambda v: k @ v, n, ell, key, k.dtype, lam).solve(g)

    key = jax.random.PRNGKey(3)
    full = jax.jit(solve, static_argnums=3)(k, g, key, n)
    exact = np.linalg.solve(np.asarray(k) + lam * np.eye(n), np.asarray(g))
    assert np.linalg.norm(np.asarray(full) - exact) / np.linalg.norm(exact) < 1e-3
    compiled = jax.jit(solve, static_argnums=3).lower(k, g, key, int(0.4 * n)).compile()
    benchmark.pedantic(lambda: jax.block_until_ready(compiled(k, g, key)), rounds=ROUNDS,
                       warmup_rounds=1)
