"""Transparent huge pages for XLA's large CPU buffers (J, K, the channels).

XLA allocates the buffers of every executable afresh through glibc's ``malloc``, and buffers
of tens or hundreds of MB are fresh ``mmap`` s: the kernel faults them in 4 KiB at a time,
every step.  J of the paper's 5d problem (N = 3500, P = 10,065) is 282 MB, 69,000 page
faults.  Merely writing such a buffer is several times faster with glibc's
``glibc.malloc.hugetlb=1`` tunable (glibc ≥ 2.35), which lets ``malloc`` ask for transparent
huge pages (2 MiB) with ``madvise``.

glibc reads tunables once, at process start, so the tunable must be in the environment of a
new process: ``pinn-ng run`` re-executes itself with it (once, when the kernel offers
transparent huge pages in ``madvise`` or ``always`` mode and ``PINN_NG_HUGE_PAGES`` is not
``0``); ``python -m``-style users and library users export it themselves::

    export GLIBC_TUNABLES=glibc.malloc.hugetlb=1

Results do not change, only where the bytes live.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``) or None."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def active(environ=None) -> bool:
    """Whether the tunable is set in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return "glibc.malloc.hugetlb=" in environ.get("GLIBC_TUNABLES", "")


def environ_with_huge_pages(environ=None) -> dict:
    """A copy of ``environ`` with the tunable added to ``GLIBC_TUNABLES`` (kept if set)."""
    env = dict(os.environ if environ is None else environ)
    if not active(env):
        old = env.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = f"{old}:{TUNABLE}" if old else TUNABLE
    return env


def wanted(environ=None) -> bool:
    """Whether a re-execution with the tunable would help: Linux, THP available, not set yet,
    not switched off with ``PINN_NG_HUGE_PAGES=0``."""
    environ = os.environ if environ is None else environ
    return (sys.platform.startswith("linux") and environ.get("PINN_NG_HUGE_PAGES", "1") != "0"
            and not active(environ) and thp_mode() in ("always", "madvise"))


def reexec_with_huge_pages(argv: list[str]) -> None:
    """Replace this process by ``argv`` run with the tunable, if :func:`wanted`; else return."""
    if wanted():
        env = environ_with_huge_pages()
        env["PINN_NG_HUGE_PAGES"] = "0"  # never twice, even if glibc ignored the tunable
        os.execve(argv[0], argv, env)
