"""Figures of a tuning study, from its ``best.json`` and ``results.csv`` (one row per trial).

- ``sensitivity_<study>``: one row of panels per search (problem, optimizer, N), one panel per
  tuned hyper-parameter: the final L2 error of every trial against that hyper-parameter (log
  axis where its space is log-uniform; a choice on evenly spaced positions), coloured by a
  second tuned hyper-parameter (the next one in the space; by stage where there is none).
  Stage-1 trials are circles, stage-2 triangles, the best trial a star; diverged or failed
  trials (score +inf) are red crosses on the top edge of the panel.
- ``best_so_far_<study>``: the best final L2 error among the first k trials against k, one
  line per optimizer and one panel per problem; stage 2 starts at the dotted line.

Drawn as :mod:`pinn_ng.pipeline.figures` draws (Agg, fixed dpi, no Software metadata), so the
same tables give byte-identical PNG files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from . import tuning
from .figures import _save, _setup


def _load(best_path, results_path):
    best = json.loads(open(best_path, encoding="utf-8").read())
    res = pd.read_csv(results_path, keep_default_na=False, na_values=["nan", "NaN", ""])
    return best, res


def _values(col: pd.Series) -> list:
    """A column of JSON-typed hyper-parameter values as Python values."""
    out = []
    for v in col:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out.append(v)
    return out


def _x(dim, values):
    """Positions on the x axis: the values, or the index of a choice."""
    if dim.kind == "choice":
        keys = [json.dumps(c) for c in dim.values]
        return np.array([keys.index(json.dumps(_num(v))) if json.dumps(_num(v)) in keys
                         else np.nan for v in values], dtype=float)
    return np.array([float(v) if v is not None and v == v else np.nan for v in values])


def _num(v):
    """pandas reads 0 and 0.3 of one column as floats: back to the choice's own spelling."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def fig_sensitivity(best, res, plt):
    from matplotlib import colors as mcolors
    from matplotlib.transforms import blended_transform_factory

    searches = best["searches"]
    ncols = max(len(s["space"]) for s in searches)
    fig, axes = plt.subplots(len(searches), ncols, squeeze=False,
                             figsize=(max(7.0, 4.6 * ncols), 3.4 * len(searches) + 0.6))
    for i, s in enumerate(searches):
        dims = tuning.parse_space(s["space"], "space")
        r = res[(res.problem == s["problem"]) & (res.label == s["label"]) & (res.N == s["N"])]
        score = r.score.to_numpy(float)
        ok = np.isfinite(score)
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(dims):
                ax.set_axis_off()
                continue
            d = dims[j]
            x = _x(d, _values(r[f"hp_{d.name}"]))
            other = dims[(j + 1) % len(dims)] if len(dims) > 1 else None
            if other is not None:
                c = _x(other, _values(r[f"hp_{other.name}"]))
                if other.kind == "loguniform":
                    norm = mcolors.LogNorm(other.lo, other.hi)
                elif other.kind == "choice":
                    norm = mcolors.Normalize(0, max(1, len(other.values) - 1))
                else:
                    norm = mcolors.Normalize(other.lo, other.hi)
                clabel = other.name
            sc = None
            for stage, marker, color in ((1, "o", "tab:blue"), (2, "^", "tab:orange")):
                m = ok & (r.stage.to_numpy() == stage)
                if not m.any():
                    continue
                colour = {"c": c[m], "cmap": "viridis", "norm": norm} if other is not None \
                    else {"color": color}  # one hyper-parameter: coloured by stage
                sc = ax.scatter(x[m], score[m], marker=marker, s=28, edgecolors="0.2",
                                linewidths=0.4, label=f"stage {stage}", zorder=3, **colour)
            if s["best"] is not None:
                b = s["best"]["tuned"]
                bx = _x(d, [b.get(d.name)])[0]
                ax.scatter([bx], [s["best"]["final_l2"]], marker="*", s=180, c="none",
                           edgecolors="crimson", linewidths=1.2, label="best", zorder=4)
            ax.set_yscale("log")
            if ok.any():
                lo, hi = score[ok].min(), score[ok].max()
                ax.set_ylim(lo / 1.6, hi * 2.5)
            bad = ~ok
            if bad.any():  # diverged / failed: on the top edge, x in data coordinates
                trans = blended_transform_factory(ax.transData, ax.transAxes)
                ax.scatter(x[bad], np.full(bad.sum(), 0.97), marker="x", color="red", s=30,
                           transform=trans, clip_on=False, zorder=5,
                           label=f"diverged/failed ({bad.sum()})")
            if d.kind == "loguniform":
                ax.set_xscale("log")
                ax.set_xlim(d.lo / 1.5, d.hi * 1.5)
            elif d.kind == "choice":
                ax.set_xticks(range(len(d.values)))
                ax.set_xticklabels([tuning._fmt_value(v) for v in d.values], fontsize=7,
                                   rotation=30 if len(d.values) > 5 else 0)
                ax.set_xlim(-0.5, len(d.values) - 0.5)
            else:
                pad = 0.03 * (d.hi - d.lo)
                ax.set_xlim(d.lo - pad, d.hi + pad)
            for edge in ((d.lo, d.hi) if d.kind != "choice" else ()):
                ax.axvline(edge, color="0.6", linestyle=":", linewidth=0.8)
            if sc is not None and other is not None:
                cb = fig.colorbar(sc, ax=ax, pad=0.02)
                cb.set_label(clabel, fontsize=8)
                if other.kind == "choice":  # the choices themselves, not their positions
                    cb.set_ticks(range(len(other.values)))
                    cb.set_ticklabels([tuning._fmt_value(v) for v in other.values])
                cb.ax.tick_params(labelsize=7)
            ax.set_xlabel(f"{d.name}  ({d.describe()})", fontsize=8)
            ax.set_ylabel("final L2 error", fontsize=8)
            ax.set_title(f"{s['display']} on {s['problem']}, N = {s['N']:,}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="best", framealpha=0.6)
    fig.suptitle(f"tuning study {best['study']}: final L2 after the budget against each tuned "
                 "hyper-parameter\ndotted: the search range; red × on the top edge: diverged "
                 "or failed (scored +∞)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_best_so_far(best, res, plt):
    problems = sorted({s["problem"] for s in best["searches"]})
    fig, axes = plt.subplots(1, len(problems), figsize=(max(7.0, 5.4 * len(problems)), 3.9),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, prob in zip(axes[0], problems):
        for k, s in enumerate([s for s in best["searches"] if s["problem"] == prob]):
            r = res[(res.problem == prob) & (res.label == s["label"]) & (res.N == s["N"])]
            r = r.sort_values(["stage", "index"], kind="stable")
            so_far = np.minimum.accumulate(r.score.to_numpy(float))
            n = np.arange(1, len(r) + 1)
            color = colors[k % len(colors)]
            fin = np.isfinite(so_far)
            ax.step(n[fin], so_far[fin], where="post", color=color, linewidth=1.4,
                    label=f"{s['display']}, N = {s['N']:,}")
            ax.scatter(n, np.where(np.isfinite(r.score), r.score, np.nan), color=color, s=10,
                       alpha=0.5)
            n1 = int((r.stage == 1).sum())
            if n1 < len(r):
                ax.axvline(n1 + 0.5, color=color, linestyle=":", linewidth=1)
        ax.set(yscale="log", xlabel="trials (stage 1, then stage 2 after the dotted line)",
               ylabel="best final L2 so far", title=prob)
        ax.legend(fontsize=7)
    fig.suptitle(f"tuning study {best['study']}: best final L2 against the number of trials\n"
                 "(dots: each trial's own final L2; diverged or failed trials have none)",
                 fontsize=9)
    fig.tight_layout()
    return fig


_DRAW = {"sensitivity": fig_sensitivity, "best_so_far": fig_best_so_far}
assert tuple(_DRAW) == tuning.FIGURES


def draw(best_path, results_path, name: str, out, dpi: int = 110) -> str:
    """Draw ``sensitivity_<study>`` or ``best_so_far_<study>`` into ``out``."""
    kind = next((k for k in _DRAW if name.startswith(k + "_")), None)
    if kind is None:
        raise tuning.TuningError(f"unknown tuning figure {name!r}; figures: "
                                 f"{', '.join(f'{k}_<study>' for k in _DRAW)}")
    plt, _ = _setup()
    best, res = _load(best_path, results_path)
    if not math.isfinite(len(res)) or res.empty:
        raise tuning.TuningError(f"{results_path}: no trials")
    fig = _DRAW[kind](best, res, plt)
    _save(fig, out, dpi)
    return str(out)
