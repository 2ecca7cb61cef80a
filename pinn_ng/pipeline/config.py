"""Pipeline presets: validate a merged config and expand it into runs, tables and figures.

A preset is data: YAML files shipped with the package in ``pinn_ng/pipeline/presets/``
(``config/*.yaml`` in the source tree are links to them, for ``snakemake --configfile``), found
by name with :func:`preset_path`.  Snakemake merges ``default.yaml`` with any ``--configfile``
(dictionaries merge key by key, lists are replaced) and ``--config key=value``; :func:`plan`
then checks the result against the schema (:func:`load_schema`: ``presets/schema.yaml`` with
the registries' names filled in) and a few rules the schema cannot express (labels that exist,
nets that fit the problem), and expands the experiments into one run specification per run.
All of it happens when the Snakefile is parsed, so a bad value stops the pipeline before any
run starts, with the key and the allowed values.

Experiments (each feeds one figure family, :data:`pinn_ng.pipeline.families.FAMILIES`):

- ``convergence``: problems × optimizers at the problem's batch and net -> ``convergence_<problem>``;
- ``scaling``: N swept over ``batches`` at the first net, P over ``nets`` at the first batch
  -> ``speedup`` (seconds per step, log-log);
- ``nystrom``: like ``scaling`` over ``batches`` -> ``nystrom_<problem>``;
- ``effective_dimension``: ENGD-W / SPRING runs with ``track_effective_dimension`` switched on
  -> ``effective_dimension``.

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
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import families
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


def load_schema(path=None) -> dict:
    """The preset schema with the names that live in the code filled in: the problem and
    optimizer enums from their registries, the experiment-name pattern from the families."""
    from .. import optim, problems

    schema = load_yaml(path or default_schema_path())
    defs = schema.setdefault("$defs", {})
    defs.setdefault("problem_name", {})["enum"] = problems.names()
    defs.setdefault("optimizer_name", {})["enum"] = optim.names()
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
        return {"experiments": self.experiments, "kinds": self.kinds,
                "display": {s["label"]: s["display"] for s in self.runs.values()}}

    def run_threads(self, cores: int) -> int:
        n = int(self.config.get("run_threads", 0) or 0)
        return max(1, min(n, cores)) if n else max(1, cores)


def _problem_settings(config: dict, name: str):
    from .. import problems

    problem = problems.get(name)
    own = (config.get("problems") or {}).get(name) or {}
    widths = own.get("widths") or list(problem.widths)
    batch = own.get("batch") or [problem.n_interior, problem.n_boundary]
    return problem, list(widths), list(batch)


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


def plan(config: dict, schema_path=None, check_optimizers: bool = True) -> Plan:
    """Validate ``config`` and expand it; see the module docstring.

    ``check_optimizers``: also build every optimizer with its hyper-parameters (cheap, no
    compilation), so that a bad hyper-parameter fails here rather than in a run.
    """
    config = coerce(copy.deepcopy(dict(config)))
    schema = load_schema(schema_path)
    validate(config, schema)

    optimizers = config["optimizers"]
    out = Plan(config)
    scale = float(config.get("budget_scale", 1.0))
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
                for (n_i, n_b), net in combos:
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
                        }
                        batch_every = _batch_every(opt, pname)
                        if batch_every != 1:  # absent when 1: earlier run ids stay valid
                            spec["batch_every"] = batch_every
                        rid = run_id(spec)
                        out.runs[rid] = spec
                        if rid not in ids:
                            ids.append(rid)
        out.experiments[exp_name] = ids
        out.kinds[exp_name] = kind

    problems_by_kind = {}
    for name, kind in out.kinds.items():
        if out.experiments[name]:
            problems_by_kind.setdefault(kind, set()).update(
                out.runs[rid]["problem"] for rid in out.experiments[name])
    out.figures = families.figure_names(problems_by_kind)
    if check_optimizers:
        check_hyperparameters(out)
    return out


def check_hyperparameters(p: Plan) -> None:
    """Build every (optimizer, hyper-parameters) pair once; raise :class:`ConfigError` on failure."""
    from .. import models, optim, problems
    from ..residuals import ResidualFn

    seen = set()
    for spec in p.runs.values():
        key = (spec["problem"], spec["optimizer"], json.dumps(spec["hparams"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        problem = problems.get(spec["problem"])
        residual_fn = ResidualFn(problem, models.mlp(spec["widths"], dtype="float32").apply)
        try:
            optim.make(spec["optimizer"], residual_fn, **spec["hparams"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"invalid pipeline preset:\n  config key optimizers.{spec['label']}.hparams "
                f"(on {spec['problem']}): {spec['optimizer']} rejects {spec['hparams']}: "
                f"{err}") from None


def budget_minutes(spec: dict) -> int:
    """A generous SLURM time limit for one run: budget + compilation and evaluation slack."""
    seconds = spec.get("max_seconds")
    if seconds is None:
        return 60
    return int(math.ceil(seconds * 1.5 / 60.0)) + 15
