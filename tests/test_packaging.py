"""pinn-ng works as an installed wheel, not only as an editable checkout (issue 9, part 3).

The wheel must carry the pipeline presets and their schema (package data), and nothing may
assume a source tree: ``pinn-ng plan smoke`` from a directory outside the checkout finds the
shipped preset, validates it against the shipped schema and lists its runs; the run record's
git commit is None rather than that of whatever repository the install happens to sit in.
"""

from __future__ import annotations

import shutil
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the installed copy must not see a source tree through PYTHONPATH
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _sh(*cmd, cwd=None, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=CLEAN_ENV)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the pinn-ng wheel installed (dependencies borrowed, not installed)."""
    import importlib.util

    import setuptools

    if importlib.util.find_spec("wheel") is None and \
            tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1):
        pytest.skip("building a wheel without isolation needs the `wheel` package (or "
                    "setuptools >= 70.1) in this environment: pip install wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of, so the checkout gets no build/ directory.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "pinn_ng", src / "pinn_ng",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", dist, src)
    (wheel,) = dist.glob("pinn_ng-*.whl")

    env = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(_sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    # --system-site-packages sees the base interpreter's packages; where the tests run in a
    # venv themselves, borrow its dependencies too (a plain path: its .pth files, such as the
    # editable install's finder, are not run, so pinn_ng comes from the wheel alone).
    ours = sysconfig.get_paths()["purelib"]
    (site / "borrowed_deps.pth").write_text(ours + "\n")
    _sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return env, outside, wheel


def test_wheel_ships_the_presets_and_schema(installed):
    import zipfile

    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("schema", "default", "smoke", "paper", "cpu-paper"):
        assert f"pinn_ng/pipeline/presets/{preset}.yaml" in names, preset
    assert not any(n.startswith("bench/") for n in names)  # benchmarks stay in the checkout


def test_installed_plan_resolves_a_shipped_preset_outside_the_tree(installed):
    env, outside, _ = installed
    where = _sh(env / "bin" / "python", "-c", "import pinn_ng; print(pinn_ng.__file__)",
                cwd=outside).stdout.strip()
    assert Path(where).resolve().is_relative_to(env.resolve()), where  # the wheel, not the tree
    proc = _sh(env / "bin" / "pinn-ng", "plan", "smoke", cwd=outside)
    runs = [line for line in proc.stdout.splitlines() if "steps=" in line]
    assert len(runs) >= 5 and all(line.startswith("poisson2d_") for line in runs)
    assert f"{len(runs)} runs; figures:" in proc.stderr and "speedup" in proc.stderr
    bad = subprocess.run([env / "bin" / "pinn-ng", "plan", "nope"], capture_output=True,
                         text=True, cwd=outside, timeout=120, env=CLEAN_ENV)
    assert bad.returncode == 2 and "smoke" in bad.stderr and "Traceback" not in bad.stderr


def test_installed_copy_reports_no_git_commit(installed):
    env, outside, _ = installed
    out = _sh(env / "bin" / "python", "-c", "from pinn_ng.pipeline import records; "
              "print(records.source_tree(), records.git_info())", cwd=outside).stdout
    assert out.strip() == "None {'commit': None, 'dirty': None}"


#: What ``pip install pinn-ng`` leaves out: the pipeline extra's top-level modules.
PIPELINE_ONLY = ("filelock", "jsonschema", "matplotlib", "orbax", "pandas", "scipy", "seaborn",
                 "snakemake", "threadpoolctl", "yaml")

#: Run in a fresh interpreter: importing any of PIPELINE_ONLY raises, as without the extra.
_BLOCK = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {PIPELINE_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())
"""


def test_the_library_imports_without_the_pipeline_extra():
    code = _BLOCK + """
import pinn_ng
from pinn_ng import metrics, models, operators, optim, problems, residuals, train
assert callable(pinn_ng.optim.spring) and callable(optim.make)
assert "poisson2d" in problems.names() and "mlp" in models.names()
try:
    pinn_ng.limit_blas_threads
except ImportError as err:
    assert "pinn-ng[pipeline]" in str(err), err
else:
    raise AssertionError("limit_blas_threads without threadpoolctl")
loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(%r))
assert not loaded, loaded
print("ok")
""" % (PIPELINE_ONLY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_the_command_line_without_the_pipeline_extra_says_what_to_install():
    code = _BLOCK + "from pinn_ng.cli import main\nsys.exit(main(['plan', 'smoke']))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == ("pinn-ng plan: error: needs the pipeline extra (no module "
                                   "named 'threadpoolctl'): pip install 'pinn-ng[pipeline]'")


def test_the_snakefile_needs_no_checkout_beyond_itself():
    """Every job is a ``pinn-ng`` command: nothing runs from the checkout's bench/."""
    text = (REPO / "Snakefile").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "bench" not in code and "pinn-ng nystrom-table" in code
