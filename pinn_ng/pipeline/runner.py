"""``pinn-ng run``: one training run from a specification, written as one run record."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from . import records

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
    "data_seed": 0,  # PAPER.md: data seed 0, model seed 1 in the reference runs
    "model_seed": 1,
    "max_steps": None,
    "max_seconds": None,
    "eval_every": 10,
    "dtype": "float64",
}


def complete_spec(spec: dict) -> dict:
    """Fill defaults, reject unknown keys, resolve the problem's net and batch sizes."""
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown run spec keys {unknown}; valid: {sorted(SPEC_DEFAULTS)}")
    out = {**SPEC_DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    out["hparams"] = dict(out["hparams"] or {})
    if out["problem"] is None or out["optimizer"] is None:
        raise ValueError("a run needs a problem and an optimizer")
    from .. import problems

    problem = problems.get(out["problem"])
    out["widths"] = [int(w) for w in (out["widths"] or problem.widths)]
    out["n_interior"] = int(out["n_interior"] or problem.n_interior)
    out["n_boundary"] = int(out["n_boundary"] or problem.n_boundary)
    out["label"] = out["label"] or out["optimizer"]
    out["display"] = out["display"] or out["label"]
    if out["max_steps"] is None and out["max_seconds"] is None:
        raise ValueError("a run needs a budget: max_steps and/or max_seconds")
    return out


def _median(values):
    return float(statistics.median(values)) if values else None


def run(spec: dict, out_dir, progress=None) -> dict:
    """Train as ``spec`` says and write the record to ``out_dir``; return its metadata.

    Nothing is written until training has finished (or diverged): an interrupted run leaves
    no record.
    """
    spec = complete_spec(spec)
    started = records.utc_now()
    import jax

    from .. import enable_x64, models, optim, problems, train
    from ..residuals import ResidualFn
    from ..precision import resolve_dtype

    if spec["dtype"] in ("float64", "f64", "double"):
        enable_x64()
    dtype = resolve_dtype(spec["dtype"])
    problem = problems.get(spec["problem"])
    init, apply = models.mlp(spec["widths"], dtype=dtype)
    params = init(jax.random.PRNGKey(spec["model_seed"]))
    residual_fn = ResidualFn(problem, apply)
    optimizer = optim.make(spec["optimizer"], residual_fn, **spec["hparams"])
    try:
        result = train.train(
            problem, jax.jit(apply), params, optimizer, residual_fn,
            uses_grads=optim.uses_grads(spec["optimizer"]), diagnostics=optim.diagnostics,
            n_interior=spec["n_interior"], n_boundary=spec["n_boundary"],
            max_steps=spec["max_steps"], max_seconds=spec["max_seconds"],
            eval_every=spec["eval_every"], data_seed=spec["data_seed"], dtype=dtype,
            progress=progress)
    except Exception as err:  # noqa: BLE001 - only out-of-memory is a result, see below
        # Running out of device memory is an outcome worth recording (PAPER.md: "ENGD runs
        # out of memory" on 10d), not a pipeline failure; anything else is a bug and raises.
        text = f"{type(err).__name__}: {err}"
        if not (isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in text
                or "out of memory" in text.lower()):
            raise
        result = train.TrainResult(diverged=True, reason="out of memory: " + text[:300],
                                   stopped_by="out_of_memory")

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
        "status": "diverged" if result.diverged else "finished",
        "diverged": result.diverged,
        "reason": result.reason,
        "stopped_by": result.stopped_by,
        "steps": result.steps,
        "seconds": result.seconds,
        "seconds_per_step": result.seconds_per_step if result.steps else None,
        "compile_seconds": result.compile_seconds,
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
    records.write_record(out_dir, result.rows, columns, meta)
    return meta
