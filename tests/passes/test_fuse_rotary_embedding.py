"""fuse-rotary-embedding: x·C + rotate(x)·S on split heads becomes one rotary_embedding op."""

import pytest
import torch

from cgc.ir import Graph, TensorType
from cgc.passes import explain
from cgc.passes.fuse_rotary_embedding import _rules, _Tables

B, T, H, D = 2, 5, 2, 8


def angles(rotary_dim: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, T, rotary_dim/2] cos and sin of RoPE's angles (θ = 10000)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    positions = torch.arange(T).float()[None, :, None] + torch.arange(batch)[:, None, None]
    freqs = positions * inv_freq
    return freqs.cos(), freqs.sin()


def rotated(
    *,
    interleaved: bool = False,
    rotary_dim: int = D,
    layout: str = "bhtd",
    known: bool = True,
    per_head: bool = False,
    batch_tables: bool = False,
) -> Graph:
    """RoPE as Hugging Face writes it on the heads of x [B, T, H·D]: rotate_half (Llama) or
    rotate_every_two (GPT-J), on the first `rotary_dim` features, in [b, h, t, d] or
    [b, t, h, d] layout; the full-width tables are parameters (or inputs when not `known`)."""
    g = Graph("rope")
    x = g.add_input("x", TensorType((B, T, H * D), "f32"))
    x4 = g.call("reshape", x, shape=[B, T, H, D])
    if layout == "bhtd":
        x4 = g.call("transpose", x4, perm=[0, 2, 1, 3])
    r = rotary_dim
    cos, sin = angles(r, B if batch_tables else 1)
    if interleaved:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
    else:
        cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    # [b, 1, t, r] for [b, h, t, d]; [b, t, 1, r] for [b, t, h, d]
    cos, sin = (t.unsqueeze(1 if layout == "bhtd" else 2) for t in (cos, sin))
    if per_head:
        cos = torch.cat([cos, cos * 0.5], 1 if layout == "bhtd" else 2)
    tables = []
    for name, data in (("cos", cos), ("sin", sin)):
        if known:
            tables.append(g.add_param(name, TensorType.of(data), data))
        else:
            tables.append(g.add_input(name, TensorType.of(data)))
    c, s = tables
    head = x4
    if r < D:
        x4 = g.call("slice", head, axis=3, start=0, end=r)
    if interleaved:
        even = g.call("slice", x4, axis=3, start=0, end=r, step=2)
        odd = g.call("slice", x4, axis=3, start=1, end=r, step=2)
        shape = [*x4.shape[:3], r // 2, 1]
        pairs = g.call(
            "concat",
            g.call("reshape", g.call("neg", odd), shape=shape),
            g.call("reshape", even, shape=shape),
            axis=-1,
        )
        turned = g.call("reshape", pairs, shape=list(x4.shape))
    else:
        first = g.call("slice", x4, axis=3, start=0, end=r // 2)
        second = g.call("slice", x4, axis=3, start=r // 2, end=r)
        turned = g.call("concat", g.call("neg", second), first, axis=-1)
    out = g.call("add", g.call("mul", x4, c), g.call("mul", turned, s))
    if r < D:
        out = g.call("concat", out, g.call("slice", head, axis=3, start=r, end=D), axis=-1)
    g.outputs = [out]
    return g


def test_llama_rotate_half_fuses(run_pipeline, same_numerics) -> None:
    g = same_numerics(rotated(), "fuse-rotary-embedding,canonicalize")
    assert str(g) == (
        f"graph @rope(%x: f32[{B},{T},{H * D}]) {{\n"
        "  param %rotary_cos: f32[5,4]\n  param %rotary_sin: f32[5,4]\n"
        "  %rotary_embedding = rotary_embedding(%x, %rotary_cos, %rotary_sin)"
        " {interleaved=false, num_heads=2, rotary_dim=8} : f32[2,5,16]\n"
        "  %reshape_2 = reshape(%rotary_embedding) {shape=[2, 5, 2, 8]} : f32[2,5,2,8]\n"
        "  %add = transpose(%reshape_2) {perm=[0, 2, 1, 3]} : f32[2,2,5,8]\n"
        "  return %add\n}\n"
    )
    cos, sin = angles(D)
    torch.testing.assert_close(g.weights["rotary_cos"], cos[0])
    torch.testing.assert_close(g.weights["rotary_sin"], sin[0])


@pytest.mark.parametrize(
    "form",
    [
        dict(interleaved=True, rotary_dim=4, layout="bthd"),  # GPT-J, CodeGen
        dict(interleaved=False, rotary_dim=4, layout="bhtd"),  # GPT-NeoX, Phi
        dict(interleaved=True, rotary_dim=8, layout="bhtd"),
        dict(interleaved=False, rotary_dim=8, layout="bthd", batch_tables=True),
    ],
    ids=["gptj", "neox-partial", "interleaved-full", "per-batch-positions"],
)
def test_pairings_layouts_and_partial_rotation_fuse(run_pipeline, same_numerics, form) -> None:
    g = same_numerics(rotated(**form), "fuse-rotary-embedding,canonicalize")
    (node,) = [n for n in g.nodes if n.op == "rotary_embedding"]
    assert node.attrs == {
        "num_heads": H,
        "rotary_dim": form["rotary_dim"],
        "interleaved": form["interleaved"],
    }
    table = (
        (B, T, form["rotary_dim"] // 2)
        if form.get("batch_tables")
        else (T, 2, 4)[:0]
        + (
            T,
            form["rotary_dim"] // 2,
        )
    )
    assert node.inputs[1].shape == table
    assert {n.op for n in g.nodes} <= {"rotary_embedding", "reshape", "transpose"}


PROVEN = "at %add: constraint failed: the tables are known, give one angle per pair, and do not"


@pytest.mark.parametrize(
    "form",
    [dict(known=False), dict(per_head=True)],
    ids=["tables-not-known", "angle-per-head"],
)
def test_unproven_tables_leave_the_graph_alone(run_pipeline, form) -> None:
    g = rotated(**form)
    text = str(g)
    (root,) = [n for n in g.nodes if n.op == "add"]
    assert explain(_rules(_Tables(g))[1], root, g).startswith(PROVEN)
    assert str(run_pipeline(g, "fuse-rotary-embedding")) == text


def test_the_registry_decomposition_fuses(decomposed, same_numerics) -> None:
    for interleaved in (False, True):
        g = decomposed(
            "rotary_embedding",
            {"x": "f32[2,5,16]"},
            {"c": "f32[5,2]", "s": "f32[5,2]"},
            num_heads=2,
            rotary_dim=4,
            interleaved=interleaved,
        )
        cos, sin = angles(4)
        g.weights["c"], g.weights["s"] = cos[0], sin[0]
        same_numerics(g, "fuse-rotary-embedding,canonicalize")
        assert [n.op for n in g.nodes] == ["rotary_embedding"]
        assert g.nodes[0].attrs["interleaved"] == interleaved
