"""MkDocs hook: serve the figures shipped in figures/reference/ at the same path in the site.

The docs pages show the reference figures that the pipeline drew; MkDocs only sees files under
docs/, so this adds them to the build instead of keeping copies of the PNGs there.
"""

from pathlib import Path

from mkdocs.structure.files import File

FIGURES = "figures/reference"


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / FIGURES).rglob("*.png")):
        uri = path.relative_to(root).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
