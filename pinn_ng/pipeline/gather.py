"""``pinn-ng gather``: run records -> tidy tables (pandas).

- ``curves.csv``: every evaluation row of every run, one row per (run, step), with the run's
  identifying columns in front (tidy: one observation per row).
- ``summary.csv``: one row per run, i.e. per problem × optimizer × N × P × replicate: final and
  best L2, steps done, seconds per step, compile seconds, diverged and why.
- ``experiments.csv``: which run belongs to which experiment (a run may serve several).

Only complete records (``meta.json`` present) are read.  Rows are sorted, so gathering the same
records twice gives byte-identical tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import records

#: Columns that identify a run, in front of every table.
ID_COLUMNS = ["run_id", "problem", "label", "display", "optimizer", "solver", "N",
              "n_interior", "n_boundary", "P", "replicate", "data_seed", "model_seed"]
SUMMARY_COLUMNS = ID_COLUMNS + [
    "final_l2", "best_l2", "final_rel_l2", "steps", "seconds", "seconds_per_step",
    "compile_seconds", "diverged", "reason", "stopped_by", "hparams"]
SORT = ["problem", "label", "N", "P", "replicate", "run_id"]


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


def find_records(runs_dir) -> list[Path]:
    """Complete run records under ``runs_dir`` (incomplete or temporary ones are skipped)."""
    runs_dir = Path(runs_dir)
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and records.is_complete(p))


def gather(runs_dir, out_dir, manifest: dict | None = None) -> dict:
    """Read the records (those of ``manifest`` or all complete ones) and write the tables."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if manifest is not None:
        ids = sorted({rid for rids in manifest["experiments"].values() for rid in rids})
        dirs = [runs_dir / rid for rid in ids]
        missing = [d.name for d in dirs if not records.is_complete(d)]
        if missing:
            raise FileNotFoundError(f"incomplete or missing run records: {missing}")
        membership = [(exp, rid) for exp, rids in manifest["experiments"].items()
                      for rid in rids]
    else:
        dirs = find_records(runs_dir)
        membership = [("all", d.name) for d in dirs]

    curves, summary = [], []
    for d in dirs:
        meta = json.loads((d / records.META).read_text())
        meta["run_id"] = d.name
        ids = _ids(meta)
        curve = pd.read_csv(d / records.CURVE)
        for col, val in reversed(list(ids.items())):
            curve.insert(0, col, val)
        curves.append(curve)
        final = meta["final"]
        summary.append({
            **ids, "final_l2": final["l2"], "best_l2": meta["best_l2"],
            "final_rel_l2": final["rel_l2"], "steps": meta["steps"], "seconds": meta["seconds"],
            "seconds_per_step": meta["seconds_per_step"],
            "compile_seconds": meta["compile_seconds"], "diverged": meta["diverged"],
            "reason": meta["reason"] or "", "stopped_by": meta["stopped_by"],
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
    from .config import experiment_kind

    exp_df = pd.DataFrame(membership, columns=["experiment", "run_id"]).sort_values(
        ["experiment", "run_id"], kind="stable")
    exp_df.insert(1, "kind", [experiment_kind(e) if e != "all" else "all"
                              for e in exp_df.experiment])

    out = {"curves": out_dir / "curves.csv", "summary": out_dir / "summary.csv",
           "experiments": out_dir / "experiments.csv"}
    for key, df in (("curves", curves_df), ("summary", summary_df), ("experiments", exp_df)):
        records.atomic_write_text(out[key], df.to_csv(index=False, float_format="%.17g"))
    return {k: str(v) for k, v in out.items()}
