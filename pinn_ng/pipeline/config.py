"""Pipeline presets: validate a merged config and expand it into runs, tables and figures.

A preset is data: YAML files shipped with the package in ``pinn_ng/pipeline/presets/``
(``config/*.yaml`` in the source tree are links to them, for ``snakemake --configfile``), found
by name with :func:`preset_path`.  Snakemake merges ``default.yaml`` with any ``--configfile``
(dictionaries merge key by key, lists are replaced) and ``--config key=value``; :func:`plan`
then checks the result against the schema (:func:`load_schema`: ``presets/schema.yaml`` with
the registries' names filled in) and a few rules the schema cannot express (labels that exist,
nets that fit the problem), and expands the experiments into one run specification per run.
All of it happens when the Snakefile is parsed, so a bad value stops the pipeline before any
run starts, with the key and the allowed values.  Plugins come first: the preset's ``plugins``
(files relative to the preset, or module names), ``PINN_NG_PLUGINS`` and installed entry
points (:mod:`pinn_ng.plugins`), so that the names they register are valid values everywhere.

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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import plugins
from . import families, tuning
from .errors import UserError

#: The experiment kinds (one per figure family, see :mod:`pinn_ng.pipeline.families`).
EXPERIMENTS = families.EXPERIMENT_KINDS
#: Optimizers whose diagnostics can report the effective dimension.
D_EFF_OPTIMIZERS = ("engd_woodbury", "spring")

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(UserError):
    """A preset value is invalid; the message names the key and the allowed values."""


#: Where the shipped presets and the schema live (package data).
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
#: The preset every other one overrides (as the Snakefile's ``configfile:``).
DEFAULT_PRESET = "default"

#: Size cap of the persistent compilation cache (JAX evicts the least recently used entries).
COMPILATION_CACHE_MAX_BYTES = 4 * 2**30


def default_schema_path() -> Path:
    """The schema shipped with the package (``presets/schema.yaml``)."""
    return PRESETS_DIR / "schema.yaml"


def preset_names() -> list[str]:
    """Names of the presets shipped with the package (``pinn-ng plan <name>``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if p.stem != "schema")


def preset_path(name_or_path) -> Path:
    """A preset file: an existing path as it is, else a shipped preset by name (``smoke``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(name_or_path) in (stem, f"{stem}.yaml") and stem in preset_names():
        return PRESETS_DIR / f"{stem}.yaml"
    raise ConfigError(f"preset {str(name_or_path)!r}: no such file, and not a shipped preset; "
                      f"shipped presets: {preset_names()}")


def load_yaml(path) -> dict:
    """A YAML mapping from ``path``; :class:`ConfigError` (one line, naming the file) if the
    file is missing, is not valid YAML or is not a mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of keys to values, "
                          f"got {type(data).__name__}")
    return data


def load_preset(path) -> dict:
    """A preset file (:func:`load_yaml`) with its ``plugins`` paths made absolute against the
    file's directory, as a preset's plugins are written."""
    data = load_yaml(path)
    if isinstance(data.get("plugins"), list):
        data["plugins"] = plugins.resolve(data["plugins"], Path(path).resolve().parent)
    return data


def preset_plugins(config: dict, preset_files) -> list | None:
    """The merged ``config``'s ``plugins`` with paths absolute: against the directory of the
    last of ``preset_files`` (in merge order) that gives this list, else against the working
    directory (``--config plugins=[…]``).  For the Snakefile, where Snakemake has merged the
    files already."""
    value = config.get("plugins")
    if not isinstance(value, list) or not value:
        return value
    for path in reversed([str(f) for f in preset_files]):
        if os.path.isfile(path) and load_yaml(path).get("plugins") == value:
            return plugins.resolve(value, Path(path).resolve().parent)
    return plugins.resolve(value, os.getcwd())


def _load_plugins(config: dict) -> None:
    """Load the plugins of ``PINN_NG_PLUGINS``, installed entry points and the preset's
    ``plugins`` (before the schema: the names they register are allowed values)."""
    value = config.get("plugins")
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"invalid pipeline preset:\n  config key plugins: {value!r} is not a "
                          "list of plugins (.py files, relative to the preset, or module names)")
    try:
        plugins.load(value)
    except plugins.PluginError as err:
        raise ConfigError(str(err)) from None


def load_schema(path=None) -> dict:
    """The preset schema with the names that live in the code filled in: the problem, network
    and optimizer enums from their registries (plugins included, once loaded), the
    experiment-name pattern from the families."""
    from .. import models, optim, problems

    schema = load_yaml(path or default_schema_path())
    defs = schema.setdefault("$defs", {})
    defs.setdefault("problem_name", {})["enum"] = problems.names()
    defs.setdefault("optimizer_name", {})["enum"] = optim.names()
    defs.setdefault("network_name", {})["enum"] = models.names()
    experiments = schema.get("properties", {}).get("experiments")
    if isinstance(experiments, dict):
        experiments.setdefault("propertyNames", {})["pattern"] = families.experiment_pattern()
    return schema


def merge(base: dict, override: dict) -> dict:
    """Snakemake's merge: dictionaries key by key (recursively), everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def coerce(value):
    """Turn strings that spell numbers, booleans or null into those values, recursively.

    PyYAML reads ``1e-7`` (no dot) as a string, and Snakemake's ``--config key=[..]`` parses
    nested values as strings; both mean numbers.  Keys are left alone.
    """
    if isinstance(value, dict):
        return {k: coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v) for v in value]
    if isinstance(value, str):
        s = value.strip()
        if _INT.match(s):
            return int(s)
        if _FLOAT.match(s):
            return float(s)
        if s in ("true", "True"):
            return True
        if s in ("false", "False"):
            return False
        if s in ("null", "None", "~"):
            return None
    return value


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _allowed_keys(schema: dict, error) -> list[str]:
    props = error.schema.get("properties") if isinstance(error.schema, dict) else None
    return sorted(props) if props else []


def validate(config: dict, schema: dict) -> None:
    """Check ``config`` against the JSON ``schema``; raise :class:`ConfigError` listing problems."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    lines = []
    for err in errors[:12]:
        while err.validator == "oneOf" and err.context:
            # Of the alternatives, report the one that got furthest into the value, and
            # rather a broken rule (minimum, enum, …) than "is not of type 'null'".
            err = max(err.context, key=lambda e: (len(e.absolute_path), e.validator != "type",
                                                  -len(e.message)))
        where = _key_path(err.absolute_path)
        msg = err.message
        if err.validator == "additionalProperties":
            allowed = _allowed_keys(schema, err)
            if allowed:
                msg += f"; allowed keys: {allowed}"
        elif err.validator == "propertyNames":
            sub = err.schema.get("propertyNames", {}) if isinstance(err.schema, dict) else {}
            ref = sub.get("$ref", "")
            enum = schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {}).get("enum") or sub.get(
                "enum")
            if enum:
                msg += f"; allowed: {enum}"
        lines.append(f"  config key {where}: {msg}")
    more = f"\n  … and {len(errors) - 12} more" if len(errors) > 12 else ""
    raise ConfigError("invalid pipeline preset:\n" + "\n".join(lines) + more)


def experiment_kind(name: str) -> str:
    """The experiment kind of an experiment: its name up to an optional ``_suffix``."""
    try:
        return families.experiment_kind(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def n_params(widths) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def run_id(spec: dict) -> str:
    """Readable and unique: problem, label, batch, P, replicate, and a hash of the whole spec."""
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
                "display": {s["label"]: s["display"] for s in specs}}

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
        """Environment that points every job's JAX at the preset's persistent compilation
        cache (``compilation_cache``; none if it is null).

        Runs of one grid compile the same programs (replicates, the same optimizer at one
        size): a process that finds its executables there skips XLA's compilation.
        Compilation is never inside the timed steps, so only ``compile_seconds`` changes.  Every
        entry is kept, however fast it compiled; the size cap turns on JAX's file lock, so that
        jobs running side by side never read a half-written entry.
        """
        where = self.config.get("compilation_cache")
        if not where:
            return {}
        return {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(os.path.expanduser(str(where))),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                "JAX_COMPILATION_CACHE_MAX_SIZE": str(COMPILATION_CACHE_MAX_BYTES)}

    def compilation_cache_error(self) -> str | None:
        """Why the compilation cache directory cannot be used (one line), or None.  Creates
        it: call before the first job, never in a dry run.  (JAX itself would only warn, in
        every job, and compile without it.)"""
        env = self.compilation_cache_env()
        if not env:
            return None
        where = env["JAX_COMPILATION_CACHE_DIR"]
        fix = "choose a writable directory, or --config compilation_cache=null"
        try:
            os.makedirs(where, exist_ok=True)
        except OSError as err:
            return f"compilation_cache {where!r} cannot be created ({err.strerror}): {fix}"
        if not os.access(where, os.W_OK | os.X_OK):
            return f"compilation_cache {where!r} is not writable: {fix}"
        return None


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
    _load_plugins(config)
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


def budget_minutes(spec: dict) -> int:
    """A generous SLURM time limit for one run: budget + compilation and evaluation slack."""
    seconds = spec.get("max_seconds")
    if seconds is None:
        return 60
    return int(math.ceil(seconds * 1.5 / 60.0)) + 15


@dataclass
class DeviceHours:
    """``pinn-ng plan``'s estimate of a preset's device time (GPU-hours where it asks for GPUs).

    Not a measurement: the budgets are wall-clock limits of the timed training loop, so
    ``budget_hours`` (their sum, times the GPUs per run) is what the training itself takes
    when every run uses its whole budget, which the paper's wall-clock runs do.  Compilation
    and evaluation come on top; ``limit_hours`` is the sum of the SLURM time limits
    (:func:`budget_minutes`: budget × 1.5 + 15 min per run), an upper bound for everything a
    run can hold a device.  A run with a step budget only has no time bound: it is counted
    at its 60-minute limit in ``limit_hours`` and not at all in ``budget_hours``.  The
    Nyström table (a benchmark, no budget) is not included.
    """

    runs: int
    gpus_per_run: int
    budget_hours: float
    limit_hours: float
    steps_only: int

    def describe(self) -> str:
        unit = "GPU-hours" if self.gpus_per_run else "device-hours (gpus_per_run: 0)"
        per = max(self.gpus_per_run, 1)
        text = (f"{unit}: about {self.budget_hours:.1f} h of training (the {self.runs} runs' "
                f"budgets in seconds summed{f', x {per} GPUs' if per > 1 else ''}; a "
                "wall-clock run uses all of its budget, one that also has a step budget may "
                f"stop sooner), at most {self.limit_hours:.1f} h reserved as SLURM time limits "
                "(budget x 1.5 + 15 min per run, for compilation and evaluation)")
        if self.steps_only:
            text += (f"; {self.steps_only} runs have a step budget only and are counted at "
                     "their 60-min limit")
        return text + "; the Nystrom table is not included"


def device_hours(p: Plan) -> DeviceHours:
    """The device time of a plan, from its budgets (see :class:`DeviceHours`)."""
    gpus = int(p.config.get("gpus_per_run", 0) or 0)
    per = max(gpus, 1)
    budget = sum(s["max_seconds"] for s in p.runs.values() if s["max_seconds"] is not None)
    limit = sum(budget_minutes(s) for s in p.runs.values())
    steps_only = sum(s["max_seconds"] is None for s in p.runs.values())
    return DeviceHours(runs=len(p.runs), gpus_per_run=gpus, budget_hours=budget / 3600 * per,
                       limit_hours=limit / 60 * per, steps_only=steps_only)


#: The profile's placeholders look like this: ``slurm_account: "<your account>"``.
_PLACEHOLDER = re.compile(r"^\s*<.*>\s*$")


def slurm_settings_error(default: dict, per_rule: dict, rules, *, no_account=False,
                         profile="profiles/slurm/config.yaml") -> str | None:
    """One line naming the SLURM setting still unset or a placeholder, or None if all are set.

    ``default``: the default resources; ``per_rule``: rule -> resources that override them
    (Snakemake's set-resources); ``rules``: the rules that become SLURM jobs.  Every rule
    needs ``slurm_partition`` and, unless the plugin runs with ``--slurm-no-account``,
    ``slurm_account``: otherwise the first sbatch fails deep inside the executor plugin, or
    lands in a partition (and on an account) nobody chose.
    """
    keys = ["slurm_partition"] if no_account else ["slurm_account", "slurm_partition"]
    for key in keys:
        for rule in rules:
            value = (per_rule.get(rule) or {}).get(key, default.get(key))
            if value is None or str(value).strip() == "" or _PLACEHOLDER.match(str(value)):
                where = "set-resources" if key in (per_rule.get(rule) or {}) else \
                    "default-resources"
                now = "unset" if value in (None, "") else f"still the placeholder {value!r}"
                return (f"{key} for rule {rule} is {now}: set it under {where} in {profile} "
                        f"(or --default-resources / --set-resources {rule}:{key}=...)"
                        + ("" if key == "slurm_partition" or no_account else
                           "; a cluster without accounts: --slurm-no-account"))
    return None
