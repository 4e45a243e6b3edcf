"""`program.txt`: the wafer program as a person reads it, stage by stage and region by region.

    stage 1 (h.0)
      region 1  7x6 at x=26 y=0 (42 PEs)  band 0 column 1 cell 0
                cycles 5,639  SRAM 4,384 B/PE (9%)
        %linear_2 = linear(%attention_1, @transformer.h.0.attn.c_proj.weight, ...)
            gemm kernel for gpt.py:38; style=stationary m=16 k=64 n=64 chain=1 ...
        %add_1 = add(%add, %linear_2)
            elementwise kernel for gpt.py:66; op=add m=16 d=64 m_tile=3 d_tile=11; ...
        sends %add_1 to region 3 (13 hops) on color 0

Resident operands (weights) are marked `@`, streamed ones `%`; ops the routes apply (slices,
reshapes) follow their stage's regions.
"""

from __future__ import annotations

from typing import Any

from cgc.ir.graph import format_attr
from cgc.text import count

_SHOWN_ELSEWHERE = ("kernel", "rows", "cols", "reduce")


def _attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(attrs.items())) + "}"


def _kernel_line(entry: dict[str, Any]) -> list[str]:
    slots = set(entry["weight_slots"])
    operands = ", ".join(
        ("@" if i in slots else "%") + name for i, name in enumerate(entry["operands"])
    )
    outs = ", ".join(f"%{o}" for o in entry["outputs"])
    line = f"{outs} = {entry['op']}({operands}){_attrs(entry['attrs'])}"
    if entry["features"] is not None:
        n0, n1 = entry["features"]
        line += f"  [features {n0}:{n1}]"
    tiling = entry["tiling"]
    shape = " ".join(f"{k}={v}" for k, v in tiling.items() if k not in _SHOWN_ELSEWHERE)
    where = entry["meta"].get("source") or entry["meta"].get("scope") or ""
    detail = f"{tiling['kernel']} kernel" + (f" for {where}" if where else "")
    detail += f"; {shape}" if shape else ""
    if "reduce" in tiling:
        detail += f"; reduce: {tiling['reduce']}"
    detail += f"; cycles {entry['cycles']:,}, SRAM {entry['sram_bytes']:,} B/PE"
    return [line, f"    {detail}"]


def render(program: dict[str, Any]) -> str:
    """The listing of a program."""
    m = program["machine"]
    u = m["usable"]
    weights = program["weights"]
    lines = [
        f"cgc wafer program ({program['schema']}) for graph @{program['graph']}",
        f"machine {m['name']}: fabric {m['fabric'][0]}x{m['fabric'][1]} PEs, usable "
        f"{u['cols']}x{u['rows']} from x={u['x']} y={u['y']}, {m['sram_usable_bytes']:,} B SRAM "
        f"per PE, {m['clock_hz'] / 1e6:g} MHz, {m['colors']} colors",
        f"mode {program['mode']}, precision {program['precision']} (fp32 accumulation); "
        f"{count(len(program['regions']), 'region')} in "
        f"{count(len(program['schedule']), 'stage')}; weights: "
        + (weights["file"] or f"none ({weights['reason']})"),
        f"inputs {', '.join('%' + n for n in program['inputs'])}; "
        f"outputs {', '.join('%' + n for n in program['outputs'])}",
    ]
    if program["steps"] is not None:
        lines.append("weight-streaming steps (each on the whole usable area, one after another):")
        for s in program["steps"]:
            lines.append(
                f"  step {s['step']} ({s['layer']}): stages {s['stages'][0]}-{s['stages'][-1]}, "
                f"compute {s['compute_cycles']:,} cycles, weights {s['weight_bytes']:,} B in "
                f"{s['stream_cycles']:,} cycles, step {s['cycles']:,} cycles"
            )
    regions = {r["id"]: r for r in program["regions"]}
    route_ops = {op["node"]: op for op in program["route_ops"]}
    sends: dict[int, list[dict[str, Any]]] = {}
    for route in program["routes"]:
        sends.setdefault(route["source"], []).append(route)
    for stage in program["schedule"]:
        step = f", step {stage['step']}" if stage["step"] is not None else ""
        lines += ["", f"stage {stage['stage']} ({stage['layer']}{step})"]
        for rid in stage["regions"]:
            r = regions[rid]
            rect = r["rect"]
            slot = ""
            if r["slot"] is not None:
                slot = f"  band {r['slot'][0]} column {r['slot'][1]} cell {r['slot'][2]}"
            part = f" part {r['part'] + 1}/{r['parts']}" if r["parts"] > 1 else ""
            share = r["sram_bytes"] / m["sram_usable_bytes"]
            lines += [
                f"  region {rid}{part}  {rect['rows']}x{rect['cols']} at x={rect['x']} "
                f"y={rect['y']} ({r['pes']:,} PEs){slot}",
                f"            cycles {r['cycles']:,}  SRAM {r['sram_bytes']:,} B/PE ({share:.0%})",
            ]
            for entry in r["kernels"]:
                lines += [f"    {text}" for text in _kernel_line(entry)]
            for route in sends.get(rid, []):
                targets = ", ".join(
                    f"region {t} ({count(h, 'hop')})"
                    for t, h in zip(route["targets"], route["hops"], strict=True)
                )
                lines.append(f"    sends %{route['value']} to {targets} on color {route['color']}")
        for kind, name in stage["run"]:
            if kind == "route_op":
                op = route_ops[name]
                ins = ", ".join(f"%{n}" for n in op["inputs"])
                lines.append(f"  on the route: %{name} = {op['op']}({ins}){_attrs(op['attrs'])}")
    return "\n".join(lines) + "\n"
