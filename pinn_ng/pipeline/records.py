"""Run records: ``<run dir>/curve.csv`` + ``<run dir>/meta.json``, written atomically.

A record is complete once ``meta.json`` exists: it is written last, and every file is first
written to a temporary file in the same directory and then moved into place with
``os.replace`` (atomic on POSIX within one file system).  A crash or Ctrl-C therefore leaves
either the previous complete record or no ``meta.json`` at all, and ``pinn-ng gather`` (and
Snakemake, whose run rule declares both files) never sees a half-written record.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

from . import hugepages

CURVE = "curve.csv"
META = "meta.json"
#: Packages whose versions every record lists.
PACKAGES = ("pinn-ng", "jax", "jaxlib", "optax", "folx", "numpy", "pandas")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes_via(path, write) -> None:
    """``write(tmp_path)`` then ``os.replace`` into ``path`` (for writers that want a path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_bytes_via(path, write)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)  # repr: shortest exact round-trip
    return str(v)


def rows_to_csv(rows: list, columns: list) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_fmt(row.get(c)) for c in columns])
    return buf.getvalue()


def write_record(run_dir, rows: list, columns: list, meta: dict) -> None:
    """Write one complete run record; ``meta.json`` (the "done" marker) last."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # an older record of the same run stops counting as complete before we touch it
        os.unlink(run_dir / META)
    except FileNotFoundError:
        pass
    atomic_write_text(run_dir / CURVE, rows_to_csv(rows, columns))
    atomic_write_text(run_dir / META, json.dumps(meta, indent=2, sort_keys=True, default=str)
                      + "\n")


def is_complete(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / META).is_file() and (run_dir / CURVE).is_file()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        # glibc's huge-page tunable (pipeline/hugepages.py): speed only, never the numbers
        "huge_pages": hugepages.active(),
    }


def source_tree() -> Path | None:
    """The source checkout this package was imported from, or None (an installed wheel).

    A checkout is the directory above ``pinn_ng/`` when it holds ``pyproject.toml`` (an
    editable install); a wheel's ``site-packages`` does not, so an installed copy never reports
    the commit of some unrelated repository it happens to sit in (e.g. a venv in a checkout).
    """
    src = Path(__file__).resolve().parents[2]
    return src if (src / "pyproject.toml").is_file() and (src / "pinn_ng").is_dir() else None


def git_info() -> dict:
    """Commit and dirtiness of the source checkout (None outside one, or without git)."""
    unknown = {"commit": None, "dirty": None}
    src = source_tree()
    if src is None:
        return unknown

    def git(*args):
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                              timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != src:
            return unknown
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return unknown
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return unknown


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line() -> list:
    return list(sys.argv)
