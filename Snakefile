# pinn-ng benchmark pipeline: optimizer × problem × batch size × seed grid -> runs -> tables
# -> figures.  Presets: config/default.yaml (loaded here), `--configfile config/paper.yaml`
# or `--configfile config/smoke.yaml` on top; overrides with `--config key=value`.
# The preset is validated (the schema shipped with pinn_ng, with the registries' names filled
# in; pinn_ng.pipeline.config) before any job runs.  config/*.yaml link to the presets shipped
# in pinn_ng/pipeline/presets/.  Every job (training, gathering, drawing, the Nyström table)
# calls the `pinn-ng` command line, so an installed pinn-ng[pipeline] runs this Snakefile
# without a checkout's bench/.  See README "The benchmark pipeline".
# `snakemake --report report.html` (after a run) bundles the figures and tables marked with
# report() below, with the captions under report/, into one self-contained HTML file.
# Tuning (the preset's `tuning` section; pinn_ng.pipeline.tuning): per study, a trial table per
# stage (written once, seeded), one job per trial (an ordinary run record; a failed or crashed
# trial is recorded as such and scores +inf), best.json + an appendix-style table, and the
# final runs of the best configurations (experiments' `tuned`), which feed the figures.

import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from pinn_ng.pipeline import config as pcfg


configfile: os.path.join(workflow.basedir, "config", "default.yaml")


report: "report/workflow.rst"


# Plugins (pinn_ng.plugins): a preset's `plugins` are paths relative to the preset file that
# lists them (or module names); plan() loads them, with PINN_NG_PLUGINS and installed entry
# points, before it checks a name, and every job inherits them through PINN_NG_PLUGINS.
if config.get("plugins"):
    config["plugins"] = pcfg.preset_plugins(
        config, [os.path.join(workflow.basedir, "config", "default.yaml"),
                 *map(str, workflow.overwrite_configfiles or ())])
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
ON_CONTENTION = PLAN.config.get("on_contention", "mark")
# the preset's `checkpoint_every` (absent: each run's default); not part of any run id
CHECKPOINT = ("" if PLAN.config.get("checkpoint_every") is None
              else f"--checkpoint-every {float(PLAN.config['checkpoint_every']):g} ")
# every job's JAX (runs, trials, the Nyström table) shares one persistent compilation cache
os.environ.update(PLAN.compilation_cache_env())
os.environ.update(PLAN.plugins_env())
# The paper's logged histories sit beside this Snakefile, not in an installed pinn-ng.
PAPER_DIR = shlex.quote(os.path.join(workflow.basedir, "results", "reference", "paper"))



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
    cache_problem = None if problem else PLAN.compilation_cache_error()
    if cache_problem:
        problem = f"pinn-ng preset: error: {cache_problem}"
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)


def total_cores():
    """--cores; 1 where none is given (e.g. `snakemake --report report.html`, which runs no job)."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


STUDIES = PLAN.studies
TUNED = PLAN.tuned
TUNE = f"{RES}/tuning"


def trial_threads(cores):
    n = int((PLAN.config.get("tuning") or {}).get("trial_threads", 0) or 0)
    return max(1, min(n, cores)) if n else max(1, cores)


wildcard_constraints:
    run_id="|".join(map(re.escape, RUNS)) or "NO_RUNS",
    tuned_id="|".join(map(re.escape, TUNED)) or "NO_TUNED_RUNS",
    figure="|".join(PLAN.figures) or "NO_FIGURES",
    study="|".join(map(re.escape, STUDIES)) or "NO_STUDIES",
    stage="1|2",
    trial="[A-Za-z0-9_.-]+",
    tuning_figure="|".join(PLAN.tuning_figures) or "NO_TUNING_FIGURES",


TABLES = ("curves", "summary", "summary_by_config", "experiments")


def table_targets():
    out = [f"{RES}/{name}.csv" for name in TABLES] if (RUNS or TUNED) else []
    out += [f"{RES}/leaderboard.md"] if (RUNS or TUNED) else []
    if PLAN.nystrom_table:
        out += [f"{RES}/nystrom_table.csv", f"{RES}/nystrom_table.md"]
    if RUNS:
        out.append(f"{RES}/paper_comparison.md")
    return out


def tuning_targets():
    return [f"{TUNE}/{name}/{f}" for name in STUDIES for f in ("best.json", "best.md")] + \
        [f"{FIG}/{name}.png" for name in PLAN.tuning_figures]


ALL_RUN_METAS = [f"{RES}/runs/{rid}/meta.json" for rid in list(RUNS) + list(TUNED)]


rule all:
    input:
        table_targets(),
        expand(f"{FIG}/{{figure}}.png", figure=PLAN.figures),
        tuning_targets(),


rule runs:
    """Only the training runs (no tables, no figures)."""
    input:
        ALL_RUN_METAS,


rule tune:
    """Only the tuning studies: trials, best.json, tables and figures."""
    input:
        tuning_targets(),


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
    # for cores and seconds per step stay comparable; given fewer, a timed job is pinned to
    # cores of its own (PINN_NG_CORES, pinn_ng.pipeline.contention.claim_cores).
    threads: PLAN.run_threads(total_cores())
    resources:
        gpu=GPUS,
        runtime=lambda wc: pcfg.budget_minutes(RUNS[wc.run_id]),
    shell:
        "PINN_NG_CORES={threads} pinn-ng run --no-progress --device {DEVICE} "
        "--on-contention {ON_CONTENTION} {CHECKPOINT}--spec {params.spec:q} "
        "--out {params.out:q} 2> {log:q}"


rule tuned_run:
    """A final run of a study's best configuration (hyper-parameters from best.json)."""
    input:
        best=lambda wc: f"{TUNE}/{TUNED[wc.tuned_id]['study']}/best.json",
    output:
        curve=f"{RES}/runs/{{tuned_id}}/curve.csv",
        meta=f"{RES}/runs/{{tuned_id}}/meta.json",
    params:
        spec=lambda wc: json.dumps(TUNED[wc.tuned_id]["spec"], sort_keys=True),
        search=lambda wc: "{problem}:{label}:{n}".format(**TUNED[wc.tuned_id]),
        out=lambda wc: f"{RES}/runs/{wc.tuned_id}",
    log:
        f"{RES}/logs/{{tuned_id}}.log",
    threads: PLAN.run_threads(total_cores())
    resources:
        gpu=GPUS,
        runtime=lambda wc: pcfg.budget_minutes(TUNED[wc.tuned_id]["spec"]),
    shell:
        "PINN_NG_CORES={threads} pinn-ng tune final --best {input.best:q} "
        "--search {params.search:q} --on-contention {ON_CONTENTION} {CHECKPOINT}"
        "--spec {params.spec:q} --out {params.out:q} 2> {log:q}"


rule tune_study:
    """A study's searches (spaces, base run specs, seed), as the trial tables read them."""
    output:
        f"{TUNE}/{{study}}/study.json",
    params:
        study=lambda wc: json.dumps(STUDIES[wc.study].to_json(), sort_keys=True, indent=1),
    run:
        with open(output[0], "w") as f:
            f.write(params.study + "\n")


def stage1_metas(wc):
    return [f"{TUNE}/{wc.study}/stage1/runs/{t}/meta.json"
            for t in STUDIES[wc.study].trial_ids(1)]


rule tune_trials:
    """A stage's trial table, written once: Sobol draws seeded by (search seed, problem,
    label, N, stage), or a grid; stage 2 narrows around stage 1's best trials."""
    input:
        study=f"{TUNE}/{{study}}/study.json",
        previous=lambda wc: [f"{TUNE}/{wc.study}/stage1/trials.csv"] + stage1_metas(wc)
        if wc.stage == "2" else [],
    output:
        f"{TUNE}/{{study}}/stage{{stage}}/trials.csv",
    params:
        previous=lambda wc: f"--stage1-table {TUNE}/{wc.study}/stage1/trials.csv "
        f"--stage1-runs {TUNE}/{wc.study}/stage1/runs" if wc.stage == "2" else "",
    shell:
        "pinn-ng tune trials --study {input.study:q} --stage {wildcards.stage} "
        "{params.previous} --out {output:q}"


rule tune_trial:
    """One trial = one ordinary run record.  An exception is recorded by `pinn-ng tune trial`
    itself; a crashed process (killed for memory, a segfault) by `pinn-ng tune failed`
    after it; both score +inf.  An interrupted trial (exit 130) leaves no record."""
    input:
        f"{TUNE}/{{study}}/stage{{stage}}/trials.csv",
    output:
        curve=f"{TUNE}/{{study}}/stage{{stage}}/runs/{{trial}}/curve.csv",
        meta=f"{TUNE}/{{study}}/stage{{stage}}/runs/{{trial}}/meta.json",
    params:
        out=lambda wc, output: os.path.dirname(output.meta),
    log:
        f"{TUNE}/{{study}}/stage{{stage}}/logs/{{trial}}.log",
    threads: trial_threads(total_cores())
    resources:
        gpu=GPUS,
        runtime=lambda wc: pcfg.budget_minutes(STUDIES[wc.study].searches[0].base),
    shell:
        "PINN_NG_CORES={threads} pinn-ng tune trial --trials {input:q} "
        "--trial {wildcards.trial} --on-contention {ON_CONTENTION} --out {params.out:q} "
        "2> {log:q} || pinn-ng tune failed --exit-status $? --trials {input:q} "
        "--trial {wildcards.trial} --out {params.out:q} --log {log:q}"


def study_trials(wc):
    st = STUDIES[wc.study]
    return {f"trials{k}": f"{TUNE}/{wc.study}/stage{k}/trials.csv" for k in st.stages} | {
        "metas": [f"{TUNE}/{wc.study}/stage{k}/runs/{t}/meta.json" for k in st.stages
                  for t in st.trial_ids(k)]}


rule tune_select:
    """Rank every search's trials (final L2; ties: final loss, trial index): best.json, the
    appendix-style table, every trial's outcome; warns where a best value sits at an edge."""
    input:
        unpack(study_trials),
        study=f"{TUNE}/{{study}}/study.json",
    output:
        best=f"{TUNE}/{{study}}/best.json",
        table=report(f"{TUNE}/{{study}}/best.md", caption="report/tuning.rst",
                     category="Tuning", labels={"study": "{study}", "file": "best.md"}),
        results=f"{TUNE}/{{study}}/results.csv",
    params:
        stages=lambda wc: " ".join(
            f"--trials {TUNE}/{wc.study}/stage{k}/trials.csv "
            f"--runs {TUNE}/{wc.study}/stage{k}/runs" for k in STUDIES[wc.study].stages),
    log:
        f"{TUNE}/{{study}}/select.log",
    shell:
        "pinn-ng tune select --study {input.study:q} {params.stages} --best {output.best:q} "
        "--table {output.table:q} --results {output.results:q} --log {log:q}"


rule tune_figure:
    """Sensitivity (final L2 against each tuned hyper-parameter) and best-so-far figures."""
    input:
        best=lambda wc: f"{TUNE}/{wc.tuning_figure.rsplit('_', 1)[1]}/best.json",
        results=lambda wc: f"{TUNE}/{wc.tuning_figure.rsplit('_', 1)[1]}/results.csv",
    output:
        report(f"{FIG}/{{tuning_figure}}.png", caption="report/tuning.rst", category="Tuning",
               labels={"figure": "{tuning_figure}"}),
    shell:
        "pinn-ng tune figure --best {input.best:q} --results {input.results:q} "
        "--figure {wildcards.tuning_figure} --out {output:q} --dpi {DPI}"


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
        metas=ALL_RUN_METAS,
    output:
        **{name: report(f"{RES}/{name}.csv", caption=f"report/{name}.rst", category="Tables",
                        labels={"table": f"{name}.csv"})
           for name in TABLES},
        # optimizers ranked by time to target (pinn_ng.pipeline.scoring)
        leaderboard=report(f"{RES}/leaderboard.md", caption="report/leaderboard.rst",
                           category="Tables", labels={"table": "leaderboard.md"}),
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
        "--paper-dir {PAPER_DIR} "
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
        "pinn-ng nystrom-table --spec {params.spec:q} --dtype {params.dtype} --device {DEVICE} "
        "--out-csv {output.csv:q} --out-md {output.md:q} > /dev/null 2> {log:q}"


rule paper_comparison:
    """The paper's headline numbers next to ours, computed from the gathered tables."""
    input:
        rules.gather.output,
        [f"{RES}/nystrom_table.csv"] if PLAN.nystrom_table else [],
    output:
        md=report(f"{RES}/paper_comparison.md", caption="report/paper_comparison.rst",
                  category="Tables", labels={"table": "paper_comparison.md"}),
        # the authors' own curves beside ours at equal steps (pinn_ng.pipeline.paper_curves)
        steps_md=report(f"{RES}/paper_equal_steps.md", caption="report/paper_equal_steps.rst",
                        category="Tables", labels={"table": "paper_equal_steps.md"}),
        steps_csv=f"{RES}/paper_equal_steps.csv",
    shell:
        "pinn-ng compare --results {RES} --out {output.md:q} --paper-dir {PAPER_DIR}"
