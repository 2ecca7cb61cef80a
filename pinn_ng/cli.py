"""Command line interface of pinn-ng.

``pinn-ng problems``       list the PDE problems and their paper settings
``pinn-ng optimizers``     list the optimizers
``pinn-ng run``            train once and write one run record (curve.csv + meta.json, atomically)
``pinn-ng gather``         run records -> results/curves.csv, summary.csv, experiments.csv
``pinn-ng figures``        tables -> figures/*.png (byte-identical from the same tables)
``pinn-ng compare``        the paper's headline numbers next to ours -> paper_comparison.md
``pinn-ng plan``           validate a pipeline preset and list its runs and figures

The Snakefile drives run / gather / figures / compare; each also works by hand.  (The
appendix-B Nyström table is a benchmark: ``python bench/nystrom_table.py``.)

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

    for name in problems.names():
        p = problems.get(name)
        print(f"{name:12s} D={p.input_dim:<4d} P={p.n_params:<9,d} N_Ω={p.n_interior:<5d} "
              f"N_∂Ω={p.n_boundary:<5d} {p.description}")
    return 0


def _cmd_optimizers(args) -> int:
    from . import optim

    for name in optim.names():
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


def _cmd_run(args) -> int:
    from .pipeline import runner

    spec = _load_spec(args.spec)
    flags = {"problem": args.problem, "optimizer": args.optimizer, "label": args.label,
             "n_interior": args.n_interior, "n_boundary": args.n_boundary,
             "max_steps": args.max_steps, "max_seconds": args.max_seconds,
             "eval_every": args.eval_every, "data_seed": args.data_seed,
             "model_seed": args.model_seed, "dtype": args.dtype,
             "batch_every": args.batch_every}
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
    # Snakemake (and SLURM) stop jobs with SIGTERM: turn it into KeyboardInterrupt so that
    # nothing half-written survives (records are only written after training anyway).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    progress = False if args.no_progress else None
    try:
        meta = runner.run(spec, args.out, progress=progress)
    except KeyboardInterrupt:
        print(f"[pinn-ng] interrupted: no record written to {args.out}", file=sys.stderr)
        return 130
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

    allowed = figures.available(figures.load(args.results))
    unknown = [n for n in args.figure or () if n not in allowed]
    if unknown:
        raise UsageError(f"--figure {unknown[0]!r}: not a figure of the tables in "
                         f"{args.results}; available: {allowed}")
    names = args.figure or allowed
    out_dir = Path(args.out_dir)
    for name in names:
        path = Path(args.out) if args.out and len(names) == 1 else out_dir / f"{name}.png"
        figures.draw(args.results, name, path, dpi=args.dpi)
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
    print(compare.write(results, args.out or results / "paper_comparison.md"))
    return 0


def _cmd_plan(args) -> int:
    from .pipeline import config as pcfg

    # As the Snakefile: the default preset first, then each file (a path or a shipped name).
    cfg = pcfg.load_yaml(pcfg.preset_path(pcfg.DEFAULT_PRESET))
    for name in args.configfile:
        cfg = pcfg.merge(cfg, pcfg.load_yaml(pcfg.preset_path(name)))
    for item in args.config or []:
        key, value = _key_value(item, "--config")
        cfg[key] = value
    plan = pcfg.plan(cfg, args.schema)
    for rid, spec in plan.runs.items():
        budget = f"steps={spec['max_steps']} seconds={spec['max_seconds']}"
        print(f"{rid}  {budget}")
    print(f"{len(plan.runs)} runs; figures: {plan.figures}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


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
    sp.add_argument("--out", required=True, help="run record directory")
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
    sp.set_defaults(func=_cmd_figures)

    sp = sub.add_parser("compare", help="the paper's headline numbers next to ours")
    sp.add_argument("--results", default="results", help="directory of the gathered tables")
    sp.add_argument("--out", help="default: <results>/paper_comparison.md")
    sp.set_defaults(func=_cmd_compare)

    sp = sub.add_parser("plan", help="validate a preset; list runs and figures")
    sp.add_argument("configfile", nargs="+", help="presets on top of the default one, as "
                    "paths or shipped names (smoke, paper, cpu-paper, default)")
    sp.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="top-level overrides")
    sp.add_argument("--schema", help="default: the schema shipped with pinn_ng")
    sp.set_defaults(func=_cmd_plan)
    return parser


def _one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    if isinstance(err, FileNotFoundError) and err.filename:
        message = f"{err.filename}: no such file or directory"
    return " ".join(str(message).split())


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (one line, see _Parser) or --help
        return exit_.code if isinstance(exit_.code, int) else 2
    if argv is None and args.command == "run":  # a real process, not a test calling main()
        from .hugepages import reexec_with_huge_pages

        reexec_with_huge_pages([sys.executable, "-m", "pinn_ng.cli", *sys.argv[1:]])
    from .blas import limit_blas_threads

    limit_blas_threads(1)  # OpenBLAS threads otherwise spin against XLA's (pinn_ng/blas.py)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError) as err:
        # The user's input (a flag, a value, a preset, a file): one line, exit 2.  A bug
        # (any other exception) keeps its traceback.
        if args.debug or os.environ.get("PINN_NG_TRACEBACK"):
            raise
        print(f"pinn-ng {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
