"""``pinn-ng gather``: run records -> tidy tables (pandas).

- ``curves.csv``: every evaluation row of every run, one row per (run, step), with the run's
  identifying columns in front (tidy: one observation per row).
- ``summary.csv``: one row per run, i.e. per problem × optimizer × N × P × replicate: final and
  best L2, steps done, seconds per step, compile seconds, diverged and why; how many steps
  needed a numerical fallback (``meta["events"]``, see :data:`EVENT_COLUMNS`); and
  ``config_id``, the same for every replicate of one configuration.
- ``summary_by_config.csv``: one row per configuration (``config_id``: the run specification
  without replicate and seeds, so problem × label × N × P × budget × hyper-parameters): the
  number of replicates and the median, min and max of the final L2 over them.
- ``experiments.csv``: which run belongs to which experiment (a run may serve several).
- ``leaderboard.md``: the optimizers of the convergence experiments ranked by the area under
  their performance profile, beside their median final errors (:mod:`.scoring`).

``summary.csv`` ends with the scoring columns (:mod:`.scoring`): ``target_metric`` (``l2``,
or ``loss`` for a problem without an error metric) and, per target t of any problem,
``seconds_to_<t>`` and ``steps_to_<t>`` (t written as ``1e-03``, ``5.9e-03``): the timed
seconds and the steps at the run's first evaluation at or below t, ``inf`` if none is, empty
where t is not a target of the run's problem.  Targets: the manifest's ``targets`` (the
preset's), else the paper's published final errors, else decades below the initial error.

Only complete records (``meta.json`` present) are read.  A record whose ``meta.json`` cannot be
read (not JSON, or missing keys, e.g. a file damaged by hand) is skipped with a warning that
names the file, or, with ``strict=True`` (``pinn-ng gather --strict``), refused with a
:class:`GatherError`.  Rows are sorted, so gathering the same records twice gives
byte-identical tables.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from . import records, scoring
from .errors import UserError

#: Columns that identify a run, in front of every table.
ID_COLUMNS = ["run_id", "problem", "label", "display", "optimizer", "solver", "N",
              "n_interior", "n_boundary", "P", "replicate", "data_seed", "model_seed"]
#: Steps at which the solver needed extra jitter for its Cholesky, fell back to an
#: eigendecomposition, had to grow the Nyström shift, or produced a non-finite direction
#: (``meta["events"]``, written by the training loop).  Records without ``events`` (older
#: ones) leave these columns empty: unknown, not zero.
EVENT_COLUMNS = ["jitter_steps", "cholesky_fallback_steps", "shift_grown_steps",
                 "nonfinite_steps"]
#: The first step (1-based) at which the solver jittered / fell back (None: never, or an
#: older record): when a run's numerics first departed from the requested λ.
FIRST_EVENT_COLUMNS = ["first_jitter_step", "first_cholesky_fallback_step"]
#: The events that are fallbacks (a non-finite direction is a skipped step, not a fallback).
FALLBACK_EVENTS = ["jitter_steps", "cholesky_fallback_steps", "shift_grown_steps"]
SUMMARY_COLUMNS = ID_COLUMNS + [
    "final_l2", "best_l2", "final_rel_l2", "steps", "seconds", "seconds_per_step",
    "median_seconds_per_step", "compile_seconds", "diverged", "reason", "stopped_by",
    "contended", *EVENT_COLUMNS, "fallback_steps", *FIRST_EVENT_COLUMNS, "config_id", "hparams"]
SORT = ["problem", "label", "N", "P", "replicate", "run_id"]
#: Spec keys that differ between replicates of one configuration.
REPLICATE_KEYS = ("replicate", "data_seed", "model_seed")
#: Columns of ``summary_by_config.csv`` that describe a configuration.
CONFIG_COLUMNS = ["config_id", "problem", "label", "display", "optimizer", "solver", "N",
                  "n_interior", "n_boundary", "P"]
BY_CONFIG_COLUMNS = CONFIG_COLUMNS + [
    "replicates", "final_l2_median", "final_l2_min", "final_l2_max", "best_l2_median",
    "steps_median", "seconds_per_step_median", "diverged_replicates", "fallback_steps_max"]


#: Optimizers ranked by the area under their performance profile (pinn_ng.pipeline.scoring).
LEADERBOARD = "leaderboard.md"


class GatherError(UserError):
    """A run record cannot be read (``--strict``), or none can."""


def _ids(meta: dict) -> dict:
    spec = meta["spec"]
    hp = spec.get("hparams") or {}
    solver = hp.get("solver")
    if solver is None and spec["optimizer"] in ("engd_woodbury", "spring"):
        solver = "cholesky"
    return {
        "run_id": meta["run_id"], "problem": spec["problem"], "label": spec["label"],
        "display": spec.get("display") or spec["label"], "optimizer": spec["optimizer"],
        "solver": solver or "", "N": meta["N"], "n_interior": spec["n_interior"],
        "n_boundary": spec["n_boundary"], "P": meta["n_params"],
        "replicate": spec.get("replicate", 0), "data_seed": spec["data_seed"],
        "model_seed": spec["model_seed"],
    }


def config_id(spec: dict) -> str:
    """A short hash of the run specification without replicate and seeds."""
    rest = {k: v for k, v in spec.items() if k not in REPLICATE_KEYS}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:10]


def _events(meta: dict) -> dict:
    """The four event counts, ``fallback_steps`` (their fallback sum) and the first steps.

    A record without ``events`` (written before the loop counted them) gives None (unknown)
    everywhere, never 0.  Within ``events``, an absent key is an event the optimizer cannot
    have (a shift for an exact Cholesky solver; every event for Adam): None in its column, and
    left out of the sum, which is None only if no fallback event is reported at all.
    """
    events = meta.get("events")
    if not isinstance(events, dict):
        return {**dict.fromkeys(EVENT_COLUMNS), "fallback_steps": None,
                **dict.fromkeys(FIRST_EVENT_COLUMNS)}
    out = {k: (int(events[k]) if events.get(k) is not None else None)
           for k in EVENT_COLUMNS + FIRST_EVENT_COLUMNS}
    fallbacks = [out[k] for k in FALLBACK_EVENTS if out[k] is not None]
    out["fallback_steps"] = sum(fallbacks) if fallbacks else None
    return out


def by_config(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: replicates and the spread of the final L2 over them.

    NaN final errors (a run that diverged before its first evaluation) are left out of the
    median / min / max but counted in ``replicates`` and ``diverged_replicates``.
    """
    grouped = summary.groupby(CONFIG_COLUMNS, sort=False, dropna=False)
    out = grouped.agg(
        replicates=("run_id", "size"), final_l2_median=("final_l2", "median"),
        final_l2_min=("final_l2", "min"), final_l2_max=("final_l2", "max"),
        best_l2_median=("best_l2", "median"), steps_median=("steps", "median"),
        seconds_per_step_median=("seconds_per_step", "median"),
        diverged_replicates=("diverged", "sum"),
        fallback_steps_max=("fallback_steps", "max")).reset_index()
    out["diverged_replicates"] = out["diverged_replicates"].astype(int)
    return out[BY_CONFIG_COLUMNS].sort_values(
        ["problem", "label", "N", "P", "config_id"], kind="stable").reset_index(drop=True)


def find_records(runs_dir) -> list[Path]:
    """Complete run records under ``runs_dir`` (incomplete or temporary ones are skipped)."""
    runs_dir = Path(runs_dir)
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and records.is_complete(p))


def read_meta(run_dir) -> dict:
    """A record's ``meta.json``, checked for the keys gather needs; GatherError naming the file."""
    path = Path(run_dir) / records.META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GatherError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise GatherError(f"{path}: not a JSON object")
    missing = [k for k in ("spec", "N", "n_params", "final", "steps", "seconds") if k not in meta]
    if missing:
        raise GatherError(f"{path}: not a run record, missing keys {missing}")
    return meta


def read_curve(run_dir, meta: dict) -> pd.DataFrame:
    """A record's ``curve.csv`` with the columns its ``meta.json`` lists; GatherError naming
    the file (missing, not a CSV table, cut short)."""
    path = Path(run_dir) / records.CURVE
    try:
        curve = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise GatherError(f"{path}: not a readable CSV table "
                          f"({getattr(err, 'strerror', None) or err})") from None
    missing = [c for c in meta.get("columns") or () if c not in curve.columns]
    if missing:
        raise GatherError(f"{path}: missing columns {missing} (a truncated file?)")
    return curve


def gather(runs_dir, out_dir, manifest: dict | None = None, strict: bool = False,
           warn=None) -> dict:
    """Read the records (those of ``manifest`` or all complete ones) and write the tables.

    ``strict``: an unreadable record raises :class:`GatherError`; otherwise it is skipped and
    ``warn(message)`` (default: a line on stderr) names it.
    """
    import sys

    if warn is None:
        warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if manifest is not None:
        exps = manifest.get("experiments") if isinstance(manifest, dict) else None
        if not isinstance(exps, dict):
            raise GatherError("the manifest must be a JSON object {\"experiments\": {name: "
                              "[run ids]}}")
        ids = sorted({rid for rids in exps.values() for rid in rids})
        dirs = [runs_dir / rid for rid in ids]
        missing = [d.name for d in dirs if not records.is_complete(d)]
        if missing:
            raise FileNotFoundError(f"incomplete or missing run records: {missing}")
        membership = [(exp, rid) for exp, rids in exps.items() for rid in rids]
    else:
        if not runs_dir.is_dir():
            raise FileNotFoundError(f"no run records: {runs_dir} is not a directory")
        dirs = find_records(runs_dir)
        membership = [("all", d.name) for d in dirs]

    curves, summary, skipped = [], [], set()
    for d in dirs:
        try:
            meta = read_meta(d)
            curve = read_curve(d, meta)
        except GatherError as err:
            if strict:
                raise GatherError(f"{err} (without --strict it is skipped)") from None
            warn(f"skipping {err}")
            skipped.add(d.name)
            continue
        meta["run_id"] = d.name
        ids = _ids(meta)
        for col, val in reversed(list(ids.items())):
            curve.insert(0, col, val)
        curves.append(curve)
        final = meta["final"]
        summary.append({
            **ids, "final_l2": final["l2"], "best_l2": meta["best_l2"],
            "final_rel_l2": final["rel_l2"], "steps": meta["steps"], "seconds": meta["seconds"],
            "seconds_per_step": meta["seconds_per_step"],
            # the median over steps (robust to a slow first step); absent in older records
            "median_seconds_per_step": meta.get("median_seconds_per_step"),
            "compile_seconds": meta["compile_seconds"], "diverged": meta["diverged"],
            "reason": meta["reason"] or "", "stopped_by": meta["stopped_by"],
            # measured under contention (pinn_ng.pipeline.contention); empty: an older record
            "contended": meta.get("contended"),
            **_events(meta), "config_id": config_id(meta["spec"]),
            "hparams": json.dumps(meta["spec"].get("hparams") or {}, sort_keys=True),
        })
    if not summary:
        raise FileNotFoundError(f"no complete run records under {runs_dir}")
    curves_df = pd.concat(curves, ignore_index=True)
    extra = sorted(c for c in curves_df.columns if c not in ID_COLUMNS
                   and c not in ("step", "time", "loss", "l2", "rms_l2", "rel_l2", "step_size"))
    curves_df = curves_df[ID_COLUMNS + ["step", "time", "loss", "l2", "rms_l2", "rel_l2",
                                        "step_size"] + extra]
    curves_df = curves_df.sort_values(SORT + ["step"], kind="stable").reset_index(drop=True)
    summary_df = pd.DataFrame(summary)[SUMMARY_COLUMNS].sort_values(SORT, kind="stable")
    for col in EVENT_COLUMNS + ["fallback_steps"]:  # integers, empty where unknown
        summary_df[col] = summary_df[col].astype("Int64")
    # time and steps to each target (pinn_ng.pipeline.scoring): columns after the others
    targets = scoring.resolve_targets(curves_df, (manifest or {}).get("targets"))
    by_run = dict(list(curves_df.groupby("run_id", sort=False)))
    none = {"targets": [], "metric": "l2", "source": "no evaluations"}
    scores = pd.DataFrame([  # a run without evaluations (failed) reaches no target
        {"run_id": rid, **scoring.run_columns(by_run.get(rid, curves_df.iloc[:0]),
                                              targets.get(problem, none))}
        for rid, problem in zip(summary_df.run_id, summary_df.problem)])
    columns = ["target_metric"] + [col for t in sorted(
        {t for spec in targets.values() for t in spec["targets"]}, reverse=True)
        for col in (scoring.seconds_column(t), scoring.steps_column(t))]
    summary_df = summary_df.merge(scores.reindex(columns=["run_id"] + columns),
                                  on="run_id", how="left")
    config_df = by_config(summary_df)
    from .config import experiment_kind

    membership = [(e, rid) for e, rid in membership if rid not in skipped]
    exp_df = pd.DataFrame(membership, columns=["experiment", "run_id"]).sort_values(
        ["experiment", "run_id"], kind="stable")
    exp_df.insert(1, "kind", [experiment_kind(e) if e != "all" else "all"
                              for e in exp_df.experiment])

    out = {"curves": out_dir / "curves.csv", "summary": out_dir / "summary.csv",
           "summary_by_config": out_dir / "summary_by_config.csv",
           "experiments": out_dir / "experiments.csv"}
    for key, df in (("curves", curves_df), ("summary", summary_df),
                    ("summary_by_config", config_df), ("experiments", exp_df)):
        records.atomic_write_text(out[key], df.to_csv(index=False, float_format="%.17g"))
    out["leaderboard"] = out_dir / LEADERBOARD
    records.atomic_write_text(out["leaderboard"], scoring.leaderboard_markdown(
        summary_df, exp_df, curves_df, targets))
    return {k: str(v) for k, v in out.items()}
