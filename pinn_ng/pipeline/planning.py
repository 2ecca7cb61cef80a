"""Expand a validated preset into runs, tables and figures: :func:`plan` -> :class:`Plan`.

:func:`plan` loads the plugins, validates the merged preset (:mod:`pinn_ng.pipeline.preset`)
and checks a few rules the schema cannot express (labels that exist, nets that fit the
problem), then expands the experiments into one run specification per run.  All of it
happens when the Snakefile is parsed, so a bad value stops the pipeline before any run starts,
with the key and the allowed values.

Experiments (each feeds one figure family, :data:`pinn_ng.pipeline.families.FAMILIES`):

- ``convergence``: problems × optimizers at the problem's batch and net -> ``convergence_<problem>``;
- ``scaling``: N swept over ``batches`` at the first net, P over ``nets`` at the first batch
  -> ``speedup`` (seconds per step, log-log);
- ``nystrom``: like ``scaling`` over ``batches`` -> ``nystrom_<problem>``;
- ``effective_dimension``: ENGD-W / SPRING runs with ``track_effective_dimension`` switched on
  -> ``effective_dimension``.

Tuning (``tuning``, :mod:`pinn_ng.pipeline.tuning`): search spaces per optimizer label and
studies (problems × labels × batch sizes, trials per stage, a budget), expanded into
:class:`~pinn_ng.pipeline.tuning.Study` objects (``Plan.studies``).  An experiment's
``tuned: [study, …]`` adds, per label of the study, a final run of the study's best
configuration with the experiment's budget and replicates (label ``<label>_tuned``; its
hyper-parameters are read from ``best.json`` when the run starts, ``Plan.tuned``).

Identical runs requested by several experiments are run once: a run's id is derived from its
full specification.  Each experiment runs ``replicates`` seeds per configuration (its own key,
else the top-level one); replicate i uses ``data_seed + i`` and ``model_seed + i``.  An
experiment may also set its own ``eval_every`` (e.g. every step for a short effective-dimension
run, whose diagnostics are only recorded on evaluation rows).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

from .. import plugins
from . import cache, families, tuning
from .preset import ConfigError, coerce, load_plugins, load_schema, validate

#: The experiment kinds (one per figure family, see :mod:`pinn_ng.pipeline.families`).
EXPERIMENTS = families.EXPERIMENT_KINDS

#: Optimizers whose diagnostics can report the effective dimension.
D_EFF_OPTIMIZERS = ("engd_woodbury", "spring")


def experiment_kind(name: str) -> str:
    """The experiment kind of an experiment: its name up to an optional ``_suffix``."""
    try:
        return families.experiment_kind(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def run_id(spec: dict) -> str:
    """Readable and unique: problem, label, batch, P, replicate, and a hash of the whole spec."""
    from ..models import n_params

    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return (f"{spec['problem']}_{spec['label']}_N{spec['n_interior']}-{spec['n_boundary']}"
            f"_P{n_params(spec['widths'])}_r{spec['replicate']}_{digest}")


@dataclass
class Plan:
    """A validated preset, expanded: every run's specification and every target."""

    config: dict
    runs: dict = field(default_factory=dict)  # run id -> spec
    experiments: dict = field(default_factory=dict)  # experiment -> [run ids]
    kinds: dict = field(default_factory=dict)  # experiment -> figure family
    figures: list = field(default_factory=list)  # figure names (no extension)
    studies: dict = field(default_factory=dict)  # study name -> tuning.Study
    tuned: dict = field(default_factory=dict)  # run id -> {study, problem, label, n, spec}

    @property
    def results_dir(self) -> str:
        return self.config.get("results_dir", "results")

    @property
    def figures_dir(self) -> str:
        return self.config.get("figures_dir", "figures")

    @property
    def nystrom_table(self) -> dict | None:
        return self.config.get("nystrom_table")

    def manifest(self) -> dict:
        """What ``pinn-ng gather`` needs to know: which runs belong to which experiment."""
        specs = list(self.runs.values()) + [t["spec"] for t in self.tuned.values()]
        return {"experiments": self.experiments, "kinds": self.kinds,
                "display": {s["label"]: s["display"] for s in specs},
                "targets": self.config.get("targets") or {}}  # the preset's, for scoring

    def spec(self, rid: str) -> dict:
        """The specification of run ``rid``: an ordinary run, or a tuned final run (without
        the tuned values, which come from ``best.json`` when it starts)."""
        return self.runs[rid] if rid in self.runs else self.tuned[rid]["spec"]

    @property
    def tuning_figures(self) -> list[str]:
        """``<figure>_<study>`` for every study (tuning.FIGURES)."""
        return [f"{fig}_{name}" for name in self.studies for fig in tuning.FIGURES]

    def run_threads(self, cores: int) -> int:
        n = int(self.config.get("run_threads", 0) or 0)
        return max(1, min(n, cores)) if n else max(1, cores)

    def plugins_env(self) -> dict[str, str]:
        """Environment that makes every job load the plugins this plan loaded: those of
        ``PINN_NG_PLUGINS`` and the preset's ``plugins``, paths absolute ({} if none)."""
        return plugins.env_with(self.config.get("plugins") or ())

    def compilation_cache_env(self) -> dict[str, str]:
        """The environment of the preset's compilation cache (:mod:`pinn_ng.pipeline.cache`)."""
        return cache.compilation_cache_env(self.config)

    def compilation_cache_error(self) -> str | None:
        """Why the compilation cache cannot be used, or None (creates it; never in a dry run)."""
        return cache.compilation_cache_error(self.config)


def _problem_settings(config: dict, name: str):
    from .. import problems

    try:
        problem = problems.get(name)
    except (TypeError, ValueError) as err:  # a plugin's factory returned no proper Problem
        raise ConfigError(str(err)) from None
    own = (config.get("problems") or {}).get(name) or {}
    widths = own.get("widths") or list(problem.widths)
    batch = own.get("batch") or [problem.n_interior, problem.n_boundary]
    return problem, list(widths), list(batch)


def _network(config: dict, name: str) -> dict:
    """``{"network": …}`` for a problem whose preset entry names a network other than the
    built-in ``mlp``; ``{}`` otherwise (run ids of ``mlp`` runs stay as they were)."""
    network = ((config.get("problems") or {}).get(name) or {}).get("network") or "mlp"
    return {} if network == "mlp" else {"network": network}


def _check_widths(problem, widths, where: str) -> None:
    if widths[0] != problem.input_dim or widths[-1] != 1:
        raise ConfigError(
            f"invalid pipeline preset:\n  config key {where}: {widths} does not fit "
            f"{problem.name}: the first width must be its input dimension {problem.input_dim} "
            f"and the last 1")


def _batch_every(opt: dict, problem: str) -> int:
    """Steps per batch of an optimizer label on ``problem``: its ``batch_every`` (a number,
    or ``{problem: number}`` with absent problems at 1), default 1."""
    value = opt.get("batch_every", 1)
    if isinstance(value, dict):
        value = value.get(problem, 1)
    return int(value)


def _hparams(opt: dict, problem: str, n: int) -> dict:
    hp = dict(opt.get("hparams") or {})
    hp.update((opt.get("per_problem") or {}).get(problem) or {})
    return hp


def _bad(where: str, msg: str) -> ConfigError:
    return ConfigError(f"invalid pipeline preset:\n  config key {where}: {msg}")


def _space(config: dict, label: str, problem: str | None = None) -> tuple:
    """The dimensions of ``tuning.spaces.<label>``, those of ``per_problem.<problem>``
    replacing (or adding to) them."""
    entry = ((config.get("tuning") or {}).get("spaces") or {}).get(label)
    where = f"tuning.spaces.{label}"
    if entry is None:
        raise _bad(where, "no search space for this optimizer label; give one under "
                   "tuning.spaces")
    try:
        dims = {d.name: d for d in tuning.parse_space(entry["space"], f"{where}.space")}
        own = (entry.get("per_problem") or {}).get(problem)
        if own:
            dims.update((d.name, d) for d in tuning.parse_space(
                own, f"{where}.per_problem.{problem}"))
    except tuning.TuningError as err:
        key, _, msg = str(err).partition(": ")
        raise _bad(key, msg) from None
    return tuple(dims.values())


def _check_spaces(config: dict) -> None:
    """Every space: keyed by an optimizer label under ``optimizers`` or by an optimizer's
    name (a space waiting for its label), ranges lo < hi (lo > 0 on a log scale), and
    hyper-parameters the optimizer has."""
    from .. import optim

    spaces = (config.get("tuning") or {}).get("spaces") or {}
    optimizers = config["optimizers"]
    for label, entry in spaces.items():
        if label in optimizers:
            name = optimizers[label]["optimizer"]
        elif label in optim.names():
            name = label
        else:
            raise _bad(f"tuning.spaces.{label}",
                       f"{label!r} is not a defined optimizer label; defined under "
                       f"`optimizers`: {sorted(optimizers)}")
        for problem in [None, *sorted((entry.get("per_problem") or {}))]:
            dims = _space(config, label, problem)
            valid = optim.hyperparameters(name)
            for d in dims:
                if d.name not in valid:
                    raise _bad(f"tuning.spaces.{label}.space.{d.name}",
                               f"optimizer {name!r} has no hyper-parameter {d.name!r}; valid: "
                               f"{', '.join(valid)}")


def _studies(config: dict, scale: float) -> dict:
    """``tuning.studies`` expanded into :class:`tuning.Study` objects (one search per problem
    × label × batch)."""
    tun = config.get("tuning") or {}
    _check_spaces(config)
    out = {}
    for name, st in (tun.get("studies") or {}).items():
        if st is None:  # switched off by an overriding preset
            continue
        where = f"tuning.studies.{name}"
        for i, label in enumerate(st["optimizers"]):
            if label not in config["optimizers"]:
                raise _bad(f"{where}.optimizers[{i}]",
                           f"{label!r} is not a defined optimizer label; defined under "
                           f"`optimizers`: {sorted(config['optimizers'])}")
        budget = st["budget"]
        steps, seconds = budget.get("steps"), budget.get("seconds")
        if steps is None and seconds is None:
            raise _bad(f"{where}.budget", "give steps and/or seconds")
        eval_every = int(st.get("eval_every") or config["eval_every"])
        seed = int(st.get("search_seed", tun.get("search_seed", 0)) or 0)
        study = tuning.Study(name, seed, narrow={**tuning.NARROW_DEFAULTS,
                                                 **(st.get("narrow") or {})})
        for pname in st["problems"]:
            problem, widths, batch = _problem_settings(config, pname)
            _check_widths(problem, widths, f"problems.{pname}.widths")
            run_seconds = problem.budget_seconds if seconds == "paper" else seconds
            if seconds == "paper" and run_seconds is None:
                raise _bad(f"{where}.budget.seconds", f"{pname} has no paper budget; give a "
                           "number")
            if run_seconds is not None:
                run_seconds = float(run_seconds) * scale
            for label in st["optimizers"]:
                opt = config["optimizers"][label]
                dims = _space(config, label, pname)
                for n_i, n_b in st.get("batches") or [batch]:
                    hp = _hparams(opt, pname, n_i + n_b)
                    base = {"problem": pname, "label": label,
                            "display": opt.get("display", label),
                            "optimizer": opt["optimizer"], "hparams": hp,
                            "widths": list(widths), "n_interior": int(n_i),
                            "n_boundary": int(n_b), "replicate": 0,
                            "data_seed": int(config["data_seed"]),
                            "model_seed": int(config["model_seed"]),
                            "max_steps": steps, "max_seconds": run_seconds,
                            "eval_every": eval_every, "dtype": config["dtype"],
                            **_network(config, pname)}
                    search = tuning.Search(pname, label, opt["optimizer"], int(n_i + n_b),
                                           dims, base, tuple(st["trials"]))
                    if any(s.key == search.key for s in study.searches):
                        raise _bad(f"{where}.batches", f"N = {search.n} twice")
                    study.searches.append(search)
        out[name] = study
    return out


def _tuned_runs(out: Plan, exp_name: str, study_name: str, pname: str, combos, replicates,
                steps, run_seconds, eval_every) -> list[str]:
    """Final runs of a study's best configurations in experiment ``exp_name`` on ``pname``:
    the experiment's budget and replicates, hyper-parameters from ``best.json`` at run time."""
    where = f"experiments.{exp_name}.tuned"
    study = out.studies.get(study_name)
    if study is None:
        off = study_name in ((out.config.get("tuning") or {}).get("studies") or {})
        raise _bad(where, f"study {study_name!r} is switched off (null under tuning.studies); "
                   f"give this experiment tuned: [] or another study" if off else
                   f"{study_name!r} is not a study; studies under tuning.studies: "
                   f"{sorted(out.studies)}")
    ids = []
    several = len(out.config["experiments"][exp_name].get("tuned") or ()) > 1
    for search in study.searches:
        if search.problem != pname:
            continue
        for (n_i, n_b), net in combos:
            if n_i + n_b != search.n:
                continue
            label = f"{search.label}_tuned" + (f"_{study_name}" if several else "")
            display = f"{search.base['display']} (tuned)"
            for rep in range(replicates):
                spec = {**copy.deepcopy(search.base), "label": label, "display": display,
                        "widths": list(net), "n_interior": int(n_i), "n_boundary": int(n_b),
                        "replicate": rep,
                        "data_seed": int(out.config["data_seed"]) + rep,
                        "model_seed": int(out.config["model_seed"]) + rep,
                        "max_steps": steps, "max_seconds": run_seconds,
                        "eval_every": eval_every}
                rid = run_id({**spec, "tuned_from": study_name})
                out.tuned[rid] = {"study": study_name, "problem": pname,
                                  "label": search.label, "n": search.n, "spec": spec}
                ids.append(rid)
    if not ids and any(s.problem == pname for s in study.searches):
        raise _bad(where, f"study {study_name!r} searched {pname} at N = "
                   f"{sorted({s.n for s in study.searches if s.problem == pname})}, not at the "
                   f"experiment's N = {sorted({a + b for (a, b), _ in combos})}")
    return ids


def plan(config: dict, schema_path=None, check_optimizers: bool = True) -> Plan:
    """Validate ``config`` and expand it; see the module docstring.

    ``check_optimizers``: also build every optimizer with its hyper-parameters (cheap, no
    compilation), so that a bad hyper-parameter fails here rather than in a run.
    """
    config = coerce(copy.deepcopy(dict(config)))
    load_plugins(config)
    schema = load_schema(schema_path)
    validate(config, schema)

    optimizers = config["optimizers"]
    out = Plan(config)
    scale = float(config.get("budget_scale", 1.0))
    out.studies = _studies(config, scale)
    for exp_name, exp in (config.get("experiments") or {}).items():
        if exp is None:  # switched off by an overriding preset
            continue
        kind = experiment_kind(exp_name)
        ids = []
        for i, label in enumerate(exp["optimizers"]):
            if label not in optimizers:
                raise ConfigError(
                    f"invalid pipeline preset:\n  config key experiments.{exp_name}.optimizers"
                    f"[{i}]: {label!r} is not a defined optimizer label; defined under "
                    f"`optimizers`: {sorted(optimizers)}")
            if kind == "effective_dimension" and \
                    optimizers[label]["optimizer"] not in D_EFF_OPTIMIZERS:
                raise ConfigError(
                    f"invalid pipeline preset:\n  config key experiments.{exp_name}."
                    f"optimizers[{i}]: {label!r} ({optimizers[label]['optimizer']}) cannot "
                    f"report the effective dimension; allowed optimizers: {D_EFF_OPTIMIZERS}")
        # An experiment's own `replicates` wins over the top-level one (e.g. seeds for the
        # convergence figure's error bands only, not for the timing sweeps).
        replicates = int(exp.get("replicates") or config["replicates"])
        eval_every = int(exp.get("eval_every") or config["eval_every"])
        budget = exp["budget"]
        steps, seconds = budget.get("steps"), budget.get("seconds")
        if steps is None and seconds is None:
            raise ConfigError(f"invalid pipeline preset:\n  config key experiments.{exp_name}"
                              ".budget: give steps and/or seconds")
        for pname in exp["problems"]:
            problem, widths, batch = _problem_settings(config, pname)
            run_seconds = problem.budget_seconds if seconds == "paper" else seconds
            if seconds == "paper" and run_seconds is None:
                raise ConfigError(
                    f"invalid pipeline preset:\n  config key experiments.{exp_name}.budget."
                    f"seconds: {pname} has no paper budget; give a number")
            if run_seconds is not None:
                run_seconds = float(run_seconds) * scale
            _check_widths(problem, widths, f"problems.{pname}.widths")
            batches = exp.get("batches") or [batch]
            nets = [n or widths for n in (exp.get("nets") or [widths])]
            for j, net in enumerate(nets):
                _check_widths(problem, net, f"experiments.{exp_name}.nets[{j}]")
            # N sweep at the first net, P sweep at the first batch (not the full product).
            combos = [(b, nets[0]) for b in batches] + [(batches[0], n) for n in nets[1:]]
            for label in exp["optimizers"]:
                opt = optimizers[label]
                own_net = (opt.get("widths") or {}).get(pname)
                if own_net is not None and kind == "convergence":
                    # the label's own net (the paper's logged ENGD run used a smaller one)
                    _check_widths(problem, own_net, f"optimizers.{label}.widths.{pname}")
                    label_combos = [(b, own_net) for b, _ in combos]
                else:
                    label_combos = combos
                for (n_i, n_b), net in label_combos:
                    hp = _hparams(opt, pname, n_i + n_b)
                    if kind == "effective_dimension":
                        hp["track_effective_dimension"] = True
                    for rep in range(replicates):
                        spec = {
                            "problem": pname, "label": label,
                            "display": opt.get("display", label),
                            "optimizer": opt["optimizer"], "hparams": hp,
                            "widths": list(net), "n_interior": int(n_i),
                            "n_boundary": int(n_b), "replicate": rep,
                            "data_seed": int(config["data_seed"]) + rep,
                            "model_seed": int(config["model_seed"]) + rep,
                            "max_steps": steps, "max_seconds": run_seconds,
                            "eval_every": eval_every, "dtype": config["dtype"],
                            **_network(config, pname),
                        }
                        batch_every = _batch_every(opt, pname)
                        if batch_every != 1:  # absent when 1: earlier run ids stay valid
                            spec["batch_every"] = batch_every
                        rid = run_id(spec)
                        out.runs[rid] = spec
                        if rid not in ids:
                            ids.append(rid)
            for study_name in exp.get("tuned") or ():
                ids += _tuned_runs(out, exp_name, study_name, pname, combos, replicates,
                                   steps, run_seconds, eval_every)
        out.experiments[exp_name] = ids
        out.kinds[exp_name] = kind

    problems_by_kind = {}
    for name, kind in out.kinds.items():
        if out.experiments[name]:
            problems_by_kind.setdefault(kind, set()).update(
                out.spec(rid)["problem"] for rid in out.experiments[name])
    out.figures = families.figure_names(problems_by_kind)
    if check_optimizers:
        check_hyperparameters(out)
    return out


def check_hyperparameters(p: Plan) -> None:
    """Build every (optimizer, hyper-parameters) pair once; raise :class:`ConfigError` on failure."""
    from .. import models, optim, problems
    from ..residuals import ResidualFn

    seen = set()
    specs = [(s, f"optimizers.{s['label']}.hparams") for s in p.runs.values()]
    specs += [(t["spec"], f"optimizers.{t['label']}.hparams") for t in p.tuned.values()]
    for study in p.studies.values():  # a first trial of every search (names and values)
        for search in study.searches:
            first = tuning.draw(search.dims, 1, 0)[0]
            specs.append(({**search.base, "hparams": {**search.base["hparams"], **first}},
                          f"tuning.spaces.{search.label} (a first trial)"))
    for spec, where in specs:
        key = (spec["problem"], spec["optimizer"], json.dumps(spec["hparams"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        problem = problems.get(spec["problem"])
        net = models.make(spec.get("network", "mlp"), spec["widths"], dtype="float32")
        residual_fn = ResidualFn(problem, net.apply)
        try:
            optim.make(spec["optimizer"], residual_fn, **spec["hparams"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"invalid pipeline preset:\n  config key {where} "
                f"(on {spec['problem']}): {spec['optimizer']} rejects {spec['hparams']}: "
                f"{err}") from None


def tuning_estimate(p: Plan) -> list[str]:
    """Lines for ``pinn-ng plan``: trials and their budget in hours, per study and problem."""
    out = []
    for name, study in p.studies.items():
        n1 = sum(s.n_trials(1) for s in study.searches)
        n2 = sum(s.n_trials(2) for s in study.searches)
        hours = tuning.estimate_hours(study)
        per = ", ".join(f"{prob} {h:.2f} h" if h is not None else f"{prob} (step budget)"
                        for prob, h in hours.items())
        out.append(f"tuning study {name}: {n1} + {n2} trials; trials × budget: {per}")
    return out

