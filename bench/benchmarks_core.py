"""asv benchmarks of the shared core: the Laplacian variants and the residual Jacobian.

Sizes come from ``bench/_cases.py`` (the paper's; small ones with ``PINN_NG_BENCH_QUICK=1``,
which ``bench/ci_asv.sh`` sets).  Every ``setup`` builds the paper net in float64, compiles
ahead of time and checks the result once (Laplacian against trace(jax.hessian), J against the
matrix-free J v / Jᵀ u); the timed bodies only call the compiled executable and
``block_until_ready``.  That check call is also the warm-up, hence ``warmup_time = 0``.

- ``time_*``: seconds per call;
- ``track_peak_memory``: MiB held at once by the compiled executable (XLA buffer assignment,
  see ``bench/_timing.py``; falls back to device / process peaks where unavailable);
- ``peakmem_jacobian``: asv's process-wide max RSS (includes JAX itself and setup);
- ``track_*_over_*``: time ratios measured round-robin inside one process, the numbers that
  survive a noisy machine (ratio > 1: the first is slower).
"""

from __future__ import annotations

from bench import _cases
from bench._timing import MiB, interleaved_timings, peak_memory

_LAPLACIAN_LABELS = [s.label for s in _cases.laplacian_sizes()]
_JACOBIAN_LABELS = [s.label for s in _cases.jacobian_sizes()]
_RATIO_ROUNDS = 3 if _cases.quick_mode() else 9


def _ratio(first, second, rounds: int = _RATIO_ROUNDS, budget: float = 30.0) -> float:
    """median time of ``first`` / median time of ``second``, timed round-robin."""
    t_first, t_second = interleaved_timings([first, second], repeats=rounds, max_seconds=budget,
                                         min_repeats=min(3, rounds), warmup=0)
    return t_first.median / t_second.median


class Laplacian:
    """Δu_θ over the interior batch (vmap over points) for each ``pinn_ng.operators`` method."""

    param_names = ["size", "method"]
    params = (_LAPLACIAN_LABELS, list(_cases.METHODS))
    warmup_time = 0.0
    timeout = 300

    def setup(self, size, method):
        s = _cases.find_size(size, _cases.laplacian_sizes())
        net = _cases.build_net(s.problem)
        (self.case,) = _cases.laplacian_cases(net, s, methods=(method,))
        self.case.compile().verify()

    def time_laplacian(self, size, method):
        self.case().block_until_ready()

    def track_peak_memory(self, size, method):
        return peak_memory(self.case.compiled)[0] / MiB

    track_peak_memory.unit = "MiB"


class LaplacianRatio:
    """Time of a Laplacian method over that of folx (the default), same process, same load."""

    param_names = ["size", "method"]
    params = (_LAPLACIAN_LABELS, [m for m in _cases.METHODS if m != "folx"])
    timeout = 300

    def setup(self, size, method):
        s = _cases.find_size(size, _cases.laplacian_sizes())
        net = _cases.build_net(s.problem)
        self.folx, self.other = _cases.laplacian_cases(net, s, methods=("folx", method))
        for case in (self.folx, self.other):
            case.compile().verify()

    def track_time_over_folx(self, size, method):
        return _ratio(self.other, self.folx)

    track_time_over_folx.unit = "ratio"


class Jacobian:
    """J = ∂r/∂θ (N × P) by ``residual_fn.jacobian``: per point with the folx Laplacian, or
    from the structured channels (the default for the paper's MLPs)."""

    param_names = ["size", "method"]
    params = (_JACOBIAN_LABELS, ["folx", "structured"])
    number = 1
    repeat = (1, 7, 30.0)  # (min samples, max samples, seconds): 100d J takes seconds a call
    rounds = 1
    warmup_time = 0.0
    timeout = 600

    def setup(self, size, method):
        s = _cases.find_size(size, _cases.jacobian_sizes())
        net = _cases.build_net(s.problem)
        self.case = _cases.jacobian_case(net, s, method)
        self.case.compile().verify()

    def time_jacobian(self, size, method):
        self.case().block_until_ready()

    def peakmem_jacobian(self, size, method):
        self.case().block_until_ready()

    def track_peak_memory(self, size, method):
        return peak_memory(self.case.compiled)[0] / MiB

    track_peak_memory.unit = "MiB"


class JacrevRatio:
    """J by ``jax.jacrev`` of the batched residual over the per-point J, at 10 % of the 5d batch
    (jacrev is O(N²) in time and memory; the paper's N = 3500 does not fit)."""

    timeout = 300

    def setup(self):
        s = _cases.jacrev_size()
        net = _cases.build_net(s.problem)
        self.per_point = _cases.jacobian_case(net, s)
        self.jacrev = _cases.jacrev_case(net, s)
        for case in (self.per_point, self.jacrev):
            case.compile().verify()

    def track_jacrev_over_per_point(self):
        return _ratio(self.jacrev, self.per_point, rounds=min(_RATIO_ROUNDS, 5))

    track_jacrev_over_per_point.unit = "ratio"


# K's layer blocks at the paper's 5d size: net 5-64-64-48-48-1 (P = 10,065), N = 3000 + 500
_K_COLUMNS = (384, 4160, 3120, 2352, 49)
_K_ROWS = 700 if _cases.quick_mode() else 3500


def _k_parts(seed: int = 0):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((_K_ROWS, p))) for p in _K_COLUMNS]


class KernelGemm:
    """K's lower triangle Σ_l J_l J_lᵀ over the 5d layer blocks by each GEMM backend of
    ``pinn_ng.blas`` (``chosen``: the one ``auto`` picks on this machine), in GFLOP/s counting
    N²P flops (the lower triangle: half of the full product's 2N²P).  Checked once against
    numpy's float64 product."""

    param_names = ["backend"]
    params = (["xla", "blas", "chosen"],)
    timeout = 600

    def setup(self, backend):
        import jax
        import numpy as np

        import pinn_ng
        from pinn_ng import blas

        pinn_ng.enable_x64()
        pinn_ng.limit_blas_threads(1)
        which = blas.kernel_backend("auto") if backend == "chosen" else backend
        self.parts = _k_parts()
        self.fn = jax.jit(lambda ps: blas.kernel_lower(ps, backend=which)).lower(
            self.parts).compile()
        ref = np.tril(sum(np.asarray(p) @ np.asarray(p).T for p in self.parts))
        k = np.tril(np.asarray(self.fn(self.parts)))
        assert np.max(np.abs(k - ref)) <= 1e-12 * np.max(np.abs(ref))

    def track_gflops(self, backend):
        (t,) = interleaved_timings([lambda: self.fn(self.parts)], repeats=3, warmup=0)
        flops = _K_ROWS * _K_ROWS * sum(_K_COLUMNS)
        return flops / t.median / 1e9

    track_gflops.unit = "GFLOP/s"


class KernelGemmChoice:
    """The backend ``auto`` uses on this machine (1: the BLAS, 0: XLA), from the cached
    calibration, and the calibration's BLAS / XLA time ratio."""

    def setup(self):
        import pinn_ng
        from pinn_ng import blas

        pinn_ng.enable_x64()
        pinn_ng.limit_blas_threads(1)
        self.calibration = blas.calibration()

    def track_auto_chooses_blas(self):
        return 1.0 if self.calibration["backend"] == "blas" else 0.0

    track_auto_chooses_blas.unit = "blas=1"

    def track_calibration_blas_over_xla(self):
        return self.calibration["blas_s"] / self.calibration["xla_s"]

    track_calibration_blas_over_xla.unit = "ratio"
