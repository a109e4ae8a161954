"""The README's layout section must name only files that exist (a stale README is a bug)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths, current = [], ""
    for line in block.splitlines():
        if not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip())[0]
        if line.startswith("  "):
            paths.append(current + names.split()[0])
        else:
            for name in names.split(", "):
                paths.append(name)
                current = name if name.endswith("/") else current
    return paths


def test_layout_section_matches_the_tree():
    paths = layout_paths()
    assert "neumeta_core/coords.py" in paths and "service/main.py" in paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []


def test_every_module_is_in_the_layout():
    listed = set(layout_paths())
    modules = {str(p.relative_to(ROOT)) for d in ("neumeta_core", "service") for p in (ROOT / d).glob("*.py")}
    assert modules - {"neumeta_core/__init__.py", "service/__init__.py"} <= listed
