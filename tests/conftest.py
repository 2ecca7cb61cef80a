import jax
import pytest

import pinn_ng

# The tests compare against float64 references; switch x64 on explicitly (never at import).
pinn_ng.enable_x64()
# One LAPACK thread: OpenBLAS's pool otherwise spins against XLA's (see pinn_ng/blas.py).
pinn_ng.limit_blas_threads(1)


#: Problems whose residual is the operator of a problem the default run keeps (Poisson's
#: Laplacian as poisson2d's, heat 10+1d's as heat4d's): only the source, the exact solution,
#: the dimension or a constant differ.  A test parametrized by problem runs these cases with
#: ``-m slow`` when it also has a default case, unless it checks each problem's own data.
SAME_OPERATOR_PROBLEMS = frozenset({"poisson5d", "poisson10d", "poisson10d_raw",
                                    "poisson100d", "poisson100d_raw", "heat10d"})
#: tests of each problem's own data (source and exact solution, sampler, net, published line)
PER_PROBLEM_DATA = frozenset({"test_exact_solution_has_zero_residual",
                              "test_samplers_geometry", "test_paper_nets",
                              "test_high_dim_poisson_is_trained_normalised",
                              "test_convergence_figure_draws_the_published_kfac_star_line"})
_PROBLEM_PARAMS = ("name", "problem", "problem_name")
#: The one eager case the default run keeps (SPRING's update under a schedule, called
#: eagerly); the other eager variants re-trace their loops on every call and run with -m slow.
EAGER_KEPT = ("test_learning_rate_schedule[eager]",)


def _params(item) -> dict:
    return getattr(getattr(item, "callspec", None), "params", {})


def _problem(item):
    params = _params(item)
    return next((params[k] for k in _PROBLEM_PARAMS if isinstance(params.get(k), str)), None)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks added here
def pytest_collection_modifyitems(config, items):
    by_function = {}
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark_test)
        by_function.setdefault((item.path, item.originalname), []).append(item)
        params = _params(item)
        if params.get("variant") == "eager" and item.name not in EAGER_KEPT:
            item.add_marker(pytest.mark.slow)
        if isinstance(params.get("seed"), int) and params["seed"] > 0:
            item.add_marker(pytest.mark.slow)  # the default run takes each test's first seed
    for (_, function), group in by_function.items():
        if function in PER_PROBLEM_DATA:
            continue
        names = [_problem(item) for item in group]
        if any(n is not None and n not in SAME_OPERATOR_PROBLEMS for n in names):
            for item, n in zip(group, names):
                if n in SAME_OPERATOR_PROBLEMS:
                    item.add_marker(pytest.mark.slow)


_JITTED = {}


def _jit(fn):
    """jax.jit, memoised per function so that repeated seeds reuse one compilation."""
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Run a numerics test jitted and eagerly (chex's ``variants`` idea): a function that
    wraps ``opt.update`` (batch passed as a keyword: a pytree, traced by jax.jit)."""
    return _jit if request.param == "jit" else (lambda fn: fn)
