"""Pipeline presets: find, read, merge and validate them.

A preset is data: YAML files shipped with the package in ``pinn_ng/pipeline/presets/``
(``config/*.yaml`` in the source tree are links to them, for ``snakemake --configfile``), found
by name with :func:`preset_path`.  Snakemake merges ``default.yaml`` with any ``--configfile``
(dictionaries merge key by key, lists are replaced, :func:`merge`) and ``--config key=value``;
:func:`validate` checks the result against the schema (:func:`load_schema`:
``presets/schema.yaml`` with the registries' names filled in).  Plugins come first
(:func:`load_plugins`): the preset's ``plugins`` (files relative to the preset, or module
names), ``PINN_NG_PLUGINS`` and installed entry points (:mod:`pinn_ng.plugins`), so that the
names they register are valid values everywhere.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from .. import plugins
from . import families
from .errors import UserError

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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
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


def load_plugins(config: dict) -> None:
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

