"""``pinn-ng figures``: the paper's figures from the gathered tables (seaborn, headless).

Figures are PNG files drawn with the Agg backend at a fixed dpi, without the "Software"
metadata entry and with ``svg.hashsalt`` fixed, so the same tables give byte-identical files.
Each figure uses the runs of one experiment (``experiments.csv``):

- ``speedup``: seconds per step over N (log-log) at the first net and over P at the first
  batch, one line per optimizer; ENGD / ENGD-W ratios written at each N (PAPER.md: "> 30×").
- ``convergence_<problem>``: L2 error against wall-clock time and against steps (paper figs 2, 3).
- ``nystrom_<problem>``: exact vs standard vs GPU-efficient Nyström at each N (figs 4, 5).
- ``effective_dimension``: d_eff / N over training (fig 6); 50 % marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import records

KINDS = ("speedup", "convergence", "nystrom", "effective_dimension")


def _setup():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    plt.rcParams.update({"svg.hashsalt": "pinn-ng", "path.simplify": False,
                         "figure.max_open_warning": 0})
    return plt, sns


def load(results_dir) -> dict:
    d = Path(results_dir)
    tables = {name: pd.read_csv(d / f"{name}.csv", keep_default_na=False,
                                na_values=["nan", "NaN", ""])
              for name in ("curves", "summary", "experiments")}
    for name in ("curves", "summary"):
        for col in ("solver", "reason"):
            if col in tables[name]:
                tables[name][col] = ["" if pd.isna(v) else str(v) for v in tables[name][col]]
    return tables


def available(tables: dict) -> list[str]:
    """The figures the gathered tables allow, in a fixed order."""
    exp, summ = tables["experiments"], tables["summary"]
    out = []
    names = set(exp["kind"])
    if "scaling" in names:
        out.append("speedup")
    for kind in ("convergence", "nystrom"):
        if kind in names:
            ids = set(exp.loc[exp["kind"] == kind, "run_id"])
            out += [f"{kind}_{p}" for p in sorted(set(summ.loc[summ.run_id.isin(ids),
                                                             "problem"]))]
    if "effective_dimension" in names:
        out.append("effective_dimension")
    return out


def _runs(tables, experiment, problem=None):
    exp = tables["experiments"]
    ids = set(exp.loc[exp["kind"] == experiment, "run_id"])
    summ = tables["summary"][tables["summary"].run_id.isin(ids)]
    if problem is not None:
        summ = summ[summ.problem == problem]
    if summ.empty:
        raise ValueError(f"no runs of experiment {experiment!r}"
                         + (f" on {problem!r}" if problem else "") + " in the tables")
    curves = tables["curves"][tables["curves"].run_id.isin(set(summ.run_id))]
    return summ, curves


def _palette(tables):
    import seaborn as sns

    labels = sorted(set(tables["summary"]["display"]))
    colors = sns.color_palette("tab10", n_colors=max(10, len(labels)))
    return {lab: colors[i % len(colors)] for i, lab in enumerate(labels)}


def _save(fig, path, dpi):
    import matplotlib.pyplot as plt

    def write(tmp):
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})

    records.atomic_write_bytes_via(path, write)
    plt.close(fig)


def _line(ax, sns, data, x, y, palette, units="run_id"):
    sns.lineplot(data=data, x=x, y=y, hue="display", units=units, estimator=None,
                 palette=palette, ax=ax, marker="o", markersize=3, linewidth=1.2,
                 hue_order=[h for h in palette if h in set(data["display"])])


def fig_speedup(tables, plt, sns, palette):
    summ, _ = _runs(tables, "scaling")
    summ = summ[summ.steps > 0]
    problems = sorted(set(summ.problem))
    # The N sweep ran at the P seen with the most batch sizes, the P sweep at the N seen with
    # the most nets (see pinn_ng.pipeline.config: a cross, not the full product).
    has_p = any(summ[summ.problem == p].P.nunique() > 1 for p in problems)
    ncols = 2 if has_p else 1
    fig, axes = plt.subplots(len(problems), ncols, figsize=(5.2 * ncols, 3.8 * len(problems)),
                             squeeze=False)
    for i, prob in enumerate(problems):
        s = summ[summ.problem == prob]
        p0 = s.groupby("P").N.nunique().sort_index().idxmax()
        n0 = s.groupby("N").P.nunique().sort_index().idxmax()
        by_n = (s[s.P == p0].groupby(["display", "optimizer", "solver", "N"], as_index=False)
                .seconds_per_step.median())
        ax = axes[i, 0]
        _line(ax, sns, by_n, "N", "seconds_per_step", palette, units=None)
        ax.set(xscale="log", yscale="log", xlabel="batch size N", ylabel="seconds per step",
               title=f"{prob}, P = {p0:,}")
        engd = by_n[by_n.optimizer == "engd"].groupby("N").seconds_per_step.median()
        wood = by_n[(by_n.optimizer == "engd_woodbury") & (by_n.solver == "cholesky")
                    ].groupby("N").seconds_per_step.median()
        common = sorted(set(engd.index) & set(wood.index))
        for n in common:
            ratio = engd[n] / wood[n]
            ax.annotate(f"{ratio:.1f}×", xy=(n, np.sqrt(engd[n] * wood[n])), ha="center",
                        va="center", fontsize=8, color="0.2",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.6"})
        if common:
            n = common[-1]
            ax.set_title(f"{prob}, P = {p0:,}: ENGD / ENGD-W = {engd[n] / wood[n]:.1f}× "
                         f"at N = {n:,}")
        ax.legend(title=None, fontsize=7)
        if has_p:
            ax = axes[i, 1]
            by_p = (s[s.N == n0].groupby(["display", "P"], as_index=False)
                    .seconds_per_step.median())
            if by_p.P.nunique() > 1:
                _line(ax, sns, by_p, "P", "seconds_per_step", palette, units=None)
                ax.legend(title=None, fontsize=7)
            ax.set(xscale="log", yscale="log", xlabel="parameters P",
                   ylabel="seconds per step", title=f"{prob}, N = {n0:,}")
    fig.suptitle("seconds per step: ENGD (P×P Gramian)\nvs sample-space (N×N kernel) methods",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _label_n(df):
    return df.assign(Nlab=[f"N = {n:,}" for n in df.N])


def fig_convergence(tables, plt, sns, palette, problem):
    summ, curves = _runs(tables, "convergence", problem)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    data = curves[np.isfinite(curves.l2) & (curves.l2 > 0)]
    for ax, x, xlabel in ((axes[0], "time", "wall-clock time [s] (compilation and evaluation "
                                             "excluded)"), (axes[1], "step", "steps")):
        _line(ax, sns, data, x, "l2", palette)
        ax.set(yscale="log", xlabel=xlabel, ylabel="L2 error (RMS)")
        if x == "step":  # first-order methods take 100× more steps: symmetric log axis
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)  # steps are >= 0: no negative half of the symlog axis
        ax.legend(title=None, fontsize=7)
    ns = sorted(set(summ.N))
    ps = sorted(set(summ.P))
    fig.suptitle(f"{problem}: L2 error, N = {', '.join(map(str, ns))}, "
                 f"P = {', '.join(f'{p:,}' for p in ps)}")
    fig.tight_layout()
    return fig


def fig_nystrom(tables, plt, sns, palette, problem):
    summ, curves = _runs(tables, "nystrom", problem)
    ns = sorted(set(summ.N))
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.6), squeeze=False)
    data = curves[np.isfinite(curves.l2) & (curves.l2 > 0)]
    for ax, n in zip(axes[0], ns):
        d = data[data.N == n]
        if not d.empty:
            _line(ax, sns, d, "time", "l2", palette)
            ax.legend(title=None, fontsize=7)
        spp = summ[summ.N == n].groupby("display").seconds_per_step.median()
        ax.set(yscale="log", xlabel="wall-clock time [s]", ylabel="L2 error (RMS)",
               title=f"N = {n:,}\ns/step: " + ", ".join(
                   f"{k} {v:.2g}" for k, v in spp.items()))
        ax.title.set_fontsize(7)
    fig.suptitle(f"{problem}: exact vs randomized Nyström kernels")
    fig.tight_layout()
    return fig


def fig_effective_dimension(tables, plt, sns, palette):
    summ, curves = _runs(tables, "effective_dimension")
    if "effective_dimension" not in curves:
        raise ValueError("no effective_dimension column in curves.csv")
    data = curves[np.isfinite(curves.effective_dimension)].copy()
    data["d_eff / N"] = data.effective_dimension / data.N
    data["run"] = [f"{p} {d} N={n}" for p, d, n in zip(data.problem, data.display, data.N)]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.lineplot(data=data, x="step", y="d_eff / N", hue="run", units="run_id",
                 estimator=None, ax=ax, marker="o", markersize=3,
                 hue_order=sorted(set(data.run)))
    ax.axhline(0.5, color="0.4", linestyle="--", linewidth=1)
    ax.set(ylim=(0, 1.05), xlabel="steps", ylabel="d_eff(λ) / N",
           title="effective dimension of the damped kernel (paper: stays above 50 %)")
    ax.legend(title=None, fontsize=7)
    fig.tight_layout()
    return fig


def draw(results_dir, name: str, out, dpi: int = 110) -> str:
    """Draw figure ``name`` (``speedup``, ``convergence_<p>``, …) from the tables into ``out``."""
    plt, sns = _setup()
    tables = load(results_dir)
    palette = _palette(tables)
    if name == "speedup":
        fig = fig_speedup(tables, plt, sns, palette)
    elif name == "effective_dimension":
        fig = fig_effective_dimension(tables, plt, sns, palette)
    elif name.startswith("convergence_"):
        fig = fig_convergence(tables, plt, sns, palette, name[len("convergence_"):])
    elif name.startswith("nystrom_"):
        fig = fig_nystrom(tables, plt, sns, palette, name[len("nystrom_"):])
    else:
        raise ValueError(f"unknown figure {name!r}; figures: speedup, convergence_<problem>, "
                         "nystrom_<problem>, effective_dimension")
    _save(fig, out, dpi)
    return str(out)
