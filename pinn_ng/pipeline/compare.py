"""``pinn-ng compare``: the paper's headline numbers next to ours, from the gathered tables.

Writes ``results/paper_comparison.md``: for each headline claim of the paper (Poisson 5d;
the paper's headline results) the paper's number, ours, and how ours was obtained.
The paper's numbers are facts of the paper, written once below (:data:`PAPER`).  Every number
of ours is computed here from ``summary.csv``, ``curves.csv``, ``experiments.csv`` and, when
present, ``nystrom_table.csv``; nothing of ours is typed in.  A claim whose runs are not in the
tables says so ("not run in this preset").

Runs are found by experiment kind (``convergence``, ``scaling``, ``nystrom``,
``effective_dimension``) and by the optimizer *labels* of config/default.yaml: ``engd``
(Cholesky solve), ``engd_lstsq`` (least squares, as the paper's code), ``engd_w``,
``engd_w_fixed``, ``spring``, ``spring_fixed``, ``sgd``, ``adam``, ``hessian_free``,
``engd_w_nystrom``, ``engd_w_nystrom_gpu``.

Also ``paper_equal_steps.csv`` and ``.md`` beside it (:func:`equal_steps`): every run of the
tables that has one of the paper authors' logged runs (:mod:`pinn_ng.pipeline.paper_curves`)
next to it at equal steps: at 10, 25, 50, 100, 250, 500, 1000, 2500, … where we evaluated, and
at our last step, our L2, the paper's, their ratio, and a flag when the ratio is outside
[1/3, 3].  A flagged run is explained by the human-written ``explanations.yaml`` beside the
histories, or the table says it is not.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from . import paper_curves, records

PROBLEM = "poisson5d"

#: The paper's numbers (Guzmán-Cordero et al. 2025, arXiv 2505.12149): Poisson 5d, 7000 s per optimizer on an RTX 6000.
PAPER = {
    "budget_seconds": 7000.0,
    "steps": {"engd": 122, "engd_w": 5509},
    "final_l2": {"sgd": 5.9e-3, "adam": 3.1e-3, "hessian_free": 7.7e-5, "engd": 5.7e-5,
                 "engd_w": 6.8e-7, "spring": 1.1e-6, "spring_fixed": 2.6e-7},
    "engd_final_l2": 5.7e-5,
    # time (s) to reach ENGD's final error; ENGD-W's ~130 steps: 170 s at 5509 steps / 7000 s
    "reach": {"engd_w": (170.0, 130), "spring": (110.0, None)},
    "nystrom_step_speedup": "~2x per step at sketch 10 % (N = 1k-50k), gain early in training "
                            "only; none above 25 %",
    "nystrom_gpu_vs_standard": {0.2: 0.132 / 0.0099, 0.4: 0.625 / 0.0253, 0.6: 2.114 / 0.0461,
                                0.8: 4.772 / 0.0725},
    "d_eff_fraction": 0.5,  # "stays above 50 % of N" (ENGD-W, 5d, N = 3500)
}

DISPLAY = {"sgd": "SGD", "adam": "Adam", "hessian_free": "Hessian-free", "engd": "ENGD",
           "engd_w": "ENGD-W", "engd_w_fixed": "ENGD-W (fixed η)", "spring": "SPRING",
           "spring_fixed": "SPRING (fixed η)"}


def _fmt(x, spec=".2e") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def _load(results_dir: Path):
    summary = pd.read_csv(results_dir / "summary.csv")
    curves = pd.read_csv(results_dir / "curves.csv")
    exps = pd.read_csv(results_dir / "experiments.csv")
    table = results_dir / "nystrom_table.csv"
    nys = pd.read_csv(table) if table.exists() else None
    return summary, curves, exps, nys


def _runs_of(summary, exps, kind, problem=PROBLEM):
    ids = set(exps.loc[exps["kind"] == kind, "run_id"])
    sel = summary[summary["run_id"].isin(ids) & (summary["problem"] == problem)]
    return sel.sort_values(["label", "N", "replicate"], kind="stable")


def _one(df, label):
    """The run of ``label`` (first replicate if several); None if absent."""
    sel = df[df["label"] == label]
    return None if sel.empty else sel.iloc[0]


def _first_reach(curves, run_id, threshold):
    """(time, step) of the first evaluation after step 0 with L2 ≤ threshold, or None."""
    c = curves[(curves["run_id"] == run_id) & (curves["step"] > 0)
               & (curves["l2"] <= threshold)]
    if c.empty:
        return None
    row = c.sort_values("step").iloc[0]
    return float(row["time"]), int(row["step"])


def _sps(row):
    """Median seconds per step if recorded, else the mean."""
    if row is None:
        return math.nan
    med = row.get("median_seconds_per_step")
    if med is not None and math.isfinite(float(med)):
        return float(med)
    return float(row["seconds_per_step"])


def comparison(results_dir) -> tuple[str, list[dict]]:
    """The comparison as Markdown, and its rows (claim, paper, ours, how)."""
    results_dir = Path(results_dir)
    summary, curves, exps, nys = _load(results_dir)
    rows: list[dict] = []

    def add(claim, paper, ours, how):
        rows.append({"claim": claim, "paper": paper, "ours": ours, "how": how})

    conv = _runs_of(summary, exps, "convergence")
    scaling = _runs_of(summary, exps, "scaling")
    engd, engd_w, spring = (_one(conv, k) for k in ("engd", "engd_w", "spring"))
    budget = None if conv.empty else float(conv["seconds"].max())

    # 1. iterations in the budget
    p_ratio = PAPER["steps"]["engd_w"] / PAPER["steps"]["engd"]
    if engd is not None and engd_w is not None:
        ratio = engd_w["steps"] / max(engd["steps"], 1)
        add("ENGD-W vs ENGD iterations in the same budget",
            f"{PAPER['steps']['engd_w']} vs {PAPER['steps']['engd']} in 7000 s "
            f"({p_ratio:.0f}x)",
            f"{int(engd_w['steps'])} vs {int(engd['steps'])} in {budget:.0f} s ({ratio:.1f}x; "
            f"ENGD by Cholesky)", "convergence runs, N = "
            f"{int(engd_w['N'])}, P = {int(engd_w['P'])}")
    else:
        add("ENGD-W vs ENGD iterations in the same budget", f"{p_ratio:.0f}x", "not run in this preset", "")
    big = scaling[scaling["N"] == scaling["N"].max()] if not scaling.empty else scaling
    w = _one(big, "engd_w")
    for label, what in (("engd", "Cholesky"), ("engd_lstsq", "least squares, as the paper's code")):
        e = _one(big, label)
        e = _one(scaling, label) if e is None else e  # ENGD's cost hardly depends on N
        if e is not None and w is not None:
            add(f"seconds per step, ENGD ({what}) / ENGD-W",
                f"{7000 / 122:.1f} s / {7000 / 5509:.2f} s = {p_ratio:.0f}x (GPU, gelsd)"
                if label == "engd_lstsq" else "–",
                f"{_sps(e):.2f} s / {_sps(w):.2f} s = {_sps(e) / _sps(w):.1f}x",
                f"scaling runs, ENGD at N = {int(e['N'])}, ENGD-W at N = {int(w['N'])}, "
                f"P = {int(w['P'])}")

    # 2. time and steps to reach ENGD's final error
    for label, (p_time, p_steps) in PAPER["reach"].items():
        run = _one(conv, label)
        p_text = f"~{p_time:.0f} s" + (f", ~{p_steps} steps" if p_steps else "")
        if run is None:
            add(f"{DISPLAY[label]}: time to ENGD's final L2 (5.7e-5)", p_text,
                "not run in this preset", "")
            continue
        hit = _first_reach(curves, run["run_id"], PAPER["engd_final_l2"])
        ours = (f"{hit[0]:.0f} s, {hit[1]} steps" if hit else
                f"not within {run['seconds']:.0f} s / {int(run['steps'])} steps "
                f"(best {_fmt(run['best_l2'])})")
        add(f"{DISPLAY[label]}: time and steps to the paper's ENGD final L2 (5.7e-5)",
            p_text, ours, "first evaluation at or below the threshold")
        if engd is not None:
            thr = float(engd["final_l2"])
            start = curves[(curves["run_id"] == engd["run_id"]) & (curves["step"] == 0)]["l2"]
            if not start.empty and thr >= float(start.iloc[0]):
                add(f"{DISPLAY[label]}: time to our ENGD's final L2 ({_fmt(thr)})", p_text,
                    f"– (ENGD did not get below its initial L2 {_fmt(float(start.iloc[0]))} "
                    f"in {int(engd['steps'])} steps)", "same budget, same batches")
                continue
            hit = _first_reach(curves, run["run_id"], thr)
            ours = (f"{hit[0]:.0f} s, {hit[1]} steps (ENGD took {engd['seconds']:.0f} s, "
                    f"{int(engd['steps'])} steps)" if hit else "not within the budget")
            add(f"{DISPLAY[label]}: time to our ENGD's final L2 ({_fmt(thr)})", p_text, ours,
                "same budget, same batches")

    # 3. final L2 per optimizer
    for label, disp in DISPLAY.items():
        run = _one(conv, label)
        ours = "not run in this preset" if run is None else (
            f"{_fmt(float(run['final_l2']))} ({int(run['steps'])} steps, {run['seconds']:.0f} s)")
        add(f"final L2, {disp}", _fmt(PAPER["final_l2"].get(label)), ours,
            "paper: 7000 s on a GPU; ours: the preset's budget")

    # 4. Nyström speed-up per step
    nyk = _runs_of(summary, exps, "nystrom")
    for n in sorted(nyk["N"].unique()) if not nyk.empty else []:
        at = nyk[nyk["N"] == n]
        exact = _one(at, "engd_w")
        for label, name in (("engd_w_nystrom", "standard"), ("engd_w_nystrom_gpu", "GPU-efficient")):
            r = _one(at, label)
            if exact is not None and r is not None:
                add(f"Nyström ({name}, 10 %) speed-up per step at N = {int(n)}",
                    PAPER["nystrom_step_speedup"],
                    f"{_sps(exact) / _sps(r):.2f}x (exact {_sps(exact):.2f} s, "
                    f"Nyström {_sps(r):.2f} s); final L2 {_fmt(float(r['final_l2']))} vs "
                    f"exact {_fmt(float(exact['final_l2']))}",
                    "nystrom runs, equal budget")
    if nys is not None:
        for _, r in nys.iterrows():
            frac = round(float(r["fraction"]), 2)
            paper = PAPER["nystrom_gpu_vs_standard"].get(frac)
            add(f"GPU-efficient vs standard Nyström, N = {int(r['N'])}, sketch {frac:.0%}",
                f"{paper:.0f}x (N = 5000, GPU)" if paper else "–",
                f"{float(r['speedup']):.1f}x ({float(r['standard_seconds']):.3f} s -> "
                f"{float(r['gpu_seconds']):.4f} s)", "nystrom_table.csv")

    # 5. effective dimension
    deff = _runs_of(summary, exps, "effective_dimension")
    for _, run in deff.iterrows():
        c = curves[(curves["run_id"] == run["run_id"]) & (curves["step"] > 0)]
        if "effective_dimension" not in c or c["effective_dimension"].isna().all():
            continue
        frac = c["effective_dimension"].dropna() / float(run["N"])
        add(f"d_eff/N along {run['display']}, N = {int(run['N'])}",
            f"> {PAPER['d_eff_fraction']:.0%} throughout",
            f"min {frac.min():.0%}, last {frac.iloc[-1]:.0%} over {int(run['steps'])} steps",
            "effective_dimension runs")

    lines = ["# The paper's headline results (Poisson 5d) next to ours", "",
             "Paper: Guzmán-Cordero et al., NeurIPS 2025 (arXiv 2505.12149), 7000 s per "
             "optimizer on an RTX 6000 GPU, float64.  Ours: computed by `pinn-ng compare` from "
             "the gathered tables of this run (summary.csv, curves.csv, nystrom_table.csv); "
             "budgets, hardware and seeds are those of the preset.", "",
             "| claim | paper | ours | how |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['how']} |")
    return "\n".join(lines) + "\n", rows


def write(results_dir, out) -> str:
    text, _ = comparison(results_dir)
    records.atomic_write_text(out, text)
    return str(out)


#: Ratios ours / paper outside [1 / RATIO_BOUND, RATIO_BOUND] are flagged.
RATIO_BOUND = 3.0

#: The columns of ``paper_equal_steps.csv``.
EQUAL_STEPS_COLUMNS = ["problem", "label", "display", "run_id", "N", "P", "replicate", "step",
                       "at", "ours_l2", "paper_l2", "paper_at", "ratio", "outside_3x",
                       "paper_file", "paper_run"]


def milestones(last: int) -> list[int]:
    """10, 25, 50, 100, 250, 500, 1000, 2500, … up to ``last``."""
    out, decade = [], 10
    while decade <= last:
        out += [m for m in (decade, decade * 5 // 2, decade * 5) if m <= last]
        decade *= 10
    return out


def equal_steps(results_dir, paper_dir=None) -> pd.DataFrame:
    """Our L2 next to the paper's logged run at equal steps (:data:`EQUAL_STEPS_COLUMNS`).

    One row per run with a paper history and step: each of :func:`milestones` our curve has a
    row at (``at`` = ``"milestone"``) and our last step (``"last"``).  ``paper_l2`` and
    ``paper_at`` come from :func:`pinn_ng.pipeline.paper_curves.l2_at`; ``ratio`` is ours /
    paper (NaN where either is); ``outside_3x`` flags a ratio outside [1/3, 3].
    """
    index = paper_curves.load_index(paper_dir)
    summary = pd.read_csv(Path(results_dir) / "summary.csv")
    curves = pd.read_csv(Path(results_dir) / "curves.csv")
    rows = []
    for _, run in summary.sort_values(["problem", "label", "N", "replicate", "run_id"],
                                      kind="stable").iterrows():
        ref = paper_curves.find(index, run["problem"], run["label"])
        if ref is None:
            continue
        mine = curves[curves["run_id"] == run["run_id"]].sort_values("step")
        if mine.empty:
            continue
        by_step = mine.drop_duplicates("step", keep="last").set_index("step")["l2"]
        last = int(by_step.index.max())
        steps = [(s, "milestone") for s in milestones(last) if s in by_step.index and s != last]
        steps.append((last, "last"))
        paper = paper_curves.l2_at(paper_curves.load_history(ref), [s for s, _ in steps])
        for (s, at), p_l2, p_at in zip(steps, paper["paper_l2"], paper["paper_at"]):
            ours = float(by_step[s])
            ratio = ours / p_l2 if math.isfinite(ours) and math.isfinite(p_l2) else math.nan
            rows.append({"problem": run["problem"], "label": run["label"],
                         "display": run["display"], "run_id": run["run_id"], "N": run["N"],
                         "P": run["P"], "replicate": run["replicate"], "step": s, "at": at,
                         "ours_l2": ours, "paper_l2": p_l2, "paper_at": p_at, "ratio": ratio,
                         "outside_3x": bool(math.isfinite(ratio) and not (
                             1 / RATIO_BOUND <= ratio <= RATIO_BOUND)),
                         "paper_file": ref["file"], "paper_run": ref["run"]})
    return pd.DataFrame(rows, columns=EQUAL_STEPS_COLUMNS)


def equal_steps_markdown(table: pd.DataFrame, paper_dir=None) -> str:
    """:func:`equal_steps`'s table as Markdown: one table per run, its explanation under it."""
    index = paper_curves.load_index(paper_dir)
    notes = paper_curves.explanations(paper_dir)
    where = "results/reference/paper/" if paper_dir is None else f"{paper_dir}/"
    lines = ["# Our L2 error next to the paper authors' own runs, at equal steps", "",
             f"Paper: the authors' logged best run of each optimizer ({where}; its README "
             "says how they were run).  Step s is the state after s updates: "
             "the authors' logged row s − 1.  Their logs are "
             "sparse; between logged rows their L2 is interpolated linearly in (log step, "
             "log L2) (column \"paper value\"); past their last logged row there is none.  "
             f"Ratios outside [1/{RATIO_BOUND:g}, {RATIO_BOUND:g}] are flagged; the "
             f"explanations come from {where}{paper_curves.EXPLANATIONS}.",
             ""]
    if table.empty:
        lines.append("No run of these tables has a paper history (problems and labels: "
                     + ", ".join(f"{p} {lab}" for p, lab in zip(index.problem, index.label))
                     + "; also " + ", ".join(f"{a} (read as {b})" for a, b in
                                             paper_curves.ALIASES.items()) + ").")
        return "\n".join(lines) + "\n"
    for problem, by_problem in table.groupby("problem", sort=False):
        lines += [f"## {problem}", ""]
        for run_id, t in by_problem.groupby("run_id", sort=False):
            first = t.iloc[0]
            ref = paper_curves.find(index, problem, first["label"])
            note = notes.get(problem, {}).get(first["label"])
            paper_n = int(ref["N_Omega"]) + int(ref["N_dOmega"])
            lines += [f"### {first['display']} (`{first['label']}`), replicate "
                      f"{int(first['replicate'])}, N = {int(first['N']):,}", "",
                      f"Ours: `{run_id}`, P = {int(first['P']):,}"
                      + ("" if int(first["N"]) == paper_n else
                         f", not the paper's batch ({paper_n:,})")
                      + f".  Paper: `{ref['file']}` ({ref['optimizer']}, run "
                      f"{ref['run']}, net {ref['model']}, N_Ω = {int(ref['N_Omega']):,}, "
                      f"N_∂Ω = {int(ref['N_dOmega']):,}, line search "
                      f"{'yes' if str(ref['line_search']) == 'True' else 'no'}).", "",
                      "| step | ours L2 | paper L2 | paper value | ours / paper | |",
                      "|---:|---:|---:|---|---:|---|"]
            for _, r in t.iterrows():
                flag = "" if not r["outside_3x"] else (
                    "outside 3× (explained below)" if note else "outside 3×, not explained")
                step = f"{int(r['step'])}" + (" (our last)" if r["at"] == "last" else "")
                lines.append(f"| {step} | {_fmt(r['ours_l2'])} | {_fmt(r['paper_l2'])} | "
                             f"{r['paper_at']} | {_fmt(r['ratio'], '.3g')} | {flag} |")
            lines.append("")
            if note:
                lines += [f"Explanation: {note}", ""]
    return "\n".join(lines)


def write_equal_steps(results_dir, out_dir, paper_dir=None) -> list[str]:
    """Write ``paper_equal_steps.csv`` and ``.md`` into ``out_dir``; their paths."""
    table = equal_steps(results_dir, paper_dir)
    text = equal_steps_markdown(table, paper_dir)
    csv_path, md_path = (Path(out_dir) / f"paper_equal_steps.{ext}" for ext in ("csv", "md"))
    records.atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.6g",
                                                     lineterminator="\n"))
    records.atomic_write_text(md_path, text)
    return [str(csv_path), str(md_path)]
