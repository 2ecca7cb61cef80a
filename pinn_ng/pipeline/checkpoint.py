"""Checkpoints of a training run, so that a killed run resumes where it stopped.

A checkpoint is a directory (``<run dir>/checkpoint/`` in the pipeline) holding

- ``state/``: the parameters and the optimizer state, written by orbax-checkpoint
  (``StandardCheckpointHandler``: every leaf stored exactly, float64 included);
- ``progress.json``: everything else the loop needs to continue as if it had never stopped:
  the step (the batch of step k is a pure function of k and the data seed, so the step *is*
  the sampler's position), the timed seconds so far, the curve rows so far, the per-step
  times and event flags, the event counts, the segments (one per process) and an identity
  of the run (its spec) that a resuming process must match.

Writes are atomic: a checkpoint is assembled in a sibling temporary directory and swapped in
with ``os.replace``-style renames, ``progress.json`` last, so a process killed while saving
leaves the previous checkpoint (or, for the instant between the two renames, the previous one
under ``.checkpoint.old``, which :meth:`Checkpointer.load` also reads).  Restoring reads the
state into the structure of a freshly initialised one (optax's NamedTuple states included),
so a checkpoint never has to pickle Python classes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

PROGRESS = "progress.json"
STATE = "state"
#: Bumped when the layout of ``progress.json`` changes; an older checkpoint is then unreadable.
FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used (truncated, corrupt, from another run)."""


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def _json_default(v):
    if hasattr(v, "item"):  # numpy / jax scalars
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


class CheckpointMismatch(CheckpointError):
    """The checkpoint was written by another run (its identity differs)."""


class Checkpointer:
    """Save and load one run's checkpoint in ``directory``.

    ``every_seconds``: wall-clock seconds between periodic saves (None: only on request, e.g.
    when the process is asked to stop).  ``identity``: a JSON-able description of the run
    (its spec without the budget); a checkpoint written under another identity is refused.
    """

    def __init__(self, directory, *, every_seconds: float | None = None,
                 identity: dict | None = None):
        if every_seconds is not None and not (math.isfinite(every_seconds)
                                              and every_seconds > 0):
            raise ValueError(f"checkpoint every_seconds must be a positive number, got "
                             f"{every_seconds!r}")
        self.directory = Path(directory)
        self.every_seconds = every_seconds
        self.identity = json.loads(json.dumps(identity, default=_json_default)) \
            if identity is not None else None
        self.saves = 0

    @property
    def _old(self) -> Path:
        return self.directory.with_name(f".{self.directory.name}.old")

    def exists(self) -> bool:
        return (self.directory / PROGRESS).is_file() or (self._old / PROGRESS).is_file()

    def save(self, state, progress: dict) -> None:
        """Write ``state`` (a pytree of arrays) and ``progress`` (JSON-able) atomically."""
        ocp = _orbax()
        parent = self.directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.tmp-", dir=parent))
        try:
            ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(
                (tmp / STATE).absolute(), args=ocp.args.StandardSave(state))
            body = {"format": FORMAT, "identity": self.identity, **progress}
            text = json.dumps(body, default=_json_default)  # NaN stays NaN; floats exact
            with open(tmp / PROGRESS, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            # swap: the old checkpoint stays readable (as .old) until the new one is in place
            if self.directory.exists():
                shutil.rmtree(self._old, ignore_errors=True)
                os.rename(self.directory, self._old)
            os.rename(tmp, self.directory)
            shutil.rmtree(self._old, ignore_errors=True)
            self.saves += 1
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self, like_state):
        """``(state, progress)`` of the checkpoint, or None when there is none.

        ``like_state``: a freshly initialised state of the same structure (shapes, dtypes,
        NamedTuples) that the stored leaves are restored into.  Raises
        :class:`CheckpointError` (one line) for a checkpoint that exists but cannot be read,
        or that another run (a different identity) wrote.
        """
        where = self.directory
        if not (where / PROGRESS).is_file():
            if not (self._old / PROGRESS).is_file():
                if where.exists() and any(where.iterdir()):
                    raise CheckpointError(f"checkpoint {where} is incomplete (no {PROGRESS})")
                return None
            where = self._old  # killed between the two renames of a save
        try:
            progress = json.loads((where / PROGRESS).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint {where}: cannot read {PROGRESS} "
                                  f"({type(err).__name__}: {err})") from None
        found = progress.get("format") if isinstance(progress, dict) else progress
        if found != FORMAT:
            raise CheckpointError(f"checkpoint {where}: unknown format {found!r} (this "
                                  f"version writes {FORMAT})")
        if self.identity is not None and progress.get("identity") != self.identity:
            theirs = progress.get("identity") or {}
            keys = sorted(k for k in set(theirs) | set(self.identity)
                          if theirs.get(k) != self.identity.get(k))
            raise CheckpointMismatch(f"checkpoint {where} belongs to a different run (differs in "
                                  f"{keys}); remove it or write this run to another directory")
        ocp = _orbax()
        try:
            state = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
                (where / STATE).absolute(), args=ocp.args.StandardRestore(like_state))
        except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
            text = " ".join(str(err).split())[:300]
            raise CheckpointError(f"checkpoint {where}: cannot restore the state "
                                  f"({type(err).__name__}: {text})") from None
        _check_like(state, like_state, where)
        progress.pop("format", None)
        progress.pop("identity", None)
        return state, progress

    def remove(self) -> None:
        for d in (self.directory, self._old):
            shutil.rmtree(d, ignore_errors=True)

    def set_aside(self) -> Path | None:
        """Move an unusable checkpoint out of the way (kept for inspection); its new path."""
        for d in (self.directory, self._old):
            if d.exists():
                dest = d.with_name(f"{self.directory.name}.unusable")
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(d, dest)
                self.remove()
                return dest
        return None


def _check_like(state, like, where) -> None:
    import jax

    a, b = jax.tree_util.tree_structure(state), jax.tree_util.tree_structure(like)
    if a != b:
        raise CheckpointError(f"checkpoint {where}: its state has another structure than this "
                              "run's optimizer state")
    for x, y in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(like)):
        if getattr(x, "shape", None) != getattr(y, "shape", None) or \
                getattr(x, "dtype", None) != getattr(y, "dtype", None):
            raise CheckpointError(f"checkpoint {where}: a stored array has shape/dtype "
                                  f"{getattr(x, 'shape', None)}/{getattr(x, 'dtype', None)}, "
                                  f"this run expects {getattr(y, 'shape', None)}/"
                                  f"{getattr(y, 'dtype', None)}")
