"""The figure families of the pipeline: one table, from which everything else is derived.

A family is a kind of figure and the experiment kind that feeds it.  Experiments in a preset
are named after their kind, optionally with a suffix (``convergence_100d``); the schema's
pattern for experiment names (:func:`experiment_pattern`), the figures a plan promises
(:func:`figure_names`), the figures the gathered tables allow (``figures.available``) and the
figure a name stands for (:func:`parse_figure`) all come from :data:`FAMILIES`.  A family that
is not ``planned`` is drawn where the gathered tables allow it but never promised by a plan.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Family(NamedTuple):
    """A figure family: the experiment kind that feeds it, and one figure per problem or not."""

    experiment: str
    per_problem: bool
    #: whether a plan promises it; False: it depends on more than the experiments' problems
    #: (``paper_overlay``: on which runs have a paper history), so only the tables can tell
    planned: bool = True


#: Figure family -> its experiment kind; the order is the order of figures everywhere.
FAMILIES = {
    "speedup": Family("scaling", per_problem=False),
    "convergence": Family("convergence", per_problem=True),
    "nystrom": Family("nystrom", per_problem=True),
    "effective_dimension": Family("effective_dimension", per_problem=False),
    "paper_overlay": Family("convergence", per_problem=True, planned=False),
    # scoring (pinn_ng.pipeline.scoring): time to target over problems x targets, and the
    # trained solution of each optimizer's median run
    "performance_profile": Family("convergence", per_problem=False),
    "solution": Family("convergence", per_problem=True),
}

#: The experiment kinds, in the order of their families (a kind may feed several).
EXPERIMENT_KINDS = tuple(dict.fromkeys(f.experiment for f in FAMILIES.values()))


def experiment_pattern() -> str:
    """The JSON-schema pattern of an experiment's name: a kind and an optional ``_suffix``."""
    kinds = "|".join(sorted(EXPERIMENT_KINDS, key=len, reverse=True))
    return rf"^({kinds})(_[A-Za-z0-9]+)?$"


def experiment_kind(name: str) -> str:
    """The experiment kind of an experiment name (``convergence_100d`` -> ``convergence``)."""
    m = re.match(experiment_pattern(), name)
    if not m:
        raise ValueError(f"experiment {name!r}: the name must be one of {list(EXPERIMENT_KINDS)}, "
                         "optionally with a suffix _<letters/digits>")
    return m.group(1)


def figure_names(problems_by_kind: dict) -> list[str]:
    """The figures of the experiment kinds present: ``problems_by_kind`` maps a kind with runs
    to the problems it ran on; per-problem families give one figure per problem.  Planned
    families only."""
    out = []
    for family, spec in FAMILIES.items():
        if not spec.planned or spec.experiment not in problems_by_kind:
            continue
        if spec.per_problem:
            out += [f"{family}_{p}" for p in sorted(problems_by_kind[spec.experiment])]
        else:
            out.append(family)
    return out


def parse_figure(name: str) -> tuple[str, str | None]:
    """``(family, problem or None)`` of a figure name; ValueError listing the forms otherwise."""
    for family, spec in FAMILIES.items():
        if spec.per_problem and name.startswith(family + "_") and len(name) > len(family) + 1:
            return family, name[len(family) + 1:]
        if not spec.per_problem and name == family:
            return family, None
    forms = [f"{f}_<problem>" if s.per_problem else f for f, s in FAMILIES.items()]
    raise ValueError(f"unknown figure {name!r}; figures: {', '.join(forms)}")
