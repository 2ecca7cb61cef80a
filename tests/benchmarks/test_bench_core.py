"""pytest-benchmark micro-benchmarks of the core: Laplacian variants (d = 5), Jacobian (small N).

Skipped by the default ``pytest`` run (``--benchmark-skip`` in pyproject's addopts; nothing is
built at import, only in the fixtures of tests that run).  Run them, writing JSON that
``pytest-benchmark compare`` can set against other commits (machine info and git commit are
in the file):

    pytest tests/benchmarks --benchmark-only --benchmark-json=.benchmarks/core.json

or ``--benchmark-autosave`` (numbered files under ``.benchmarks/``) and
``--benchmark-compare`` to diff against the last saved run.

Every test compiles ahead of time and checks its result once (Laplacian against
trace(jax.hessian), J against the matrix-free J v / Jᵀ u, 1e-10 relative in float64) before
timing; the timed call ends with ``block_until_ready``.  The x64 switch is in tests/conftest.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pinn_ng import models, operators, problems
from pinn_ng.residuals import ResidualFn

RTOL = 1e-10
ROUNDS = 10
#: 5d Laplacian over the paper's interior batch; the Jacobian at 10 % of the paper's 5d batch
N_LAPLACIAN = 3000
N_JACOBIAN = (300, 50)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def net5d():
    problem = problems.get("poisson5d")
    init, apply = models.mlp(problem.widths)  # 5-64-64-48-48-1, P = 10,065
    return problem, apply, init(jax.random.PRNGKey(1))


def _laplacian_fn(apply, method):
    def one(params, x):
        return operators.laplacian(lambda y: apply(params, y), method=method)(x)

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


@pytest.mark.parametrize("method", operators.METHODS)
def test_laplacian_5d(benchmark, net5d, method):
    problem, apply, params = net5d
    x = problem.sample(jax.random.PRNGKey(0), N_LAPLACIAN, 1).interior
    compiled = _laplacian_fn(apply, method).lower(params, x).compile()
    reference = _laplacian_fn(apply, "hessian")(params, x)
    assert _rel(compiled(params, x), reference) <= RTOL

    benchmark.group = f"laplacian poisson5d N={N_LAPLACIAN}"
    benchmark.extra_info.update(method=method, n=N_LAPLACIAN, p=problem.n_params)
    benchmark.pedantic(lambda: compiled(params, x).block_until_ready(), rounds=ROUNDS,
                       warmup_rounds=1)


def test_jacobian_5d(benchmark, net5d):
    problem, apply, params = net5d
    batch = problem.sample(jax.random.PRNGKey(0), *N_JACOBIAN)
    residual_fn = ResidualFn(problem, apply)
    compiled = jax.jit(residual_fn.jacobian).lower(params, batch).compile()
    jac = compiled(params, batch)
    flat, _ = ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(2), flat.shape, flat.dtype)
    u = jax.random.normal(jax.random.PRNGKey(3), (batch.size,), flat.dtype)
    assert jac.shape == (batch.size, problem.n_params)
    assert _rel(jac @ v, residual_fn.jvp(params, batch, v)) <= RTOL
    assert _rel(jac.T @ u, residual_fn.vjp(params, batch, u)) <= RTOL

    benchmark.group = f"jacobian poisson5d N={batch.size}"
    benchmark.extra_info.update(n=batch.size, p=problem.n_params)
    benchmark.pedantic(lambda: compiled(params, batch).block_until_ready(), rounds=ROUNDS,
                       warmup_rounds=1)
