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


def test_every_setting_route_and_metric_is_documented():
    from fastapi.routing import APIRoute
    from prometheus_client import Metric
    from starlette.routing import Match

    from service import metrics
    from service.config import Settings
    from service.main import create_app
    from service.routes import router

    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"NEUMETA_{name.upper()}" in readme, name
    app = create_app(Settings(device="cpu"))
    # the app's own routes (FastAPI wraps an included router, so its paths are read from the router)
    paths = [r.path for r in router.routes if isinstance(r, APIRoute)]
    assert "/healthz" in paths and "/metrics" in paths
    for path in paths:
        assert f"{path}`" in readme or f"{path} " in readme, path
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        assert any(route.matches(scope)[0] is not Match.NONE for route in app.router.routes), path
    collectors = [v for v in vars(metrics).values() if hasattr(v, "_name")]
    assert collectors
    for collector in collectors:
        family: Metric = next(iter(collector.describe()))
        assert family.name in readme or f"{family.name}_total" in readme, family.name
