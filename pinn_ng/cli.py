"""Command line interface of pinn-ng.

``pinn-ng problems``       list the PDE problems and their paper settings
``pinn-ng optimizers``     list the optimizers
``pinn-ng networks``       list the networks
``pinn-ng run``            train once and write one run record (curve.csv + meta.json, atomically)
``pinn-ng gather``         run records -> results/curves.csv, summary.csv, experiments.csv
``pinn-ng figures``        tables -> figures/*.png (byte-identical from the same tables)
``pinn-ng compare``        the paper's headline numbers next to ours -> paper_comparison.md;
                           our L2 next to the authors' own runs at equal steps ->
                           paper_equal_steps.csv, .md
``pinn-ng plan``           validate a pipeline preset and list its runs and figures
``pinn-ng nystrom-table``  standard vs GPU-efficient Nyström, time and memory (appendix B)
``pinn-ng tune …``         the tuning stage: trials (a stage's trial table), trial (run one),
                           failed (record a crashed trial), select (best.json and table),
                           final (rerun a best configuration), figure (sensitivity, best so far)

The Snakefile drives run / gather / figures / compare / nystrom-table; each also works by
hand.

Every command first loads the plugins (:mod:`pinn_ng.plugins`: entry points of installed
packages and ``PINN_NG_PLUGINS``), so that the names they register work everywhere.

A user error (a bad flag, value, specification, preset or file) is one line on stderr naming
the offending key or value and the allowed values, exit status 2, and no run record;
``pinn-ng --debug …`` (or ``PINN_NG_TRACEBACK=1``) shows its traceback.  Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .pipeline.errors import UserError


def _cmd_problems(args) -> int:
    from . import problems

    width = max(len(name) for name in problems.names())
    for name in problems.names():
        try:
            p = problems.get(name)
        except (TypeError, ValueError) as err:  # a plugin's factory returned no proper Problem
            raise UserError(str(err)) from None
        print(f"{name:{width}s} D={p.input_dim:<4d} P={p.n_params:<9,d} N_Ω={p.n_interior:<5d} "
              f"N_∂Ω={p.n_boundary:<5d} {p.description}")
    return 0


def _cmd_optimizers(args) -> int:
    from . import optim

    for name in optim.names():
        print(name)
    return 0


def _cmd_networks(args) -> int:
    from . import models

    for name in models.names():
        print(name)
    return 0


class UsageError(UserError):
    """A malformed command-line value (``--spec``, ``--hparam``, ``--widths``, ``--config``)."""


def _parse_value(text: str, flag: str):
    """``1e-7`` -> float, ``true`` -> bool, ``line_search`` -> str (YAML scalars, plus 1e-7)."""
    import yaml

    from .pipeline.config import coerce

    try:
        return coerce(yaml.safe_load(text))
    except yaml.YAMLError:
        raise UsageError(f"{flag}: cannot read the value {text!r} (a number, true/false, a "
                         "name, or a YAML list such as [1, 2])") from None


def _key_value(item: str, flag: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
    return key.strip(), _parse_value(value, f"{flag} {key.strip()}")


def _load_spec(text: str | None, flag: str = "--spec") -> dict:
    if not text:
        return {}
    source = flag
    if text.startswith("@"):
        source = f"{flag} {text}"
        try:
            text = Path(text[1:]).read_text()
        except FileNotFoundError:
            raise UsageError(f"{source}: no such file") from None
        except OSError as err:
            raise UsageError(f"{source}: cannot read: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{source}: not a text file (not UTF-8)") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno}); give a JSON object or @file.json") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{source} must be a JSON object {{\"key\": value, ...}}, got "
                         f"{type(spec).__name__}")
    return spec


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--widths: {text!r} is not a comma-separated list of positive "
                         "integers, e.g. 2,64,64,1") from None
    return widths


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class _StopOnSignal:
    """SIGTERM (Snakemake's and SLURM's way to stop a job, ahead of its time limit) and SIGINT:
    the first asks the run to stop after its current step, save a checkpoint and exit
    non-zero without a record; a second one stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum = None
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        """Put back the handlers found (main() may run inside another program, e.g. pytest)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.signum = signum

    def __call__(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def _cmd_run(args) -> int:
    from .pipeline import devices, runner

    spec = _load_spec(args.spec)
    flags = {"problem": args.problem, "optimizer": args.optimizer, "label": args.label,
             "n_interior": args.n_interior, "n_boundary": args.n_boundary,
             "max_steps": args.max_steps, "max_seconds": args.max_seconds,
             "eval_every": args.eval_every, "data_seed": args.data_seed,
             "model_seed": args.model_seed, "dtype": args.dtype,
             "batch_every": args.batch_every, "network": args.network,
             "checkpoint_every": getattr(args, "checkpoint_every", None)}
    if args.widths:
        flags["widths"] = _widths(args.widths)
    spec.update({k: v for k, v in flags.items() if v is not None})
    if args.hparam:
        hp = spec.get("hparams") or {}
        if not isinstance(hp, dict):
            raise UsageError(f"--spec: hparams must be an object, got {hp!r}")
        hp = dict(hp)
        for item in args.hparam:
            key, value = _key_value(item, "--hparam")
            hp[key] = value
        spec["hparams"] = hp
    runner.complete_spec(spec)  # every value checked before anything is compiled or written
    runs_per_device = os.environ.get("PINN_NG_RUNS_PER_DEVICE", "1")
    if not runs_per_device.isdigit() or int(runs_per_device) < 1:
        raise UsageError(f"PINN_NG_RUNS_PER_DEVICE must be a positive integer, got "
                         f"{runs_per_device!r}")
    from .memory import share_device

    share_device(int(runs_per_device))  # several runs on one GPU: a memory fraction each
    devices.require(args.device)  # device=gpu on a machine without one: one line, no record
    # Snakemake (and SLURM, ahead of a time limit) stop jobs with SIGTERM: the run saves a
    # checkpoint and exits non-zero; rerunning the same command resumes it.
    stop = _StopOnSignal()
    progress = False if args.no_progress else None
    try:
        meta = runner.run(spec, args.out, progress=progress,
                          on_contention=getattr(args, "on_contention", "mark"), stop=stop,
                          memory_check=not getattr(args, "no_memory_check", False))
    except runner.RunInterrupted as err:
        print(f"[pinn-ng] interrupted by {err}; no record written to {args.out}",
              file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print(f"[pinn-ng] interrupted: no record written to {args.out}", file=sys.stderr)
        return stop.exit_status
    finally:
        stop.restore()
    if meta["status"] == "failed":  # on_contention=fail: the record says so too
        print(f"pinn-ng run: error: {meta['run_id']}: {meta['reason']} (on_contention=fail; "
              "recorded as failed)", file=sys.stderr)
        return 1
    if meta["contended"] and args.on_contention == "warn":
        print(f"[pinn-ng] warning: contended: {meta['machine_load']['why']}", file=sys.stderr)
    status = "DIVERGED: " + meta["reason"] if meta["diverged"] else "finished"
    print(f"[pinn-ng] {meta['run_id']}: {status}; {meta['steps']} steps in "
          f"{meta['seconds']:.2f} s, final L2 {meta['final']['l2']:.3e}", file=sys.stderr)
    return 0


def _cmd_gather(args) -> int:
    from .pipeline import gather

    manifest = _load_spec(f"@{args.manifest}", "--manifest") if args.manifest else None
    out = gather.gather(args.runs_dir, args.out_dir, manifest, strict=args.strict,
                        warn=lambda msg: print(f"pinn-ng gather: warning: {msg}",
                                               file=sys.stderr))
    print(json.dumps(out))
    return 0


def _cmd_figures(args) -> int:
    from .pipeline import figures

    allowed = figures.available(figures.load(args.results), args.paper_dir)
    unknown = [n for n in args.figure or () if n not in allowed]
    if unknown:
        raise UsageError(f"--figure {unknown[0]!r}: not a figure of the tables in "
                         f"{args.results}; available: {allowed}")
    names = args.figure or allowed
    out_dir = Path(args.out_dir)
    for name in names:
        path = Path(args.out) if args.out and len(names) == 1 else out_dir / f"{name}.png"
        figures.draw(args.results, name, path, dpi=args.dpi, paper_dir=args.paper_dir)
        print(path)
    return 0


def _cmd_compare(args) -> int:
    from .pipeline import compare

    results = Path(args.results)
    missing = [n for n in ("summary.csv", "curves.csv", "experiments.csv")
               if not (results / n).exists()]
    if missing:
        print(f"pinn-ng compare: {results} lacks {', '.join(missing)}; run `pinn-ng gather` "
              "(or snakemake) first", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results / "paper_comparison.md"
    # the equal-step tables first: a bad --paper-dir then leaves nothing half written
    written = compare.write_equal_steps(results, out.parent, args.paper_dir)
    print(compare.write(results, out))
    print("\n".join(written))
    return 0


def _cmd_plan(args) -> int:
    from .pipeline import config as pcfg

    # As the Snakefile: the default preset first, then each file (a path or a shipped name).
    cfg = pcfg.load_preset(pcfg.preset_path(pcfg.DEFAULT_PRESET))
    for name in args.configfile:
        cfg = pcfg.merge(cfg, pcfg.load_preset(pcfg.preset_path(name)))
    for item in args.config or []:
        key, value = _key_value(item, "--config")
        cfg[key] = value
    plan = pcfg.plan(cfg, args.schema)
    for rid, spec in list(plan.runs.items()) + [(r, t["spec"]) for r, t in plan.tuned.items()]:
        budget = f"steps={spec['max_steps']} seconds={spec['max_seconds']}"
        print(f"{rid}  {budget}" + (f"  (best of study {plan.tuned[rid]['study']})"
                                    if rid in plan.tuned else ""))
    for line in pcfg.tuning_estimate(plan):
        print(line, file=sys.stderr)
    if plan.tuned:
        print(f"{len(plan.tuned)} of the runs rerun tuned configurations", file=sys.stderr)
    print(f"{len(plan.runs) + len(plan.tuned)} runs; figures: "
          f"{plan.figures + plan.tuning_figures}", file=sys.stderr)
    print(pcfg.device_hours(plan).describe(), file=sys.stderr)
    runs = list(plan.runs.items()) + [(r, t["spec"]) for r, t in plan.tuned.items()]
    if args.time_limit is not None:
        _plan_time_limit(runs, args.time_limit, pcfg.budget_minutes,
                         plan.config.get("checkpoint_every"))
    if args.memory:
        _plan_memory([s for _, s in runs])
    return 0


def _plan_time_limit(runs, limit: float, budget_minutes, checkpoint_every=None) -> None:
    """Which runs a partition's time limit will stop: they are resumed from checkpoints
    (every ``checkpoint_every`` seconds, the preset's key, else each run's default)."""
    from .pipeline import runner

    if not limit > 0:
        raise UsageError(f"--time-limit must be a positive number of minutes, got {limit!r}")
    over = [(rid, s) for rid, s in runs if budget_minutes(s) > limit]
    print(f"time limit {limit:g} min: {len(over)} of {len(runs)} runs need longer (budget "
          "x 1.5 + 15 min) and will be stopped by SIGTERM, checkpointed and resumed by "
          "Snakemake's retries", file=sys.stderr)
    for rid, s in over:
        every = runner.checkpoint_seconds(runner.complete_spec(
            s if checkpoint_every is None else {**s, "checkpoint_every": checkpoint_every}))
        print(f"  {rid}: {budget_minutes(s)} min, about "
              f"{-(-budget_minutes(s) // int(limit))} jobs; checkpoint every "
              f"{f'{every:g} s' if every else 'SIGTERM only'}", file=sys.stderr)


def _plan_memory(specs) -> None:
    """The compiled step's memory for each distinct run shape (compiled from shapes only)."""
    from . import memory
    from .pipeline import runner

    shapes = {}
    for s in specs:
        shapes.setdefault(runner.shape_key(s), []).append(s)
    avail, source = memory.available()
    print(f"memory per distinct run shape ({len(shapes)}; available here: "
          f"{avail / memory.GIB:.1f} GiB, {source}):" if avail is not None else
          f"memory per distinct run shape ({len(shapes)}):", file=sys.stderr)
    for group in shapes.values():
        s = group[0]
        est = runner.estimate_memory(s)
        print(f"  {s['problem']} {s['label']} N={s['n_interior']}+{s['n_boundary']} "
              f"widths={s['widths']} ({len(group)} runs): {memory.describe(est)}",
              file=sys.stderr)


def _cmd_nystrom_table(args) -> int:
    from .pipeline import devices, nystrom_table

    spec = nystrom_table.load_spec(args.spec)
    for key in ("problem", "n", "fractions", "damping", "repeats"):
        if getattr(args, key) is not None:
            spec.setdefault(key, getattr(args, key))  # the flags fill in what --spec lacks
    devices.require(args.device)
    nystrom_table.write(spec, args.out_csv, args.out_md, dtype=args.dtype,
                        log=lambda msg: print(f"[nystrom-table] {msg}", file=sys.stderr,
                                              flush=True))
    print(args.out_csv)
    return 0


def _cmd_tune_trials(args) -> int:
    from .pipeline import tuning

    print(tuning.write_trials(args.study, args.stage, args.out, args.stage1_table,
                              args.stage1_runs))
    return 0


def _cmd_tune_trial(args) -> int:
    """One trial: an ordinary run record.  Any exception (a rejected hyper-parameter value, a
    numerical error, …) becomes a ``failed`` record, scored +inf; Ctrl-C / SIGTERM leave none."""
    import traceback

    from .pipeline import runner, tuning

    row = tuning.trial(args.trials, args.trial)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        meta = runner.run(row["spec"], args.out, progress=False,
                          on_contention=args.on_contention)
    except KeyboardInterrupt:
        print(f"[pinn-ng] interrupted: no record written to {args.out}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a failed trial is a result (+inf), not a stop
        traceback.print_exc(file=sys.stderr)
        runner.write_failed_record(row["spec"], args.out, f"{type(err).__name__}: {err}")
        print(f"[pinn-ng] trial {args.trial}: FAILED ({type(err).__name__}: "
              f"{_one_line(err)}); recorded, scores +inf", file=sys.stderr)
        return 0
    status = "DIVERGED: " + meta["reason"] if meta["diverged"] else "finished"
    print(f"[pinn-ng] trial {args.trial}: {status}; {meta['steps']} steps, final L2 "
          f"{meta['final']['l2']:.3e}", file=sys.stderr)
    return 0


def _cmd_tune_failed(args) -> int:
    """After a trial's process died (``… || pinn-ng tune failed --exit-status $?``): record it
    as failed, unless it was interrupted (SIGINT/SIGTERM: no record, so it reruns)."""
    from .pipeline import records, runner, tuning

    code = args.exit_status
    if code in (130, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        return code
    if records.is_complete(args.out):
        return 0
    row = tuning.trial(args.trials, args.trial)
    what = f"the trial's process exited with status {code}"
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        what = f"the trial's process was killed by {name}" + (
            " (e.g. out of memory)" if code - 128 == signal.SIGKILL else "")
    tail = ""
    if args.log and Path(args.log).is_file():
        lines = [ln for ln in Path(args.log).read_text(errors="replace").splitlines()
                 if ln.strip()]
        tail = f"; last log line: {lines[-1][:300]}" if lines else ""
    runner.write_failed_record(row["spec"], args.out, what + tail)
    print(f"[pinn-ng] trial {args.trial}: FAILED ({what}); recorded, scores +inf",
          file=sys.stderr)
    return 0


def _cmd_tune_select(args) -> int:
    from .pipeline import tuning

    if len(args.trials) != len(args.runs):
        raise UsageError("give one --runs directory per --trials table")
    lines = []

    def warn(msg):
        lines.append(f"pinn-ng tune select: warning: {msg}")
        print(lines[-1], file=sys.stderr)

    best = tuning.write_selection(args.study, args.trials, args.runs, args.best, args.table,
                                  args.results, warn=warn)
    if args.log:
        Path(args.log).write_text("".join(f"{ln}\n" for ln in lines))
    for s in best["searches"]:
        b = s["best"]
        print(f"{best['study']}: {s['label']} on {s['problem']} (N = {s['N']}): " + (
            f"best {b['trial_id']}, final L2 {b['final_l2']:.3e}, {b['tuned']}" if b else
            "no finite trial"))
    return 0


def _cmd_tune_final(args) -> int:
    """A final run of a search's best configuration (from best.json)."""
    from .pipeline import runner, tuning

    spec = _load_spec(args.spec)
    try:
        problem, label, n = args.search.rsplit(":", 2)
        n = int(n)
    except ValueError:
        raise UsageError(f"--search expects PROBLEM:LABEL:N, got {args.search!r}") from None
    hparams = tuning.best_hparams(args.best, problem, label, n)
    if hparams is None:
        runner.write_failed_record(spec, args.out, f"no trial of {label} on {problem} (N = {n})"
                                   f" finished with a finite L2 error in {args.best}")
        print(f"[pinn-ng] {args.out}: no best configuration; recorded as failed",
              file=sys.stderr)
        return 0
    spec["hparams"] = hparams
    args.spec = json.dumps(spec)
    for key in ("problem", "optimizer", "label", "n_interior", "n_boundary", "max_steps",
                "max_seconds", "eval_every", "data_seed", "model_seed", "dtype", "widths",
                "hparam", "batch_every", "network"):
        setattr(args, key, None)  # the spec says it all (batch_every included, if not 1)
    args.no_progress = True
    if getattr(args, "device", None) is None:
        args.device = "any"
    return _cmd_run(args)


def _cmd_tune_figure(args) -> int:
    from .pipeline import tuning_figures

    print(tuning_figures.draw(args.best, args.results, args.figure, args.out, dpi=args.dpi))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


ON_CONTENTION_FLAG = dict(
    choices=["warn", "mark", "fail"], default="mark",
    help="a run measured under contention (pinn_ng.pipeline.contention): mark = flag it in "
    "the record, tables and figures (default); warn = also print a warning; fail = record it "
    "as failed and exit 1")
CHECKPOINT_FLAG = dict(
    type=float, metavar="SECONDS",
    help="save a checkpoint every SECONDS of wall-clock time (0: only on SIGTERM/SIGINT; "
    "default 300, none for time budgets under 10 minutes)")
PAPER_DIR_HELP = ("the paper authors' logged histories (runs.csv and one CSV per run; "
                  "default: the repository's results/reference/paper)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pinn-ng", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error too (as PINN_NG_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("problems", help="list the PDE problems and their paper settings")
    sp.set_defaults(func=_cmd_problems)
    sp = sub.add_parser("optimizers", help="list the optimizers")
    sp.set_defaults(func=_cmd_optimizers)
    sp = sub.add_parser("networks", help="list the networks")
    sp.set_defaults(func=_cmd_networks)

    sp = sub.add_parser("run", help="train once and write one run record",
                        description="Train once and write <out>/curve.csv and <out>/meta.json "
                        "atomically (meta.json last). Flags override --spec.")
    sp.add_argument("--spec", help="run specification as JSON, or @file.json "
                    "(keys: see pinn_ng.pipeline.runner.SPEC_DEFAULTS)")
    sp.add_argument("--problem", help="problem name (pinn-ng problems)")
    sp.add_argument("--optimizer", help="optimizer name (pinn-ng optimizers)")
    sp.add_argument("--label", help="name of this configuration in tables (default: optimizer)")
    sp.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                    help="optimizer hyper-parameter, repeatable (e.g. damping=1e-7)")
    sp.add_argument("--widths", help="net layer sizes, e.g. 5,64,64,48,48,1 (default: paper's)")
    sp.add_argument("--network", help="network name (pinn-ng networks; default mlp)")
    sp.add_argument("--n-interior", type=int, help="N_Ω per step (default: paper's)")
    sp.add_argument("--n-boundary", type=int, help="N_∂Ω per step (default: paper's)")
    sp.add_argument("--max-steps", type=int, help="step budget")
    sp.add_argument("--max-seconds", type=float, help="budget in timed seconds")
    sp.add_argument("--eval-every", type=int, help="evaluate every k steps (default 10)")
    sp.add_argument("--batch-every", type=int, help="keep each batch for k steps (default 1: "
                    "a fresh batch every step)")
    sp.add_argument("--data-seed", type=int, help="batch seed (default 0)")
    sp.add_argument("--model-seed", type=int, help="initialisation seed (default 1)")
    sp.add_argument("--dtype", choices=["float64", "float32"], help="default float64")
    sp.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    sp.add_argument("--device", choices=["any", "cpu", "gpu"], default="any",
                    help="refuse to start unless JAX sees this device (default: any)")
    sp.add_argument("--out", required=True, help="run record directory (a rerun with the "
                    "same --out resumes from its checkpoint)")
    sp.add_argument("--checkpoint-every", **CHECKPOINT_FLAG)
    sp.add_argument("--no-memory-check", action="store_true",
                    help="run even if the compiled step's memory estimate exceeds what the "
                    "device has available")
    sp.add_argument("--on-contention", **ON_CONTENTION_FLAG)
    sp.set_defaults(func=_cmd_run)

    sp = sub.add_parser("gather", help="run records -> tidy tables")
    sp.add_argument("--runs-dir", default="results/runs")
    sp.add_argument("--manifest", help="JSON {experiments: {name: [run ids]}} (default: all "
                    "complete records, as experiment 'all')")
    sp.add_argument("--out-dir", default="results")
    sp.add_argument("--strict", action="store_true", help="refuse (exit 2) on an unreadable "
                    "record instead of skipping it with a warning")
    sp.set_defaults(func=_cmd_gather)

    sp = sub.add_parser("figures", help="tables -> figures")
    sp.add_argument("--results", default="results", help="directory of the gathered tables")
    sp.add_argument("--figure", action="append", help="figure name (default: all available)")
    sp.add_argument("--out", help="output file (one figure only)")
    sp.add_argument("--out-dir", default="figures")
    sp.add_argument("--dpi", type=int, default=110)
    sp.add_argument("--paper-dir", help=PAPER_DIR_HELP)
    sp.set_defaults(func=_cmd_figures)

    sp = sub.add_parser("compare", help="the paper's headline numbers next to ours")
    sp.add_argument("--results", default="results", help="directory of the gathered tables")
    sp.add_argument("--out", help="default: <results>/paper_comparison.md; "
                    "paper_equal_steps.csv and .md go beside it")
    sp.add_argument("--paper-dir", help=PAPER_DIR_HELP)
    sp.set_defaults(func=_cmd_compare)

    sp = sub.add_parser("plan", help="validate a preset; list runs and figures")
    sp.add_argument("configfile", nargs="+", help="presets on top of the default one, as "
                    "paths or shipped names (smoke, paper, cpu-paper, default)")
    sp.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="top-level overrides")
    sp.add_argument("--schema", help="default: the schema shipped with pinn_ng")
    sp.add_argument("--time-limit", type=float, metavar="MINUTES",
                    help="a partition's time limit: list the runs that exceed it (they are "
                    "stopped, checkpointed and resumed)")
    sp.add_argument("--memory", action="store_true",
                    help="print the compiled step's memory of each distinct run shape "
                    "(compiles each shape once, from shapes only)")
    sp.set_defaults(func=_cmd_plan)

    sp = sub.add_parser("nystrom-table", help="standard vs GPU-efficient Nystrom, time and "
                        "memory (appendix B)", description="Time and memory of the standard "
                        "and the GPU-efficient Nystrom solve on the kernel of a problem's net "
                        "at initialisation (pinn_ng.pipeline.nystrom_table).")
    sp.add_argument("--spec", help="JSON with problem, n, fractions, damping, repeats, widths "
                    "(a preset's nystrom_table); the flags fill in what it lacks")
    sp.add_argument("--problem", help="default poisson5d")
    sp.add_argument("--n", type=int, nargs="+", help="batch sizes N (default: the paper's 5000)")
    sp.add_argument("--fractions", type=float, nargs="+",
                    help="sketch sizes as fractions of N (default 0.2 0.4 0.6 0.8)")
    sp.add_argument("--damping", type=float, help="lambda (default: the paper's 1e-7)")
    sp.add_argument("--repeats", type=int, help="timed calls per variant (default 5)")
    sp.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    sp.add_argument("--device", choices=["any", "cpu", "gpu"], default="any",
                    help="refuse to start unless JAX sees this device (default: any)")
    sp.add_argument("--out-csv", required=True)
    sp.add_argument("--out-md")
    sp.set_defaults(func=_cmd_nystrom_table)

    tp = sub.add_parser("tune", help="the tuning stage (the Snakefile drives it)",
                        description="The tuning stage, one step per subcommand; see "
                        "pinn_ng.pipeline.tuning.")
    tsub = tp.add_subparsers(dest="tune_command", required=True)
    sp = tsub.add_parser("trials", help="write a stage's trial table")
    sp.add_argument("--study", required=True, help="study.json (written by the Snakefile)")
    sp.add_argument("--stage", type=int, choices=[1, 2], required=True)
    sp.add_argument("--stage1-table", help="stage 2: stage 1's trials.csv")
    sp.add_argument("--stage1-runs", help="stage 2: stage 1's run records directory")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=_cmd_tune_trials)
    sp = tsub.add_parser("trial", help="run one trial of a trial table (one run record)")
    _required(sp, {"--trials": "trials.csv", "--trial": "trial id",
                   "--out": "run record directory"})
    sp.add_argument("--on-contention", **ON_CONTENTION_FLAG)
    sp.set_defaults(func=_cmd_tune_trial)
    sp = tsub.add_parser("failed", help="record a trial whose process died as failed")
    sp.add_argument("--exit-status", type=int, required=True)
    _required(sp, {"--trials": "trials.csv", "--trial": "trial id",
                   "--out": "run record directory"})
    sp.add_argument("--log", help="the trial's log (its last line goes into the reason)")
    sp.set_defaults(func=_cmd_tune_failed)
    sp = tsub.add_parser("select", help="rank trials: best.json, table, results.csv")
    sp.add_argument("--study", required=True)
    sp.add_argument("--trials", action="append", required=True, help="a stage's trials.csv")
    sp.add_argument("--runs", action="append", required=True,
                    help="that stage's run records directory")
    _required(sp, {"--best": "best.json to write", "--table": "the study's table (markdown)",
                   "--results": "every trial's result (CSV)"})
    sp.add_argument("--log", help="also write the warnings here")
    sp.set_defaults(func=_cmd_tune_select)
    sp = tsub.add_parser("final", help="run a search's best configuration")
    _required(sp, {"--best": "best.json", "--search": "PROBLEM:LABEL:N of the search",
                   "--spec": "the run spec without tuned values (JSON)",
                   "--out": "run record directory"})
    sp.add_argument("--on-contention", **ON_CONTENTION_FLAG)
    sp.add_argument("--checkpoint-every", **CHECKPOINT_FLAG)
    sp.set_defaults(func=_cmd_tune_final)
    sp = tsub.add_parser("figure", help="sensitivity / best-so-far figure of a study")
    _required(sp, {"--best": "best.json", "--results": "the study's results.csv",
                   "--figure": "sensitivity_<study> or best_so_far_<study>",
                   "--out": "the figure (PNG)"})
    sp.add_argument("--dpi", type=int, default=110)
    sp.set_defaults(func=_cmd_tune_figure)
    return parser


def _required(sp, helps: dict) -> None:
    """Required options of one value each (files and names), with their help texts."""
    for flag, text in helps.items():
        sp.add_argument(flag, required=True, help=text)


def _one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    if isinstance(err, FileNotFoundError) and err.filename:
        message = f"{err.filename}: no such file or directory"
    return " ".join(str(message).split())


#: The top-level modules of the ``pipeline`` extra (``pip install pinn-ng`` has none of them).
PIPELINE_PACKAGES = {"filelock", "jsonschema", "matplotlib", "orbax", "pandas", "scipy",
                     "seaborn", "snakemake", "threadpoolctl", "yaml"}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (one line, see _Parser) or --help
        return exit_.code if isinstance(exit_.code, int) else 2
    trains = args.command == "run" or (args.command == "tune"
                                       and args.tune_command in ("trial", "final"))
    if argv is None and trains:  # a real process, not a test calling main(); trials and
        # final runs train under the same conditions as every run
        from .pipeline.hugepages import reexec_with_huge_pages

        reexec_with_huge_pages([sys.executable, "-m", "pinn_ng.cli", *sys.argv[1:]])
    if trains:  # a pipeline job given k cores gets k of its own (contention.claim_cores)
        from .pipeline.contention import claim_cores_from_env

        claim_cores_from_env()
    try:
        from .blas import env_error, limit_blas_threads

        limit_blas_threads(1)  # OpenBLAS threads otherwise spin against XLA's (pinn_ng/blas.py)
        if env_error():  # PINN_NG_BLAS / PINN_NG_BLAS_THREADS, read later in traced code
            print(f"pinn-ng {args.command}: error: {env_error()}", file=sys.stderr)
            return 2
        # Plugins (entry points, PINN_NG_PLUGINS) before any name is read; a preset's own
        # `plugins` are loaded when it is planned.
        from . import plugins

        plugins.load()
        return args.func(args)
    except (UserError, FileNotFoundError) as err:
        # The user's input (a flag, a value, a preset, a file): one line, exit 2.  A bug
        # (any other exception) keeps its traceback.
        if args.debug or os.environ.get("PINN_NG_TRACEBACK"):
            raise
        print(f"pinn-ng {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # a library-only install: the runtime's packages
        if (err.name or "").partition(".")[0] not in PIPELINE_PACKAGES:
            raise
        print(f"pinn-ng {args.command}: error: needs the pipeline extra (no module named "
              f"{err.name!r}): pip install 'pinn-ng[pipeline]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
