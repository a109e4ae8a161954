"""Comparison tables written as JSON, Markdown and a PNG plot (accuracy vs ratio and vs size)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

SERIES = {
    "individual": "individually trained",
    "slimmable": "universally slimmable",
    "l1_pruned": "L1 pruning, no fine-tuning",
}


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cell(row: dict[str, Any], col: str) -> str:
    runs = row.get(f"{col}_runs")
    if runs and len(runs) > 1:  # a mean over seeds, with its range
        return f"{row[col]:.2f} ({min(runs):.2f} to {max(runs):.2f})"
    return f"{row[col]:.2f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    ks = sorted(int(k.removeprefix("neumeta_k")) for k in rows[0] if k.startswith("neumeta_k"))
    cols = [f"neumeta_k{k}" for k in ks] + [c for c in SERIES if c in rows[0]]
    names = [f"NeuMeta K={k}" for k in ks] + [SERIES[c] for c in SERIES if c in rows[0]]
    lines = [
        "| γ | width | parameters | seen in training | " + " | ".join(names) + " |",
        "|---" * (4 + len(cols)) + "|",
    ]
    for r in rows:
        seen = "yes" if r["seen_in_training"] else "**no**"
        width = str(r["width"]) if r.get("served", True) else f"{r['width']} (not served)"
        cells = [f"{r['ratio']:.3f}", width, f"{r['params']:,}", seen]
        lines.append("| " + " | ".join(cells + [_cell(r, c) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def total_variation(tv: dict[str, dict[str, float]]) -> str:
    """Per channel group: total variation along the channels before and after the permutation."""
    lines = ["| channel group | TV before | TV after | reduction |", "|---|---|---|---|"]
    for group, v in tv.items():
        lines.append(
            f"| {group} | {v['before']:.2f} | {v['after']:.2f} | {100 * (1 - v['after'] / v['before']):.1f} % |"
        )
    return "\n".join(lines) + "\n"


def storage(s: dict[str, Any]) -> str:
    """The checkpoint's size against the individually trained models it replaces (float32)."""
    mb = 1e6
    lo, hi = s["served_widths"]
    return (
        f"Storage: the checkpoint is {s['checkpoint_bytes'] / mb:.2f} MB; the individually trained models of the "
        f"table's widths take {s['individual_models_in_table_bytes'] / mb:.2f} MB, one per served width "
        f"({lo}..{hi}) {s['individual_models_every_served_width_bytes'] / mb:.2f} MB"
        + (f"; the slimmable network {s['slimmable_bytes'] / mb:.2f} MB" if "slimmable_bytes" in s else "")
        + ".\n"
    )


def times(t: dict[str, Any]) -> str:
    """Training wall time of each method on the machine that ran it."""
    parts = []
    if t.get("hypernetwork_seconds") is not None:
        parts.append(f"one hypernetwork (teacher included) {t['hypernetwork_seconds'] / 60:.1f} min")
    if "individual_seconds_per_seed" in t:
        parts.append(f"the individual networks of the table, one seed, {t['individual_seconds_per_seed'] / 60:.1f} min")
    if "slimmable_seconds" in t:
        parts.append(f"one slimmable network {t['slimmable_seconds'] / 60:.1f} min")
    return f"Training time: {'; '.join(parts)}.\n" if parts else ""


def write(rows: list[dict[str, Any]], directory: Path, name: str, meta: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.json", directory / f"{name}.md"]
    paths[0].write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    text = markdown(rows)
    if meta.get("total_variation"):
        text += "\n" + total_variation(meta["total_variation"])
    if meta.get("storage"):
        text += "\n" + storage(meta["storage"])
    if meta.get("times"):
        text += times(meta["times"])
    paths[1].write_text(text)
    try:
        import matplotlib
    except ImportError:  # the plot needs the `bench` extra
        return paths
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = [c for c in rows[0] if c.startswith("neumeta_k")] + [c for c in SERIES if c in rows[0]]
    for col in series:
        label = SERIES.get(col, f"NeuMeta, K = {col.removeprefix('neumeta_k')}")
        axes[0].plot([r["ratio"] for r in rows], [r[col] for r in rows], marker="o", label=label)
        axes[1].plot([r["params"] for r in rows], [r[col] for r in rows], marker="o", label=label)
    axes[0].set(xlabel="compression ratio γ = 1 − h/h_max", ylabel="held-out accuracy (%)")
    axes[1].set(xlabel="parameters of the served model", ylabel="held-out accuracy (%)")
    axes[0].legend(loc="lower left")
    fig.suptitle(str(meta.get("title", name)))
    fig.tight_layout()
    paths.append(directory / f"{name}.png")
    fig.savefig(paths[-1], dpi=110)
    return paths
