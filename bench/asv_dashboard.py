"""Serve the asv dashboard without the internet.

``asv publish`` writes HTML that loads jQuery, Flot, Bootstrap, stupidtable and blueimp-md5
from public CDNs.  A browser that cannot reach them (a cluster's compute network, an offline
CI machine) shows only "Can not determine continental origin of swallow".  This script puts
local copies of the same libraries, from the npm registry through ``npm``, beside the HTML and
points the pages at them:

    asv publish
    python bench/asv_dashboard.py vendor          # .asv/html; --html DIR for another
    asv preview                                    # http://127.0.0.1:8080

The versions are asv 0.6.6's CDN versions; stupidtable 1.0.1 is not on npm, so 1.1.3 (the
same ``$.fn.stupidtable`` API).  ``tests/test_dashboard.py`` loads the result in headless
Chromium.  A browser that reaches the CDNs needs none of this.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: CDN address in asv's pages (a prefix of the tag's URL) -> (npm package, file in it).
LIBRARIES = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js":
        ("flot@0.8.3", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js":
        ("flot@0.8.3", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        ("flot@0.8.3", "jquery.flot.selection.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        ("flot@0.8.3", "jquery.flot.categories.js"),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        ("flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        ("stupid-table-plugin@1.1.3", "stupidtable.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js":
        ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js":
        ("bootstrap@3.1.1", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        ("bootstrap@3.1.1", "dist/css/bootstrap.min.css"),
}
VENDOR = "vendor"  # folder inside the HTML directory


def npm_install(prefix: Path) -> Path:
    """Install the packages (pinned) under ``prefix``; return its node_modules."""
    packages = sorted({pkg for pkg, _ in LIBRARIES.values()})
    prefix.mkdir(parents=True, exist_ok=True)
    if all((prefix / "node_modules" / p.rsplit("@", 1)[0] / "package.json").exists()
           for p in packages):
        return prefix / "node_modules"
    if shutil.which("npm") is None:
        raise SystemExit("asv_dashboard.py: error: npm is not installed (Debian: apt-get "
                         "install -y npm)")
    proc = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-save",
                           "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error",
                           *packages])
    if proc.returncode != 0:
        raise SystemExit(f"asv_dashboard.py: error: npm install {' '.join(packages)} failed "
                         f"(exit {proc.returncode}; npm's messages above)")
    return prefix / "node_modules"


def _tag_pattern(url: str) -> re.Pattern:
    return re.compile(r'(<(?:script|link)\b[^>]*?(?:src|href)=")' + re.escape(url)
                      + r'("[^>]*>)', re.S)


def vendor(html: Path, node_modules: Path) -> list[str]:
    """Copy the libraries into ``html/vendor`` and point every page at them.

    Returns the CDN addresses replaced.  The tags lose ``integrity`` and ``crossorigin``
    (subresource integrity names the CDN's minified bytes, which npm's files are not).
    Bootstrap's css keeps its ``../fonts`` beside it.
    """
    html = Path(html)
    out = html / VENDOR
    done = []
    for url, (package, rel) in LIBRARIES.items():
        name = package.rsplit("@", 1)[0]
        src = node_modules / name / rel
        dest = out / name / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        if name == "bootstrap" and (node_modules / name / "dist" / "fonts").is_dir():
            shutil.copytree(node_modules / name / "dist" / "fonts", out / name / "dist" / "fonts",
                            dirs_exist_ok=True)
        done.append((url, f"{VENDOR}/{name}/{rel}"))
    replaced = set()
    for page in html.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for url, local in done:
            def repl(m, local=local):
                tag = m.group(1) + local + m.group(2)
                return re.sub(r'\s(?:integrity|crossorigin|referrerpolicy)="[^"]*"', "", tag)

            text, n = _tag_pattern(url).subn(repl, text)
            if n:
                replaced.add(url)
        page.write_text(text, encoding="utf-8")
    left = sorted(set(re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"',
                                 "".join(p.read_text(encoding="utf-8")
                                         for p in html.glob("*.html")))))
    if left:
        raise SystemExit(f"asv_dashboard.py: error: {html} still loads {left[0]} (asv's pages "
                         "changed? add it to LIBRARIES)")
    return sorted(replaced)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("vendor", help="local copies of the dashboard's JavaScript libraries")
    sp.add_argument("--html", default=".asv/html", help="asv's html_dir (default .asv/html)")
    sp.add_argument("--npm-prefix", default=".asv/npm", help="where npm installs them")
    args = ap.parse_args(argv)
    html = Path(args.html)
    if not (html / "index.html").exists():
        print(f"asv_dashboard.py: error: {html}/index.html not found; run `asv publish` first",
              file=sys.stderr)
        return 2
    replaced = vendor(html, npm_install(Path(args.npm_prefix)))
    print(f"asv_dashboard.py: {len(replaced)} libraries now served from {html / VENDOR}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
