"""One training loop for every optimizer: fresh batch per step, budget, honest timings.

:func:`train` runs any ``optax.GradientTransformationExtraArgs`` built by
:func:`pinn_ng.optim.make` (or any optax transformation that accepts ``batch=`` as an extra
argument) on a :class:`pinn_ng.problems.Problem`:

- **Data.** Step ``k`` (0-based) trains on a fresh batch drawn from
  ``fold_in(PRNGKey(data_seed), k)``: the same seed gives the same batches, whatever the
  optimizer, and no batch depends on how many steps came before.  With ``batch_every = b``
  (default 1) a batch is kept for b steps: step k uses batch ``k // b`` (the published KFAC
  runs resampled every 100 steps on Poisson and heat, every 10 on log-FP).  Parameters come from
  ``PRNGKey(model_seed)``.  The paper's reference runs used data seed 0, model seed 1.
- **Budget.** ``max_steps`` and/or ``max_seconds`` of *timed* time; the run stops at whichever
  comes first (the paper gives every optimizer the same wall-clock budget).
- **Timings.** The whole step (sampling, optimizer update, parameter update) is one jitted
  function, compiled ahead of time (``jit(...).lower(...).compile()``) before the clock starts,
  so compilation is never timed.  Each step is timed up to ``jax.block_until_ready`` of its
  outputs, because JAX dispatches asynchronously and returns before the work is done.
- **Evaluation** (``problem.errors``, the paper's RMS L2 on its fixed evaluation set) every
  ``eval_every`` steps and at the end, outside the timed region.
- **Rows** (``TrainResult.rows``, a run's ``curve.csv``): row ``step = k`` is written after
  the k-th step.  Its ``loss`` is ½‖r‖² on that step's batch at the parameters *before* the
  step (what the optimizer computed anyway: no extra pass), while ``l2`` / ``rms_l2`` /
  ``rel_l2`` and ``time`` are *after* it.  Row 0 holds the initial parameters' errors and the
  first step's loss (the same parameters).  ``step_size`` is η_k of that step as
  :func:`pinn_ng.optim.diagnostics` defines it (the line search's or the fixed η, times the
  norm cap; Hessian-free's and KFAC*'s α), NaN for optimizers without such a record (the optax
  baselines) and in row 0; the optimizer's other diagnostics follow (``phi_norm``, events).
- **Divergence.** Only a non-finite loss, non-finite parameters, or a solve the optimizer
  reports as failed and left unrepaired (the diagnostic ``solve_failed``: the Cholesky option
  ``jitter="none"``) end the run early; the result says ``diverged=True`` and why.  Numerical events the optimizer handled (a jittered
  or eigendecomposition fallback of a Cholesky, a grown Nyström shift, a skipped non-finite
  direction; :data:`pinn_ng.optim.EVENT_FIELDS`) are diagnostics, not divergence: the loop
  counts the steps at which each occurred (``TrainResult.events``).

- **Checkpoints and stops.** With a ``checkpoint`` (an object with ``load(like_state)``,
  ``save(state, progress)`` and ``every_seconds``, e.g.
  :class:`pinn_ng.pipeline.checkpoint.Checkpointer`) the loop resumes from the checkpoint it
  finds and saves one every ``every_seconds`` of wall-clock time and whenever ``stop()``
  returns a reason (a signal).  Saving is outside the timed region.  Because step k's batch
  depends on k only, a resumed run takes the same steps as an uninterrupted one: on a CPU its
  parameters and curve are bit-identical.  ``TrainResult.segments`` lists one entry per
  process that ran (start and end step, timed seconds, why it ended); a ``max_seconds``
  budget counts the timed seconds of all of them.
- **Memory.** ``memory_check(compiled)`` is called on the compiled step before anything
  runs (:func:`pinn_ng.memory.check`); it may raise to stop the run, and what it returns is
  ``TrainResult.memory``.

The loop knows nothing about particular optimizers beyond ``pinn_ng.optim.uses_grads`` (does
the update read the gradient?) and ``pinn_ng.optim.diagnostics`` (loss, step size, …).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .optim.common import EVENT_FIELDS
from .problems import Problem
from .precision import resolve_dtype

#: Columns every curve row has, in this order; optimizer diagnostics follow.
BASE_COLUMNS = ("step", "time", "loss", "l2", "rms_l2", "rel_l2", "step_size")


@dataclass
class TrainResult:
    """What :func:`train` returns: evaluation rows and how the run ended."""

    rows: list = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0  # timed seconds, compilation and evaluation excluded
    compile_seconds: float = 0.0
    diverged: bool = False
    reason: str | None = None  # why the run diverged, else None
    #: "max_steps", "max_seconds", "diverged", or "interrupted" (``stop()`` asked: the
    #: run is not finished; its checkpoint, if any, holds the progress)
    stopped_by: str = ""
    #: steps at which each numerical event occurred, e.g. {"jitter_steps": 3, ...}, and the
    #: first step (1-based) at which it did, e.g. {"first_jitter_step": 11} (None: never);
    #: only the events the optimizer reports
    events: dict = field(default_factory=dict)
    #: timed seconds of every step, in order, and whether a numerical event occurred in it
    #: (jitter, eigh fallback, grown Nyström shift, non-finite direction): what a median
    #: step time with and without the solver's fallbacks is computed from
    step_seconds: list = field(default_factory=list)
    step_had_event: list = field(default_factory=list)
    final_params: object = None
    #: one entry per process that trained this run: start_step, end_step, seconds (timed),
    #: ended ("max_steps", "max_seconds", "diverged", a signal's name, or "lost" for a process
    #: that died without saving: its steps after the last checkpoint were redone)
    segments: list = field(default_factory=list)
    memory: dict | None = None  # what memory_check returned (the compiled step's estimate)
    resumed_from: int | None = None  # the step this process resumed at (None: a fresh start)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else math.nan


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _to_float(x) -> float:
    return float(jnp.asarray(x))


def _params_finite(params):
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def make_step(problem: Problem, residual_fn: Callable, optimizer, *, uses_grads: bool,
              diagnostics: Callable, n_interior: int, n_boundary: int, dtype,
              batch_every: int = 1):
    """The (unjitted) training step
    ``step(params, opt_state, k, data_key) -> (params, opt_state, out)``.

    Step ``k`` trains on batch ``k // batch_every``, drawn from ``data_key`` (an argument, not
    a constant, so that runs with other seeds compile the same program: one cache entry).

    ``out`` holds ``loss`` (½‖r‖² on batch ``k`` at the parameters *before* the step),
    ``params_finite`` and every diagnostic of the optimizer.
    """
    def loss_fn(params, batch):
        r = residual_fn(params, batch)
        return 0.5 * jnp.dot(r, r)

    def step(params, opt_state, k, data_key):
        batch = problem.sample(jax.random.fold_in(data_key, k // batch_every), n_interior,
                               n_boundary, dtype)
        if uses_grads:
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        else:
            loss, grads = None, None
        updates, opt_state = optimizer.update(grads, opt_state, params, batch=batch)
        diag = dict(diagnostics(opt_state))
        if loss is None:
            # ENGD family reports the loss it already computed; otherwise compute it here.
            loss = diag["loss"] if "loss" in diag else loss_fn(params, batch)
        diag["loss"] = loss
        new_params = optax.apply_updates(params, updates)
        diag["params_finite"] = _params_finite(new_params)
        return new_params, opt_state, diag

    return step, loss_fn


def train(problem: Problem, apply: Callable, params, optimizer, residual_fn: Callable, *,
          uses_grads: bool, diagnostics: Callable = lambda state: {},
          n_interior: int | None = None, n_boundary: int | None = None,
          max_steps: int | None = None, max_seconds: float | None = None,
          eval_every: int = 10, data_seed: int = 0, dtype=None, batch_every: int = 1,
          progress: bool | None = None, log: Callable | None = None, checkpoint=None,
          stop: Callable[[], str | None] | None = None,
          memory_check: Callable | None = None) -> TrainResult:
    """Train ``params`` of ``apply`` on ``problem`` with ``optimizer``; see the module docstring.

    ``batch_every``: steps per batch (1: a fresh batch every step).  ``progress``: a tqdm bar (None: only when stderr is a terminal).  ``log``: where quiet
    progress lines go when there is no bar (default: stderr, at most one line every 10 s).
    ``checkpoint``, ``stop``, ``memory_check``: see the module docstring.
    """
    if max_steps is None and max_seconds is None:
        raise ValueError("give a budget: max_steps and/or max_seconds")
    if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) < 0):
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if max_seconds is not None and not float(max_seconds) > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if isinstance(eval_every, bool) or int(eval_every) < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    if isinstance(batch_every, bool) or not isinstance(batch_every, int) or batch_every < 1:
        raise ValueError(f"batch_every must be a positive integer, got {batch_every!r}")
    dtype = resolve_dtype(dtype)
    n_interior = problem.n_interior if n_interior is None else int(n_interior)
    n_boundary = problem.n_boundary if n_boundary is None else int(n_boundary)
    if progress is None:
        progress = _is_tty(sys.stderr)
    if log is None:
        log = (lambda msg: None) if progress else (
            lambda msg: print(f"[pinn-ng] {msg}", file=sys.stderr, flush=True))

    step_fn, _ = make_step(
        problem, residual_fn, optimizer, uses_grads=uses_grads, diagnostics=diagnostics,
        n_interior=n_interior, n_boundary=n_boundary, dtype=dtype, batch_every=batch_every)
    data_key = jax.random.PRNGKey(data_seed)
    opt_state = optimizer.init(params)
    # Donating the old params / state halves peak memory on accelerators; CPU ignores it.
    donate = (0, 1) if jax.default_backend() != "cpu" else ()
    t0 = time.perf_counter()
    k0 = jnp.asarray(0, jnp.int32)
    compiled = jax.jit(step_fn, donate_argnums=donate).lower(params, opt_state, k0,
                                                                data_key).compile()
    compile_seconds = time.perf_counter() - t0
    _release_freed_heap()
    result = TrainResult(compile_seconds=compile_seconds)
    if memory_check is not None:  # before the first step: a run that cannot fit stops here
        result.memory = memory_check(compiled)

    points = problem.eval_points(dtype)
    diag_keys: list[str] = []
    elapsed, step = 0.0, 0
    restored = checkpoint.load({"params": params, "opt_state": opt_state}) \
        if checkpoint is not None else None
    if restored is not None:
        state, saved = restored
        params, opt_state = state["params"], state["opt_state"]
        step, elapsed = int(saved["step"]), float(saved["elapsed"])
        result.rows = [dict(r) for r in saved["rows"]]
        result.step_seconds = list(saved["step_seconds"])
        result.step_had_event = list(saved["step_had_event"])
        result.events = dict(saved["events"])
        result.segments = [dict(s) for s in saved["segments"]]
        for seg in result.segments:
            if seg.get("ended") == "running":  # that process died after its last save
                seg["ended"] = "lost"
        result.resumed_from = step
    segment = {"start_step": step, "end_step": step, "seconds": 0.0, "ended": "running"}
    result.segments.append(segment)
    seg_start_elapsed = elapsed

    def save_checkpoint(ended):
        segment.update(end_step=step, seconds=elapsed - seg_start_elapsed, ended=ended)
        checkpoint.save({"params": params, "opt_state": opt_state}, {
            "step": step, "elapsed": elapsed, "rows": result.rows,
            "step_seconds": result.step_seconds, "step_had_event": result.step_had_event,
            "events": result.events, "segments": result.segments})

    def record(step, elapsed, out, params):
        errs = problem.errors(apply, params, points)
        row = {"step": step, "time": elapsed, "loss": math.nan, **errs, "step_size": math.nan}
        for k in diag_keys:
            row[k] = math.nan
        if out is not None:
            for k, v in out.items():
                if k not in ("params_finite", "solve_failed"):
                    row[k] = _to_float(v)
        result.rows.append(row)
        return row

    # Row 0: the initial parameters.  Its loss (batch 0) is the first step's "loss before the
    # step", filled in after that step rather than compiled separately.
    if result.rows:
        first = result.rows[0]
        log(f"{problem.name}: compiled in {compile_seconds:.1f} s; resumed at step {step} "
            f"({elapsed:.1f} timed s) from the checkpoint")
    else:
        first = record(0, 0.0, None, params)
        log(f"{problem.name}: compiled in {compile_seconds:.1f} s; step 0 l2 "
            f"{first['l2']:.3e}")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=step, desc=problem.name, unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    out, last_log = None, time.monotonic()
    last_save = time.monotonic()
    try:
        while True:
            if max_steps is not None and step >= max_steps:
                result.stopped_by = "max_steps"
                break
            if max_seconds is not None and elapsed >= max_seconds:
                result.stopped_by = "max_seconds"
                break
            why = stop() if stop is not None else None
            if why:  # asked to stop (a signal): save what we have; the run is not finished
                result.stopped_by, result.reason = "interrupted", why
                if checkpoint is not None:
                    save_checkpoint(why)
                    log(f"{problem.name}: stopped ({why}) at step {step}; checkpoint saved")
                break
            if checkpoint is not None and checkpoint.every_seconds is not None and \
                    step > 0 and time.monotonic() - last_save >= checkpoint.every_seconds:
                save_checkpoint("running")
                last_save = time.monotonic()
            k = np.asarray(step, np.int32)  # no eager JAX op (a dispatch) per step
            t = time.perf_counter()
            params, opt_state, out = compiled(params, opt_state, k, data_key)
            jax.block_until_ready((params, opt_state, out))
            dt = time.perf_counter() - t
            out = jax.device_get(out)  # one transfer of the step's scalars, not one per key
            elapsed += dt
            step += 1
            result.step_seconds.append(dt)
            if not diag_keys:
                diag_keys = sorted(k for k in out if k not in ("loss", "step_size",
                                                               "params_finite",
                                                               "solve_failed"))
                if not result.events:  # a resumed run keeps the counts it restored
                    result.events = {f"{k}_steps": 0 for k in EVENT_FIELDS if k in out}
                    result.events.update({f"first_{k}_step": None for k in EVENT_FIELDS
                                          if k in out})
            had_event = False
            for k in EVENT_FIELDS:
                if k in out and _to_float(out[k]) > 0:
                    result.events[f"{k}_steps"] += 1
                    if result.events[f"first_{k}_step"] is None:
                        result.events[f"first_{k}_step"] = step
                    had_event = True
            result.step_had_event.append(had_event)
            loss = _to_float(out["loss"])
            if step == 1:
                first["loss"] = loss
            reason = None
            if "solve_failed" in out and _to_float(out["solve_failed"]) > 0:
                reason = (f"Cholesky factorisation failed at step {step} (jitter='none': "
                          "no jitter, no fallback)")
            elif not math.isfinite(loss):
                reason = f"non-finite loss ({loss}) at step {step}"
            elif not bool(out["params_finite"]):
                reason = f"non-finite parameters after step {step}"
            last = (reason is not None
                    or (max_steps is not None and step >= max_steps)
                    or (max_seconds is not None and elapsed >= max_seconds))
            if step % eval_every == 0 or last:
                row = record(step, elapsed, out, params)
                if bar is None and (time.monotonic() - last_log > 10 or last):
                    last_log = time.monotonic()
                    log(f"{problem.name}: step {step} t {elapsed:.2f} s loss {loss:.3e} "
                        f"l2 {row['l2']:.3e}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.2e}", t=f"{elapsed:.1f}s", refresh=False)
            if reason is not None:
                result.diverged, result.reason, result.stopped_by = True, reason, "diverged"
                log(f"{problem.name}: diverged: {reason}")
                break
    finally:
        if bar is not None:
            bar.close()
    segment.update(end_step=step, seconds=elapsed - seg_start_elapsed,
                   ended=result.reason if result.stopped_by == "interrupted"
                   else result.stopped_by)
    result.steps, result.seconds, result.final_params = step, elapsed, params
    return result


def _release_freed_heap():
    """Hand the heap that XLA's compiler freed back to the OS (glibc keeps it mapped: about
    0.3 GB of peak RSS on the 5d ENGD-W step); nothing where glibc is absent."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
