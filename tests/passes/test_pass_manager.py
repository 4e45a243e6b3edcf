"""Pass manager, registry and pipeline strings."""

import pytest

from cgc.errors import InputError, IRError
from cgc.ir import Graph, parse
from cgc.passes import (
    DEFAULT_PIPELINE,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    all_passes,
    get_pass,
    parse_pipeline,
    register_pass,
    registry,
    run_passes,
)
from cgc.passes.fuse_attention import FuseAttention

GRAPH = """\
graph @g(%x: f32[4]) {
  %c = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %y = mul(%c, %x) : f32[4]
  return %y
}
"""


def test_every_pass_is_registered_with_a_description() -> None:
    assert {name: cls.description() for name, cls in all_passes().items()} == {
        "autodiff": "Append the backward pass: gradients of the scalar loss w.r.t. the trainable "
        "parameters.",
        "canonicalize": "Fold constants, drop dead code, merge common subexpressions and no-op "
        "ops, order operands.",
        "fuse-attention": "Fuse scaled dot-product attention (split heads, q·kᵀ, scale, mask, "
        "softmax, ·v, merge).",
        "fuse-cross-entropy": "Fuse softmax cross-entropy forms (log_softmax + nll, "
        "logsumexp - gather) into cross_entropy.",
        "fuse-gelu": 'Fuse the erf and tanh forms of GELU into `gelu` {approximate="none" | '
        '"tanh"}.',
        "fuse-layer-norm": "Fuse mean/variance/rsqrt layer-norm decompositions over the last "
        "axis into `layer_norm`.",
        "fuse-linear": "Fuse matmul(x, transpose(w)) [+ b] with a 2-D weight parameter w into "
        "`linear(x, w, b)`.",
        "fuse-qkv-attention": "Fuse attention on the q, k, v thirds of one linear projection "
        "into `qkv_attention`.",
        "fuse-rms-norm": "Fuse x / √(mean(x²) + ε) over the last axis, then an optional scale "
        "w, into `rms_norm`.",
        "fuse-rotary-embedding": "Fuse rotary position embeddings on split heads into "
        "`rotary_embedding`.",
        "fuse-swiglu": "Fuse silu(x·w_gateᵀ) · (x·w_upᵀ) over two bias-free linears of one x "
        "into `swiglu`.",
        "kv-cache": "Derive the cached step graph (prefill or decode) of a causal LM traced at its "
        "capacity.",
        "layer-pipeline": "Give every stage a wafer region sized to balance the layer pipeline "
        "(annotates only).",
        "train-step": "Turn the joint graph into a training step: clip, schedule and apply the "
        "optimizer.",
        "weight-streaming": "Run one layer at a time on the whole wafer with weights streamed in "
        "(annotates only).",
    }


def test_pipeline_strings_parse_into_configured_passes() -> None:
    passes = parse_pipeline(
        " canonicalize{fold-limit=16}, fuse-attention{large-negative=-1e9} ,fuse-linear{"
        "in-out-weights=false},fuse-gelu"
    )
    assert [repr(p) for p in passes] == [
        "canonicalize{fold-limit=16}",
        "fuse-attention{large-negative=-1000000000.0}",
        "fuse-linear{in-out-weights=false}",
        "fuse-gelu",
    ]
    assert passes[1].large_negative == -1e9 and passes[0].fold_limit == 16


def test_default_expands_to_the_default_pipeline() -> None:
    assert DEFAULT_PIPELINE == (
        "canonicalize,fuse-layer-norm,fuse-rms-norm,fuse-rotary-embedding,fuse-attention,"
        "fuse-gelu,fuse-linear,fuse-swiglu,fuse-cross-entropy,canonicalize"
    )
    assert repr(PassManager("default")) == DEFAULT_PIPELINE
    assert repr(PassManager("fuse-gelu,default")) == "fuse-gelu," + DEFAULT_PIPELINE
    assert parse_pipeline("") == []


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            "canonicalize,fuse-attn",
            "unknown pass 'fuse-attn'; valid passes: autodiff, canonicalize, fuse-attention, "
            "fuse-cross-entropy, fuse-gelu, fuse-layer-norm, fuse-linear, fuse-qkv-attention, "
            "fuse-rms-norm, fuse-rotary-embedding, fuse-swiglu, kv-cache, layer-pipeline, "
            "train-step, weight-streaming",
        ),
        (
            "fuse-attention{heads=2}",
            "pass fuse-attention has no option 'heads'; valid options: large-negative",
        ),
        ("fuse-gelu{x=1}", "pass fuse-gelu has no option 'x'; valid options: none"),
        (
            "canonicalize{fold-limit=big}",
            "option fold-limit of pass canonicalize expects an integer, got 'big'",
        ),
        (
            "fuse-linear{in-out-weights=maybe}",
            "option in-out-weights of pass fuse-linear expects true or false, got 'maybe'",
        ),
        (
            "canonicalize{fold-limit}",
            "option 'fold-limit' of pass canonicalize needs a value: fold-limit=...",
        ),
        (
            "canonicalize,",
            "malformed pipeline 'canonicalize,' at character 1; write passes as "
            "name or name{key=value,...} separated by commas",
        ),
        (
            "canonicalize{fold-limit=2",
            "malformed pipeline 'canonicalize{fold-limit=2' at "
            "character 1; write passes as name or name{key=value,...} separated by commas",
        ),
        ("default{x=1}", "the default pipeline takes no options; list its passes instead"),
    ],
)
def test_bad_pipelines_raise_one_clear_input_error(pipeline: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_pipeline(pipeline)
    assert str(info.value) == message


def test_options_are_typed_when_passes_are_built_in_python() -> None:
    assert FuseAttention(large_negative=-1).large_negative == -1
    with pytest.raises(
        InputError, match="option large-negative of pass fuse-attention expects float, got 'x'"
    ):
        FuseAttention(large_negative="x")
    with pytest.raises(InputError, match="pass fuse-attention has no option 'nope'"):
        FuseAttention(nope=1)
    with pytest.raises(InputError, match="unknown pass 'nope'"):
        get_pass("nope")


def test_run_passes_mutates_and_returns_the_graph() -> None:
    g = parse(GRAPH)
    assert run_passes(g, "canonicalize") is g
    assert str(g) == "graph @g(%x: f32[4]) {\n  return %x\n}\n"


def test_hooks_see_every_pass_and_results_are_recorded() -> None:
    seen = []
    pm = PassManager("canonicalize,fuse-gelu")
    pm.before_pass.append(lambda p, g, ctx: seen.append(("before", p.name, len(g.nodes))))
    pm.after_pass.append(lambda p, g, r, ctx: seen.append(("after", p.name, r.changed)))
    pm.run(parse(GRAPH))
    assert seen == [
        ("before", "canonicalize", 2),
        ("after", "canonicalize", True),
        ("before", "fuse-gelu", 0),
        ("after", "fuse-gelu", False),
    ]
    assert [(p.name, r) for p, r in pm.results] == [
        ("canonicalize", PassResult(True, {"commute": 1, "drop-mul-one": 1})),
        ("fuse-gelu", PassResult(False, {})),
    ]
    assert pm.ctx.rewrites == 2  # the swap of operands and x·1 = x


@pytest.fixture
def breaking_pass(monkeypatch):
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))

    @register_pass
    class BreakTypes(Pass):
        """Corrupt the first node's result type (a buggy pass)."""

        name = "break-types"

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            graph.nodes[0].outputs[0].type = graph.nodes[0].outputs[0].type.with_dtype("i64")
            return PassResult(True)

    return BreakTypes


def test_verify_after_each_pass_names_the_pass(breaking_pass) -> None:
    run_passes(parse(GRAPH), "break-types")  # unchecked by default
    with pytest.raises(IRError) as info:
        run_passes(parse(GRAPH), "break-types", verify_each=True)
    assert str(info.value).startswith("after pass break-types: constant defining %c: result types")


def test_registering_a_name_twice_is_an_error(breaking_pass) -> None:
    with pytest.raises(ValueError, match="pass 'break-types' registered twice"):
        register_pass(breaking_pass)
