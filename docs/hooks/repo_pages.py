"""MkDocs hook: the results files at the repository root become pages of the site.

RESULTS.md, BENCHMARKS.md and RESULTS-earlier.md are added under their own names, so the links
between them and their image links (``benchmarks/results/...png``, relative to the repository
root) resolve in the built site exactly as on the repository's web page; every image they link
is added beside them.
"""

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("RESULTS.md", "BENCHMARKS.md", "RESULTS-earlier.md")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def on_files(files: Files, config) -> Files:
    """Add the root pages and the images they link."""
    for name in PAGES:
        source = ROOT / name
        files.append(File.generated(config, name, abs_src_path=str(source)))
        for image in IMAGE.findall(source.read_text()):
            files.append(File.generated(config, image, abs_src_path=str(ROOT / image)))
    return files
