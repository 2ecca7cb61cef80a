"""Clusters and devices at plan time: a preset's device-hours and SLURM time limits, and the
SLURM settings a profile still lacks (:mod:`pinn_ng.pipeline.devices` checks the device a job
sees when it starts)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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


def device_hours(p) -> DeviceHours:
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

