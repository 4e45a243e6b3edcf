"""`cgc bisect`: a deliberately wrong rewrite is found by pass, rewrite index and node."""

from __future__ import annotations

import pytest

from cgc.debug.bisect import bisect_pipeline
from cgc.ir import Graph, Value, interpret
from cgc.passes import (
    Match,
    Op,
    Pass,
    PassContext,
    PassResult,
    Var,
    apply_patterns,
    register_pass,
    rewrite,
    unregister_pass,
)

q, k, v = Var("q"), Var("k"), Var("v")


def _scaled(scale: float) -> bool:
    """a scale other than 1"""
    return scale != 1.0


@rewrite(Op.attention(q, k, v, scale=_scaled))
def drop_scale(m: Match, g: Graph) -> Value:
    """attention(q, k, v){scale=s} = attention(q, k, v){scale=1}: wrong unless s = 1"""
    attrs = {**m.root.attrs, "scale": 1.0}
    return g.call("attention", m["q"], m["k"], m["v"], **attrs)


class DropAttentionScale(Pass):
    """Drop the scale of every attention (a deliberately wrong rewrite)."""

    name = "drop-attention-scale"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, [drop_scale], ctx))


@pytest.fixture
def drop_attention_scale():
    register_pass(DropAttentionScale)
    yield DropAttentionScale
    unregister_pass(DropAttentionScale.name)


def test_bisect_names_the_wrong_pass_its_rewrite_and_the_first_bad_node(
    drop_attention_scale, cgc
) -> None:
    result = cgc(
        "bisect", "tiny-111m", "--seq-len", "8", "--passes", "default,drop-attention-scale"
    )
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        "tiny-111m: inputs [1, 8]; outputs of the interpreter against eager PyTorch; "
        "tolerance |got - ref| <= 0.0001 + 0.0001·|ref|",
        "pipeline: canonicalize,fuse-layer-norm,fuse-rms-norm,fuse-rotary-embedding,"
        "fuse-attention,fuse-gelu,fuse-linear,fuse-swiglu,fuse-cross-entropy,canonicalize,"
        "drop-attention-scale (11 passes)",
        lines[2],  # the input graph's error, which depends on the platform's float rounding
        "within tolerance after pass 10: canonicalize",
        "first bad pass: drop-attention-scale (pass 11 of 11; rewrites #30..#31)",
        "first bad rewrite: #30 (drop-scale), rewrite 1 of 2 in drop-attention-scale; "
        "reproduce with rewrite_limit=30",
    ]
    assert lines[2].startswith("input graph: within tolerance (max abs output ")
    # The rewriter walks from the outputs backwards: the last layer's attention goes first.
    report = result.stdout[result.stdout.index("per-node comparison:") :].splitlines()
    assert report[1:4] == [
        "first divergence: %attention_2 = attention, paired by scope with %attention",
        "  scope   transformer.h.1.attn",
        "  source  cgc/models/gpt.py:35: att = att.softmax(dim=-1)",
    ]
    assert report[0].startswith("per-node comparison: 31 values paired (30 by name, 1 by scope)")
    assert report[6].split()[:2] == ["%attention_2", "attention"]


def test_bisect_through_a_backend_and_a_clean_pipeline(tiny, drop_attention_scale) -> None:
    reference = interpret(tiny.graph(), *tiny.inputs)
    clean = bisect_pipeline(
        tiny.graph(), tiny.inputs, reference, "default", rtol=1e-4, atol=1e-4,
        backend="onnxruntime",
    )  # fmt: skip
    assert clean.ok and clean.first_pass is None
    assert (
        clean.text().splitlines()[-1]
        == "outputs stay within tolerance after every pass (29 rewrites)"
    )
    bad = bisect_pipeline(
        tiny.graph(), tiny.inputs, reference, "fuse-attention,drop-attention-scale",
        rtol=1e-4, atol=1e-4, backend="onnxruntime",
    )  # fmt: skip
    assert (bad.first_pass, bad.rewrites, bad.rewrite, bad.rule) == (
        1,
        [(0, 2), (2, 4)],
        3,
        "drop-scale",
    )
    assert bad.nodes.first_divergence.op == "attention"
    assert bad.nodes.first_divergence.scope == "transformer.h.1.attn"


def test_bisect_textual_ir_against_its_own_interpreter_outputs(
    tiny, tmp_path, drop_attention_scale, cgc
) -> None:
    ir, weights = tiny.files(tmp_path)
    result = cgc("bisect", ir, "--weights", weights, "--passes", "default,drop-attention-scale")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0] == (
        "traced: inputs [1, 8]; outputs of the interpreter against the interpreter on the input "
        "graph; tolerance |got - ref| <= 0.0001 + 0.0001·|ref|"
    )
    assert "first bad rewrite: #30 (drop-scale), rewrite 1 of 2" in result.stdout
    clean = cgc("bisect", ir, "--weights", weights, "--passes", "default")
    assert clean.exit_code == 0
    assert clean.stdout.splitlines()[-1] == (
        "outputs stay within tolerance after every pass (29 rewrites)"
    )


class ZeroEmbedding(Pass):
    """Zero the token embedding table (wrong, and done without the pattern rewriter)."""

    name = "zero-embedding"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        name = "transformer.wte.weight"
        graph.weights[name] = graph.weights[name] * 0
        return PassResult(True)


@pytest.fixture
def zero_embedding():
    register_pass(ZeroEmbedding)
    yield ZeroEmbedding
    unregister_pass(ZeroEmbedding.name)


def test_bisect_stops_at_a_pass_that_counts_no_rewrites(tiny, zero_embedding) -> None:
    reference = interpret(tiny.graph(), *tiny.inputs)
    result = bisect_pipeline(
        tiny.graph(), tiny.inputs, reference, "canonicalize,zero-embedding", rtol=1e-4, atol=1e-4
    )
    assert (result.first_pass, result.rewrites, result.rewrite) == (1, [(0, 11), (11, 11)], None)
    text = result.text()
    assert "first bad pass: zero-embedding (pass 2 of 2; no rewrites counted)" in text
    assert "the pass counted no rewrite through PassContext.allow_rewrite()" in text
    assert result.nodes.first_divergence.name == "embedding"


def test_bisect_reports_an_input_graph_already_out_of_tolerance(tiny) -> None:
    reference = [t + 1 for t in interpret(tiny.graph(), *tiny.inputs)]
    result = bisect_pipeline(tiny.graph(), tiny.inputs, reference, "default", rtol=0, atol=0.5)
    assert not result.ok and result.first_pass is None and result.checked == []
    assert result.text().splitlines()[1] == (
        "the input graph is already out of tolerance (before any pass):"
    )


def test_bisect_input_errors_exit_2(tmp_path, cgc) -> None:
    (tmp_path / "g.cgc").write_text("graph @g(%x: f32[2]) {\n  return %x\n}\n")
    cases = [
        (["bisect", "tiny-111m", "--backend", "nope"], "error: unknown backend 'nope'"),
        (
            ["bisect", tmp_path / "g.cgc", "--reference", "eager"],
            f"error: {tmp_path / 'g.cgc'} is IR, with no eager model to compare; "
            "use --reference ir",
        ),
        (["bisect", "tiny-111m", "--passes", "fuse-x"], "error: unknown pass 'fuse-x'"),
    ]
    for args, message in cases:
        result = cgc(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines()[-1].startswith(message)
