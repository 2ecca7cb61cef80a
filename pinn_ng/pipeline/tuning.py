"""The tuning stage: search spaces as data, seeded trial tables, selection of the best trial.

The paper tuned every optimizer on every problem (about 50 + 50 random-search trials each,
ranked by the L2 error at the end of an equal wall-clock budget).  Here a preset's ``tuning``
section holds the same protocol as data:

- ``tuning.spaces.<label>``: the search space of an optimizer configuration (a label under
  ``optimizers``; its own ``hparams`` are the fixed ones, e.g. ``learning_rate: line_search``),
  ``space: {hyper-parameter: distribution}`` plus ``per_problem`` spaces that replace single
  hyper-parameters on one problem.  A distribution is one of ``loguniform: [lo, hi]``,
  ``uniform: [lo, hi]``, ``int: [lo, hi]`` (both ends included) or ``choice: [v1, v2, …]``.
- ``tuning.studies.<study>``: problems × optimizer labels × batch sizes, each pair one
  *search*, with its trial counts ``trials: [stage 1, stage 2]`` and a budget.

**Draws.**  A space whose every hyper-parameter is a ``choice`` is a *grid*: stage 1 enumerates
its full product in a fixed order (the paper's ENGD and Hessian-free sweeps) and there is no
stage 2.  Any other space is sampled by a scrambled Sobol sequence (``scipy.stats.qmc``), one
dimension per hyper-parameter, seeded from (search seed, problem, optimizer label, N, stage) by
SHA-256 (:func:`search_seed`): never a global RNG, never Python's salted ``hash()``.  A Sobol
point ``u`` in [0, 1) maps to ``lo·(hi/lo)^u`` (log-uniform), ``lo + u·(hi − lo)`` (uniform),
``lo + ⌊u·(hi − lo + 1)⌋`` (int) or the ``⌊u·k⌋``-th of k choices.  Continuous values are
rounded to :data:`SIGNIFICANT_DIGITS` significant digits, so that the table does not depend on
the last bit of a platform's ``pow``: the same seed gives a bit-identical ``trials.csv`` on any
machine, in any process, whatever the scheduling order.

**Stage 2** narrows each continuous or integer range around the ``top`` best stage-1 trials
(default 3): ±``log_decades`` decades on a log scale (default 1), ±``linear_fraction`` of the
range on a linear one (default 25 %), clipped to stage 1's range; a choice keeps the values of
those trials.  It draws its own Sobol points (stage 2 in the seed).  With no finite stage-1
trial, stage 2 searches stage 1's space again.

**Selection** (:func:`select`): a trial scores its final L2 error (the paper's metric); a
trial that diverged or failed (an exception, an out-of-memory, a crashed process: a record with
``status`` ``diverged`` or ``failed``), or whose final L2 is not finite, scores +∞.  Ties are
broken by the final loss, then by the trial's place in the table (stage, index).  A best value
within :data:`EDGE_FRACTION` of an edge of its stage-1 range (in log10 on log scales) is
flagged: the space should be widened.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import records
from .errors import UserError

#: The distributions of a search space, as written in a preset.
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
#: Drawn continuous values keep this many significant digits (platform-independent tables).
SIGNIFICANT_DIGITS = 6
#: A best value this close to an edge of its range (as a fraction of the range) is flagged.
EDGE_FRACTION = 0.05
#: Defaults of a study's ``narrow`` block (stage 2).
NARROW_DEFAULTS = {"top": 3, "log_decades": 1.0, "linear_fraction": 0.25}
#: The figures of a study (``figures/<name>_<study>.png``).
FIGURES = ("sensitivity", "best_so_far")
#: Columns of ``trials.csv`` in front of one column per tuned hyper-parameter.
TRIAL_COLUMNS = ["trial_id", "problem", "label", "optimizer", "N", "stage", "index"]


class TuningError(UserError):
    """A search space, a study, a trial table or a best.json is invalid; one line."""


@dataclass(frozen=True)
class Dim:
    """One tuned hyper-parameter: its distribution and range (or choices)."""

    name: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # (lo, hi) for loguniform/uniform/int, the choices for choice

    @property
    def lo(self):
        return self.values[0]

    @property
    def hi(self):
        return self.values[-1]

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def to_json(self) -> dict:
        return {self.kind: list(self.values)}

    def describe(self) -> str:
        """As the paper's appendix writes a space: LU[1e-10, 1e-3], U[0, 0.999], {…}."""
        if self.kind == "choice":
            return "{" + ", ".join(_fmt_value(v) for v in self.values) + "}"
        tag = {"loguniform": "LU", "uniform": "U", "int": "int"}[self.kind]
        return f"{tag}[{_fmt_value(self.lo)}, {_fmt_value(self.hi)}]"


def _fmt_value(v) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_dim(name: str, dist, where: str) -> Dim:
    """A :class:`Dim` from ``{kind: [...]}``; :class:`TuningError` naming ``where`` otherwise."""
    if not isinstance(dist, dict) or len(dist) != 1:
        raise TuningError(f"{where}.{name}: a distribution is one of "
                          f"{', '.join(f'{k}: [...]' for k in DISTRIBUTIONS)}, got {dist!r}")
    (kind, values), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise TuningError(f"{where}.{name}: unknown distribution {kind!r}; valid: "
                          f"{list(DISTRIBUTIONS)}")
    if not isinstance(values, (list, tuple)):
        raise TuningError(f"{where}.{name}.{kind}: expected a list, got {values!r}")
    values = tuple(values)
    if kind == "choice":
        if not values:
            raise TuningError(f"{where}.{name}.choice: give at least one value")
        if len(set(map(json.dumps, values))) != len(values):
            raise TuningError(f"{where}.{name}.choice: repeated values in {list(values)}")
        return Dim(name, kind, values)
    if len(values) != 2:
        raise TuningError(f"{where}.{name}.{kind}: expected [lo, hi], got {list(values)}")
    lo, hi = values
    if kind == "int":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TuningError(f"{where}.{name}.int: lo and hi must be integers, got "
                              f"{list(values)}")
    elif not (_is_number(lo) and _is_number(hi)):
        raise TuningError(f"{where}.{name}.{kind}: lo and hi must be finite numbers, got "
                          f"{list(values)}")
    if not lo < hi:
        raise TuningError(f"{where}.{name}.{kind}: lo must be below hi, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise TuningError(f"{where}.{name}.loguniform: lo must be > 0, got {lo}")
    if kind != "int":
        values = (float(lo), float(hi))
    return Dim(name, kind, values)


def parse_space(space: dict, where: str) -> tuple[Dim, ...]:
    """The dimensions of ``{name: distribution}``, in the preset's order."""
    if not isinstance(space, dict) or not space:
        raise TuningError(f"{where}: a space maps hyper-parameter names to distributions, "
                          f"got {space!r}")
    return tuple(parse_dim(name, dist, where) for name, dist in space.items())


def space_json(dims) -> dict:
    return {d.name: d.to_json() for d in dims}


def is_grid(dims) -> bool:
    """Every hyper-parameter a choice: the space is enumerated, not sampled."""
    return all(d.kind == "choice" for d in dims)


def grid_size(dims) -> int:
    return math.prod(len(d.values) for d in dims)


def search_seed(seed: int, problem: str, label: str, n: int, stage: int) -> int:
    """A 63-bit seed from (search seed, problem, optimizer label, N, stage) by SHA-256: the
    same on every machine and in every process (unlike ``hash()``, salted per process)."""
    key = json.dumps([int(seed), str(problem), str(label), int(n), int(stage)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def _round(v: float) -> float:
    return float(f"{v:.{SIGNIFICANT_DIGITS - 1}e}")


def _map(dim: Dim, u: float):
    """Sobol coordinate ``u`` in [0, 1) -> a value of ``dim``."""
    if dim.kind == "choice":
        return dim.values[min(int(u * len(dim.values)), len(dim.values) - 1)]
    if dim.kind == "int":
        return min(dim.lo + int(u * (dim.hi - dim.lo + 1)), dim.hi)
    if dim.kind == "loguniform":
        v = math.exp(math.log(dim.lo) + u * (math.log(dim.hi) - math.log(dim.lo)))
    else:
        v = dim.lo + u * (dim.hi - dim.lo)
    return min(max(_round(v), dim.lo), dim.hi)


def sobol_points(d: int, n: int, seed: int):
    """The first ``n`` points of a scrambled Sobol sequence in [0, 1)^d, seeded by ``seed``."""
    import numpy as np
    from scipy.stats import qmc

    if n <= 0:
        return np.zeros((0, d))
    sampler = qmc.Sobol(d, scramble=True, rng=np.random.default_rng(seed))
    # 2^m points keep Sobol's balance; the first n of them are a prefix of the sequence, so a
    # study that grows from n to n' trials keeps its first n trials.
    points = sampler.random_base2(max(0, math.ceil(math.log2(n))))
    return points[:n]


def draw(dims, n: int, seed: int) -> list[dict]:
    """``n`` configurations of the space ``dims``: a grid's full product (``n`` ignored), else
    Sobol points seeded by ``seed``."""
    dims = tuple(dims)
    if is_grid(dims):
        return [dict(zip((d.name for d in dims), combo))
                for combo in itertools.product(*(d.values for d in dims))]
    pts = sobol_points(len(dims), n, seed)
    return [{d.name: _map(d, float(u)) for d, u in zip(dims, row)} for row in pts]


def narrow(dims, best: list[dict], opts: dict | None = None) -> tuple[Dim, ...]:
    """Stage 2's space: ``dims`` narrowed around the configurations ``best`` (see module)."""
    opts = {**NARROW_DEFAULTS, **(opts or {})}
    if not best:
        return tuple(dims)
    out = []
    for d in dims:
        vals = [b[d.name] for b in best]
        if d.kind == "choice":
            keep = [v for v in d.values if any(json.dumps(v) == json.dumps(w) for w in vals)]
            out.append(Dim(d.name, "choice", tuple(keep)))
        elif d.kind == "loguniform":
            f = 10.0 ** float(opts["log_decades"])
            lo, hi = max(d.lo, _round(min(vals) / f)), min(d.hi, _round(max(vals) * f))
            out.append(Dim(d.name, d.kind, (lo, hi) if lo < hi else (d.lo, d.hi)))
        else:
            width = float(opts["linear_fraction"]) * (d.hi - d.lo)
            lo, hi = min(vals) - width, max(vals) + width
            if d.kind == "int":
                lo, hi = max(d.lo, math.floor(lo)), min(d.hi, math.ceil(hi))
            else:
                lo, hi = max(d.lo, _round(lo)), min(d.hi, _round(hi))
            out.append(Dim(d.name, d.kind, (lo, hi) if lo < hi else (d.lo, d.hi)))
    return tuple(out)


# ------------------------------------------------------------------------------ studies


@dataclass
class Search:
    """One (problem, optimizer label, N) of a study: its space, trial counts, base run spec."""

    problem: str
    label: str
    optimizer: str
    n: int
    dims: tuple
    base: dict  # a run spec without the tuned hyper-parameters
    trials: tuple  # (stage 1, stage 2) counts as given in the preset

    @property
    def key(self) -> str:
        return f"{self.problem}_{self.label}_N{self.n}"

    def n_trials(self, stage: int) -> int:
        """Trials of a stage: a grid's size in stage 1 and none in stage 2."""
        if is_grid(self.dims):
            return grid_size(self.dims) if stage == 1 else 0
        return int(self.trials[stage - 1]) if stage <= len(self.trials) else 0

    def trial_id(self, stage: int, index: int) -> str:
        return f"{self.key}_s{stage}_{index:03d}"

    def to_json(self) -> dict:
        return {"problem": self.problem, "label": self.label, "optimizer": self.optimizer,
                "N": self.n, "space": space_json(self.dims), "base": self.base,
                "trials": list(self.trials)}

    @classmethod
    def from_json(cls, d: dict) -> "Search":
        return cls(d["problem"], d["label"], d["optimizer"], int(d["N"]),
                   parse_space(d["space"], f"search {d['problem']}/{d['label']}"),
                   d["base"], tuple(d["trials"]))


@dataclass
class Study:
    """A study of a preset: its searches, seed and stage-2 options (``study.json``)."""

    name: str
    seed: int
    searches: list = field(default_factory=list)
    narrow: dict = field(default_factory=lambda: dict(NARROW_DEFAULTS))

    @property
    def stages(self) -> list[int]:
        return [1, 2] if any(s.n_trials(2) for s in self.searches) else [1]

    def trial_ids(self, stage: int) -> list[str]:
        return [s.trial_id(stage, i) for s in self.searches for i in range(s.n_trials(stage))]

    def search(self, problem: str, label: str, n: int) -> Search:
        for s in self.searches:
            if (s.problem, s.label, s.n) == (problem, label, int(n)):
                return s
        raise TuningError(f"study {self.name!r} has no search of {label!r} on {problem!r} at "
                          f"N = {n}; searches: {[s.key for s in self.searches]}")

    def to_json(self) -> dict:
        return {"study": self.name, "search_seed": self.seed, "narrow": self.narrow,
                "searches": [s.to_json() for s in self.searches]}

    @classmethod
    def from_json(cls, d: dict) -> "Study":
        return cls(d["study"], int(d["search_seed"]), [Search.from_json(s) for s in
                                                        d["searches"]],
                   {**NARROW_DEFAULTS, **(d.get("narrow") or {})})


def load_study(path) -> Study:
    try:
        return Study.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TuningError(f"{path}: not a study file written by the pipeline ({err})") from None


def estimate_hours(study: Study) -> dict:
    """Budget seconds of every trial, in hours, per problem (None where budgets are in steps
    only)."""
    out = {}
    for s in study.searches:
        seconds = s.base.get("max_seconds")
        n = s.n_trials(1) + s.n_trials(2)
        prev = out.get(s.problem, 0.0)
        out[s.problem] = None if seconds is None or prev is None else prev + n * seconds / 3600
    return out


# ------------------------------------------------------------------------------ trial tables


def _csv_value(v) -> str:
    return json.dumps(v) if isinstance(v, (bool, str)) or v is None else repr(v)


def trial_rows(study: Study, stage: int, stage1_best: dict | None = None) -> list[dict]:
    """The rows of ``stage``'s trial table.  ``stage1_best``: search key -> the best stage-1
    configurations (stage 2 narrows around them)."""
    rows = []
    for s in study.searches:
        n = s.n_trials(stage)
        if not n:
            continue
        dims = s.dims if stage == 1 else narrow(s.dims, (stage1_best or {}).get(s.key, []),
                                                 study.narrow)
        configs = draw(dims, n, search_seed(study.seed, s.problem, s.label, s.n, stage))
        for i, cfg in enumerate(configs):
            spec = copy.deepcopy(s.base)
            spec["hparams"] = {**spec.get("hparams", {}), **cfg}
            rows.append({"trial_id": s.trial_id(stage, i), "problem": s.problem,
                         "label": s.label, "optimizer": s.optimizer, "N": s.n, "stage": stage,
                         "index": i, "tuned": cfg, "space": space_json(dims), "spec": spec})
    return rows


def trials_csv(rows: list[dict]) -> str:
    """The trial table as text: one column per tuned hyper-parameter (JSON-typed values), the
    space each trial was drawn from and its full run spec (sorted-key JSON)."""
    names = []
    for r in rows:
        names += [k for k in r["tuned"] if k not in names]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + names + ["space", "spec"])
    for r in rows:
        w.writerow([r[c] for c in TRIAL_COLUMNS]
                   + [_csv_value(r["tuned"][k]) if k in r["tuned"] else "" for k in names]
                   + [json.dumps(r["space"], sort_keys=True),
                      json.dumps(r["spec"], sort_keys=True)])
    return buf.getvalue()


def read_trials(path) -> list[dict]:
    """Rows of a ``trials.csv``: trial_id, …, ``tuned`` (dict), ``space`` and ``spec``."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            names = [c for c in reader.fieldnames or [] if c not in TRIAL_COLUMNS
                     and c not in ("space", "spec")]
            out = []
            for row in reader:
                out.append({"trial_id": row["trial_id"], "problem": row["problem"],
                            "label": row["label"], "optimizer": row["optimizer"],
                            "N": int(row["N"]), "stage": int(row["stage"]),
                            "index": int(row["index"]),
                            "tuned": {k: json.loads(row[k]) for k in names if row[k] != ""},
                            "space": json.loads(row["space"]), "spec": json.loads(row["spec"])})
            return out
    except (OSError, KeyError, ValueError) as err:
        raise TuningError(f"{path}: not a trial table written by `pinn-ng tune trials` "
                          f"({err})") from None


def trial(path, trial_id: str) -> dict:
    for row in read_trials(path):
        if row["trial_id"] == trial_id:
            return row
    raise TuningError(f"{path}: no trial {trial_id!r}")


def best_configs(rows: list[dict], metas: dict, top: int) -> dict:
    """Search key -> the tuned values of its ``top`` best finished trials (by :func:`score`)."""
    by_search = {}
    for r in rows:
        by_search.setdefault(f"{r['problem']}_{r['label']}_N{r['N']}", []).append(r)
    out = {}
    for key, rs in by_search.items():
        ranked = sorted(rs, key=lambda r: score_key(r, metas[r["trial_id"]]))
        out[key] = [r["tuned"] for r in ranked[:top]
                    if math.isfinite(score_key(r, metas[r["trial_id"]])[0])]
    return out


def write_trials(study_path, stage: int, out, stage1_table=None, stage1_runs=None) -> str:
    """Write ``stage``'s trial table to ``out`` (atomically).  Stage 2 reads stage 1's table
    and run records to narrow around its best trials."""
    study = load_study(study_path)
    best = None
    if stage == 2:
        if stage1_table is None or stage1_runs is None:
            raise TuningError("stage 2 needs the stage-1 trial table and run records")
        rows1 = read_trials(stage1_table)
        metas = {r["trial_id"]: read_outcome(Path(stage1_runs) / r["trial_id"]) for r in rows1}
        best = best_configs(rows1, metas, int(study.narrow["top"]))
    records.atomic_write_text(out, trials_csv(trial_rows(study, stage, best)))
    return str(out)


# ------------------------------------------------------------------------------ outcomes


def read_outcome(run_dir) -> dict:
    """What selection needs from a trial's run record: status, final L2, final loss, steps."""
    run_dir = Path(run_dir)
    if not records.is_complete(run_dir):
        raise FileNotFoundError(f"{run_dir}: no complete run record (run the trial first)")
    meta = json.loads((run_dir / records.META).read_text(encoding="utf-8"))
    loss = math.nan
    with open(run_dir / records.CURVE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and rows[-1].get("loss") not in (None, ""):
        loss = float(rows[-1]["loss"])
    status = meta.get("status") or ("diverged" if meta.get("diverged") else "finished")
    l2 = (meta.get("final") or {}).get("l2")
    return {"status": status, "final_l2": math.nan if l2 is None else float(l2),
            "final_loss": loss, "steps": meta.get("steps"), "seconds": meta.get("seconds"),
            "reason": meta.get("reason") or ""}


def score(outcome: dict) -> float:
    """The final L2 error; +∞ for a diverged or failed trial or a non-finite error."""
    l2 = outcome["final_l2"]
    if outcome["status"] != "finished" or not math.isfinite(l2):
        return math.inf
    return l2


def score_key(row: dict, outcome: dict) -> tuple:
    """Sort key of a trial: score, then final loss, then the trial's place in the table."""
    loss = outcome["final_loss"]
    return (score(outcome), loss if math.isfinite(loss) else math.inf, row["stage"],
            row["index"])


def edge_warnings(dims, tuned: dict) -> list[str]:
    """Best values within EDGE_FRACTION of an edge of their (stage-1) range."""
    out = []
    for d in dims:
        if d.kind == "choice" or d.name not in tuned:
            continue
        v = tuned[d.name]
        if d.log:
            pos = (math.log10(v) - math.log10(d.lo)) / (math.log10(d.hi) - math.log10(d.lo))
        else:
            pos = (v - d.lo) / (d.hi - d.lo)
        for edge, near in (("lower", pos <= EDGE_FRACTION), ("upper", pos >= 1 - EDGE_FRACTION)):
            if near:
                out.append(f"{d.name} = {_fmt_value(v)} lies within {EDGE_FRACTION:.0%} of the "
                           f"{edge} edge of {d.describe()}: widen the space")
    return out


def select(study_path, tables: list, runs_dirs: list) -> tuple[dict, list[dict]]:
    """Rank every search's trials; return ``(best, results)``: the content of ``best.json``
    and one result row per trial (tuned values, outcome, score)."""
    study = load_study(study_path)
    rows = [r for t in tables for r in read_trials(t)]
    by_stage = dict(zip(sorted({r["stage"] for r in rows}), runs_dirs))
    results, searches = [], []
    for s in study.searches:
        mine = [r for r in rows if (r["problem"], r["label"], r["N"]) == (s.problem, s.label,
                                                                           s.n)]
        outcomes = {r["trial_id"]: read_outcome(Path(by_stage[r["stage"]]) / r["trial_id"])
                    for r in mine}
        ranked = sorted(mine, key=lambda r: score_key(r, outcomes[r["trial_id"]]))
        for r in mine:
            o = outcomes[r["trial_id"]]
            results.append({"study": study.name, **{k: r[k] for k in TRIAL_COLUMNS},
                            "tuned": r["tuned"], **o, "score": score(o)})
        best = ranked[0] if ranked and math.isfinite(score(outcomes[ranked[0]["trial_id"]])) \
            else None
        entry = {"problem": s.problem, "label": s.label, "optimizer": s.optimizer, "N": s.n,
                 "display": s.base.get("display") or s.label, "space": space_json(s.dims),
                 "stage2_space": next((r["space"] for r in mine if r["stage"] == 2), None),
                 "trials": len(mine),
                 "failed": sum(1 for r in mine if not math.isfinite(score(
                     outcomes[r["trial_id"]]))),
                 "best": None, "warnings": []}
        if best is not None:
            o = outcomes[best["trial_id"]]
            entry["best"] = {"trial_id": best["trial_id"], "stage": best["stage"],
                             "index": best["index"], "tuned": best["tuned"],
                             "hparams": best["spec"]["hparams"], "final_l2": o["final_l2"],
                             "final_loss": o["final_loss"], "steps": o["steps"]}
            entry["warnings"] = edge_warnings(s.dims, best["tuned"])
        else:
            entry["warnings"] = [f"no trial of {s.label} on {s.problem} finished with a finite "
                                 "L2 error: no best configuration"]
        searches.append(entry)
    return {"study": study.name, "search_seed": study.seed, "searches": searches}, results


def results_csv(results: list[dict]) -> str:
    import pandas as pd

    names = []
    for r in results:
        names += [k for k in r["tuned"] if k not in names]
    # hyper-parameters as in trials.csv (shortest round-trip repr, JSON for names and flags)
    flat = [{**{k: v for k, v in r.items() if k != "tuned"},
             **{f"hp_{k}": _csv_value(r["tuned"][k]) if k in r["tuned"] else ""
                for k in names}} for r in results]
    cols = (["study"] + TRIAL_COLUMNS + [f"hp_{k}" for k in names]
            + ["status", "final_l2", "final_loss", "score", "steps", "seconds", "reason"])
    df = pd.DataFrame(flat, columns=cols).sort_values(["problem", "label", "N", "stage",
                                                       "index"], kind="stable")
    return df.to_csv(index=False, float_format="%.17g")


def table_md(best: dict) -> str:
    """The appendix-style table: per problem and optimizer, each hyper-parameter's search
    space (and stage 2's) and its best value, with a warning where it sits at an edge."""
    lines = [f"# Tuning study `{best['study']}` (search seed {best['search_seed']})", "",
             "Best trial by final L2 at the end of the budget (ties: final loss, then trial "
             "index).  ⚠: the best value lies within 5 % of an edge of its range; widen the "
             "space.", "",
             "| problem | optimizer | N | hyper-parameter | search space | stage 2 | best | "
             "note |", "|---|---|---|---|---|---|---|---|"]
    for s in best["searches"]:
        dims = parse_space(s["space"], "space")
        dims2 = {d.name: d for d in parse_space(s["stage2_space"], "space")} \
            if s["stage2_space"] else {}
        b = s["best"]
        for d in dims:
            note = [w for w in s["warnings"] if w.startswith(d.name + " ")]
            value = _fmt_value(b["tuned"][d.name]) if b else "–"
            lines.append(f"| {s['problem']} | {s['display']} | {s['N']} | {d.name} | "
                         f"{d.describe()} | {dims2[d.name].describe() if d.name in dims2 else '–'}"
                         f" | {value} | {'⚠ ' + note[0] if note else ''} |")
        final = (f"final L2 {b['final_l2']:.3e} (trial {b['trial_id']})" if b
                 else "no finite trial")
        lines.append(f"| {s['problem']} | {s['display']} | {s['N']} | *result* | "
                     f"{s['trials']} trials, {s['failed']} diverged/failed | | {final} | |")
    return "\n".join(lines) + "\n"


def write_selection(study_path, tables, runs_dirs, best_out, table_out, results_out,
                    warn=None) -> dict:
    best, results = select(study_path, tables, runs_dirs)
    records.atomic_write_text(results_out, results_csv(results))
    records.atomic_write_text(best_out, json.dumps(best, indent=1, sort_keys=True) + "\n")
    records.atomic_write_text(table_out, table_md(best))
    for s in best["searches"]:
        for w in s["warnings"]:
            (warn or warnings.warn)(f"study {best['study']}, {s['label']} on {s['problem']} "
                                    f"(N = {s['N']}): {w}")
    return best


def best_hparams(best_path, problem: str, label: str, n: int) -> dict | None:
    """The best trial's full hyper-parameters of one search in ``best.json`` (None: no trial
    finished with a finite error)."""
    try:
        best = json.loads(Path(best_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TuningError(f"{best_path}: cannot read ({err})") from None
    for s in best.get("searches", []):
        if (s["problem"], s["label"], int(s["N"])) == (problem, label, int(n)):
            return None if s["best"] is None else dict(s["best"]["hparams"])
    raise TuningError(f"{best_path}: no search of {label!r} on {problem!r} at N = {n}")
