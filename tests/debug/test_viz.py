"""`cgc viz`: DOT text with fused ops coloured and stages boxed; SVG through Graphviz dot."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from cgc.debug.viz import FUSED_COLOURS, STAGE_COLOURS, to_dot
from cgc.ir import parse

STAGED = """\
graph @g(%x: f32[2,4]) {
  param %w: f32[4]
  %n = layer_norm(%x, %w) {eps=1e-05} : f32[2,4] #{stage=0}
  %g = gelu(%n) {approximate="none"} : f32[2,4] #{stage=1}
  %y = exp(%g) : f32[2,4] #{stage=1}
  %z = neg(%y) : f32[2,4]
  return %z
}
"""


def test_dot_colours_fused_ops_and_boxes_stages() -> None:
    dot = to_dot(parse(STAGED))
    lines = [line.strip() for line in dot.splitlines()]
    assert lines[0] == 'digraph "g" {'
    # fused ops by name: gelu first, layer_norm second; primitives white
    assert (
        f'"g" [label="gelu\\n%g\\nf32[2,4]", fillcolor="{FUSED_COLOURS[0]}", tooltip="gelu"];'
        in lines
    )
    assert any(
        line.startswith('"n" [label="layer_norm\\n%n\\nf32[2,4]\\nparams: w"')
        and FUSED_COLOURS[1] in line
        for line in lines
    )
    assert any(line.startswith('"y" [') and 'fillcolor="white"' in line for line in lines)
    stage1 = dot[dot.index('subgraph "cluster_stage_1"') :]
    assert f'label="stage 1"; style=filled; fillcolor="{STAGE_COLOURS[1]}"' in stage1
    assert stage1.index('"g" [') < stage1.index("}") and stage1.index('"y" [') < stage1.index("}")
    edges = [line for line in lines if "->" in line]
    assert edges == [
        '"in:x" -> "n";',
        '"n" -> "g";',
        '"g" -> "y";',
        '"y" -> "z";',
        '"z" -> "out:z";',
    ]
    assert '<TD BGCOLOR="#f4a582">gelu</TD>' in dot


def test_viz_writes_dot_text_or_svg(tiny, tmp_path, cgc, monkeypatch) -> None:
    result = cgc("viz", "tiny-111m", "--seq-len", "8", "-o", tmp_path / "g.dot")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {tmp_path / 'g.dot'} (dot, 31 nodes)\n"
    dot = (tmp_path / "g.dot").read_text()
    assert dot.count('label="attention\\n') == 2 and dot.count('label="linear\\n') == 9

    (tmp_path / "g.cgc").write_text(STAGED)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = cgc("viz", tmp_path / "g.cgc", "-o", tmp_path / "g.svg")
    assert result.exit_code == 0, result.output
    assert "Graphviz dot is not installed; wrote DOT text instead" in result.stderr
    assert (tmp_path / "g.dot").read_text() == to_dot(parse(STAGED))
    assert not (tmp_path / "g.svg").exists()
    assert cgc("viz", tmp_path / "g.cgc", "-o", tmp_path / "g.txt").exit_code == 2


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_viz_renders_svg_with_graphviz(tmp_path, cgc) -> None:
    (tmp_path / "g.cgc").write_text(STAGED)
    result = cgc("viz", tmp_path / "g.cgc", "-o", tmp_path / "g.svg")
    assert result.exit_code == 0, result.output
    svg = ET.parse(tmp_path / "g.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    titles = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")}
    assert {"n", "g", "y", "z", "cluster_stage_0", "cluster_stage_1"} <= titles
