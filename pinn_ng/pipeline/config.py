"""The pipeline's configuration, by concern; this module gathers their names for the Snakefile,
the command line and the tests (``from pinn_ng.pipeline import config as pcfg``).

- :mod:`pinn_ng.pipeline.preset`: find, read, merge and validate presets (YAML, a schema);
- :mod:`pinn_ng.pipeline.planning`: a validated preset expanded into runs, tables and figures;
- :mod:`pinn_ng.pipeline.cluster`: device-hours, SLURM time limits and settings;
- :mod:`pinn_ng.pipeline.cache`: the persistent compilation cache every job shares.
"""

from __future__ import annotations

from .cache import (  # noqa: F401
    COMPILATION_CACHE_MAX_BYTES,
    compilation_cache_env,
    compilation_cache_error,
)
from .cluster import DeviceHours, budget_minutes, device_hours, slurm_settings_error  # noqa: F401
from .planning import (  # noqa: F401
    D_EFF_OPTIMIZERS,
    EXPERIMENTS,
    Plan,
    _space,
    check_hyperparameters,
    experiment_kind,
    plan,
    run_id,
    tuning_estimate,
)
from .preset import (  # noqa: F401
    DEFAULT_PRESET,
    PRESETS_DIR,
    ConfigError,
    coerce,
    default_schema_path,
    load_plugins,
    load_preset,
    load_schema,
    load_yaml,
    merge,
    preset_names,
    preset_path,
    preset_plugins,
    validate,
)
