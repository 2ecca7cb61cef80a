"""The paper authors' own training curves: their best runs' logged histories, read as ours.

The histories live in the repository's ``results/reference/paper/`` (:data:`DEFAULT_DIR`;
``--paper-dir`` elsewhere): one CSV per run (``step, time, l2_error, loss[, loss_interior,
loss_boundary]``) and ``runs.csv``, one row per file (its run id, optimizer, equation,
``dim_Omega``, net, batch, line search, command).  That directory's README says where they
come from and what to watch for.

**Which of ours.**  Each history's problem name and optimizer label are derived from
``runs.csv`` (:data:`EQUATIONS`: ``equation`` and ``dim_Omega`` give ``poisson5d``,
``heat10d``, ``logfp9d`` …; :data:`OPTIMIZERS`: ``ENGD-W`` gives ``engd_w`` …).  One of our
runs has a history when its (problem, label) is a history's, or when its label is in
:data:`ALIASES`: labels that run one of the paper's optimizers with other settings (SPRING at
the μ of the paper's text) and are read against that optimizer's logged run.  No other label
maps: ``engd_w_fixed`` (fixed step size) is another method than the logged line-search run.

**Equal steps.**  Our step s is the state after s updates (step 0: the untrained net).  A
logged row ``step`` k is after k + 1 updates (the authors' plot scripts draw ``step + 1``), so
our step s is their row s − 1: :func:`load_history` adds that as ``our_step``.  No logged row
holds the untrained net.  The logs are sparse (denser early): :func:`l2_at` gives the logged
value where there is one, between two logged rows a linear interpolation in (log step, log L2)
(the curves are near straight lines on the log-log axes they are read on), and NaN before the
first or after the last logged row; its ``paper_at`` column says which.

A missing directory, a missing file or a malformed one is a :class:`PaperDataError`: one
line from ``pinn-ng``, exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError

#: The repository's copy of the histories (present in a checkout, not in an installed wheel).
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "results" / "reference" / "paper"

#: ``runs.csv``'s ``equation`` -> the stem of our problem names (problem: stem + dim + "d").
EQUATIONS = {"poisson": "poisson", "heat": "heat", "log-fokker-planck-isotropic": "logfp"}

#: ``runs.csv``'s ``optimizer`` -> our optimizer label (config/default.yaml's labels).
OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "HessianFree": "hessian_free", "ENGD": "engd",
              "ENGD-W": "engd_w", "SPRING": "spring"}

#: Our labels read against another label's history: SPRING at the paper's text μ (0.3115),
#: where the logged 5d SPRING run used μ = 0.0633.
ALIASES = {"spring_mu_text": "spring"}

#: The columns of ``runs.csv`` this module reads.
RUNS_COLUMNS = ("file", "run", "optimizer", "equation", "dim_Omega", "model", "N_Omega",
                "N_dOmega", "line_search")

#: The optional file of human-written explanations, ``problem: {label: text}``.
EXPLANATIONS = "explanations.yaml"


class PaperDataError(UserError):
    """The paper's histories are missing or malformed (the message names the file)."""


def paper_dir(path=None) -> Path:
    """The histories' directory: ``path``, or :data:`DEFAULT_DIR`; it must exist."""
    d = Path(path) if path is not None else DEFAULT_DIR
    if not d.is_dir():
        raise PaperDataError(f"paper histories: no directory {d} (give the directory holding "
                             "runs.csv with --paper-dir)")
    return d


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PaperDataError(f"paper histories: {path}: no such file")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PaperDataError(f"paper histories: {path}: not a CSV table ({err})") from None


def history_label(label: str) -> str | None:
    """The optimizer label whose history ``label`` is read against, or None."""
    label = ALIASES.get(label, label)
    return label if label in OPTIMIZERS.values() else None


def load_index(path=None) -> pd.DataFrame:
    """``runs.csv`` with our ``problem`` and ``label`` of each history and its ``path``."""
    d = paper_dir(path)
    runs_csv = d / "runs.csv"
    runs = _read_csv(runs_csv)
    missing = [c for c in RUNS_COLUMNS if c not in runs]
    if missing:
        raise PaperDataError(f"paper histories: {runs_csv} lacks the columns {missing} "
                             f"(needs {list(RUNS_COLUMNS)})")
    problems, labels = [], []
    for i, row in runs.iterrows():
        where = f"paper histories: {runs_csv}, row {i + 2}"
        if row["equation"] not in EQUATIONS:
            raise PaperDataError(f"{where}: equation {row['equation']!r} has no problem of "
                                 f"ours; known: {sorted(EQUATIONS)}")
        if row["optimizer"] not in OPTIMIZERS:
            raise PaperDataError(f"{where}: optimizer {row['optimizer']!r} has no label of "
                                 f"ours; known: {sorted(OPTIMIZERS)}")
        try:
            dim = int(row["dim_Omega"])
        except (TypeError, ValueError):
            raise PaperDataError(f"{where}: dim_Omega {row['dim_Omega']!r} is not an "
                                 "integer") from None
        problems.append(f"{EQUATIONS[row['equation']]}{dim}d")
        labels.append(OPTIMIZERS[row["optimizer"]])
    index = runs.assign(problem=problems, label=labels,
                        path=[d / str(f) for f in runs["file"]])
    twice = index[index.duplicated(["problem", "label"], keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise PaperDataError(f"paper histories: {runs_csv}: several histories for "
                             f"({first['problem']}, {first['label']}): "
                             f"{sorted(twice.loc[twice.problem == first['problem'], 'file'])}")
    return index


def find(index: pd.DataFrame, problem: str, label: str):
    """The ``index`` row of the history ``(problem, label)`` is read against, or None."""
    label = history_label(label)
    sel = index[(index["problem"] == problem) & (index["label"] == label)]
    return None if sel.empty else sel.iloc[0]


def load_history(entry) -> pd.DataFrame:
    """The history of an :func:`load_index` row, with ``our_step`` = logged ``step`` + 1."""
    path = Path(entry["path"])
    hist = _read_csv(path)
    for col in ("step", "l2_error"):
        if col not in hist:
            raise PaperDataError(f"paper histories: {path} lacks the column {col!r}")
    step = pd.to_numeric(hist["step"], errors="coerce").to_numpy(float)
    l2 = pd.to_numeric(hist["l2_error"], errors="coerce").to_numpy(float)
    if not len(step) or not np.isfinite(step).all() or (step < 0).any() \
            or (step != np.round(step)).any() or (np.diff(step) <= 0).any():
        raise PaperDataError(f"paper histories: {path}: 'step' must be non-negative "
                             "integers, increasing")
    if not (np.isfinite(l2) & (l2 > 0)).all():
        raise PaperDataError(f"paper histories: {path}: 'l2_error' must be positive numbers")
    return hist.assign(step=step.astype(int), l2_error=l2, our_step=step.astype(int) + 1)


def l2_at(history: pd.DataFrame, steps) -> pd.DataFrame:
    """The paper's L2 error at our ``steps`` (after that many updates).

    Columns ``step``, ``paper_l2`` and ``paper_at``: ``"logged"`` (a logged row),
    ``"interpolated"`` (log-log between the neighbouring logged rows), ``"before the log"`` or
    ``"after the log"`` (NaN).
    """
    x = history["our_step"].to_numpy(float)
    y = history["l2_error"].to_numpy(float)
    logy = np.log(y)
    out = []
    for s in np.asarray(steps, float).ravel():
        j = int(np.searchsorted(x, s))
        if j < len(x) and x[j] == s:
            out.append((float(y[j]), "logged"))
        elif s < x[0]:
            out.append((np.nan, "before the log"))
        elif s > x[-1]:
            out.append((np.nan, "after the log"))
        else:
            t = (np.log(s) - np.log(x[j - 1])) / (np.log(x[j]) - np.log(x[j - 1]))
            out.append((float(np.exp(logy[j - 1] + t * (logy[j] - logy[j - 1]))),
                        "interpolated"))
    return pd.DataFrame({"step": np.asarray(steps).ravel(),
                         "paper_l2": [v for v, _ in out], "paper_at": [a for _, a in out]})


def explanations(path=None) -> dict:
    """``problem -> {label: text}`` from the directory's :data:`EXPLANATIONS` ({} if absent)."""
    import yaml

    f = paper_dir(path) / EXPLANATIONS
    if not f.is_file():
        return {}
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PaperDataError(f"paper histories: {f}: not YAML ({' '.join(str(err).split())})"
                             ) from None
    data = {} if data is None else data
    ok = isinstance(data, dict) and all(
        isinstance(v, dict) and all(isinstance(t, str) for t in v.values())
        for v in data.values())
    if not ok:
        raise PaperDataError(f"paper histories: {f}: expected a mapping problem: "
                             "{label: text}")
    return {str(p): {str(k): t.strip() for k, t in v.items()} for p, v in data.items()}
