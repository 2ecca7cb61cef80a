"""The example plugins of examples/: each loads as a plugin file (as PINN_NG_PLUGINS loads it)
and trains for a few steps with ENGD-W on a tiny batch and net, its error falling; the
example optimizer trains one of them.  ``pinn-ng run`` with plugins: tests/test_plugins.py."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from pinn_ng import models, optim, plugins, problems
from pinn_ng.residuals import ResidualFn
from pinn_ng.train import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: example file -> (problem it registers, its error metric)
CASES = {
    "helmholtz2d.py": ("helmholtz2d", "exact"),
    "wave1d.py": ("wave1d", "exact"),
    "poisson_robin.py": ("poisson_robin", "exact"),
    "npz_reference.py": ("poisson_box", "reference"),
}


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    """Whatever a case loads is gone afterwards (registries, plugin modules)."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    for reg in (problems.REGISTRY, models.REGISTRY, optim.REGISTRY):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("_pinn_ng_plugin_"):
            del sys.modules[name]


def _train(name: str, optimizer: str, **hparams):
    problem = problems.get(name)
    init, apply = models.mlp((problem.input_dim, 8, 8, 1))
    params = init(jax.random.PRNGKey(1))
    rf = ResidualFn(problem, apply)
    opt = optim.make(optimizer, rf, **hparams)
    return problem, train(problem, apply, params, opt, rf, uses_grads=False, max_steps=8,
                          eval_every=8, n_interior=100, n_boundary=40, progress=False,
                          log=lambda msg: None)


@pytest.mark.parametrize("example", [  # one example by default, the others with -m slow
    e if e == "poisson_robin.py" else pytest.param(e, marks=pytest.mark.slow)
    for e in sorted(CASES)])
def test_example_loads_and_its_error_falls(example):
    name, metric = CASES[example]
    plugins.load([], environ={plugins.ENV_VAR: str(EXAMPLES / example)}, entry_points=False)
    assert name in problems.names()
    assert len((EXAMPLES / example).read_text().splitlines()) <= 45
    problem, res = _train(name, "engd_woodbury", damping=1e-4)
    assert problem.error_metric == metric
    assert not res.diverged and res.steps == 8
    first, last = res.rows[0]["l2"], res.rows[-1]["l2"]
    assert np.isfinite(first) and last < 0.8 * first, (first, last)


def test_example_optimizer_trains_an_example_problem():
    plugins.load([str(EXAMPLES / "my_optimizer.py"), str(EXAMPLES / "wave1d.py")],
                 environ={}, entry_points=False)
    _, res = _train("wave1d", "engd_w_decay", damping=1e-4)
    assert not res.diverged
    assert res.rows[-1]["l2"] < 0.8 * res.rows[0]["l2"]
