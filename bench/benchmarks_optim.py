"""asv benchmarks of the optimizers and of the sample-space linear algebra (issues 3 and 5).

- ``OptimizerStep``: seconds per step and peak memory of every optimizer on ``poisson5d``
  (paper net, P = 10,065, several N) and ``poisson100d`` (paper net, P = 1,325,057, N = 150).
  One step = gradient (first-order methods only) + ``opt.update`` + ``apply_updates`` on a
  fixed batch, compiled ahead of time, checked finite once in setup.
- ``Kernel``: K = JJᵀ by the library's symmetric block product vs the plain ``J @ J.T``.
- ``NystromVariants``: standard vs GPU-efficient randomized Nyström (build + one solve) on the
  PSD kernel K = JJᵀ of the 5d net, N = 5000, λ = 1e-7, sketch 20/40/60/80 % of N (the
  paper's appendix B table).
- ``track_*`` ratios, timed round-robin in one process: ENGD / ENGD-W step time at the
  paper's 5d size, standard / GPU-efficient Nyström.

``PINN_NG_BENCH_QUICK=1`` (set by ``bench/ci_asv.sh``) shrinks every batch; labels carry the
sizes, so quick and full results never share an asv key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bench import _cases
from pinn_ng.pipeline import nystrom_table
from pinn_ng.residuals import ResidualFn
from bench._timing import MiB, compile_jitted, interleaved_timings, peak_memory

ETA = 5.23e-2  # ENGD-W's best fixed η on 5d in the paper
DAMPING = 1e-8

#: label -> (optimizer name, hyper-parameters)
OPTIMIZERS = {
    "sgd": ("sgd", {}),
    "adam": ("adam", {}),
    "lbfgs": ("lbfgs", {}),
    "hessian_free": ("hessian_free", {"cg_max_iter": 100}),
    "engd": ("engd", {"damping": DAMPING, "learning_rate": ETA}),
    "engd_line_search": ("engd", {"damping": DAMPING}),
    "engd_woodbury": ("engd_woodbury", {"damping": DAMPING, "learning_rate": ETA}),
    "engd_woodbury_line_search": ("engd_woodbury", {"damping": DAMPING}),
    "spring": ("spring", {"damping": DAMPING, "momentum": 0.9, "learning_rate": ETA}),
    "engd_woodbury_nystrom": ("engd_woodbury", {"damping": 1e-7, "learning_rate": ETA,
                                                "solver": "nystrom", "sketch_size": 0.1}),
    "engd_woodbury_nystrom_gpu": ("engd_woodbury", {"damping": 1e-7, "learning_rate": ETA,
                                                    "solver": "nystrom_gpu", "sketch_size": 0.1}),
    # KFAC for PINNs at the KFAC paper's best 5d values
    "kfac": ("kfac", {"damping": 1.2e-12, "momentum": 0.906, "ema_decay": 0.959}),
    "kfac_star": ("kfac_star", {"damping": 2.8e-10, "ema_decay": 0.9}),
}

_STEP_SIZES = {
    False: (_cases.Size("poisson5d", 429, 71), _cases.Size("poisson5d", 857, 143),
            _cases.Size("poisson5d", 3000, 500), _cases.Size("poisson100d", 100, 50)),
    True: (_cases.Size("poisson5d", 120, 20), _cases.Size("poisson100d", 10, 5)),
}
_RATIO_SIZE = {False: _cases.Size("poisson5d", 3000, 500), True: _cases.Size("poisson5d", 120, 20)}
_KERNEL_SIZE = {False: _cases.Size("poisson5d", 3000, 500), True: _cases.Size("poisson5d", 250, 50)}
_NYSTROM_N = {False: 5000, True: 400}
NYSTROM_DAMPING = 1e-7
NYSTROM_FRACTIONS = [0.2, 0.4, 0.6, 0.8]


def _q():
    return _cases.quick_mode()


def step_case(net, size, label: str) -> _cases.Case:
    """The compiled training step of optimizer ``label`` (see :data:`OPTIMIZERS`)."""
    from pinn_ng import optim

    name, hparams = OPTIMIZERS[label]
    if name == "engd" and net.n_params > 20_000:
        raise NotImplementedError(f"ENGD's P x P Gramian does not fit at P = {net.n_params:,}")
    rf = ResidualFn(net.problem, net.apply)
    opt = optim.make(name, rf, **hparams)
    uses_grads = optim.uses_grads(name)
    batch = _cases.sample(net, size)

    def step(params, state, batch):
        grads = None
        if uses_grads:
            grads = jax.grad(lambda p: 0.5 * jnp.sum(rf(p, batch) ** 2))(params)
        updates, state = opt.update(grads, state, params, batch=batch)
        return optax.apply_updates(params, updates), state

    def check(out):
        leaves = jax.tree_util.tree_leaves(out[0])
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in leaves):
            raise FloatingPointError(f"{label}: non-finite parameters after one step")
        return 0.0

    return _cases.Case(f"{label}@{size.label}", jax.jit(step),
                       (net.params, opt.init(net.params), batch), check)


class OptimizerStep:
    param_names = ["size", "optimizer"]
    params = ([s.label for s in _STEP_SIZES[_q()]], list(OPTIMIZERS))
    number = 1
    repeat = (1, 5, 60.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 900

    def setup(self, size, optimizer):
        s = _cases.find_size(size, _STEP_SIZES[_q()])
        self.case = step_case(_cases.build_net(s.problem), s, optimizer)
        self.case.compile().verify()

    def time_step(self, size, optimizer):
        jax.block_until_ready(self.case())

    def track_peak_memory(self, size, optimizer):
        return peak_memory(self.case.compiled)[0] / MiB

    track_peak_memory.unit = "MiB"


class EngdOverWoodbury:
    """ENGD / ENGD-W seconds per step (fixed η) at the paper's 5d size: the ">30×" claim."""

    timeout = 1200

    def setup(self):
        s = _RATIO_SIZE[_q()]
        net = _cases.build_net(s.problem)
        self.engd = step_case(net, s, "engd")
        self.wood = step_case(net, s, "engd_woodbury")
        for case in (self.engd, self.wood):
            case.compile().verify()

    def track_engd_over_engd_woodbury(self):
        t = interleaved_timings([self.engd, self.wood], repeats=3, max_seconds=120, warmup=0)
        return t[0].median / t[1].median

    track_engd_over_engd_woodbury.unit = "ratio"


class KfacOverWoodbury:
    """KFAC (line search) and KFAC* seconds per step over ENGD-W's (line search) at the paper's
    5d size, timed round-robin: what a cheaper curvature buys per step."""

    timeout = 1200

    def setup(self):
        s = _RATIO_SIZE[_q()]
        net = _cases.build_net(s.problem)
        self.cases = [step_case(net, s, label)
                      for label in ("engd_woodbury_line_search", "kfac", "kfac_star")]
        for case in self.cases:
            case.compile().verify()
        self.t = interleaved_timings(self.cases, repeats=3, max_seconds=120, warmup=0)

    def track_kfac_over_engd_woodbury(self):
        return self.t[1].median / self.t[0].median

    def track_kfac_star_over_engd_woodbury(self):
        return self.t[2].median / self.t[0].median

    track_kfac_over_engd_woodbury.unit = "ratio"
    track_kfac_star_over_engd_woodbury.unit = "ratio"


class Kernel:
    """K = JJᵀ (N x N) from a precomputed J: symmetric lower blocks vs the full product."""

    param_names = ["variant"]
    params = (["lower_blocks", "full_product"],)
    number = 1
    repeat = (1, 7, 30.0)
    warmup_time = 0.0
    timeout = 600

    def setup(self, variant):
        from pinn_ng.optim.kernels import kernel_lower_from_jacobian

        s = _KERNEL_SIZE[_q()]
        net = _cases.build_net(s.problem)
        jac = ResidualFn(net.problem, net.apply).jacobian(net.params, _cases.sample(net, s))
        fn = (jax.jit(lambda j: kernel_lower_from_jacobian(j)) if variant == "lower_blocks"
              else jax.jit(lambda j: j @ j.T))
        self.compiled, _ = compile_jitted(fn, jac)
        self.jac = jac
        ref = jac @ jac.T
        err = float(jnp.max(jnp.abs(self.compiled(jac) - ref)) / jnp.max(jnp.abs(ref)))
        if err > 1e-12:
            raise AssertionError(f"kernel {variant}: relative error {err:.1e}")

    def time_kernel(self, variant):
        self.compiled(self.jac).block_until_ready()


class SampleSpace:
    """r and the lower triangle of K = JJᵀ from the parameters, as an ENGD-W/SPRING Cholesky
    step needs them: from the per-point folx J, or from the structured channels (J's interior
    layer blocks, never concatenated; boundary rows of K from their value channel)."""

    param_names = ["method"]
    params = (["folx", "structured"],)
    number = 1
    repeat = (1, 7, 30.0)
    warmup_time = 0.0
    timeout = 600

    def setup(self, method):
        s = _KERNEL_SIZE[_q()]
        net = _cases.build_net(s.problem)
        batch = _cases.sample(net, s)
        rf = ResidualFn(net.problem, net.apply, method=method)
        fn = jax.jit(lambda p, b: rf.sample_space(p, b)[:2])
        self.compiled, _ = compile_jitted(fn, net.params, batch)
        self.args = (net.params, batch)
        _, jac = ResidualFn(net.problem, net.apply, method="folx").residual_and_jacobian(
            net.params, batch)
        ref = jnp.tril(jac @ jac.T)
        err = float(jnp.max(jnp.abs(jnp.tril(self.compiled(*self.args)[1]) - ref))
                    / jnp.max(jnp.abs(ref)))
        if err > 1e-12:
            raise AssertionError(f"sample space {method}: relative error of K {err:.1e}")

    def time_sample_space(self, method):
        jax.block_until_ready(self.compiled(*self.args))

    def track_peak_memory(self, method):
        return peak_memory(self.compiled)[0] / MiB

    track_peak_memory.unit = "MiB"


def _nystrom_fns(n: int, fraction: float):
    """The two solves of ``pinn-ng nystrom-table`` (the one Nyström harness), jitted."""
    ell = nystrom_table.sketch_size(n, fraction)
    return {asv_name: jax.jit(nystrom_table.solve_fn(variant, n, ell, NYSTROM_DAMPING))
            for variant, asv_name in nystrom_table.VARIANTS.items()}


class NystromVariants:
    """Standard vs GPU-efficient Nyström: build from K and solve (K̂ + λI) u = g once."""

    param_names = ["fraction", "variant"]
    params = (NYSTROM_FRACTIONS, ["standard", "gpu_efficient"])
    number = 1
    repeat = (1, 7, 30.0)
    warmup_time = 0.0
    timeout = 900

    def setup_cache(self):
        import numpy as np

        _cases.build_net("poisson5d")  # float64 on, one LAPACK thread
        return np.asarray(nystrom_table.kernel("poisson5d", _NYSTROM_N[_q()]))

    def setup(self, k, fraction, variant):
        _cases.build_net("poisson5d")
        n = k.shape[0]
        self.args = nystrom_table.solve_args(jnp.asarray(k))
        self.compiled, _ = compile_jitted(_nystrom_fns(n, fraction)[variant], *self.args)
        out = self.compiled(*self.args)
        if not bool(jnp.all(jnp.isfinite(out))):
            raise FloatingPointError(f"{variant} Nyström: non-finite solve")

    def time_nystrom(self, k, fraction, variant):
        self.compiled(*self.args).block_until_ready()

    def peakmem_nystrom(self, k, fraction, variant):
        self.compiled(*self.args).block_until_ready()

    def track_peak_memory(self, k, fraction, variant):
        return peak_memory(self.compiled)[0] / MiB

    track_peak_memory.unit = "MiB"


class NystromRatio:
    """Standard / GPU-efficient Nyström time, round-robin in one process."""

    param_names = ["fraction"]
    params = (NYSTROM_FRACTIONS,)
    timeout = 900

    def setup_cache(self):
        return NystromVariants.setup_cache(self)

    def setup(self, k, fraction):
        _cases.build_net("poisson5d")
        n = k.shape[0]
        self.args = nystrom_table.solve_args(jnp.asarray(k))
        fns = _nystrom_fns(n, fraction)
        self.std, _ = compile_jitted(fns["standard"], *self.args)
        self.gpu, _ = compile_jitted(fns["gpu_efficient"], *self.args)

    def track_standard_over_gpu_efficient(self, k, fraction):
        t = interleaved_timings([lambda: self.std(*self.args), lambda: self.gpu(*self.args)],
                                repeats=5, max_seconds=60)
        return t[0].median / t[1].median

    track_standard_over_gpu_efficient.unit = "ratio"
