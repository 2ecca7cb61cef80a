"""``pinn-ng run``: one training run from a specification, written as one run record."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from . import contention, records
from .errors import UserError

#: Keys of a run specification and their defaults (None: the problem's paper value).
SPEC_DEFAULTS = {
    "problem": None,
    "label": None,  # name in tables and legends; default: the optimizer name
    "display": None,
    "optimizer": None,
    "hparams": {},
    "widths": None,
    "n_interior": None,
    "n_boundary": None,
    "replicate": 0,
    "data_seed": 0,  # the paper's reference runs: data seed 0, model seed 1
    "model_seed": 1,
    "max_steps": None,
    "max_seconds": None,
    "eval_every": 10,
    "dtype": "float64",
    "batch_every": 1,  # steps per batch (1: a fresh batch every step; pinn_ng.train)
    "network": None,  # a name of pinn_ng.models.names(); absent (None): mlp
    # wall-clock seconds between checkpoints (0: none but the one saved on SIGTERM/SIGINT;
    # None: CHECKPOINT_DEFAULT_SECONDS unless the time budget is under CHECKPOINT_MIN_BUDGET)
    "checkpoint_every": None,
}
#: The default checkpoint interval, and the time budget under which a run saves none by default.
CHECKPOINT_DEFAULT_SECONDS = 300.0
CHECKPOINT_MIN_BUDGET = 600.0
#: Spec keys that may change between the segments of one run (the budget may be extended);
#: every other key must match the checkpoint's.
RESUMABLE_CHANGES = ("max_steps", "max_seconds", "checkpoint_every", "label", "display")
#: Spellings of the two precisions a run accepts (pinn_ng.precision).
DTYPES = ("float64", "float32", "f64", "f32", "double", "single")


class SpecError(UserError):
    """A run specification (or a ``pinn-ng run`` flag) is invalid; one line naming the key."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: The largest integer a run accepts (sizes, seeds, counts): JAX computes them in int32.
INT_MAX = 2**31 - 1


def _check_int(spec: dict, key: str, minimum: int, what: str) -> None:
    v = spec[key]
    if not _is_int(v) or v < minimum:
        raise SpecError(f"{key} must be {what}, got {v!r}")
    if v > INT_MAX:
        raise SpecError(f"{key} {v} is too large (at most {INT_MAX})")


def _check_hparams(optimizer: str, hparams: dict) -> None:
    """Values that cannot be meant, named before anything is built: a non-finite number, an
    integer beyond int32, or a value of another kind than the hyper-parameter's default (a
    number, an integer, true/false).  What each optimizer allows beyond that it checks."""
    from .. import optim

    defaults = optim.hyperparameters(optimizer)
    for key, v in hparams.items():
        where, d = f"optimizer {optimizer!r}: hparams.{key}", defaults.get(key)
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{where} must be a finite number, got {v!r}")
        if _is_int(v) and abs(v) > INT_MAX:
            raise SpecError(f"{where} {v} is too large (at most {INT_MAX})")
        if isinstance(d, bool):
            if not isinstance(v, bool):
                raise SpecError(f"{where} must be true or false, got {v!r}")
        elif _is_int(d) and not _is_int(v):
            raise SpecError(f"{where} must be an integer, got {v!r}")
        elif isinstance(d, float) and not (_is_number(v) or (key == "learning_rate"
                                                              and v == "line_search")):
            raise SpecError(f"{where} must be a number, got {v!r}")
        if key == "learning_rate" and v is not None and not (
                (_is_number(v) and v > 0) or v == "line_search"):  # η > 0 for every optimizer
            raise SpecError(f"{where} must be a positive number or 'line_search', got {v!r}")


def _check_widths(widths, problem) -> list:
    if not isinstance(widths, (list, tuple)) or len(widths) < 2 or \
            not all(_is_int(w) and 1 <= w <= INT_MAX for w in widths):
        raise SpecError(f"widths must be a list of at least two positive integers, got {widths!r}")
    if widths[0] != problem.input_dim or widths[-1] != 1:
        raise SpecError(f"widths {list(widths)} do not fit {problem.name}: the first must be its "
                        f"input dimension {problem.input_dim} and the last 1")
    return list(widths)


def _check_sketch(hparams: dict, n: int) -> None:
    """A Nyström sketch of ℓ columns needs ℓ <= N; say so before XLA does."""
    solver, ell = hparams.get("solver"), hparams.get("sketch_size")
    if not (isinstance(solver, str) and solver.startswith("nystrom")) or ell is None:
        return
    if _is_int(ell) and ell > n:
        raise SpecError(f"hparams.sketch_size {ell} exceeds the batch size N = n_interior + "
                        f"n_boundary = {n}; give an int in [1, {n}] or a fraction in (0, 1]")
    if isinstance(ell, bool) or not _is_number(ell) or ell <= 0 or (not _is_int(ell) and ell > 1):
        raise SpecError(f"hparams.sketch_size must be an int in [1, {n}] or a fraction in "
                        f"(0, 1], got {ell!r}")


def complete_spec(spec: dict) -> dict:
    """Fill defaults, check every value, resolve the problem's net and batch sizes.

    Raises :class:`SpecError` (one line naming the key and the allowed values) before anything
    is compiled or written.
    """
    if not isinstance(spec, dict):
        raise SpecError(f"a run specification must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise SpecError(f"unknown run spec keys {unknown}; valid: {sorted(SPEC_DEFAULTS)}")
    out = {**SPEC_DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    if not isinstance(out["hparams"], dict):
        raise SpecError(f"hparams must be an object of hyper-parameters, got {out['hparams']!r}")
    out["hparams"] = dict(out["hparams"])
    if out["problem"] is None or out["optimizer"] is None:
        raise SpecError("a run needs a problem and an optimizer "
                        "(--problem / --optimizer, or keys problem / optimizer of --spec)")
    from .. import models, optim, problems

    try:
        problem = problems.get(out["problem"])
    except KeyError as err:  # the registry's message lists the valid names
        raise SpecError(err.args[0]) from None
    except (TypeError, ValueError) as err:  # a plugin's factory returned no proper Problem
        raise SpecError(str(err)) from None
    if out["optimizer"] not in optim.names():
        raise SpecError(f"unknown optimizer {out['optimizer']!r}; valid optimizers: "
                        f"{optim.names()}")
    if out["network"] in (None, "mlp"):
        del out["network"]  # the default stays out of the record (and of config ids)
    elif out["network"] not in models.names():
        raise SpecError(f"unknown network {out['network']!r}; valid networks: "
                        f"{models.names()}")
    out["widths"] = _check_widths(list(problem.widths) if out["widths"] is None
                                  else out["widths"], problem)
    for key in ("n_interior", "n_boundary"):
        if out[key] is None:
            out[key] = getattr(problem, key)
        _check_int(out, key, 1, "a positive integer (points per step)")
    _check_int(out, "eval_every", 1, "a positive integer (steps between evaluations)")
    _check_int(out, "batch_every", 1, "a positive integer (steps per batch)")
    for key in ("data_seed", "model_seed", "replicate"):
        _check_int(out, key, 0, "an integer >= 0")
    if out["max_steps"] is None and out["max_seconds"] is None:
        raise SpecError("a run needs a budget: max_steps and/or max_seconds")
    if out["max_steps"] is not None:
        _check_int(out, "max_steps", 0, "an integer >= 0")
    if out["max_seconds"] is not None and (not _is_number(out["max_seconds"])
                                           or out["max_seconds"] <= 0):
        raise SpecError(f"max_seconds must be a positive number, got {out['max_seconds']!r}")
    ce = out["checkpoint_every"]
    if ce is not None and (not _is_number(ce) or ce < 0):
        raise SpecError(f"checkpoint_every must be a number of seconds >= 0 (0: only on "
                        f"SIGTERM/SIGINT), got {ce!r}")
    if ce is None:
        del out["checkpoint_every"]  # the default stays out of the record (and of config ids)
    if not isinstance(out["dtype"], str) or out["dtype"].lower() not in DTYPES:
        raise SpecError(f"unknown dtype {out['dtype']!r}; valid: {list(DTYPES)}")
    if not all(isinstance(k, str) and k for k in out["hparams"]):
        raise SpecError(f"hparams keys must be names, got {sorted(map(repr, out['hparams']))}")
    _check_sketch(out["hparams"], out["n_interior"] + out["n_boundary"])
    _check_hparams(out["optimizer"], out["hparams"])
    for key in ("label", "display"):  # names in tables, legends and run ids
        if out[key] is not None and not (isinstance(out[key], str) and out[key].strip()):
            raise SpecError(f"{key} must be a non-empty name, got {out[key]!r}")
    out["label"] = out["label"] or out["optimizer"]
    out["display"] = out["display"] or out["label"]
    return out


def make_optimizer(spec: dict, residual_fn):
    """``pinn_ng.optim.make`` for a completed spec; a rejected hyper-parameter is a
    :class:`SpecError` that names the optimizer and the key (and, for an unknown key, the
    valid ones: ``optim.make`` lists them)."""
    from .. import optim

    name = spec["optimizer"]
    try:
        return optim.make(name, residual_fn, **spec["hparams"])
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if f"optimizer {name!r}" not in msg:
            msg = f"optimizer {name!r}: {msg}"
        raise SpecError(" ".join(msg.split())) from err


class RunInterrupted(Exception):
    """The run was asked to stop (SIGTERM/SIGINT) before it finished; ``args[0]`` says how
    far it got and where its checkpoint is.  No record is written."""


def checkpoint_seconds(spec: dict) -> float | None:
    """Seconds between periodic checkpoints of a completed spec (None: none)."""
    every = spec.get("checkpoint_every")
    if every is None:
        budget = spec.get("max_seconds")
        return None if budget is not None and budget < CHECKPOINT_MIN_BUDGET \
            else CHECKPOINT_DEFAULT_SECONDS
    return float(every) if every > 0 else None


def memory_hint(spec: dict) -> str:
    """What shrinks a run's step, for the memory guard's line."""
    from .. import optim

    hp = optim.hyperparameters(spec["optimizer"])
    opts = []
    if "kernel" in hp and spec["hparams"].get("kernel") != "blocked":
        opts.append('--hparam kernel=blocked (row blocks of J)')
    if "solver" in hp and not str(spec["hparams"].get("solver", "")).startswith("nystrom"):
        opts.append("a Nystrom solver (--hparam solver=nystrom --hparam sketch_size=0.1)")
    opts.append(f"a smaller N (--n-interior, now {spec['n_interior']}; --n-boundary, now "
                f"{spec['n_boundary']})")
    return "; ".join(opts) + "; or --no-memory-check to run anyway"


#: Spec keys that do not change the compiled step (its memory): one estimate serves them all.
NOT_SHAPE = ("label", "display", "replicate", "data_seed", "model_seed", "max_steps",
             "max_seconds", "eval_every", "checkpoint_every")


def shape_key(spec: dict) -> str:
    """The part of a spec that decides the compiled step's shapes (and so its memory)."""
    import json

    return json.dumps({k: v for k, v in spec.items() if k not in NOT_SHAPE}, sort_keys=True,
                      default=str)


def estimate_memory(spec: dict) -> dict | None:
    """The compiled step's memory (:func:`pinn_ng.memory.estimate`) for ``spec``, compiled from
    shapes alone (``jax.ShapeDtypeStruct``: no parameters, no data), as ``pinn-ng plan
    --memory`` prints it; None when the backend does not report it."""
    spec = complete_spec(spec)
    import jax
    import jax.numpy as jnp

    from .. import enable_x64, memory, models, optim, problems, train
    from ..precision import resolve_dtype
    from ..residuals import ResidualFn

    if spec["dtype"].lower() in ("float64", "f64", "double"):
        enable_x64()
    dtype = resolve_dtype(spec["dtype"])
    problem = problems.get(spec["problem"])
    init, apply = models.make(spec.get("network", "mlp"), spec["widths"], dtype=dtype)
    residual_fn = ResidualFn(problem, apply)
    optimizer = make_optimizer(spec, residual_fn)
    params = jax.eval_shape(init, jax.random.PRNGKey(0))
    state = jax.eval_shape(optimizer.init, params)
    step, _ = train.make_step(
        problem, residual_fn, optimizer, uses_grads=optim.uses_grads(spec["optimizer"]),
        diagnostics=optim.diagnostics, n_interior=spec["n_interior"],
        n_boundary=spec["n_boundary"], dtype=dtype, batch_every=spec["batch_every"])
    k = jax.ShapeDtypeStruct((), jnp.int32)
    key = jax.eval_shape(jax.random.PRNGKey, 0)
    return memory.estimate(jax.jit(step).lower(params, state, k, key).compile())


def lower_bound_bytes(spec: dict) -> tuple[int, str]:
    """Bytes the step must hold at the least, from the spec's sizes alone, and what they are:
    J (N x P) for the sample-space methods, plus K (N x N) when the solver factorises it, or
    the P x P Gramian for ENGD.  Instant, so a batch far too large is refused before XLA spends
    minutes compiling it."""
    from .. import models

    spec = complete_spec(spec)
    n, p = spec["n_interior"] + spec["n_boundary"], models.n_params(spec["widths"])
    item = 4 if spec["dtype"].lower() in ("float32", "f32", "single") else 8
    name, solver = spec["optimizer"], spec["hparams"].get("solver", "cholesky")
    if name in ("engd_woodbury", "spring"):
        if isinstance(solver, str) and solver != "cholesky":
            return n * p * item, f"J ({n:,} x {p:,})"
        return (n * p + n * n) * item, f"J ({n:,} x {p:,}) and K ({n:,} x {n:,})"
    if name == "engd":
        return (n * p + p * p) * item, f"J ({n:,} x {p:,}) and the Gramian ({p:,} x {p:,})"
    return 0, ""


def precheck_memory(spec: dict) -> None:
    """Refuse a run whose step cannot fit by its arrays' sizes alone (:func:`lower_bound_bytes`),
    with one line, before compiling it; the compiled step's own estimate checks the rest."""
    from .. import memory

    need, what = lower_bound_bytes(spec)
    if not need:
        return
    avail, source = memory.available()
    if avail is None or need <= avail:
        return
    spec = complete_spec(spec)
    raise SpecError(
        f"the training step at N = {spec['n_interior'] + spec['n_boundary']:,} needs at least "
        f"{need / memory.GIB:,.1f} GiB for {what} alone, but only {avail / memory.GIB:.2f} GiB "
        f"are available ({source}); to shrink it: {memory_hint(spec)}")


class _RunCheckpointer:
    """The run directory's checkpoint: an unreadable one is set aside (kept as
    ``checkpoint.unusable``) and the run starts over, which the record then says; one written
    by another run spec is a :class:`SpecError`."""

    def __init__(self, out_dir, spec: dict, warn):
        from . import checkpoint

        self._mod = checkpoint
        identity = {k: v for k, v in spec.items() if k not in RESUMABLE_CHANGES}
        self._ckpt = checkpoint.Checkpointer(Path(out_dir) / "checkpoint",
                                             every_seconds=checkpoint_seconds(spec),
                                             identity=identity)
        self.every_seconds = self._ckpt.every_seconds
        self.discarded = None
        self._warn = warn

    @property
    def directory(self):
        return self._ckpt.directory

    @property
    def saves(self):
        return self._ckpt.saves

    def load(self, like_state):
        try:
            return self._ckpt.load(like_state)
        except self._mod.CheckpointMismatch as err:
            raise SpecError(str(err)) from None
        except self._mod.CheckpointError as err:
            where = self._ckpt.set_aside()
            self.discarded = f"{err}; set aside as {where}, started over"
            self._warn(f"warning: unusable {self.discarded}")
            return None

    def save(self, state, progress):
        self._ckpt.save(state, progress)

    def remove(self):
        self._ckpt.remove()


def _median(values):
    return float(statistics.median(values)) if values else None


def run(spec: dict, out_dir, progress=None, on_contention: str = "mark", *, stop=None,
        memory_check: bool = True, warn=None) -> dict:
    """Train as ``spec`` says and write the record to ``out_dir``; return its metadata.

    ``on_contention`` (:data:`pinn_ng.pipeline.contention.ON_CONTENTION`): ``fail`` records
    a run measured under contention as ``failed``; ``warn`` and ``mark`` keep it, flagged.

    Checkpoints go to ``<out_dir>/checkpoint/`` (every ``checkpoint_every`` seconds, and when
    ``stop()`` returns a reason); a run that finds one resumes from it, and removes it once
    its record is written.  ``stop``: polled between steps (the CLI's signal handlers);
    when it asks, the run saves and raises :class:`RunInterrupted`.  ``memory_check``: stop
    with a :class:`~pinn_ng.pipeline.errors.UserError` when the compiled step cannot fit
    (:mod:`pinn_ng.memory`); the estimate is recorded either way.

    Nothing is written until training has finished (or diverged): an interrupted run leaves
    no record, only its checkpoint.
    """
    spec = complete_spec(spec)
    started = records.utc_now()
    import jax

    from .. import enable_x64, memory, models, optim, problems, train
    from ..residuals import ResidualFn
    from ..precision import resolve_dtype

    if spec["dtype"].lower() in ("float64", "f64", "double"):
        enable_x64()
    dtype = resolve_dtype(spec["dtype"])
    problem = problems.get(spec["problem"])
    init, apply = models.make(spec.get("network", "mlp"), spec["widths"], dtype=dtype)
    params = init(jax.random.PRNGKey(spec["model_seed"]))
    residual_fn = ResidualFn(problem, apply)
    optimizer = make_optimizer(spec, residual_fn)
    import sys

    warn = warn or (lambda msg: print(f"[pinn-ng] {msg}", file=sys.stderr, flush=True))
    ckpt = _RunCheckpointer(out_dir, spec, warn)
    hint = memory_hint(spec)

    def guard(compiled):
        try:
            return memory.check(compiled, enabled=memory_check, hint=hint)
        except memory.MemoryGuardError as err:
            raise SpecError(str(err)) from None

    if memory_check:
        precheck_memory(spec)
    monitor = contention.Monitor().start()
    try:
        result = train.train(
            problem, jax.jit(apply), params, optimizer, residual_fn,
            uses_grads=optim.uses_grads(spec["optimizer"]), diagnostics=optim.diagnostics,
            n_interior=spec["n_interior"], n_boundary=spec["n_boundary"],
            max_steps=spec["max_steps"], max_seconds=spec["max_seconds"],
            eval_every=spec["eval_every"], data_seed=spec["data_seed"], dtype=dtype,
            batch_every=spec["batch_every"], progress=progress, checkpoint=ckpt, stop=stop,
            memory_check=guard)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - only out-of-memory is a result, see below
        # Running out of device memory is an outcome worth recording (the paper's ENGD runs
        # out of memory on 10d), not a pipeline failure; anything else is a bug and raises.
        text = f"{type(err).__name__}: {err}"
        if not (isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text
                or "out of memory" in text.lower()):
            raise
        result = train.TrainResult(diverged=True, reason="out of memory: " + text[:300],
                                   stopped_by="out_of_memory")
    if result.stopped_by == "interrupted":
        monitor.stop()
        saved = (f"checkpoint at step {result.steps} in {ckpt.directory}; rerun the same "
                 "command to resume") if ckpt.saves else "no checkpoint saved"
        raise RunInterrupted(f"{result.reason} at step {result.steps} "
                             f"({result.seconds:.1f} timed s): {saved}")
    machine_load = monitor.stop().probes(result.step_seconds)
    contended, why = contention.verdict(machine_load)
    machine_load.update(why=why, on_contention=on_contention)
    status = "diverged" if result.diverged else "finished"
    if contended and on_contention == "fail":  # the preset refuses timings taken under load
        status = "failed"

    extra = sorted({k for row in result.rows for k in row} - set(train.BASE_COLUMNS))
    columns = list(train.BASE_COLUMNS) + extra
    l2s = [r["l2"] for r in result.rows if math.isfinite(r["l2"])]
    nan = float("nan")
    final = result.rows[-1] if result.rows else {"l2": nan, "rms_l2": nan, "rel_l2": nan}
    meta = {
        "run_id": Path(out_dir).name,
        "spec": spec,
        "problem": problem.name,
        "n_params": models.n_params(spec["widths"]),
        "N": spec["n_interior"] + spec["n_boundary"],
        "seeds": {"data": spec["data_seed"], "model": spec["model_seed"]},
        "status": status,
        "diverged": result.diverged,
        "reason": f"contended: {why}" if status == "failed" else result.reason,
        "stopped_by": result.stopped_by,
        "steps": result.steps,
        "seconds": result.seconds,
        "seconds_per_step": result.seconds_per_step if result.steps else None,
        "contended": contended,  # pinn_ng.pipeline.contention.RULE on the probes below
        "machine_load": machine_load,
        "compile_seconds": result.compile_seconds,
        # one entry per process that trained this run (a resumed run has several)
        "segments": result.segments,
        "checkpoint": {"every_seconds": ckpt.every_seconds, "saves_last_segment": ckpt.saves,
                       "resumed_from": result.resumed_from, "discarded": ckpt.discarded,
                       "kept": False},
        # the compiled step's memory (pinn_ng.memory) and what the device had available
        "memory": result.memory,
        # steps at which the solver needed a jitter / eigh fallback / larger Nyström shift,
        # or skipped a non-finite direction (pinn_ng.optim.EVENT_FIELDS)
        "events": result.events,
        "median_seconds_per_step": _median(result.step_seconds),
        # the cost of the solver's fallbacks: median step time with and without an event
        "median_seconds_per_step_event": _median(
            [t for t, e in zip(result.step_seconds, result.step_had_event) if e]),
        "median_seconds_per_step_no_event": _median(
            [t for t, e in zip(result.step_seconds, result.step_had_event) if not e]),
        "final": {k: final[k] for k in ("l2", "rms_l2", "rel_l2")},
        "best_l2": min(l2s) if l2s else None,
        "columns": columns,
        "versions": records.versions(),
        "device": records.device_info(),
        "git": records.git_info(),
        "command": records.command_line(),
        "started_utc": started,
        "finished_utc": records.utc_now(),
    }
    if result.final_params is not None:  # the solution figures redraw the trained net
        from . import params_io

        params_io.save(Path(out_dir) / params_io.FILE, result.final_params)
    records.write_record(out_dir, result.rows, columns, meta)
    ckpt.remove()  # the record is complete: a rerun starts a new run, not a resumed one
    return meta


def write_failed_record(spec: dict, out_dir, reason: str) -> dict:
    """A run record for a run that produced no result (an exception, a crashed process): status
    ``failed``, no steps, a NaN final error, ``reason`` saying what happened.  The tuning stage
    scores it +inf; it is a result, so that Snakemake does not rerun the trial forever."""
    try:
        spec = complete_spec(spec)
    except UserError:
        spec = dict(spec)
    from ..models import n_params

    widths = spec.get("widths")
    n_i, n_b = spec.get("n_interior"), spec.get("n_boundary")
    nan = float("nan")
    meta = {
        "run_id": Path(out_dir).name, "spec": spec, "problem": spec.get("problem"),
        "n_params": n_params(widths) if widths else None,
        "N": n_i + n_b if isinstance(n_i, int) and isinstance(n_b, int) else None,
        "seeds": {"data": spec.get("data_seed"), "model": spec.get("model_seed")},
        "status": "failed", "diverged": True, "reason": " ".join(str(reason).split())[:2000],
        "stopped_by": "failed", "steps": 0, "seconds": 0.0, "seconds_per_step": None,
        "compile_seconds": None, "events": {}, "median_seconds_per_step": None,
        "median_seconds_per_step_event": None, "median_seconds_per_step_no_event": None,
        "final": {"l2": nan, "rms_l2": nan, "rel_l2": nan}, "best_l2": None,
        "columns": list(_base_columns()), "versions": records.versions(),
        "git": records.git_info(), "command": records.command_line(),
        "started_utc": records.utc_now(), "finished_utc": records.utc_now(),
    }
    records.write_record(out_dir, [], meta["columns"], meta)
    return meta


def _base_columns():
    from ..train import BASE_COLUMNS

    return BASE_COLUMNS
