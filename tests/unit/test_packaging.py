"""An installed Img2Img has every package of the repository: the console script and Ray's own
processes (the Serve controller imports `serving.app`, which imports `registry`) import them
from the installation, not from the repository's working directory."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_top_level_package_is_installed_by_pyproject():
    found = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*(\[[^\]]*\])",
                      (ROOT / "pyproject.toml").read_text())
    include = json.loads(found.group(1))  # a TOML list of strings is JSON (tomllib needs Python 3.11)
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests", "benchmarks")}
    missing = sorted(p for p in packages if not any(fnmatch.fnmatch(p, pat) for pat in include))
    assert packages and not missing, f"pyproject.toml does not install {missing}"
