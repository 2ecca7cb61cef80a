"""What the core benchmarks measure: sizes, networks, and the compiled functions with checks.

One place for the sizes, shared by ``bench/laplacian.py`` (the printed table) and the asv
suite ``bench/benchmarks_core.py``, so both measure the same thing.

Sizes are the paper's (its problems and its 5d / 100d timings): the Laplacian over the
interior batch of ``poisson5d`` (5-64-64-48-48-1, N_Ω = 3000) and ``poisson100d``
(100-768-768-512-512-1, N_Ω = 100); the residual Jacobian J (N × P) at N = 3500 (5d) and
N = 150 (100d).  With ``PINN_NG_BENCH_QUICK=1`` in the environment the batches shrink
(same paper nets) so that a CI pass on 2 cores takes a couple of minutes; the size is part of
every label (``poisson5d-N3000``), so quick and full results never share an asv key.

Seeds: data seed 0, model seed 1, as in the paper's reference runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import jax
from jax.flatten_util import ravel_pytree

import pinn_ng
from pinn_ng import models, operators, problems
from pinn_ng.residuals import ResidualFn

from ._timing import compile_jitted, relative_error

#: Environment variable that selects the small CI sizes ("1", "true", "yes").
QUICK_ENV = "PINN_NG_BENCH_QUICK"
DATA_SEED = 0
MODEL_SEED = 1
#: Tolerance of every correctness check before timing (float64, relative to the max entry).
CHECK_RTOL = 1e-10

METHODS = operators.METHODS  # ("folx", "fwd_rev", "hessian"): Laplacian methods, folx general
#: ways of computing J: the per-point Laplacian methods, and the structured channels of
#: pinn_ng.channels (the default for models.mlp networks)
JACOBIAN_METHODS = METHODS + ("structured",)


def quick_mode() -> bool:
    """True when ``PINN_NG_BENCH_QUICK`` asks for the small CI sizes."""
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Size:
    """A problem (its paper net) and a batch: ``n_interior`` + ``n_boundary`` points."""

    problem: str
    n_interior: int
    n_boundary: int = 0

    @property
    def n(self) -> int:
        return self.n_interior + self.n_boundary

    @property
    def label(self) -> str:
        return f"{self.problem}-N{self.n}"


_LAPLACIAN = {
    False: (Size("poisson5d", 3000), Size("poisson100d", 100)),
    True: (Size("poisson5d", 300), Size("poisson100d", 10)),
}
_JACOBIAN = {
    False: (Size("poisson5d", 3000, 500), Size("poisson100d", 100, 50)),
    True: (Size("poisson5d", 300, 50), Size("poisson100d", 10, 5)),
}
# jax.jacrev of the *batched* residual costs O(N²) time and memory (N backward passes through
# the whole batch): at N = 350 it already takes seconds and ~1.4 GiB of XLA temporaries, at
# N = 700 four times that; N = 3500 would need ~140 GiB.  So the comparison is made at 10 %
# of the paper's 5d batch, against the per-point J at the same N.
_JACREV = {False: Size("poisson5d", 300, 50), True: Size("poisson5d", 60, 10)}


def laplacian_sizes(quick: bool | None = None) -> tuple[Size, ...]:
    return _LAPLACIAN[quick_mode() if quick is None else quick]


def jacobian_sizes(quick: bool | None = None) -> tuple[Size, ...]:
    return _JACOBIAN[quick_mode() if quick is None else quick]


def jacrev_size(quick: bool | None = None) -> Size:
    return _JACREV[quick_mode() if quick is None else quick]


def find_size(label: str, sizes) -> Size:
    for s in sizes:
        if s.label == label:
            return s
    raise KeyError(f"unknown size {label!r}; valid: {[s.label for s in sizes]}")


class Net(NamedTuple):
    """A problem with its paper net and parameters (model seed 1)."""

    problem: problems.Problem
    apply: Callable
    params: object

    @property
    def n_params(self) -> int:
        return self.problem.n_params


def build_net(problem_name: str) -> Net:
    """float64 (switched on here, explicitly), the paper net of ``problem_name``, its params."""
    pinn_ng.enable_x64()
    pinn_ng.limit_blas_threads(1)  # OpenBLAS threads otherwise spin against XLA's
    problem = problems.get(problem_name)
    init, apply = models.mlp(problem.widths)
    return Net(problem, apply, init(jax.random.PRNGKey(MODEL_SEED)))


def sample(net: Net, size: Size) -> problems.Batch:
    """The batch of ``size`` (data seed 0); a Laplacian case uses only ``interior``."""
    return net.problem.sample(jax.random.PRNGKey(DATA_SEED), size.n_interior,
                              max(size.n_boundary, 1))


@dataclass
class Case:
    """A jit function and its arguments; :meth:`compile` once, then call with no arguments."""

    label: str
    jitted: Callable
    args: tuple
    check: Callable | None = field(default=None, repr=False)  # output -> relative error
    compiled: object = field(default=None, repr=False)
    compile_s: float = float("nan")

    def compile(self) -> "Case":
        if self.compiled is None:
            self.compiled, self.compile_s = compile_jitted(self.jitted, *self.args)
        return self

    def __call__(self):
        if self.compiled is None:
            raise RuntimeError(f"{self.label}: call .compile() in setup, before timing")
        return self.compiled(*self.args)

    def verify(self, out=None) -> float:
        """Run once (unless ``out`` is given; this doubles as the warm-up call) and check the
        output; raise if it is off by more than CHECK_RTOL.  NaN when there is no check."""
        out = jax.block_until_ready(self() if out is None else out)
        if self.check is None:
            return float("nan")
        err = self.check(out)
        if not err <= CHECK_RTOL:
            raise AssertionError(f"{self.label}: relative error {err:.3e} > {CHECK_RTOL:g}")
        return err


# ---------------------------------------------------------------------------------- Laplacian


def laplacian_fn(net: Net, method: str) -> Callable:
    """jit(vmap over points) of Δu_θ(x) with ``method``; params are an argument, not constants."""

    def one(params, x):
        return operators.laplacian(lambda y: net.apply(params, y), method=method)(x)

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def laplacian_cases(net: Net, size: Size, methods=METHODS) -> list[Case]:
    """One case per method on the interior points of ``size``, each checked against the
    dense reference ``trace(jax.hessian)`` (computed once here)."""
    x = sample(net, size).interior
    reference = jax.block_until_ready(laplacian_fn(net, "hessian")(net.params, x))
    cases = []
    for method in methods:
        cases.append(Case(
            label=f"laplacian/{size.label}/{method}",
            jitted=laplacian_fn(net, method),
            args=(net.params, x),
            check=lambda out, ref=reference: relative_error(out, ref),
        ))
    return cases


# ---------------------------------------------------------------------------------- Jacobian


def _check_products(residual_fn, params, batch, seed: int = 7) -> Callable:
    """J ↦ max relative error of J v and Jᵀ u against ``residual_fn.jvp`` / ``.vjp``."""
    flat, _ = ravel_pytree(params)
    kv, ku = jax.random.split(jax.random.PRNGKey(seed))
    v = jax.random.normal(kv, flat.shape, flat.dtype)
    u = jax.random.normal(ku, (batch.size,), flat.dtype)
    jv = residual_fn.jvp(params, batch, v)
    jtu = residual_fn.vjp(params, batch, u)

    def check(jac):
        return max(relative_error(jac @ v, jv), relative_error(jac.T @ u, jtu))

    return check


def jacobian_case(net: Net, size: Size, method: str = "folx", check: bool = True) -> Case:
    """``residual_fn.jacobian`` (per point), jit-wrapped so that it compiles ahead of time.

    Under ``jax.jit`` the eager finiteness check of the parameters is skipped (it is a no-op
    when tracing); the computation is the library's own jitted per-point Jacobian.
    The check compares J v and Jᵀ u with the matrix-free ``jvp`` / ``vjp``.
    """
    batch = sample(net, size)
    residual_fn = ResidualFn(net.problem, net.apply, method=method)
    return Case(
        label=f"jacobian/{size.label}/{method}",
        jitted=jax.jit(residual_fn.jacobian),
        args=(net.params, batch),
        check=_check_products(residual_fn, net.params, batch) if check else None,
    )


def jacrev_case(net: Net, size: Size) -> Case:
    """J by ``jax.jacrev`` of the whole batched residual (the O(N²) way), for comparison;
    checked against the per-point ``residual_fn.jacobian`` at the same batch."""
    batch = sample(net, size)
    residual_fn = ResidualFn(net.problem, net.apply)
    flat, unravel = ravel_pytree(net.params)
    reference = residual_fn.jacobian(net.params, batch)
    return Case(
        label=f"jacrev/{size.label}/folx",
        jitted=jax.jit(jax.jacrev(lambda v, b: residual_fn(unravel(v), b))),
        args=(flat, batch),
        check=lambda out, ref=reference: relative_error(out, ref),
    )
