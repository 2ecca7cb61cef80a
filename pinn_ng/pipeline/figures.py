"""``pinn-ng figures``: the paper's figures from the gathered tables (seaborn, headless).

Figures are PNG files drawn with the Agg backend at a fixed dpi, without the "Software"
metadata entry and with ``svg.hashsalt`` fixed, so the same tables give byte-identical files.
Each figure uses the runs of one experiment (``experiments.csv``):

- ``speedup``: seconds per step over N (log-log) at the first net and over P at the first
  batch, one line per optimizer; ENGD / ENGD-W ratios written at each N (the paper: "> 30×").
  Seconds per step are each run's median over its steps where the record has it, else the mean.
- ``convergence_<problem>``: L2 error against wall-clock time and against steps (paper figs 2, 3);
  with several replicates per optimizer, their median and a min–max band (:func:`replicate_band`);
  on Poisson 5d/100d, heat and log-FP the published KFAC* final error as a dashed line (fig 3).
- ``nystrom_<problem>``: exact vs standard vs GPU-efficient Nyström at each N (figs 4, 5); a
  panel where no sketched run lowered its L2 error says so (the budget is too small to show
  the paper's effect), and each other panel's title says when a sketch beat the exact kernel
  at equal wall-clock time, or that it never did (:func:`nystrom_ahead`).
- ``effective_dimension``: d_eff / N over training (fig 6); the paper's 50 % marked.
- ``paper_overlay_<problem>``: one panel per optimizer label whose convergence runs have a
  logged run of the paper's authors (:mod:`pinn_ng.pipeline.paper_curves`): L2 error against
  steps (log-log), ours in the label's colour, the paper's thin and grey (a logged row k at
  step k + 1, the same count of updates as our step), our last step marked with the ratio
  ours / paper there.  Available where the tables hold such runs; not promised by a plan.
  Without ``paper_dir`` the repository's histories are used; where they are absent (installed
  without the repository) there is no overlay, and the other figures are drawn as before.
- ``performance_profile``: Dolan & Moré profiles over the convergence runs' (problem, target)
  pairs, by seconds and by steps, each optimizer's area in the legend
  (:mod:`pinn_ng.pipeline.scoring`; ``leaderboard.md`` ranks by that area).
- ``solution_<problem>``: u_θ, u* (or the reference values) and |u_θ − u*| on a 2d slice (the
  first two coordinates; the others at the domain's centre, time at its end) for each
  optimizer's median run by final L2, from its ``final_params.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import families, paper_curves, params_io, records, scoring


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


def available(tables: dict, paper_dir=None) -> list[str]:
    """The figures the gathered tables allow, in a fixed order: the planned families', then
    ``paper_overlay_<problem>`` for each problem with a convergence run that has a paper
    history (``paper_dir``: see :func:`_paper_index`)."""
    exp, summ = tables["experiments"], tables["summary"]
    problems_by_kind = {
        kind: set(summ.loc[summ.run_id.isin(set(exp.loc[exp["kind"] == kind, "run_id"])),
                           "problem"])
        for kind in set(exp["kind"]) if kind in families.EXPERIMENT_KINDS}
    names = families.figure_names(problems_by_kind)
    conv = summ[summ.run_id.isin(set(exp.loc[exp["kind"] == "convergence", "run_id"]))]
    conv = conv[[paper_curves.history_label(lab) is not None for lab in conv.label]]
    index = _paper_index(paper_dir) if not conv.empty else None
    if index is not None:
        names += [f"paper_overlay_{p}" for p in sorted(set(conv.problem))
                  if _paper_panels(conv, index, p)]
    return names


def _paper_index(paper_dir):
    """The paper's histories; None where ``paper_dir`` is not given and the repository's copy
    is absent (an installed wheel): no overlay then, rather than no figures at all."""
    if paper_dir is None and not paper_curves.DEFAULT_DIR.is_dir():
        return None
    return paper_curves.load_index(paper_dir)


def _paper_panels(summ, index, problem) -> list:
    """``(display, label, history entry)`` of the labels on ``problem`` with a paper history,
    in the order of their display names."""
    out = []
    for display, label in sorted(set(zip(summ.display[summ.problem == problem],
                                          summ.label[summ.problem == problem]))):
        ref = paper_curves.find(index, problem, label)
        if ref is not None:
            out.append((display, label, ref))
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
    # tab10 first; beyond ten labels (e.g. the cpu-paper preset's 11) distinct hues from
    # Dark2 and Set1 rather than tab10 cycling back onto its first colours
    colors = (sns.color_palette("tab10") + sns.color_palette("Dark2")
              + sns.color_palette("Set1"))
    # no greys: grey draws the paper's curves and the reference lines
    colors = [c for c in colors if max(c) - min(c) > 0.1]
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


def _step_seconds(summ):
    """Per run: the median seconds per step where recorded, else the mean."""
    sps = summ.seconds_per_step
    if "median_seconds_per_step" in summ:
        sps = summ.median_seconds_per_step.where(np.isfinite(summ.median_seconds_per_step), sps)
    return summ.assign(seconds_per_step=sps)


def _contended(summ) -> "pd.Series":
    """Per run: measured under contention (``summary.csv``'s ``contended``; empty: no)."""
    if "contended" not in summ:
        return pd.Series(False, index=summ.index)
    return summ.contended.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def _mark_contended(ax, points, x, y):
    """Runs measured under contention as black crosses over the median line, in the legend."""
    if len(points):
        ax.scatter(points[x], points[y], marker="x", color="black", s=28, zorder=5,
                   label="contended run (load)")


def fig_speedup(tables, plt, sns, palette):
    summ, _ = _runs(tables, "scaling")
    summ = _step_seconds(summ[summ.steps > 0])
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
        _mark_contended(ax, s[(s.P == p0) & _contended(s)], "N", "seconds_per_step")
        ax.set(xscale="log", yscale="log", xlabel="batch size N", ylabel="seconds per step",
               title=f"{prob}, P = {p0:,}")
        _n_ticks(ax, sorted(set(by_n.N)))
        # ENGD's ratio to ENGD-W, per solver of ENGD's P x P system: Cholesky, and least
        # squares (lstsq, what the paper's code runs on the CPU), each labelled as such.
        wood = by_n[(by_n.optimizer == "engd_woodbury") & (by_n.solver == "cholesky")
                    ].groupby("N").seconds_per_step.median()
        is_engd = by_n.optimizer == "engd"
        titles = []
        for solver, mask in (("Cholesky", is_engd & by_n.solver.isin(["", "cholesky"])),
                             ("lstsq", is_engd & (by_n.solver == "lstsq"))):
            engd = by_n[mask].groupby("N").seconds_per_step.median()
            common = sorted(set(engd.index) & set(wood.index))
            for n in common:
                ratio = engd[n] / wood[n]
                text = f"{ratio:.1f}×" if solver == "Cholesky" else f"lstsq: {ratio:.0f}×"
                ax.annotate(text, xy=(n, np.sqrt(engd[n] * wood[n])), ha="center",
                            va="center", fontsize=8, color="0.2",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.6"})
            if common:
                n = common[-1]
                titles.append(f"{engd[n] / wood[n]:.1f}× ({solver}, N = {n:,})")
        if titles:
            ax.set_title(f"{prob}, P = {p0:,}\nENGD / ENGD-W = " + ", ".join(titles),
                         fontsize=9)
        ax.legend(title=None, fontsize=7)
        if has_p:
            ax = axes[i, 1]
            by_p = (s[s.N == n0].groupby(["display", "P"], as_index=False)
                    .seconds_per_step.median())
            if by_p.P.nunique() > 1:
                _line(ax, sns, by_p, "P", "seconds_per_step", palette, units=None)
                _mark_contended(ax, s[(s.N == n0) & _contended(s)], "P", "seconds_per_step")
                ax.legend(title=None, fontsize=7)
            ax.set(xscale="log", yscale="log", xlabel="parameters P",
                   ylabel="seconds per step", title=f"{prob}, N = {n0:,}")
    fig.suptitle("seconds per step: ENGD (P×P Gramian)\nvs sample-space (N×N kernel) methods",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _n_ticks(ax, ns):
    """Ticks at the measured batch sizes only (log-axis minor labels collide)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{n:,}" for n in ns])


def _label_n(df):
    return df.assign(Nlab=[f"N = {n:,}" for n in df.N])


def replicate_band(runs: list, x: str, y: str = "l2"):
    """Median, min and max of ``y`` over replicate runs, on one grid of ``x``.

    ``runs``: one DataFrame of evaluation rows per replicate.  Replicates are evaluated at
    different times (and, under a time budget, stop at different steps), so each one is
    interpolated onto a common grid: the union of all replicates' evaluation points, cut at the
    end of the shortest replicate, so that every grid point has a value from every replicate
    (no band drawn from a subset of the runs).  Interpolation is linear in log10(y) between a
    replicate's own evaluations (the figures use a log y axis), never extrapolated.
    Returns ``(grid, median, lo, hi)``.
    """
    curves = []
    for r in runs:
        r = r[np.isfinite(r[y]) & (r[y] > 0) & np.isfinite(r[x])].sort_values(x)
        r = r.drop_duplicates(subset=x, keep="last")
        if len(r):
            curves.append((r[x].to_numpy(float), np.log10(r[y].to_numpy(float))))
    if not curves:
        return (np.empty(0),) * 4
    end = min(cx[-1] for cx, _ in curves)
    grid = np.unique(np.concatenate([cx[cx <= end] for cx, _ in curves]))
    logs = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
    return (grid, 10 ** np.median(logs, axis=0), 10 ** logs.min(axis=0),
            10 ** logs.max(axis=0))


#: The ENGD-W paper's figure 3 reference lines: KFAC*'s final L2 errors from the logged runs of
#: the KFAC-for-PINNs paper (Dangel, Müller & Zeinhofer 2024), drawn dashed (5d: a wider net,
#: P = 116,865, than the paper's 5d net).
PUBLISHED_KFAC_STAR_L2 = {"poisson5d": (1.73e-4, "P = 116,865"), "poisson100d": (4.30e-3, ""),
                          "heat4d": (2.11e-5, ""), "logfp9d": (2.60e-2, "")}


def _published_reference(ax, problem):
    """The published KFAC* final error of ``problem`` as a labelled dashed line, if any."""
    if problem not in PUBLISHED_KFAC_STAR_L2:
        return
    l2, note = PUBLISHED_KFAC_STAR_L2[problem]
    ax.axhline(l2, color="0.25", linestyle="--", linewidth=1.1,
               label=f"KFAC* published final\n({l2:.2e}{', ' + note if note else ''})")


def fig_convergence(tables, plt, sns, palette, problem):
    summ, curves = _runs(tables, "convergence", problem)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.8))
    data = curves[np.isfinite(curves.l2) & (curves.l2 > 0)]
    order = [h for h in palette if h in set(data["display"])]
    n_reps = summ.groupby("display").run_id.nunique()
    contended = set(summ.run_id[_contended(summ)])
    for ax, x, xlabel in ((axes[0], "time", "wall-clock time [s] (compilation and evaluation "
                                             "excluded)"), (axes[1], "step", "steps")):
        for display in order:
            d = data[data.display == display]
            runs = [g for _, g in d.groupby("run_id", sort=True)]
            color = palette[display]
            if len(runs) == 1:  # one replicate: its evaluations, as they are
                r = runs[0].sort_values(x)
                ax.plot(r[x], r.l2, color=color, marker="o", markersize=3, linewidth=1.2,
                        label=display, linestyle="--" if r.run_id.iloc[0] in contended
                        else "-")
                continue
            grid, med, lo, hi = replicate_band(runs, x)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
            # the title says how many seeds when every optimizer has the same number
            ax.plot(grid, med, color=color, linewidth=1.4, label=display if n_reps.nunique()
                    == 1 else f"{display} (median, min–max of {n_reps[display]})")
            for r in runs:  # a contended replicate also on its own, dashed
                if r.run_id.iloc[0] in contended:
                    r = r.sort_values(x)
                    ax.plot(r[x], r.l2, color=color, linestyle="--", linewidth=0.9)
        if contended:
            ax.plot([], [], color="0.3", linestyle="--",
                    label=f"dashed: contended ({len(contended)} run"
                    f"{'s' if len(contended) > 1 else ''})")
        _published_reference(ax, problem)
        ax.set(yscale="log", xlabel=xlabel, ylabel="L2 error (RMS)")
        if x == "step":  # first-order methods take 100× more steps: symmetric log axis
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)  # steps are >= 0: no negative half of the symlog axis
    # one legend for both panels, beside them: inside, it hid parts of the curves
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left",
               bbox_to_anchor=(0.795, 0.5), fontsize=8, frameon=False)
    ns = sorted(set(summ.N))
    ps = sorted(set(summ.P))
    reps = sorted(set(n_reps))
    rep_text = "" if reps == [1] else (
        f"\n{'/'.join(map(str, reps))} seeds per optimizer: median (line) and min–max (band)")
    fig.suptitle(f"{problem}: L2 error, N = {', '.join(map(str, ns))}, "
                 f"P = {', '.join(f'{p:,}' for p in ps)}{rep_text}")
    fig.tight_layout(rect=(0, 0, 0.79, 1))
    return fig


#: A Nyström panel notes "nothing learned" when every sketched run ended above this fraction
#: of its initial L2 error.
LEARNED_FRACTION = 0.9


def fig_nystrom(tables, plt, sns, palette, problem):
    summ, curves = _runs(tables, "nystrom", problem)
    summ = _step_seconds(summ)
    ns = sorted(set(summ.N))
    fig, axes = plt.subplots(1, len(ns), figsize=(max(6.4, 4.2 * len(ns)), 3.9),
                             squeeze=False)
    data = curves[np.isfinite(curves.l2) & (curves.l2 > 0)]
    for ax, n in zip(axes[0], ns):
        d, verdict = data[data.N == n], ""
        if not d.empty:
            _line(ax, sns, d, "time", "l2", palette)
            ax.legend(title=None, fontsize=7)
            sk = d[d.solver.str.startswith("nystrom")].sort_values("step")
            first, last = (sk.groupby("run_id").l2.first(), sk.groupby("run_id").l2.last())
            if not (len(sk) and (last >= LEARNED_FRACTION * first).all()):
                verdict = _verdict(nystrom_ahead(d))
            else:  # nothing learned: the note says so, and there is nothing to compare
                ax.text(0.5, 0.97, "no Nyström run lowered its L2 error by 10 % in this "
                        "budget:\ntoo small to show the paper's effect (it helps early in "
                        "long\nruns at N ≥ 1000 on a GPU)", transform=ax.transAxes,
                        ha="center", va="top", fontsize=7, color="0.2",
                        bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})
        spp = summ[summ.N == n].groupby("display").seconds_per_step.median()
        ell = sorted({_sketch(hp, n) for hp in summ[summ.N == n].hparams} - {None})
        ax.set(yscale="log", xlabel="wall-clock time [s]", ylabel="L2 error (RMS)",
               title=f"N = {n:,}" + (f", sketch ℓ = {', '.join(map(str, ell))}" if ell else "")
               + "\ns/step: " + ", ".join(f"{k} {v:.2g}" for k, v in spp.items()) + verdict)
        lo, hi = ax.get_ylim()
        if hi < 10 * lo:  # less than a decade: plain numbers, not 1.75 × 10⁰
            from matplotlib.ticker import FuncFormatter

            plain = FuncFormatter(lambda v, _: f"{v:.3g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.title.set_fontsize(7)
    ps = sorted(set(summ.P))
    fig.suptitle(f"{problem}, P = {', '.join(f'{p:,}' for p in ps)}: exact vs randomized "
                 "Nyström kernels")
    fig.tight_layout()
    return fig


#: A sketched run "beats" the exact kernel at time t when its L2 error is below this fraction
#: of every exact run's error at t (a margin against evaluation noise).
LEAD_FRACTION = 0.95


def nystrom_ahead(curves) -> "np.ndarray | None":
    """The wall-clock times (sorted) at which a sketched (Nyström) run's L2 error was below
    ``LEAD_FRACTION`` × every exact-kernel run's error at that time; empty if never, None
    without both kinds of run.

    An exact run's error between its evaluations is read off the line the figure draws
    (log-linear in time), and held after its last one. ``curves``: rows of one panel with
    ``run_id``, ``solver``, ``time`` and ``l2``.
    """
    sketched = curves.solver.fillna("").astype(str).str.startswith("nystrom")
    exact, sk = curves[~sketched], curves[sketched]
    if exact.empty or sk.empty:
        return None
    t_sk = sk.time.to_numpy(float)
    best = np.full(len(sk), np.inf)
    for _, run in exact.sort_values("time").groupby("run_id"):
        log_err = np.interp(t_sk, run.time.to_numpy(float), np.log(run.l2.to_numpy(float)))
        best = np.minimum(best, np.exp(log_err))
    return np.sort(t_sk[sk.l2.to_numpy(float) < LEAD_FRACTION * best])


def _verdict(ahead) -> str:
    """A panel title's line on whether the sketch beat the exact kernel, and when."""
    if ahead is None:
        return ""
    if not len(ahead):
        return "\nthe sketch never beats the exact kernel at equal time at this size"
    first, last = float(ahead[0]), float(ahead[-1])
    when = f"at t ≈ {first:.2g} s" if f"{first:.2g}" == f"{last:.2g}" else \
        f"first at t ≈ {first:.2g} s, last at t ≈ {last:.2g} s"
    return f"\nthe sketch beats the exact kernel at equal time {when}"


def _sketch(hparams: str, n: int):
    """The sketch size ℓ a run used at batch size ``n`` (None without a Nyström solver)."""
    import json

    hp = json.loads(hparams) if hparams else {}
    if not str(hp.get("solver", "")).startswith("nystrom"):
        return None
    ell = hp.get("sketch_size", 0.1)
    return int(ell) if isinstance(ell, int) or float(ell) >= 1 else int(round(float(ell) * n))


def fig_effective_dimension(tables, plt, sns, palette):
    summ, curves = _runs(tables, "effective_dimension")
    if "effective_dimension" not in curves:
        raise ValueError("no effective_dimension column in curves.csv")
    data = curves[np.isfinite(curves.effective_dimension)].copy()
    data["d_eff / N"] = data.effective_dimension / data.N
    data["run"] = [f"{p} {d}, N = {n:,}, P = {q:,}"
                   for p, d, n, q in zip(data.problem, data.display, data.N, data.P)]
    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    sns.lineplot(data=data, x="step", y="d_eff / N", hue="run", units="run_id",
                 estimator=None, ax=ax, marker="o", markersize=3,
                 hue_order=sorted(set(data.run)))
    ax.axhline(0.5, color="0.3", linestyle="--", linewidth=1,
               label="paper: stays above 50 % (5d ENGD-W, N = 3,500)")
    ax.set(ylim=(0, 1.05), xlabel="steps", ylabel="d_eff(λ) / N",
           title="effective dimension of the damped kernel, d_eff = tr(K(K + λI)⁻¹)")
    # Where the Cholesky needed a jitter δ (pinn_ng.optim.solvers.cholesky_solve), d_eff is
    # that of the damping actually used, λ + δ: say so on the figure, with the first such step.
    if "jitter" in data:
        jit = data[data.jitter.fillna(0) > 0]
        if not jit.empty:
            first = int(jit.step.min())
            ax.axvline(first, color="0.5", linestyle=":", linewidth=1)
            ax.text(first, 0.04, f" from step {first}: Cholesky jitter δ ≤ {jit.jitter.max():.1e};"
                    "\n d_eff shown at λ + δ", fontsize=7, color="0.3", va="bottom")
    ax.legend(title=None, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def fig_paper_overlay(tables, plt, sns, palette, problem, paper_dir=None):
    summ, curves = _runs(tables, "convergence", problem)
    index = paper_curves.load_index(paper_dir)
    panels = _paper_panels(summ, index, problem)
    if not panels:
        raise ValueError(f"no convergence run on {problem!r} has a paper history")
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    # log axes: our step 0 (the untrained net, which the paper's logs lack) cannot be drawn
    data = curves[(curves.step > 0) & np.isfinite(curves.l2) & (curves.l2 > 0)]
    for ax, (display, label, ref) in zip(axes.flat, panels):
        hist = paper_curves.load_history(ref)
        color = palette[display]
        ax.plot(hist.our_step, hist.l2_error, color="0.5", linewidth=0.9, label="paper")
        runs = [g.sort_values("step") for _, g in data[data.label == label].groupby("run_id")]
        if len(runs) == 1:
            ax.plot(runs[0].step, runs[0].l2, color=color, marker="o", markersize=2.5,
                    linewidth=1.3, label="ours")
        elif runs:
            grid, med, lo, hi = replicate_band(runs, "step")
            ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
            ax.plot(grid, med, color=color, linewidth=1.3,
                    label=f"ours (median, min–max of {len(runs)})")
        ratios = []
        for i, r in enumerate(runs):
            last = r.iloc[-1]
            ax.plot(last.step, last.l2, linestyle="none", marker="o", markersize=7,
                    markerfacecolor=color, markeredgecolor="black", zorder=5,
                    label="our last step" if i == 0 else None)
            paper = paper_curves.l2_at(hist, [int(last.step)]).paper_l2.iloc[0]
            ratios.append((int(last.step), last.l2 / paper))
        if ratios:
            steps = sorted({s for s, _ in ratios})
            ratio = np.median([q for _, q in ratios])
            where = (f"step {steps[0]}" if len(steps) == 1 else
                     f"steps {steps[0]}–{steps[-1]} (median)")
            # the curves fall from upper left to lower right: the other two corners are free
            ax.text(0.97, 0.96, f"at our last {where}:\nours / paper = "
                    + (f"{ratio:.2g}" if np.isfinite(ratio) else "– (paper not logged)"),
                    transform=ax.transAxes, fontsize=7, va="top", ha="right",
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.7"})
        ax.set(xscale="log", yscale="log", xlabel="steps (updates)", ylabel="L2 error (RMS)")
        ax.set_title(f"{display}\npaper run {ref['run']}, net {ref['model']}", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
    # one narrow panel cannot hold the two-line title: break it once more
    sep = "\n" if ncols == 1 else " "
    fig.suptitle(f"{problem}: our L2 error and the paper authors'{sep}logged run at equal steps\n"
                 "(their row k is after k + 1 updates, drawn at step k + 1)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_performance_profile(tables, plt, sns, palette, tau_max=scoring.TAU_MAX):
    summ, what = scoring.scored_runs(tables["summary"], tables["experiments"])
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.9), sharey=True)
    board = scoring.leaderboard(summ, tau_max=tau_max) if not summ.empty else None
    for ax, by in zip(axes, ("seconds", "steps")):
        r = scoring.ratios(scoring.pair_times(summ, by)) if not summ.empty else pd.DataFrame()
        ax.set(xscale="log", xlim=(1, tau_max), ylim=(-0.02, 1.02),
               xlabel=f"τ (within τ × the best optimizer's {by} to the target)",
               ylabel="fraction of (problem, target) pairs reached")
        if r.empty:
            ax.text(0.5, 0.5, "no targets to score\n(no convergence runs, or no target "
                    "of their problems)", ha="center", va="center", transform=ax.transAxes)
            continue
        area = scoring.profile_area(r, tau_max)
        labels = list(board.label)  # best first, as in leaderboard.md
        display = dict(zip(board.label, board.display))
        for lab in labels:
            x = np.sort(r[lab].to_numpy(float))
            x = x[x <= tau_max]
            xs = np.concatenate([[1.0], np.maximum(x, 1.0), [tau_max]])
            ys = scoring.profile(r[[lab]], xs)[lab].to_numpy()
            ax.step(xs, ys, where="post", color=palette[display[lab]], linewidth=1.5,
                    label=f"{display[lab]} (area {area[lab]:.2f})")
        unsolved = int((~np.isfinite(r).any(axis=1)).sum())
        note = f"{len(r)} pairs" + (f", {unsolved} reached by no optimizer" if unsolved else "")
        ax.set_title(f"time = {'timed wall-clock seconds' if by == 'seconds' else 'steps'}"
                     f" ({note})", fontsize=9)
        ax.legend(title=None, fontsize=7, loc="lower right")
    axes[1].set_ylabel("")
    problems = ", ".join(sorted(set(summ.problem))) or "none"
    fig.suptitle(f"performance profiles (Dolan & Moré) over {what}: {problems}\n"
                 f"areas over log τ ∈ [0, log {tau_max:g}], normalised (1 = fastest on every "
                 "pair); time to a target = first evaluation at or below it", fontsize=9)
    fig.tight_layout()
    return fig


#: Points per axis of the solution figure's slice.
SLICE_POINTS = 81


def _median_run(runs, results_dir):
    """Of one label's runs (summary rows), the run with the median final error whose record
    holds final parameters (the lower median of an even count; the nearest one to it
    where that record has none); None if no record has them."""
    err = runs.final_l2.astype(float).fillna(np.inf)
    order = runs.assign(_e=err).sort_values(["_e", "run_id"], kind="stable")
    mid = (len(order) - 1) // 2
    for i in sorted(range(len(order)), key=lambda i: (abs(i - mid), i)):
        rid = order.run_id.iloc[i]
        if (Path(results_dir) / "runs" / rid / params_io.FILE).is_file():
            return rid, i == mid
    return None, False


def _domain_box(problem):
    """The bounding box of the problem's interior (from samples, rounded to a tenth of the
    extent's power of ten: [0, 1], [-5, 5]): the slice's range, centre and time end."""
    import jax

    pts = np.asarray(problem.sample_interior_fn(jax.random.PRNGKey(0), 4096, "float32"),
                     dtype=float)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    unit = 10.0 ** np.floor(np.log10(np.maximum(hi - lo, 1e-12)))
    return np.round(lo / unit, 1) * unit, np.round(hi / unit, 1) * unit


def _slice(problem, n=SLICE_POINTS):
    """Grid points ``(n*n, D)`` of the 2d slice, its two axes and their names, and the fixed
    coordinates as text: the first two coordinates vary (x and t for 1+1d); the others sit
    at the domain's centre, time at its end."""
    lo, hi = _domain_box(problem)
    d = problem.input_dim
    t = d - 1 if problem.time_dependent else None
    free = [0, 1] if d >= 2 else [0]
    names = [("t" if i == t else f"x{i + 1}") for i in range(d)]
    point = (lo + hi) / 2
    if t is not None and t not in free:
        point[t] = hi[t]
    axes = [np.linspace(lo[i], hi[i], n) for i in free]
    mesh = np.meshgrid(*axes, indexing="xy")
    pts = np.tile(point, (mesh[0].size, 1))
    for i, m in zip(free, mesh):
        pts[:, i] = m.ravel()
    fixed = ", ".join(f"{names[i]} = {point[i]:.3g}" for i in range(d) if i not in free)
    return pts, axes, [names[i] for i in free], fixed


def _reference(problem):
    """``(x, u)`` of a problem's reference file, or None."""
    path = getattr(problem, "reference_path", None)
    if not path:
        return None
    with np.load(path) as f:
        return np.asarray(f["x"], float), np.asarray(f["u"], float)


def fig_solution(tables, plt, sns, palette, problem, results_dir="results"):
    import json

    import jax
    from matplotlib.colors import LogNorm

    from .. import enable_x64, models, problems

    summ, _ = _runs(tables, "convergence", problem)
    prob = problems.get(problem)
    pts, axes_1d, names, fixed = _slice(prob)
    exact = prob.exact_fn
    ref = _reference(prob) if exact is None else None
    rows = []
    for display in [h for h in palette if h in set(summ.display)]:
        rid, is_median = _median_run(summ[summ.display == display], results_dir)
        if rid is None:
            rows.append((display, None, None, f"no {params_io.FILE} in its run records "
                         "(written before runs kept their final parameters?)"))
            continue
        meta = json.loads((Path(results_dir) / "runs" / rid / records.META).read_text())
        spec = meta["spec"]
        dtype = "float64" if str(spec.get("dtype", "float64")).lower() in (
            "float64", "f64", "double") else "float32"
        if dtype == "float64":
            enable_x64()
        init, apply = models.make(spec.get("network") or "mlp", spec["widths"], dtype=dtype)
        params = params_io.load(Path(results_dir) / "runs" / rid / params_io.FILE,
                                like=init(jax.random.PRNGKey(0)))
        f = jax.jit(jax.vmap(lambda x: apply(params, x)))
        u = np.asarray(f(np.asarray(pts, dtype)), float)
        at_ref = np.asarray(f(np.asarray(ref[0], dtype)), float) if ref is not None else None
        final = summ.loc[summ.run_id == rid, "final_l2"].iloc[0]
        note = f"{'median' if is_median else 'nearest to the median'} run, final L2 {final:.2e}"
        rows.append((display, u, at_ref, note))
    star = np.asarray(jax.vmap(exact)(np.asarray(pts)), float) if exact is not None else None
    ncols = 3
    fig, axs = plt.subplots(len(rows), ncols, figsize=(11.5, 3.2 * len(rows)), squeeze=False)
    shape = (len(axes_1d[1]), len(axes_1d[0])) if len(axes_1d) == 2 else None
    values = [u for _, u, _, _ in rows if u is not None] + ([star] if star is not None else [])
    values += [ref[1]] if ref is not None else []
    vmin = min(float(np.nanmin(v)) for v in values) if values else 0.0
    vmax = max(float(np.nanmax(v)) for v in values) if values else 1.0
    errs = [np.abs(u - star) for _, u, _, _ in rows if u is not None and star is not None]
    errs += [np.abs(a - ref[1]) for _, _, a, _ in rows if a is not None]
    pos = np.concatenate([e[e > 0] for e in errs]) if errs else np.empty(0)
    norm = LogNorm(vmin=max(pos.min(), pos.max() * 1e-8), vmax=pos.max()) if pos.size else None
    extent = [axes_1d[0][0], axes_1d[0][-1], axes_1d[1][0], axes_1d[1][-1]] if shape else None

    def image(ax, v, **kw):
        im = ax.imshow(v.reshape(shape), origin="lower", extent=extent, aspect="auto", **kw)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set(xlabel=names[0], ylabel=names[1])

    for (display, u, at_ref, note), row in zip(rows, axs):
        if u is None:
            for ax in row:
                ax.axis("off")
            row[1].text(0.5, 0.5, f"{display}: {note}", ha="center", va="center",
                        transform=row[1].transAxes)
            continue
        if shape is None:  # one coordinate: curves instead of images
            x = axes_1d[0]
            row[0].plot(x, u, color=palette[display])
            if star is not None:
                row[1].plot(x, star, color="0.2")
                row[2].semilogy(x, np.abs(u - star), color=palette[display])
        else:
            image(row[0], u, vmin=vmin, vmax=vmax, cmap="viridis")
            if star is not None:
                image(row[1], star, vmin=vmin, vmax=vmax, cmap="viridis")
                image(row[2], np.abs(u - star), norm=norm, cmap="magma")
        if star is None and ref is not None:  # the reference points, projected
            sc = row[1].scatter(ref[0][:, 0], ref[0][:, 1], c=ref[1], s=6, cmap="viridis",
                                vmin=vmin, vmax=vmax)
            fig.colorbar(sc, ax=row[1], fraction=0.046, pad=0.04)
            sc = row[2].scatter(ref[0][:, 0], ref[0][:, 1], c=np.abs(at_ref - ref[1]), s=6,
                                cmap="magma", norm=norm)
            fig.colorbar(sc, ax=row[2], fraction=0.046, pad=0.04)
            for ax in row[1:]:
                ax.set(xlabel=names[0], ylabel=names[1] if len(names) > 1 else "")
        elif star is None:
            for ax in row[1:]:
                ax.axis("off")
            row[1].text(0.5, 0.5, "no exact solution and no reference:\nno error to show",
                        ha="center", va="center", transform=row[1].transAxes)
        row[0].set_title(f"{display}: u_θ\n({note})", fontsize=8)
        if star is not None:
            row[1].set_title("u*", fontsize=8)
            row[2].set_title(f"|u_θ − u*| ({display})", fontsize=8)
        elif ref is not None:
            row[1].set_title("reference u at its points (first two coordinates)", fontsize=8)
            row[2].set_title(f"|u_θ − u_ref| at the reference points ({display})", fontsize=8)
    where = f"; {fixed}" if fixed else ""
    fig.suptitle(f"{problem}: the final net of each optimizer's median run (by final L2) on "
                 f"the slice {' × '.join(names)}{where}", fontsize=9)
    fig.tight_layout()
    return fig


def draw(results_dir, name: str, out, dpi: int = 110, paper_dir=None) -> str:
    """Draw figure ``name`` (``speedup``, ``convergence_<p>``, …) from the tables into ``out``;
    ``paper_dir``: the paper's histories for ``paper_overlay_<p>`` (default: the repository's)."""
    plt, sns = _setup()
    tables = load(results_dir)
    palette = _palette(tables)
    family, problem = families.parse_figure(name)
    args = (problem,) if problem is not None else ()
    extra = {"paper_dir": paper_dir} if family == "paper_overlay" else {}
    if family == "solution":  # the runs' final parameters sit beside the tables
        extra = {"results_dir": Path(results_dir)}
    fig = _DRAW[family](tables, plt, sns, palette, *args, **extra)
    _save(fig, out, dpi)
    return str(out)


#: Figure family -> the function that draws it: ``fig_<family>`` for every family (KeyError at
#: import if one is missing).
_DRAW = {family: globals()[f"fig_{family}"] for family in families.FAMILIES}
