"""`wafer.png`: a map of the program's regions on the fabric, coloured by layer.

Drawn with matplotlib's Agg canvas directly (no pyplot state, no display needed). North is up,
as the fabric's row 0; the grey frame is the fabric, the dashed one the usable area. Regions
are labelled with their index when there is room; activation routes are dotted white lines. A
weight-streaming program runs its steps one at a time, each on the whole usable area: the map
shows one stripe per step across that area, as wide as the step's share of the time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cgc.text import count


def _layer_colors(layers: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    ordered = list(dict.fromkeys(layers))
    cmap = colormaps["tab20" if len(ordered) <= 20 else "turbo"]
    n = max(1, len(ordered) - 1)
    return {
        layer: cmap(i % 20) if len(ordered) <= 20 else cmap(i / n)
        for i, layer in enumerate(ordered)
    }


def draw(program: dict[str, Any], path: Path) -> None:
    """Write the map of `program` to `path` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    m = program["machine"]
    width, height = m["fabric"]
    u = m["usable"]
    regions = program["regions"]
    streaming = program["mode"] == "streaming"
    scale = 8.0 / max(width, height)  # inches per PE
    map_w, map_h = width * scale, height * scale
    fig = Figure(figsize=(map_w + 2.6, map_h + 1.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes(
        (0.7 / (map_w + 2.6), 0.55 / (map_h + 1.0), map_w / (map_w + 2.6), map_h / (map_h + 1.0))
    )
    ax.add_patch(Rectangle((0, 0), width, height, facecolor="#eeeeee", edgecolor="#888888"))
    ax.add_patch(
        Rectangle((u["x"], u["y"]), u["cols"], u["rows"], fill=False, ls="--", edgecolor="#555555")
    )
    colors = _layer_colors([r["layer"] for r in regions])
    if streaming:
        # Steps share the whole area in time: one stripe each, as wide as its share of the period.
        total = sum(step["cycles"] for step in program["steps"])
        x = float(u["x"])
        for step in program["steps"]:
            share = u["cols"] * step["cycles"] / total
            layer = regions[step["stages"][0]]["layer"]
            ax.add_patch(
                Rectangle(
                    (x, u["y"]),
                    width,
                    u["rows"],
                    facecolor=colors[layer],
                    edgecolor="black",
                    linewidth=0.3,
                )
            )
            x += share
        title = (
            f"weight streaming: {len(program['steps'])} steps one after another, each on the "
            "whole usable area (stripe width = share of time)"
        )
    else:
        label = len(regions) <= 160
        for r in regions:
            rect = r["rect"]
            ax.add_patch(
                Rectangle(
                    (rect["x"], rect["y"]),
                    rect["cols"],
                    rect["rows"],
                    facecolor=colors[r["layer"]],
                    edgecolor="black",
                    linewidth=0.3,
                )
            )
            if label:
                ax.text(
                    rect["x"] + rect["cols"] / 2,
                    rect["y"] + rect["rows"] / 2,
                    str(r["id"]),
                    ha="center",
                    va="center",
                    fontsize=5,
                )
        for route in program["routes"]:
            for leg in route["legs"]:
                xs = [p[0] + 0.5 for p in leg]
                ys = [p[1] + 0.5 for p in leg]
                ax.plot(xs, ys, color="white", linewidth=0.5, linestyle=":")
        used = sum(r["pes"] for r in regions) / (u["cols"] * u["rows"])
        title = f"layer pipeline: {count(len(regions), 'region')}, {used:.1%} of usable PEs"
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (PE column)")
    ax.set_ylabel("y (PE row)")
    ax.set_title(f"{program['graph']} on {m['name']} ({program['precision']}): {title}", fontsize=8)
    handles = [Patch(facecolor=c, edgecolor="black", label=layer) for layer, c in colors.items()]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=6,
        ncol=1 + len(handles) // 40,
        title="layer",
        title_fontsize=7,
        frameon=False,
    )
    fig.savefig(path, format="png", metadata={"Software": None})
