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
