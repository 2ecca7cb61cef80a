"""asv ratios of the speed decisions (``track_`` benchmarks: one number per commit).

Each decision was made once from a comparison; these keep it under watch, at the paper's 5d
size (quick mode, ``PINN_NG_BENCH_QUICK=1``: a small batch).  Ratios are taken round-robin
(:func:`bench._timing.interleaved_timings`), so that load on a shared machine hits both sides
alike; each side is compiled in ``setup`` and checked once against a float64 reference
before it is timed.

- :class:`StructuredOverFolx`: J and the sample space (r, lower K) by the structured channels
  over folx's per-point Jacobian (below 1: the structured path is the default);
- :class:`LineSearchChunking`: an ENGD-W step with the grid line search, its 31 candidates
  evaluated ``chunk`` at a time, over the fixed-η step, and its peak memory (the default
  chunk is 1: the least memory for a small share of the step);
- :class:`CholeskyPolicy`: the jitter policy of :func:`pinn_ng.optim.solvers.cholesky_solve`
  on a numerically rank-deficient K (one retry, the warm start, the eigendecomposition
  fallback) over a solve that needs no retry.

KFAC and KFAC* over ENGD-W are ``KfacOverWoodbury`` in ``benchmarks_optim.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import _cases
from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory, relative_error
from pinn_ng.residuals import ResidualFn

ETA = 5.23e-2  # ENGD-W's best fixed η on 5d in the paper
LINE_SEARCH_DAMPING = 3.17e-12  # ENGD-W's best 5d λ with the line search in the paper

_SIZE = {False: _cases.Size("poisson5d", 3000, 500), True: _cases.Size("poisson5d", 120, 20)}
#: K of the Cholesky policy: N x N from a J with P = N / 2 columns (rank N / 2).
_CHOLESKY_N = {False: 3500, True: 300}


def _q():
    return _cases.quick_mode()


def _ratio(first, second, repeats: int = 5) -> float:
    """Median seconds of ``first`` over those of ``second``, timed round-robin."""
    t = interleaved_timings([first, second], repeats=repeats, max_seconds=120, warmup=0)
    return t[0].median / t[1].median


class StructuredOverFolx:
    """Structured channels / folx per-point Jacobian, seconds (the structured path's win)."""

    timeout = 1200

    def setup(self):
        s = _SIZE[_q()]
        net = _cases.build_net(s.problem)
        batch = _cases.sample(net, s)
        self.calls = {}
        ref_j = None
        for method in ("folx", "structured"):
            rf = ResidualFn(net.problem, net.apply, method=method)
            jac, _ = compile_jitted(jax.jit(lambda p, b, rf=rf: rf.residual_and_jacobian(p, b)),
                                    net.params, batch)
            space, _ = compile_jitted(jax.jit(lambda p, b, rf=rf: rf.sample_space(p, b)[:2]),
                                      net.params, batch)
            j = jax.block_until_ready(jac(net.params, batch))[1]
            k_lower = jax.block_until_ready(space(net.params, batch))[1]
            if ref_j is None:
                ref_j = np.asarray(j)
            k_ref = np.tril(ref_j @ ref_j.T)
            for what, err in (("J", relative_error(j, ref_j)),
                              ("K", relative_error(np.tril(np.asarray(k_lower)), k_ref))):
                if not err <= 1e-12:
                    raise AssertionError(f"{method} {what}: relative error {err:.1e}")
            self.calls[method] = (lambda c=jac: c(net.params, batch),
                                  lambda c=space: c(net.params, batch))

    def track_jacobian_structured_over_folx(self):
        return _ratio(self.calls["structured"][0], self.calls["folx"][0])

    def track_sample_space_structured_over_folx(self):
        return _ratio(self.calls["structured"][1], self.calls["folx"][1])


class LineSearchChunking:
    """ENGD-W step with the grid line search (``chunk`` candidates at a time) / fixed-η step."""

    param_names = ["chunk"]
    params = (["1", "8", "all"],)
    timeout = 1200

    def setup(self, chunk):
        from pinn_ng import optim

        s = _SIZE[_q()]
        net = _cases.build_net(s.problem)
        batch = _cases.sample(net, s)
        rf = ResidualFn(net.problem, net.apply)
        size = None if chunk == "all" else int(chunk)
        direction = optim.scale_by_engd_woodbury(rf, LINE_SEARCH_DAMPING)
        fixed = optax.chain(direction, optax.scale(-ETA))
        search = optax.chain(direction, optim.scale_by_grid_line_search(rf, chunk_size=size))
        self.compiled, self.calls = {}, {}
        for name, opt in (("fixed", fixed), ("line_search", search)):
            def step(params, state, batch, opt=opt):
                updates, state = opt.update(None, state, params, batch=batch)
                return optax.apply_updates(params, updates), state

            state = opt.init(net.params)
            compiled, _ = compile_jitted(jax.jit(step), net.params, state, batch)
            out = jax.block_until_ready(compiled(net.params, state, batch))
            if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(out)):
                raise FloatingPointError(f"{name}, chunk {chunk}: non-finite step")
            self.compiled[name] = compiled
            self.calls[name] = lambda c=compiled, st=state: c(net.params, st, batch)

    def track_line_search_over_fixed_eta(self, chunk):
        return _ratio(self.calls["line_search"], self.calls["fixed"], repeats=3)

    def track_peak_memory(self, chunk):
        return peak_memory(self.compiled["line_search"])[0] / MiB

    track_peak_memory.unit = "MiB"


class CholeskyPolicy:
    """The jitter policy's solves / a solve that needs no retry, on one rank-deficient K."""

    timeout = 900

    def setup(self):
        from pinn_ng import enable_x64
        from pinn_ng.optim.solvers import cholesky_solve

        enable_x64()
        n = _CHOLESKY_N[_q()]
        rng = np.random.default_rng(0)
        jac = rng.standard_normal((n, n // 2))
        k = jnp.asarray(np.tril(jac @ jac.T))
        g = jnp.asarray(rng.standard_normal(n))
        scale = float(np.mean(np.diag(jac @ jac.T)))
        # below K's float64 rounding error (eps·‖K‖): K + λI is not numerically definite
        tiny, safe = 1e-16 * scale, 1e-6 * scale
        fns = {
            "no_retry": lambda k, g: cholesky_solve(k, safe, g),
            "one_retry": lambda k, g: cholesky_solve(k, tiny, g),
            "warm_start": lambda k, g: cholesky_solve(k, tiny, g, start_rung=1),
            "eigh": lambda k, g: jnp.linalg.eigh(k, symmetrize_input=False, UPLO="L"),
        }
        self.calls = {}
        for name, fn in fns.items():
            compiled, _ = compile_jitted(jax.jit(fn), k, g)
            out = jax.block_until_ready(compiled(k, g))
            self.calls[name] = lambda c=compiled: c(k, g)
            if name == "eigh":
                continue
            damping = safe if name == "no_retry" else tiny
            if (float(out.jitter) > 0) != (name != "no_retry") or float(out.fallback):
                raise AssertionError(f"{name}: jitter {float(out.jitter):.1e}, fallback "
                                     f"{float(out.fallback)}: not the path it should time")
            full = np.asarray(k) + np.tril(np.asarray(k), -1).T
            shift = damping + float(out.jitter)
            ref = np.linalg.solve(full + shift * np.eye(n), np.asarray(g))
            resid = (full + shift * np.eye(n)) @ np.asarray(out.u) - np.asarray(g)
            # the solve is as good as the reference's: a backward error, not a distance
            # (the system's condition number is ‖K‖ / shift, up to 1e13)
            if not np.linalg.norm(resid) <= 1e3 * np.linalg.norm(
                    (full + shift * np.eye(n)) @ ref - np.asarray(g)) + 1e-9 * np.linalg.norm(g):
                raise AssertionError(f"{name}: residual {np.linalg.norm(resid):.1e}")

    def track_one_retry_over_no_retry(self):
        return _ratio(self.calls["one_retry"], self.calls["no_retry"])

    def track_warm_start_over_one_retry(self):
        return _ratio(self.calls["warm_start"], self.calls["one_retry"])

    def track_eigh_over_no_retry(self):
        return _ratio(self.calls["eigh"], self.calls["no_retry"], repeats=3)
