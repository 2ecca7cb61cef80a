"""Timing integrity: did a run have the cores it assumed?

A run's seconds per step mean something only if nothing else competed for its cores.  A
:class:`Monitor` probes the machine before and after a run, and samples it cheaply while the
run goes (one reading of a few ``/proc`` files every ``interval`` seconds, on a daemon thread):

- the process's CPU time (``os.times``) against the wall time it spanned;
- the cores it could use (``os.sched_getaffinity``) and the threads it ran (``Threads`` of
  ``/proc/self/status``, the most seen);
- the load average and the CPU steal (``/proc/stat``) before and after;
- the runnable tasks of the whole machine (``procs_running`` in ``/proc/stat``) less the
  process's own running threads, per sample;
- the time its threads spent waiting on a run queue (``/proc/self/task/*/schedstat``: the
  kernel's count of nanoseconds runnable but not running), and the spread of its step times.

:func:`verdict` turns the probes into the ``contended`` flag by the rule in :data:`RULE`
(measured: ``docs/benchmarks.md``, "Contention").  Where ``/proc`` is missing (not Linux) the
probes are ``None`` and a run is never flagged.

:func:`claim_cores` pins a process to ``k`` cores nobody else of pinn-ng holds (a lock file
per core): the pipeline's timed jobs given fewer than all cores each get cores of their own.
"""

from __future__ import annotations

import fcntl
import math
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

#: The rule for ``contended``, from the measurements in the documentation: a run is
#: contended when its threads waited on a run queue for more than ``wait_share`` of the time
#: they wanted a core, or when the hypervisor stole more than ``steal_share`` of the CPUs.
#: A run alone on 2 cores waits up to about a third of that time (XLA's threads queue behind
#: each other); next to two busy loops on an otherwise quiet machine about half, next to
#: more work 0.8-0.9: the line sits between.
RULE = {"wait_share": 0.40, "steal_share": 0.10}
#: Values of the preset key (and ``pinn-ng run`` flag) ``on_contention``.
ON_CONTENTION = ("warn", "mark", "fail")

_PROC = Path("/proc")


def _read(path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _stat_cpu() -> dict | None:
    """Machine-wide CPU jiffies (``cpu`` line of /proc/stat) and ``procs_running``."""
    text = _read(_PROC / "stat")
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            vals = [int(v) for v in parts[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
            # already counted in user
            out["total"] = sum(vals[:8])
            out["steal"] = vals[7] if len(vals) > 7 else 0
        elif parts and parts[0] == "procs_running":
            out["procs_running"] = int(parts[1])
    return out


def _threads() -> int | None:
    text = _read(_PROC / "self" / "status")
    for line in (text or "").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def _tasks():
    try:
        return os.listdir(_PROC / "self" / "task")
    except OSError:
        return []


def _running_threads() -> int:
    """Threads of this process in state R (running or runnable) now."""
    n = 0
    for tid in _tasks():
        text = _read(_PROC / "self" / "task" / tid / "stat")
        if text:
            # the state follows the parenthesised command name, which may contain spaces
            state = text[text.rfind(")") + 2:text.rfind(")") + 3]
            n += state == "R"
    return n


def _schedstat() -> dict:
    """tid -> (ns on a CPU, ns waiting on a run queue) for every thread of this process."""
    out = {}
    for tid in _tasks():
        text = _read(_PROC / "self" / "task" / tid / "schedstat")
        if text:
            run_ns, wait_ns = (int(v) for v in text.split()[:2])
            out[tid] = (run_ns, wait_ns)
    return out


def _loadavg() -> list | None:
    text = _read(_PROC / "loadavg")
    return [float(v) for v in text.split()[:3]] if text else None


def _affinity() -> list | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def snapshot() -> dict:
    """One probe of the process and the machine (what :class:`Monitor` takes before/after)."""
    t = os.times()
    return {"wall": time.monotonic(), "cpu": t.user + t.system, "affinity": _affinity(),
            "threads": _threads(), "loadavg": _loadavg(), "stat": _stat_cpu(),
            "schedstat": _schedstat()}


class Monitor:
    """Probes around a run: ``with Monitor() as m: …``, then ``m.probes(step_seconds)``.

    The sampler reads ``/proc/stat``, ``/proc/self/status`` and the threads' states every
    ``interval`` seconds: a few small file reads, nothing the run can feel.
    """

    def __init__(self, interval: float = 2.0):
        self.interval = float(interval)
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = None
        self.before = self.after = None

    def _sample(self) -> None:
        stat = _stat_cpu() or {}
        mine = _running_threads()
        running = stat.get("procs_running")
        self.samples.append({
            "threads": _threads(),
            # the sampler itself is one of both counts
            "other_runnable": None if running is None else max(running - mine, 0)})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "Monitor":
        self.before = snapshot()
        self._thread = threading.Thread(target=self._loop, name="pinn-ng-contention",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "Monitor":
        if self.after is None:
            self._stop.set()
            self._thread.join()
            self._sample()
            self.after = snapshot()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def probes(self, step_seconds=()) -> dict:
        """The raw probes (``meta.json``'s ``machine_load``) without the verdict."""
        return probes(self.before, self.after, self.samples, step_seconds)


def _spread(step_seconds) -> dict:
    ts = [float(t) for t in step_seconds if math.isfinite(t)]
    if not ts:
        return {"n": 0, "median": None, "p90_over_median": None, "max_over_median": None,
                "cv": None}
    med = statistics.median(ts)
    p90 = sorted(ts)[min(len(ts) - 1, int(math.ceil(0.9 * len(ts))) - 1)]
    return {"n": len(ts), "median": med,
            "p90_over_median": p90 / med if med > 0 else None,
            "max_over_median": max(ts) / med if med > 0 else None,
            "cv": statistics.pstdev(ts) / statistics.fmean(ts) if statistics.fmean(ts) > 0
            else None}


def probes(before: dict, after: dict, samples: list, step_seconds=()) -> dict:
    """Raw probes of a run from two :func:`snapshot` and the sampler's readings."""
    wall = after["wall"] - before["wall"]
    cpu = after["cpu"] - before["cpu"]
    out = {"wall_seconds": wall, "cpu_seconds": cpu,
           "cpu_per_wall": cpu / wall if wall > 0 else None,
           "cpus_online": os.cpu_count(),
           "affinity": after["affinity"],
           "cores": len(after["affinity"]) if after["affinity"] else None}
    seen = [s["threads"] for s in samples] + [before["threads"], after["threads"]]
    seen = [t for t in seen if t is not None]
    out["threads_max"] = max(seen) if seen else None
    out["loadavg_before"], out["loadavg_after"] = before["loadavg"], after["loadavg"]
    b, a = before["stat"], after["stat"]
    if b and a and a["total"] > b["total"]:
        out["steal_share"] = (a["steal"] - b["steal"]) / (a["total"] - b["total"])
    else:
        out["steal_share"] = None
    others = [s["other_runnable"] for s in samples if s["other_runnable"] is not None]
    out["samples"] = len(others)
    out["other_runnable_mean"] = statistics.fmean(others) if others else None
    out["other_runnable_max"] = max(others) if others else None
    cores, online = out["cores"], out["cpus_online"]
    free = max((online or 0) - (cores or 0), 0)
    # other runnable tasks beyond the cores this run does not hold: they had to take ours
    out["busy_sample_share"] = (sum(o > free for o in others) / len(others)) if others else None
    run_ns = wait_ns = 0
    if after["schedstat"]:
        for tid, (r, w) in after["schedstat"].items():
            r0, w0 = before["schedstat"].get(tid, (0, 0))
            run_ns, wait_ns = run_ns + r - r0, wait_ns + w - w0
        out["run_seconds"] = run_ns / 1e9
        out["runqueue_wait_seconds"] = wait_ns / 1e9
        out["wait_share"] = wait_ns / (run_ns + wait_ns) if run_ns + wait_ns > 0 else 0.0
    else:
        out["run_seconds"] = out["runqueue_wait_seconds"] = out["wait_share"] = None
    out["step_seconds"] = _spread(step_seconds)
    return out


def verdict(machine_load: dict, rule: dict | None = None) -> tuple[bool, str | None]:
    """``(contended, why)`` by :data:`RULE` (or ``rule``); ``why`` is one line, or None."""
    rule = {**RULE, **(rule or {})}
    why = []
    wait = machine_load.get("wait_share")
    if wait is not None and wait > rule["wait_share"]:
        why.append(f"its threads waited for a core {wait:.0%} of the time they were runnable "
                   f"(> {rule['wait_share']:.0%})")
    steal = machine_load.get("steal_share")
    if steal is not None and steal > rule["steal_share"]:
        why.append(f"CPU steal {steal:.0%} (> {rule['steal_share']:.0%})")
    return bool(why), ("; ".join(why) or None)


def check_on_contention(value) -> str:
    """``value`` if it is one of :data:`ON_CONTENTION`, else a ``UserError`` (one line)."""
    from .errors import UserError

    if value not in ON_CONTENTION:
        raise UserError(f"on_contention must be one of {list(ON_CONTENTION)}, got {value!r}")
    return value


#: Lock files of the cores this process holds: kept open for its lifetime, which is what
#: holds the cores (the kernel drops the locks when the process ends, however it ends).
_HELD: list = []


def claim_cores(k: int, lock_dir=None) -> list | None:
    """Pin this process (all its threads) to ``k`` of its allowed cores that no other pinn-ng
    process holds; return them, or None when nothing was pinned (``k`` covers every allowed
    core, or fewer than ``k`` cores are free: then the run floats and its record says so).
    """
    allowed = _affinity()
    if allowed is None or k >= len(allowed) or k < 1:
        return None
    where = Path(lock_dir or Path(tempfile.gettempdir()) / f"pinn-ng-cores-{os.getuid()}")
    where.mkdir(parents=True, exist_ok=True)
    got, files = [], []
    for cpu in allowed:
        f = open(where / f"cpu{cpu}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        got.append(cpu)
        files.append(f)
        if len(got) == k:
            break
    if len(got) < k:
        for f in files:
            f.close()
        return None
    _HELD.extend(files)
    for tid in _tasks() or ["0"]:  # threads started before (JAX's) keep their own mask
        try:
            os.sched_setaffinity(int(tid), got)
        except OSError:
            pass
    return got


def claim_cores_from_env(var: str = "PINN_NG_CORES") -> list | None:
    """:func:`claim_cores` of ``$PINN_NG_CORES`` (the pipeline sets it to a timed job's
    threads); nothing when it is unset or not a positive integer."""
    text = os.environ.get(var, "").strip()
    return claim_cores(int(text)) if text.isdigit() and int(text) > 0 else None
