"""Print the project's runtime requirements from pyproject.toml, one per line, for an image's dependency layer.

The images install these before copying the code, so a code change reuses the cached dependency layer;
the project itself is then installed with ``--no-deps``. ``--extra gpu`` adds the gpu extra and drops the
CPU package it replaces (onnxruntime-gpu provides the same ``onnxruntime`` module: both installed side by
side overwrite each other's files).

    python docker/requirements.py pyproject.toml [--extra gpu]
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

# a GPU package that replaces a CPU one (same import name)
REPLACES = {"onnxruntime-gpu": "onnxruntime"}


def name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    added = [req for extra in extras for req in optional[extra]]
    dropped = {REPLACES[name(req)] for req in added if name(req) in REPLACES}
    return [req for req in project["dependencies"] if name(req) not in dropped] + added


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject", type=Path)
    p.add_argument("--extra", action="append", default=[], help="an optional-dependencies group to add")
    args = p.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra)))


if __name__ == "__main__":
    main()
