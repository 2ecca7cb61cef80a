"""Issue 13, part 2: the asv dashboard, in a real browser (Debian's headless Chromium).

Marked ``dashboard`` (not in the default ``pytest`` run: it needs Chromium and npm, and asv
runs benchmarks: 32 s on 2 quiet cores).  ``.ci/run`` installs Chromium and runs

    PINN_NG_REQUIRE_CHROMIUM=1 pytest -p no:xdist -o addopts="" -m dashboard tests/test_dashboard.py

Without Chromium (or npm) the tests skip, unless ``PINN_NG_REQUIRE_CHROMIUM=1``, where they fail.

What it does, in a temporary folder (the checkout's .asv/ is not touched): ``asv run`` of one
cheap benchmark class (``Kernel``, small sizes, one sample) on two commits, HEAD and its
parent (the parent's tree from ``git archive``, imported through PYTHONPATH, so each commit
is timed with its own code); ``asv publish``; ``bench/asv_dashboard.py vendor`` (local copies
of the dashboard's JavaScript, since this machine reaches no CDN); ``asv preview`` on a free
port; Chromium loads the index and one graph page.  Checked: no JavaScript error in
Chromium's console log (a page with a deliberate error proves the log is read), the index
lists every benchmark class of ``bench/benchmarks_*.py``, the graph has a point per commit.
``PINN_NG_DASHBOARD_SHOTS=<dir>`` keeps the screenshots (the README's comes from there).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = "Kernel"  # cheap: two variants, ~0.2 s each at the quick sizes
GRAPH = "benchmarks_optim.Kernel.time_kernel"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network, as root (Chromium's sandbox needs a user namespace).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1400,1000",
         "--virtual-time-budget=15000"]

pytestmark = [pytest.mark.dashboard, pytest.mark.xdist_group("dashboard")]


def _missing() -> str | None:
    if CHROMIUM is None:
        return "Chromium is not installed (Debian: apt-get install -y chromium)"
    if shutil.which("npm") is None:
        return "npm is not installed (bench/asv_dashboard.py vendor needs it)"
    if shutil.which("asv", path=str(Path(sys.executable).parent)) is None:
        return 'asv is not installed (pip install -e ".[test]")'
    return None


def benchmark_classes() -> set[str]:
    """Every class of bench/benchmarks_*.py with a time_/track_/peakmem_/mem_ method."""
    out = set()
    for path in (REPO / "bench").glob("benchmarks_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(f, ast.FunctionDef) and
                    re.match(r"(time|track|peakmem|mem)_", f.name) for f in node.body):
                out.add(f"{path.stem}.{node.name}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _asv(conf: Path, *args, env=None, timeout=900):
    proc = subprocess.run([str(Path(sys.executable).parent / "asv"), "--config", str(conf),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ)
    assert proc.returncode == 0, f"asv {' '.join(args)}:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def chromium(url: str, tmp: Path, *, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(the DOM after scripts ran, the console lines) of ``url`` in headless Chromium."""
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=120, cwd=tmp)
    console = [x for x in proc.stderr.splitlines() if ":CONSOLE" in x]
    return proc.stdout, console


def js_errors(console: list[str]) -> list[str]:
    """Console lines that report an error: uncaught exceptions, console.error, failed loads."""
    return [x for x in console if re.search(r":(ERROR|WARNING):CONSOLE", x)
            or "Uncaught" in x or "Failed to load resource" in x]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    missing = _missing()
    if missing:
        if os.environ.get("PINN_NG_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"PINN_NG_REQUIRE_CHROMIUM=1 but {missing}")
        pytest.skip(missing)
    tmp = tmp_path_factory.mktemp("asv")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    parent = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD^"],
                            capture_output=True, text=True, check=True).stdout.strip()
    old = tmp / "parent"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", parent], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    base = json.loads((REPO / "asv.conf.json").read_text())
    # "HEAD": the commits' order comes from the checked-out history, whatever the branch is
    # called (CI checks out main; a developer, their branch).
    conf = {**base, "repo": str(REPO), "branches": ["HEAD"], "benchmark_dir": str(REPO / "bench"),
            "env_dir": str(tmp / "env"), "results_dir": str(tmp / "results"),
            "html_dir": str(tmp / "html")}
    # The parent first: `asv run` rewrites benchmarks.json (what the index lists) from the
    # suite it discovers, so the last run must be HEAD's (a class new in HEAD is listed).
    confs = {parent: tmp / "asv-parent.json", head: tmp / "asv-head.json"}
    confs[head].write_text(json.dumps(conf))
    confs[parent].write_text(json.dumps({**conf, "benchmark_dir": str(old / "bench")}))
    env = {**os.environ, "PINN_NG_BENCH_QUICK": "1",
           "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    _asv(confs[head], "machine", "--yes", env=env)
    one_sample = ["-a", "repeat=1", "-a", "number=1", "-a", "rounds=1", "-a", "warmup_time=0"]
    for commit, path in confs.items():
        run_env = {**env, "PYTHONPATH": str(old)} if commit == parent else env
        _asv(path, "run", "--python=same", "--set-commit-hash", commit, "--bench", BENCH,
             *one_sample, "--show-stderr", env=run_env)
    _asv(confs[head], "publish", env=env)
    html = tmp / "html"
    subprocess.run([sys.executable, str(REPO / "bench" / "asv_dashboard.py"), "vendor",
                    "--html", str(html), "--npm-prefix", str(tmp / "npm")], check=True,
                   timeout=300)
    (html / "deliberate_error.html").write_text(
        "<html><body><script>console.log('ok'); notDefinedAnywhere();</script></body></html>")
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "asv"), "--config",
                               str(confs[head]), "preview", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("asv preview did not serve the dashboard within 60 s")
        yield {"url": url, "tmp": tmp, "html": html, "commits": [parent, head]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _shots(tmp: Path) -> Path:
    keep = os.environ.get("PINN_NG_DASHBOARD_SHOTS")
    out = Path(keep) if keep else tmp / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_console_log_is_read(dashboard):
    """The error check below can fail: a page with an error is seen as one."""
    _, console = chromium(dashboard["url"] + "deliberate_error.html", dashboard["tmp"])
    errors = js_errors(console)
    assert len(errors) == 1 and "notDefinedAnywhere" in errors[0], console
    assert any('"ok"' in x for x in console)  # console.log reaches the log too


def test_index_lists_every_benchmark_class_without_js_errors(dashboard):
    dom, console = chromium(dashboard["url"], dashboard["tmp"])
    assert js_errors(console) == [], console
    assert "continental origin of swallow" not in dom  # asv's page for missing JavaScript
    classes = benchmark_classes()
    assert len(classes) >= 8 and "benchmarks_optim.Kernel" in classes
    # the grid: a heading per module, a link per benchmark to its graph (#module.Class.method)
    listed = set(re.findall(r'href="#(benchmarks_\w+\.\w+)\.\w+"', dom))
    assert classes <= listed, sorted(classes - listed)
    shot = _shots(dashboard["tmp"]) / "asv_index.png"
    _, console = chromium(dashboard["url"], dashboard["tmp"], screenshot=shot)
    assert js_errors(console) == [] and shot.stat().st_size > 10_000


def test_graph_page_has_a_point_per_commit(dashboard):
    url = dashboard["url"] + f"#{GRAPH}"
    dom, console = chromium(url, dashboard["tmp"])
    assert js_errors(console) == [], console
    index = json.loads((dashboard["html"] / "index.json").read_text())
    hashes = set(index["revision_to_hash"].values())
    assert set(dashboard["commits"]) <= hashes
    # what the graph page plots: one point per (commit, variant)
    graphs = [p for p in (dashboard["html"] / "graphs").rglob(f"{GRAPH}.json")
              if "summary" not in p.parts]
    assert len(graphs) == 1, graphs
    points = json.loads(graphs[0].read_text())
    revs = {index["revision_to_hash"][str(rev)] for rev, _ in points}
    assert revs == set(dashboard["commits"])
    assert all(len(v) == 2 and all(x > 0 for x in v) for _, v in points)  # both variants
    # and the page drew them: both series' colours (blue, red) inside the plot area, below
    # the header and legend, right of the side bar (a blank plot has neither)
    shot = _shots(dashboard["tmp"]) / "asv_graph.png"
    _, console = chromium(url, dashboard["tmp"], screenshot=shot)
    assert js_errors(console) == []
    import numpy as np
    from PIL import Image

    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=int)
    h, w, _ = px.shape
    r, g, b = np.moveaxis(px[int(0.15 * h):int(0.85 * h), int(0.2 * w):], -1, 0)
    red = int(np.sum((r > 180) & (g < 110) & (b < 110)))
    blue = int(np.sum((b > 150) & (r < 110) & (g < 170) & (b - r > 60)))
    assert red > 200 and blue > 200, (red, blue)  # two lines ~1000 px long, their markers
    assert GRAPH in dom
