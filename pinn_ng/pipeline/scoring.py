"""Scoring as a benchmark: target errors, time to target, performance profiles, a leaderboard.

Entries are scored as training-algorithm benchmarks score them (MLCommons AlgoPerf): by the
time each takes to reach fixed target errors, summarised over problems and targets as
performance profiles (Dolan & Moré, "Benchmarking optimization software with performance
profiles", Math. Program. 2002).

- **Targets.**  Each problem has target errors (:func:`resolve_targets`): a preset's
  ``targets: {problem: [...]}`` (``[]``: none), else the paper's published final errors
  (:data:`PAPER_FINAL_L2`), else :data:`DERIVED_DECADES` decades below the problem's initial
  error, rounded to the nearest power of ten.  A problem without an error metric (no exact
  solution and no reference) is scored by its loss instead; ``target_metric`` says which.
- **Time to target** (:func:`time_to_target`): the timed seconds and the steps at the first
  evaluation whose metric is at or below the target; +inf if none is.  Evaluations are every
  ``eval_every`` steps, so that is the resolution.
- **Performance profile** (:func:`profile`): over the (problem, target) pairs, an
  optimizer's time t is its median over replicates (+inf if half or more never reach it),
  its ratio r = t / (the best optimizer's t on that pair), and ρ(τ) the fraction of the pairs
  with r ≤ τ.  Pairs that no optimizer reaches count (ρ < 1 for everyone); pairs reached at
  step 0 (the target lies above the initial error) are left out, they test no optimizer.
- **Area** (:func:`profile_area`): ∫ ρ d(log τ) over τ ∈ [1, :data:`TAU_MAX`], divided by
  log :data:`TAU_MAX`: 1 for the fastest optimizer on every pair, 0 for one that reaches no
  target within :data:`TAU_MAX` × the best time.  The leaderboard ranks by it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: The paper's published final L2 errors (Guzmán-Cordero et al. 2025, section 5 and figures
#: 2, 3: "Headline results"; KFAC and KFAC* from Dangel, Müller & Zeinhofer 2024 as the paper
#: draws them).  Each is a default target of its problem: "reach what this optimizer reached
#: in the paper".  Problems absent here (Poisson 2d and 10d, heat 10d, the raw-scale variants,
#: plugins) have no published final error: their targets are derived (:data:`DERIVED_DECADES`).
PAPER_FINAL_L2 = {
    # Poisson 5d, 7000 s (fig. 2)
    "poisson5d": {"SGD": 5.9e-3, "Adam": 3.1e-3, "Hessian-free": 7.7e-5, "ENGD": 5.7e-5,
                  "SPRING (line search)": 1.1e-6, "ENGD-W": 6.8e-7,
                  "SPRING (fixed η)": 2.6e-7},
    # Poisson 100d (fig. 3)
    "poisson100d": {"KFAC*": 4.3e-3, "SPRING": 3.6e-3},
    # heat 4+1d (fig. 3): KFAC* 2.11e-5; SPRING and KFAC "≈ 1e-5"
    "heat4d": {"KFAC*": 2.11e-5, "SPRING": 1e-5},
    # log-Fokker-Planck 9+1d (fig. 3)
    "logfp9d": {"KFAC": 2.6e-2, "SPRING": 1.5e-3},
}
#: Decades below the initial error of the derived targets: 10^round(log10 e0 − k), e0 the
#: median over the problem's runs of the metric at step 0 (the power of ten nearest to k
#: decades below it).
DERIVED_DECADES = (1, 2, 3)
#: The performance profile's τ range, [1, TAU_MAX] (log scale), also that of its area.
TAU_MAX = 100.0
#: Column prefixes of ``summary.csv``: ``seconds_to_<target>``, ``steps_to_<target>``.
SECONDS, STEPS = "seconds_to_", "steps_to_"


def target_text(target: float) -> str:
    """A target as written in column names: ``1e-03``, ``5.9e-03``, ``2.11e-05``."""
    mantissa, exponent = f"{float(target):.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def seconds_column(target: float) -> str:
    return SECONDS + target_text(target)


def steps_column(target: float) -> str:
    return STEPS + target_text(target)


def metric_of(curve: pd.DataFrame) -> str:
    """``l2`` where the runs have an error metric (some finite L2), else ``loss``."""
    if "l2" in curve and np.isfinite(pd.to_numeric(curve["l2"], errors="coerce")).any():
        return "l2"
    return "loss"


def time_to_target(curve: pd.DataFrame, target: float, metric: str = "l2") -> tuple:
    """``(seconds, steps)`` at the first evaluation (in step order) whose ``metric`` is at or
    below ``target``; ``(inf, inf)`` if none is (a NaN, e.g. after divergence, never is)."""
    c = curve.sort_values("step", kind="stable")
    values = pd.to_numeric(c[metric], errors="coerce").to_numpy(float)
    hit = np.flatnonzero(values <= target)  # NaN compares False
    if not len(hit):
        return math.inf, math.inf
    row = c.iloc[hit[0]]
    return float(row["time"]), float(row["step"])


def derived_targets(initial: float) -> list[float]:
    """:data:`DERIVED_DECADES` decades below ``initial``, each rounded to the nearest power of
    ten."""
    if not (np.isfinite(initial) and initial > 0):
        return []
    return [float(f"1e{round(math.log10(initial) - k)}") for k in DERIVED_DECADES]


def resolve_targets(curves: pd.DataFrame, preset: dict | None = None) -> dict:
    """Per problem of ``curves`` (one row per evaluation, columns ``run_id``, ``problem``,
    ``step``, ``l2``, ``loss``): ``{"targets": [...], "metric": "l2" | "loss", "source":
    text}``, targets in decreasing order (see the module docstring for the three sources)."""
    preset = preset or {}
    out = {}
    for problem, c in curves.groupby("problem", sort=True):
        metric = metric_of(c)
        if problem in preset and preset[problem] is not None:
            targets, source = [float(t) for t in preset[problem]], "preset"
        elif problem in PAPER_FINAL_L2 and metric == "l2":
            targets = list(PAPER_FINAL_L2[problem].values())
            source = "paper: final L2 of " + ", ".join(
                f"{who} {v:.2g}" for who, v in PAPER_FINAL_L2[problem].items())
        else:
            first = c.sort_values("step", kind="stable").groupby("run_id").first()
            initial = float(np.nanmedian(pd.to_numeric(first[metric], errors="coerce")))
            targets = derived_targets(initial)
            source = (f"derived: {', '.join(map(str, DERIVED_DECADES))} decades below the "
                      f"median initial {'L2' if metric == 'l2' else 'loss'} {initial:.2g}, "
                      "rounded to powers of ten")
        out[problem] = {"targets": sorted(set(targets), reverse=True), "metric": metric,
                        "source": source}
    return out


def run_columns(curve: pd.DataFrame, spec: dict) -> dict:
    """The scoring columns of one run: ``target_metric``, then per target of its problem
    (``spec`` from :func:`resolve_targets`) ``seconds_to_<t>`` and ``steps_to_<t>``."""
    out = {"target_metric": spec["metric"]}
    for t in spec["targets"]:
        out[seconds_column(t)], out[steps_column(t)] = time_to_target(curve, t, spec["metric"])
    return out


def target_columns(summary: pd.DataFrame) -> list[tuple[float, str, str]]:
    """``(target, seconds column, steps column)`` of every target column in ``summary``,
    targets in decreasing order."""
    out = []
    for col in summary.columns:
        if col.startswith(SECONDS):
            t = float(col[len(SECONDS):])
            out.append((t, col, steps_column(t)))
    return sorted(out, reverse=True)


def pair_times(summary: pd.DataFrame, by: str = "seconds") -> pd.DataFrame:
    """Time (``by``: ``seconds`` or ``steps``) to each target: one row per (problem, target)
    pair, one column per optimizer label, each the median over the label's replicates."""
    rows = {}
    for t, sec, stp in target_columns(summary):
        col = sec if by == "seconds" else stp
        for problem, s in summary.groupby("problem", sort=True):
            values = pd.to_numeric(s[col], errors="coerce")
            if values.isna().all():  # not a target of this problem
                continue
            med = s.assign(v=values.fillna(math.inf)).groupby("label").v.median()
            rows[(problem, t)] = med
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows).T
    out.index.names = ["problem", "target"]
    return out.sort_index()


def ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Performance ratios r = t / min t per pair (rows); +inf where not reached.  Pairs
    reached at time 0 by the best (at step 0) are dropped; pairs nobody reached stay, all
    +inf."""
    if times.empty:
        return times
    best = times.min(axis=1)
    keep = ~(best <= 0)
    times, best = times[keep], best[keep]
    r = times.div(best.where(np.isfinite(best)), axis=0)
    return r.where(np.isfinite(times), math.inf).fillna(math.inf)


def profile(r: pd.DataFrame, taus) -> pd.DataFrame:
    """ρ(τ) per optimizer (columns) at each τ of ``taus`` (rows): the fraction of pairs with
    ratio ≤ τ."""
    taus = np.asarray(taus, float)
    n = len(r)
    data = {lab: [(r[lab] <= tau).sum() / n if n else math.nan for tau in taus]
            for lab in r.columns}
    return pd.DataFrame(data, index=pd.Index(taus, name="tau"))


def profile_area(r: pd.DataFrame, tau_max: float = TAU_MAX) -> pd.Series:
    """The area under ρ over log τ ∈ [0, log ``tau_max``], divided by log ``tau_max``
    (exact: ρ is a step function; a pair at ratio r adds (log τ_max − log r) / log τ_max / n
    where r ≤ τ_max)."""
    n = len(r)
    span = math.log(tau_max)
    out = {}
    for lab in r.columns:
        x = r[lab].to_numpy(float)
        x = x[x <= tau_max]
        out[lab] = float(np.sum(span - np.log(np.maximum(x, 1.0))) / span / n) if n else math.nan
    return pd.Series(out, name="area")


def scored_runs(summary: pd.DataFrame, experiments: pd.DataFrame) -> tuple:
    """The runs a profile and a leaderboard score: those of the convergence experiments; where
    the tables were gathered without a manifest (experiment ``all``), every run.  Returns
    ``(runs, what)``, ``what`` naming the set."""
    kinds = set(experiments["kind"])
    if "convergence" in kinds:
        ids = set(experiments.loc[experiments["kind"] == "convergence", "run_id"])
        return summary[summary.run_id.isin(ids)], "the convergence experiments' runs"
    if "all" in kinds:
        return summary, "every gathered run"
    return summary.iloc[:0], "no convergence experiment"


def final_metric(summary: pd.DataFrame, curves: pd.DataFrame | None) -> pd.Series:
    """Per run: its final L2 error, or its final loss where it is scored by the loss."""
    out = summary.set_index("run_id").final_l2.astype(float)
    if curves is None or "target_metric" not in summary:
        return out
    loss_runs = set(summary.run_id[summary.target_metric == "loss"])
    if loss_runs:
        c = curves[curves.run_id.isin(loss_runs)].sort_values("step", kind="stable")
        out.update(c.groupby("run_id").loss.last().astype(float))
    return out


def leaderboard(summary: pd.DataFrame, curves: pd.DataFrame | None = None,
                tau_max: float = TAU_MAX) -> pd.DataFrame:
    """One row per optimizer label, best first: profile area (by seconds; by steps beside
    it), pairs reached, and the median final error per problem (``final_<problem>``).  Equal
    areas: more pairs reached first; equal in both: the same rank, in label order."""
    if summary.empty:
        return pd.DataFrame(columns=["rank", "label", "display", "area", "area_steps",
                                     "reached", "pairs"])
    r = ratios(pair_times(summary, "seconds"))
    r_steps = ratios(pair_times(summary, "steps"))
    labels = sorted(set(summary.label))
    display = summary.groupby("label").display.first()
    area = profile_area(r, tau_max) if len(r) else pd.Series(math.nan, index=labels)
    area_steps = profile_area(r_steps, tau_max) if len(r_steps) else area * math.nan
    reached = (np.isfinite(r).sum() if len(r) else pd.Series(0, index=labels))
    final = final_metric(summary, curves)
    rows = []
    for lab in labels:
        row = {"label": lab, "display": display[lab], "area": area.get(lab, math.nan),
               "area_steps": area_steps.get(lab, math.nan),
               "reached": int(reached.get(lab, 0)), "pairs": len(r)}
        for problem, s in summary.groupby("problem", sort=True):
            runs = s.run_id[s.label == lab]
            row[f"final_{problem}"] = float(np.nanmedian(final[runs])) if len(runs) and \
                np.isfinite(final[runs]).any() else (math.nan if len(runs) else NOT_RUN)
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.assign(_a=out.area.fillna(-1.0)).sort_values(
        ["_a", "reached", "label"], ascending=[False, False, True], kind="stable")
    out = out.drop(columns="_a").reset_index(drop=True)
    # ties (the same area and pairs reached, e.g. none reached) share a rank: 1, 1, 3
    key = list(zip(out.area.fillna(-1.0), out.reached))
    out.insert(0, "rank", [key.index(k) + 1 for k in key])
    return out


#: The final-error cell of an optimizer that has no run on that problem.
NOT_RUN = "not run"


def _fmt(v) -> str:
    if v is None or isinstance(v, str):
        return v or "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "diverged" if math.isnan(v) else "inf"
    return f"{v:.2e}"


def leaderboard_markdown(summary: pd.DataFrame, experiments: pd.DataFrame,
                         curves: pd.DataFrame | None = None, targets: dict | None = None,
                         tau_max: float = TAU_MAX) -> str:
    """``leaderboard.md``: the ranking of :func:`leaderboard` over :func:`scored_runs`, the
    targets per problem and where they come from."""
    runs, what = scored_runs(summary, experiments)
    lines = ["# Leaderboard", ""]
    if runs.empty:
        return "\n".join(lines + [f"Nothing to rank: {what} in these tables.", ""])
    board = leaderboard(runs, curves, tau_max)
    problems = sorted(set(runs.problem))
    metric = runs.groupby("problem").target_metric.first() if "target_metric" in runs else {}
    lines += [
        f"Optimizers ranked by the area under their performance profile (Dolan & Moré 2002) "
        f"over {what}: for each (problem, target) pair, an optimizer's time to the target "
        "(timed wall-clock seconds at its first evaluation at or below it, the median over "
        "replicates) divided by the best optimizer's; ρ(τ) is the fraction of pairs it "
        f"reached within τ × the best time.  Area = ∫ ρ d(log τ) over τ ∈ [1, {tau_max:g}], "
        f"divided by log {tau_max:g}: 1 = the fastest on every pair.  `area (steps)` is the "
        "same with steps instead of seconds.", "",
        "| rank | optimizer | area | area (steps) | pairs reached | "
        + " | ".join(f"median final {'L2' if metric.get(p, 'l2') == 'l2' else 'loss'} "
                     f"{p}" for p in problems) + " |",
        "|---:|---|---:|---:|---:|" + "---:|" * len(problems)]
    for row in board.itertuples(index=False):
        row = row._asdict()
        lines.append(
            f"| {row['rank']} | {row['display']} | {row['area']:.3f} | "
            f"{row['area_steps']:.3f} | {row['reached']} / {row['pairs']} | "
            + " | ".join(_fmt(row.get(f"final_{p}")) for p in problems) + " |")
    lines += ["", "Targets:", ""]
    for p in problems:
        spec = (targets or {}).get(p)
        cols = [t for t, sec, _ in target_columns(runs)
                if pd.to_numeric(runs.loc[runs.problem == p, sec], errors="coerce").notna().any()]
        src = f" ({spec['source']})" if spec else ""
        met = "loss (no error metric: no exact solution or reference)" \
            if metric.get(p, "l2") == "loss" else "L2 error"
        lines.append(f"- {p}, {met}: {', '.join(target_text(t) for t in cols) or 'none'}{src}")
    lines.append("")
    return "\n".join(lines)
