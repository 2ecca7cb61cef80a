# pinn-ng benchmark pipeline: optimizer × problem × batch size × seed grid -> runs -> tables
# -> figures.  Presets: config/default.yaml (loaded here), `--configfile config/paper.yaml`
# or `--configfile config/smoke.yaml` on top; overrides with `--config key=value`.
# The preset is validated (the schema shipped with pinn_ng, with the registries' names filled
# in; pinn_ng.pipeline.config) before any job runs.  config/*.yaml link to the presets shipped
# in pinn_ng/pipeline/presets/.  Every training, gathering and drawing job calls the `pinn-ng`
# command line; the Nyström table is a benchmark, bench/nystrom_table.py (run with the Python
# that runs this Snakefile).  See README "The benchmark pipeline".
# `snakemake --report report.html` (after a run) bundles the figures and tables marked with
# report() below, with the captions under report/, into one self-contained HTML file.

import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pinn_ng.pipeline import config as pcfg


configfile: os.path.join(workflow.basedir, "config", "default.yaml")


report: "report/workflow.rst"


try:
    PLAN = pcfg.plan(config)
except pcfg.ConfigError as err:  # the user's preset: one line naming the key, no traceback
    print(f"pinn-ng preset: error: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(2)
RES = PLAN.results_dir
FIG = PLAN.figures_dir
RUNS = PLAN.runs
DPI = PLAN.config.get("figure_dpi", 110)
GPUS = int(PLAN.config.get("gpus_per_run", 0) or 0)
DEVICE = PLAN.config.get("device", "any")
NYSTROM_TABLE = shlex.join([sys.executable, os.path.join(workflow.basedir, "bench",
                                                         "nystrom_table.py")])



def _resource_values(resources):
    """Snakemake's resources as plain values (a value computed per job counts as set)."""
    return {name: getattr(res, "raw", res) for name, res in dict(resources or {}).items()}


onstart:
    # Before the first job (never in a dry run): checks that would otherwise fail in every job.
    executor = getattr(workflow.executor_plugin, "name", None)
    problem = None
    if executor == "slurm":  # the login node; jobs run under the plugin's "slurm-jobstep"
        settings = workflow.resource_settings
        problem = pcfg.slurm_settings_error(
            _resource_values(settings._parsed_default_resources),
            {rule: _resource_values(res)
             for rule, res in dict(settings.overwrite_resources or {}).items()},
            [r.name for r in workflow.rules if r.name not in ("all", "runs", "tables")],
            no_account=bool(getattr(workflow.executor_settings, "no_account", False)))
        problem = problem and f"pinn-ng slurm profile: error: {problem}"
    elif DEVICE != "any" and executor in (None, "local"):  # jobs run here: check here
        from pinn_ng.pipeline import devices
        from pinn_ng.pipeline.errors import UserError

        try:
            devices.require(DEVICE)
        except UserError as err:
            problem = f"pinn-ng preset: error: {err}"
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)


def total_cores():
    """--cores; 1 where none is given (e.g. `snakemake --report report.html`, which runs no job)."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


wildcard_constraints:
    run_id="|".join(map(re.escape, RUNS)) or "NO_RUNS",
    figure="|".join(PLAN.figures) or "NO_FIGURES",


TABLES = ("curves", "summary", "summary_by_config", "experiments")


def table_targets():
    out = [f"{RES}/{name}.csv" for name in TABLES] if RUNS else []
    if PLAN.nystrom_table:
        out += [f"{RES}/nystrom_table.csv", f"{RES}/nystrom_table.md"]
    if RUNS:
        out.append(f"{RES}/paper_comparison.md")
    return out


rule all:
    input:
        table_targets(),
        expand(f"{FIG}/{{figure}}.png", figure=PLAN.figures),


rule runs:
    """Only the training runs (no tables, no figures)."""
    input:
        expand(f"{RES}/runs/{{run_id}}/meta.json", run_id=list(RUNS)),


rule tables:
    input:
        table_targets(),


rule run:
    """One training run -> curve.csv + meta.json, written atomically (meta.json last)."""
    output:
        curve=f"{RES}/runs/{{run_id}}/curve.csv",
        meta=f"{RES}/runs/{{run_id}}/meta.json",
    params:
        spec=lambda wc: json.dumps(RUNS[wc.run_id], sort_keys=True),
        out=lambda wc: f"{RES}/runs/{wc.run_id}",
    log:
        f"{RES}/logs/{{run_id}}.log",
    # One run at a time by default (run_threads: 0 = all cores), so that runs never compete
    # for cores and seconds per step stay comparable.
    threads: PLAN.run_threads(total_cores())
    resources:
        gpu=GPUS,
        runtime=lambda wc: pcfg.budget_minutes(RUNS[wc.run_id]),
    shell:
        "pinn-ng run --no-progress --device {DEVICE} --spec {params.spec:q} --out {params.out:q} "
        "2> {log:q}"


rule manifest:
    """Which run belongs to which experiment (changes when the preset does)."""
    output:
        f"{RES}/manifest.json",
    params:
        manifest=json.dumps(PLAN.manifest(), sort_keys=True, indent=1),
    run:
        pcfg_manifest = params.manifest
        with open(output[0], "w") as f:
            f.write(pcfg_manifest + "\n")


rule gather:
    input:
        manifest=f"{RES}/manifest.json",
        metas=expand(f"{RES}/runs/{{run_id}}/meta.json", run_id=list(RUNS)),
    output:
        **{name: report(f"{RES}/{name}.csv", caption=f"report/{name}.rst", category="Tables",
                        labels={"table": f"{name}.csv"})
           for name in TABLES},
    shell:
        "pinn-ng gather --runs-dir {RES}/runs --manifest {input.manifest} --out-dir {RES}"


rule figure:
    input:
        rules.gather.output,
    output:
        # One caption for every figure; it picks its text by the `figure` wildcard.
        report(f"{FIG}/{{figure}}.png", caption="report/figure.rst", category="Figures",
               labels={"figure": "{figure}"}),
    shell:
        "pinn-ng figures --results {RES} --figure {wildcards.figure} --out {output:q} "
        "--dpi {DPI}"


rule nystrom_table:
    """Appendix B: standard vs GPU-efficient Nyström, time and memory."""
    output:
        csv=report(f"{RES}/nystrom_table.csv", caption="report/nystrom_table.rst",
                   category="Tables", labels={"table": "nystrom_table.csv"}),
        md=f"{RES}/nystrom_table.md",
    params:
        spec=json.dumps(PLAN.nystrom_table or {}, sort_keys=True),
        dtype=PLAN.config["dtype"],
    log:
        f"{RES}/logs/nystrom_table.log",
    threads: total_cores()
    resources:
        gpu=GPUS,
    shell:
        NYSTROM_TABLE + " --spec {params.spec:q} --dtype {params.dtype} --device {DEVICE} "
        "--out-csv {output.csv:q} --out-md {output.md:q} 2> {log:q}"


rule paper_comparison:
    """The paper's headline numbers next to ours, computed from the gathered tables."""
    input:
        rules.gather.output,
        [f"{RES}/nystrom_table.csv"] if PLAN.nystrom_table else [],
    output:
        report(f"{RES}/paper_comparison.md", caption="report/paper_comparison.rst",
               category="Tables", labels={"table": "paper_comparison.md"}),
    shell:
        "pinn-ng compare --results {RES} --out {output:q}"
