"""fuse-attention: every scaled-dot-product form becomes one attention op, or says why not."""

import math

import pytest
import torch

from cgc.ir import Graph, TensorType, get_op, interpret, parse
from cgc.passes import explain
from cgc.passes.fuse_attention import attention_rule

B, T, E, H = 2, 6, 8, 2
D = E // H
F32 = f"f32[{B},{T},{E}]"


def tril(n: int = T) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def hand_written(
    *,
    q_scale: tuple[str, float] | None = None,
    k_scale: tuple[str, float] | None = None,
    scale: tuple[str, float] | None = ("mul", 0.5),
    k_two_transposes: bool = False,
    mask: str | None = None,
    mask_data: torch.Tensor | None = None,
    fill: float = float("-inf"),
    kv_heads: int = H,
    return_probs: bool = False,
) -> Graph:
    """Attention as models write it; `mask` is None, "add", "keep", "drop" or "drop-sliced"."""
    g = Graph("attn")
    q, k, v = (g.add_input(n, TensorType((B, T, E), "f32")) for n in "qkv")

    def scaled(x, how):
        return x if how is None else g.call(how[0], x, g.constant(how[1]))

    def heads(x, n=H):
        x = g.call("reshape", x, shape=[B, T, n, x.shape[-1] // n])
        return g.call("transpose", x, perm=[0, 2, 1, 3])

    if kv_heads != H:
        k = g.call("slice", k, axis=2, start=0, end=kv_heads * D)
    qh = heads(scaled(q, q_scale))
    if k_two_transposes:
        kt = g.call("transpose", heads(k, kv_heads), perm=[0, 1, 3, 2])
    else:
        kt = g.call("transpose", g.call("reshape", k, shape=[B, T, kv_heads, D]), perm=[0, 2, 3, 1])
    s = scaled(g.call("matmul", qh, scaled(kt, k_scale)), scale)
    if mask == "add":
        m = g.add_param("bias", TensorType((1, 1, T, T), "f32"), mask_data)
        s = g.call("add", s, g.call("expand", m, shape=[B, 1, T, T]))
    elif mask == "keep":
        keep = g.add_param("keep", TensorType((T, T), "bool"), mask_data)
        s = g.call("where", keep, s, g.constant(fill))
    elif mask in ("drop", "drop-sliced"):
        n = 2 * T if mask == "drop-sliced" else T
        buf = g.add_param("tril", TensorType((n, n), "bool"), mask_data)
        if mask == "drop-sliced":
            buf = g.call(
                "slice", g.call("slice", buf, axis=0, start=0, end=T), axis=1, start=0, end=T
            )
        s = g.call("where", g.call("logical_not", buf), g.constant(fill), s)
    probs = g.call("softmax", s, axis=-1)
    out = g.call("matmul", probs, heads(v))
    out = g.call("reshape", g.call("transpose", out, perm=[0, 2, 1, 3]), shape=[B, T, E])
    g.outputs = [out, probs] if return_probs else [out]
    return g


def fused_attention(g: Graph):
    (node,) = [n for n in g.nodes if n.op == "attention"]
    return [v.name for v in node.inputs], node.attrs


@pytest.mark.parametrize("causal", [True, False])
def test_registry_decomposition_fuses(decomposed, run_pipeline, same_numerics, causal) -> None:
    g = decomposed(
        "attention", {"q": F32, "k": F32, "v": F32}, num_heads=H, causal=causal, scale=0.35
    )
    (out,) = (v.name for v in g.outputs)
    assert str(run_pipeline(g.copy(), "fuse-attention,canonicalize")) == (
        f"graph @g(%q: {F32}, %k: {F32}, %v: {F32}) {{\n"
        f"  %{out} = attention(%q, %k, %v) {{causal={str(causal).lower()}, num_heads=2, "
        f"scale=0.35}} : {F32}\n"
        f"  return %{out}\n}}\n"
    )
    same_numerics(g, "fuse-attention")


def test_registry_decomposition_with_an_additive_mask_keeps_it(decomposed, same_numerics) -> None:
    g = decomposed(
        "attention",
        {"q": F32, "k": F32, "v": F32},
        {"mask": f"f32[{T},{T}]"},
        num_heads=H,
        causal=True,
        scale=0.5,
    )
    same_numerics(g, "fuse-attention,canonicalize")
    assert fused_attention(g) == (
        ["q", "k", "v", "mask"],
        {
            "num_heads": 2,
            "causal": True,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )
    assert g.op_counts() == {"attention": 1}


HF_EAGER = f"""\
graph @attn(%q: {F32}, %k: {F32}, %v: {F32}) {{
  param %bias: f32[1,1,6,6]
  %vq = reshape(%q) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4] #{{scope="h.0.attn", source="gpt2.py:1"}}
  %qh = transpose(%vq) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %vk = reshape(%k) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %kh = transpose(%vk) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %kt = transpose(%kh) {{perm=[0, 1, 3, 2]}} : f32[2,2,4,6]
  %fq = reshape(%qh) {{shape=[4, 6, 4]}} : f32[4,6,4]
  %fk = reshape(%kt) {{shape=[4, 4, 6]}} : f32[4,4,6]
  %bmm = matmul(%fq, %fk) : f32[4,6,6]
  %scores = reshape(%bmm) {{shape=[2, 2, 6, 6]}} : f32[2,2,6,6]
  %c = constant() {{dtype="f32", shape=[], value=0.5}} : f32[]
  %scaled = mul(%scores, %c) : f32[2,2,6,6]
  %mask = expand(%bias) {{shape=[2, 1, 6, 6]}} : f32[2,1,6,6]
  %masked = add(%scaled, %mask) : f32[2,2,6,6]
  %p = softmax(%masked) {{axis=-1}} : f32[2,2,6,6] #{{scope="h.0.attn", source="gpt2.py:5"}}
  %same = cast(%p) {{dtype="f32"}} : f32[2,2,6,6]
  %vv = reshape(%v) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %vh = transpose(%vv) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %o = matmul(%same, %vh) : f32[2,2,6,4]
  %ot = transpose(%o) {{perm=[0, 2, 1, 3]}} : f32[2,6,2,4]
  %out = reshape(%ot) {{shape=[2, 6, 8]}} : f32[2,6,8] #{{scope="h.0.attn", source="gpt2.py:9"}}
  %flat = reshape(%out) {{shape=[12, 8]}} : f32[12,8] #{{scope="h.0.attn.c_proj", source="c.py:2"}}
  return %flat
}}
"""


def hf_causal_bias() -> torch.Tensor:
    return torch.where(tril(), 0.0, torch.finfo(torch.float32).min).reshape(1, 1, T, T)


def test_hugging_face_eager_form_fuses(run_pipeline, same_numerics) -> None:
    g = parse(HF_EAGER)
    g.weights["bias"] = hf_causal_bias()
    assert str(run_pipeline(g, "canonicalize,fuse-attention,canonicalize")) == (
        f"graph @attn(%q: {F32}, %k: {F32}, %v: {F32}) {{\n"
        "  %attention = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5} : "
        f'{F32} #{{scope="h.0.attn", source="gpt2.py:5"}}\n'
        "  %flat = reshape(%attention) {shape=[12, 8]} : f32[12,8] "
        '#{scope="h.0.attn.c_proj", source="c.py:2"}\n'
        "  return %flat\n}\n"
    )
    g = parse(HF_EAGER)
    g.weights["bias"] = hf_causal_bias()
    same_numerics(g, "canonicalize,fuse-attention")


VARIANTS = {
    "masked_fill of ~tril": dict(mask="drop", mask_data=tril()),
    "masked_fill of a sliced buffer": dict(mask="drop-sliced", mask_data=tril(2 * T)),
    "where(tril, s, -1e9)": dict(mask="keep", mask_data=tril(), fill=-1e9),
    "k transposed twice": dict(k_two_transposes=True, mask="keep", mask_data=tril()),
    "additive causal bias": dict(mask="add", mask_data=hf_causal_bias()),
    "no mask": dict(),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mask_forms_fuse(same_numerics, variant) -> None:
    g = same_numerics(hand_written(**VARIANTS[variant]), "fuse-attention,canonicalize")
    causal = variant != "no mask"
    assert fused_attention(g) == (
        ["q", "k", "v"],
        {
            "num_heads": 2,
            "causal": causal,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )
    assert g.op_counts() == {"attention": 1}


SCALES = {
    "div by sqrt(d)": (dict(scale=("div", 2.0)), 0.5),
    "muP 1/d": (dict(scale=("mul", 1 / D)), 0.25),
    "q and kᵀ scaled": (dict(q_scale=("mul", 0.5), k_scale=("div", 4.0), scale=None), 0.125),
    "q scaled and scores divided": (dict(q_scale=("mul", 3.0), scale=("div", 2.0)), 1.5),
    "unscaled": (dict(scale=None), 1.0),
}


@pytest.mark.parametrize("variant", sorted(SCALES))
def test_scale_is_the_product_of_every_factor(same_numerics, variant) -> None:
    kwargs, scale = SCALES[variant]
    g = same_numerics(hand_written(mask="drop", mask_data=tril(), **kwargs), "fuse-attention")
    assert fused_attention(g)[1]["scale"] == pytest.approx(scale, rel=1e-7)


def root(g: Graph):
    return next(n for n in reversed(g.nodes) if n.op == "reshape")


NOT_FUSED = {
    "fill not negative enough": (
        dict(mask="keep", mask_data=tril(), fill=-100.0),
        "at %constant_1: expected constant: a mask fill at or below -10000, found -100.0",
    ),
    "attention weights returned": (
        dict(mask="keep", mask_data=tril(), return_probs=True),
        "at %softmax: also used outside the match, by the graph outputs",
    ),
    "k with fewer heads than v": (
        dict(kv_heads=1),
        "at %reshape_3: constraint failed: q, k and v share the batch, and k and v a number of"
        " heads that divides q's",
    ),
}


@pytest.mark.parametrize("variant", sorted(NOT_FUSED))
def test_what_does_not_fuse_says_why(run_pipeline, variant) -> None:
    kwargs, why = NOT_FUSED[variant]
    g = hand_written(**kwargs)
    text = str(g)
    assert explain(attention_rule(), root(g), g) == why
    assert str(run_pipeline(g, "fuse-attention")) == text


def test_the_fill_threshold_is_an_option(run_pipeline) -> None:
    g = hand_written(mask="keep", mask_data=tril(), fill=-100.0)
    run_pipeline(g, "fuse-attention{large-negative=-50}")
    assert g.op_counts()["attention"] == 1


def test_a_non_causal_additive_mask_becomes_the_mask_operand(same_numerics) -> None:
    data = torch.randn(1, 1, T, T)
    g = same_numerics(hand_written(mask="add", mask_data=data), "fuse-attention,canonicalize")
    assert fused_attention(g) == (
        ["q", "k", "v", "bias.expand"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )


def test_a_non_causal_where_mask_becomes_an_additive_mask_operand(same_numerics) -> None:
    g = hand_written(mask="keep", mask_data=tril().T.contiguous())
    g = same_numerics(g, "fuse-attention,canonicalize")
    assert fused_attention(g) == (
        ["q", "k", "v", "keep.where"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )
    additive = torch.zeros(T, T).masked_fill(~tril().T, -torch.inf)
    assert torch.equal(g.weights["keep.where"], additive)


def test_a_meta_where_mask_becomes_an_additive_mask_operand(run_pipeline) -> None:
    meta = torch.empty(T, T, dtype=torch.bool, device="meta")
    g = run_pipeline(hand_written(mask="drop", mask_data=meta), "fuse-attention,canonicalize")
    (where,) = [n for n in g.nodes if n.op == "where"]
    assert where.inputs[0].producer.op == "logical_not"  # where(drop, -inf, 0)
    assert [i.producer.attrs["value"] for i in where.inputs[1:]] == [float("-inf"), 0.0]
    assert fused_attention(g) == (
        ["q", "k", "v", where.output.name],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )


def test_a_meta_additive_mask_becomes_the_mask_operand(run_pipeline) -> None:
    meta = torch.empty(1, 1, T, T, device="meta")
    g = run_pipeline(hand_written(mask="add", mask_data=meta), "fuse-attention")
    assert fused_attention(g) == (
        ["q", "k", "v", "expand"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.5,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )


def test_a_head_split_from_another_shape_is_reshaped_first(rewrite_text, same_numerics) -> None:
    g = parse(HF_EAGER.replace("(%q: f32[2,6,8]", "(%q: f32[12,8]"))
    g.weights["bias"] = hf_causal_bias()
    g = same_numerics(g, "canonicalize,fuse-attention,canonicalize")
    assert [n.op for n in g.nodes] == ["reshape", "attention", "reshape"]
    assert g.nodes[0].output.shape == (B, T, E) and g.nodes[0].inputs[0].name == "q"
    assert math.isclose(g.nodes[1].attrs["scale"], 0.5)


# torch.onnx's SDPA, imported: √scale on q and on kᵀ (the latter transposed on a flattened
# batch), an additive mask, and a NaN guard, where(isnan(p), 0, p), after the softmax.
ONNX_SDPA = f"""\
graph @attn(%q: {F32}, %k: {F32}, %v: {F32}) {{
  param %bias: f32[1,1,6,6]
  %vq = reshape(%q) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %qh = transpose(%vq) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %vk = reshape(%k) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %kh = transpose(%vk) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %fk = reshape(%kh) {{shape=[4, 6, 4]}} : f32[4,6,4]
  %fkt = transpose(%fk) {{perm=[0, 2, 1]}} : f32[4,4,6]
  %kt = reshape(%fkt) {{shape=[2, 2, 4, 6]}} : f32[2,2,4,6]
  %c = constant() {{dtype="f32", shape=[], value=0.5}} : f32[]
  %qs = mul(%qh, %c) : f32[2,2,6,4]
  %ks = mul(%kt, %c) : f32[2,2,4,6]
  %s = matmul(%qs, %ks) : f32[2,2,6,6]
  %masked = add(%s, %bias) : f32[2,2,6,6]
  %p = softmax(%masked) {{axis=-1}} : f32[2,2,6,6] #{{scope="h.0.attn", source="m.onnx:Softmax_7"}}
  %nan = ne(%p, %p) : bool[2,2,6,6]
  %zero = constant() {{dtype="f32", shape=[], value=0.0}} : f32[]
  %guarded = where(%nan, %zero, %p) : f32[2,2,6,6]
  %vv = reshape(%v) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %vh = transpose(%vv) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %o = matmul(%guarded, %vh) : f32[2,2,6,4]
  %ot = transpose(%o) {{perm=[0, 2, 1, 3]}} : f32[2,6,2,4]
  %out = reshape(%ot) {{shape=[2, 6, 8]}} : f32[2,6,8]
  return %out
}}
"""


def onnx_sdpa(bias: torch.Tensor) -> Graph:
    g = parse(ONNX_SDPA)
    g.weights["bias"] = bias
    return g


def test_onnx_exporter_form_fuses(run_pipeline, same_numerics) -> None:
    causal = torch.zeros(1, 1, T, T).masked_fill(~tril(), -torch.inf)
    assert str(run_pipeline(onnx_sdpa(causal), "canonicalize,fuse-attention,canonicalize")) == (
        f"graph @attn(%q: {F32}, %k: {F32}, %v: {F32}) {{\n"
        "  %out = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.25} : "
        f'{F32} #{{scope="h.0.attn", source="m.onnx:Softmax_7"}}\n'
        "  return %out\n}\n"
    )
    same_numerics(onnx_sdpa(causal), "canonicalize,fuse-attention")


def test_nan_guard_with_a_finite_mask_fuses_keeping_the_mask(same_numerics) -> None:
    g = same_numerics(onnx_sdpa(torch.randn(1, 1, T, T)), "canonicalize,fuse-attention")
    assert fused_attention(g) == (
        ["q", "k", "v", "bias"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.25,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )


def test_nan_guard_with_a_mask_that_may_mask_whole_rows_fuses(run_pipeline) -> None:
    """The attention op zeroes a fully masked query as the guard does, so any mask fuses."""
    g = onnx_sdpa(torch.empty(1, 1, T, T, device="meta"))
    g = run_pipeline(g, "canonicalize,fuse-attention,canonicalize")
    assert fused_attention(g) == (
        ["q", "k", "v", "bias"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.25,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [],
        },
    )


def test_nan_guard_zeroes_fully_masked_queries_like_the_fused_op(same_numerics) -> None:
    bias = torch.zeros(1, 1, T, T).masked_fill(~tril(), -torch.inf)
    bias[..., :2, :] = -torch.inf  # the first two queries see no key
    g = same_numerics(onnx_sdpa(bias), "canonicalize,fuse-attention")
    assert g.op_counts()["attention"] == 1


# Padding masks are built from the inputs, so they are not known at compile time. Hugging Face
# eager adds where(keep, 0, finfo.min); SDPA as cgc imports it masks with where(keep, s, -inf)
# and guards the softmax. Left padding leaves padding queries with no key to attend to.
HEAD_SPLIT = f"""\
graph @attn(%q: {F32}, %k: {F32}, %v: {F32}, %keep: bool[2,1,6,6]) {{
  %vq = reshape(%q) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %qh = transpose(%vq) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %vk = reshape(%k) {{shape=[2, 6, 2, 4]}} : f32[2,6,2,4]
  %kh = transpose(%vk) {{perm=[0, 2, 1, 3]}} : f32[2,2,6,4]
  %kt = transpose(%kh) {{perm=[0, 1, 3, 2]}} : f32[2,2,4,6]
  %s = matmul(%qh, %kt) : f32[2,2,6,6]
  %c = constant() {{dtype="f32", shape=[], value=0.5}} : f32[]
  %scaled = mul(%s, %c) : f32[2,2,6,6]
"""
HEAD_MERGE = """\
  %vv = reshape(%v) {shape=[2, 6, 2, 4]} : f32[2,6,2,4]
  %vh = transpose(%vv) {perm=[0, 2, 1, 3]} : f32[2,2,6,4]
  %o = matmul(%p, %vh) : f32[2,2,6,4]
  %ot = transpose(%o) {perm=[0, 2, 1, 3]} : f32[2,6,2,4]
  %out = reshape(%ot) {shape=[2, 6, 8]} : f32[2,6,8]
  return %out
}
"""
META = '#{scope="h.0.attn", source="gpt2.py:5"}'
LOWEST = "-3.4028234663852886e+38"

HF_PADDED_EAGER = f"""{HEAD_SPLIT}\
  %zero = constant() {{dtype="f32", shape=[], value=0.0}} : f32[]
  %lowest = constant() {{dtype="f32", shape=[], value={LOWEST}}} : f32[]
  %bias = where(%keep, %zero, %lowest) : f32[2,1,6,6]
  %masked = add(%scaled, %bias) : f32[2,2,6,6]
  %p = softmax(%masked) {{axis=-1}} : f32[2,2,6,6] {META}
{HEAD_MERGE}"""

HF_PADDED_SDPA = f"""{HEAD_SPLIT}\
  %ninf = constant() {{dtype="f32", shape=[], value=-inf}} : f32[]
  %masked = where(%keep, %scaled, %ninf) : f32[2,2,6,6]
  %softmax = softmax(%masked) {{axis=-1}} : f32[2,2,6,6] {META}
  %nan = ne(%softmax, %softmax) : bool[2,2,6,6]
  %zero = constant() {{dtype="f32", shape=[], value=0.0}} : f32[]
  %p = where(%nan, %zero, %softmax) : f32[2,2,6,6]
{HEAD_MERGE}"""

FUSED_HEAD = f"graph @attn(%q: {F32}, %k: {F32}, %v: {F32}, %keep: bool[2,1,6,6]) {{\n"
FUSED_TAIL = (
    "  %out = attention(%q, %k, %v, %mask) {causal=false, num_heads=2, scale=0.5} : "
    f"{F32} {META}\n  return %out\n}}\n"
)
PADDED_FORMS = {
    "eager": (
        HF_PADDED_EAGER,
        f"""{FUSED_HEAD}\
  %zero = constant() {{dtype="f32", shape=[], value=0.0}} : f32[]
  %lowest = constant() {{dtype="f32", shape=[], value={LOWEST}}} : f32[]
  %bias = where(%keep, %zero, %lowest) : f32[2,1,6,6]
{FUSED_TAIL.replace("%mask", "%bias")}""",
    ),
    "sdpa": (  # the where-mask becomes the additive where(keep, 0, -inf)
        HF_PADDED_SDPA,
        f"""{FUSED_HEAD}\
  %constant = constant() {{dtype="f32", shape=[], value=0.0}} : f32[] {META}
  %constant_1 = constant() {{dtype="f32", shape=[], value=-inf}} : f32[] {META}
  %where = where(%keep, %constant, %constant_1) : f32[2,1,6,6] {META}
{FUSED_TAIL.replace("%mask", "%where")}""",
    ),
}


@pytest.mark.parametrize("form", sorted(PADDED_FORMS))
def test_hugging_face_padding_masks_fuse(rewrite_text, form: str) -> None:
    text, fused = PADDED_FORMS[form]
    assert rewrite_text(text, "canonicalize,fuse-attention,canonicalize") == fused


def left_padded_keep() -> torch.Tensor:
    """Causal and padding: batch row 1 pads its first 2 tokens (its queries 0, 1 see no key)."""
    keep = tril().expand(B, 1, T, T).clone()
    keep[1, ..., :2] = False
    return keep


@pytest.mark.parametrize("form", sorted(PADDED_FORMS))
def test_hugging_face_padding_queries_stay_finite(run_pipeline, form: str) -> None:
    """Padding queries get zeros under SDPA (as torch) and an even average of v under eager."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, E, generator=gen) for _ in "qkv")
    text = PADDED_FORMS[form][0]
    (want,) = interpret(parse(text), q, k, v, left_padded_keep())
    (got,) = interpret(
        run_pipeline(text, "canonicalize,fuse-attention"), q, k, v, left_padded_keep()
    )
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    padding = want[1, :2]
    if form == "sdpa":
        assert torch.equal(padding, torch.zeros_like(padding))
    else:
        torch.testing.assert_close(padding, v[1].mean(0).expand(2, E))


# -- grouped heads, windows, ALiBi, cross-attention, bmm ---------------------------------------

# Each variant of the op, decomposed as the frontends emit it, fuses back to exactly itself.
ROUND_TRIPS = {
    "grouped-query": (
        "f32[2,6,16]", "f32[2,6,8]", "{causal=true, num_heads=4, num_kv_heads=2, scale=0.5}"
    ),
    "multi-query": (
        "f32[2,6,16]", "f32[2,6,4]", "{causal=false, num_heads=4, num_kv_heads=1, scale=0.5}"
    ),
    "sliding window": (
        "f32[2,6,16]",
        "f32[2,6,8]",
        "{causal=true, num_heads=4, num_kv_heads=2, scale=0.5, window=3}",
    ),
    "ALiBi": (
        "f32[2,6,16]",
        "f32[2,6,16]",
        "{alibi_slopes=[0.5, 0.25, 0.125, 0.0625], causal=true, num_heads=4, scale=0.5}",
    ),
    "cross": ("f32[2,4,16]", "f32[2,7,16]", "{causal=false, num_heads=4, scale=0.5}"),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(ROUND_TRIPS))
def test_decomposed_variants_fuse_back(same_numerics, variant) -> None:
    q_type, kv_type, attrs = ROUND_TRIPS[variant]
    text = (
        f"graph @g(%q: {q_type}, %k: {kv_type}, %v: {kv_type}) {{\n"
        f"  %y = attention(%q, %k, %v) {attrs} : {q_type}\n  return %y\n}}\n"
    )
    (node,) = parse(text).nodes
    g = Graph("g")
    values = [g.add_input(v.name, v.type) for v in node.inputs]
    g.outputs = get_op("attention").decompose(g, values, node.attrs)
    g.rename(g.outputs[0], "y")
    same_numerics(g, "fuse-attention,canonicalize")
    assert str(g) == text


def grouped(kv_heads: int, repeat: bool) -> Graph:
    """HF's repeat_kv (view, expand, view) or SDPA broadcasting one key head over the queries."""
    g = Graph("gqa")
    q = g.add_input("q", TensorType((B, T, 4 * D), "f32"))
    k, v = (g.add_input(n, TensorType((B, T, kv_heads * D), "f32")) for n in "kv")

    def heads(x, n):
        return g.call("transpose", g.call("reshape", x, shape=[B, T, n, D]), perm=[0, 2, 1, 3])

    def shared(x):
        if not repeat:
            return x
        x = g.call("reshape", x, shape=[B, kv_heads, 1, T, D])
        x = g.call("expand", x, shape=[B, kv_heads, 4 // kv_heads, T, D])
        return g.call("reshape", x, shape=[B, 4, T, D])

    kt = g.call("transpose", shared(heads(k, kv_heads)), perm=[0, 1, 3, 2])
    s = g.call("mul", g.call("matmul", heads(q, 4), kt), g.constant(0.5))
    p = g.call("softmax", s, axis=-1)
    out = g.call("matmul", p, shared(heads(v, kv_heads)))
    g.outputs = [g.call("reshape", g.call("transpose", out, perm=[0, 2, 1, 3]), shape=[B, T, 16])]
    return g


@pytest.mark.parametrize(
    ("kv_heads", "repeat"), [(2, True), (1, True), (1, False)], ids=["gqa", "mqa", "broadcast"]
)
def test_shared_key_value_heads_fuse(same_numerics, kv_heads, repeat) -> None:
    g = same_numerics(grouped(kv_heads, repeat), "fuse-attention,canonicalize")
    (node,) = g.nodes
    assert (node.op, node.attrs["num_heads"], node.attrs["num_kv_heads"]) == (
        "attention",
        4,
        kv_heads,
    )
    assert [v.name for v in node.inputs] == ["q", "k", "v"]


def test_a_sliding_window_mask_sets_window(same_numerics) -> None:
    keep = torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-3)
    g = same_numerics(hand_written(mask="keep", mask_data=keep), "fuse-attention,canonicalize")
    assert fused_attention(g)[1] | {"scale": 0.5} == {
        "num_heads": 2,
        "causal": True,
        "scale": 0.5,
        "num_kv_heads": 2,
        "window": 3,
        "alibi_slopes": [],
    }


PADDED_CAUSAL = f"""{HEAD_SPLIT.replace("%keep: bool[2,1,6,6]", "%pad: bool[2,1,1,6]")}\
  %keep = logical_and(%pad, %tril) : bool[2,1,6,6]
  %ninf = constant() {{dtype="f32", shape=[], value=-inf}} : f32[]
  %masked = where(%keep, %scaled, %ninf) : f32[2,2,6,6]
  %softmax = softmax(%masked) {{axis=-1}} : f32[2,2,6,6] {META}
  %nan = ne(%softmax, %softmax) : bool[2,2,6,6]
  %zero = constant() {{dtype="f32", shape=[], value=0.0}} : f32[]
  %p = where(%nan, %zero, %softmax) : f32[2,2,6,6]
{HEAD_MERGE}""".replace(") {\n", ") {\n  param %tril: bool[1,1,6,6]\n", 1)


def test_padding_and_causal_conjuncts_split(run_pipeline, same_numerics) -> None:
    """where(pad & tril, s, -inf): tril becomes causal=true, the padding the mask operand."""
    g = parse(PADDED_CAUSAL)
    g.weights["tril"] = tril().reshape(1, 1, T, T)
    same_numerics(g, "fuse-attention")
    (node,) = [n for n in g.nodes if n.op == "attention"]
    assert node.attrs["causal"]
    where = node.inputs[3].producer
    assert (where.op, where.inputs[0].name, str(where.output.type)) == (
        "where",
        "pad",
        "f32[2,1,1,6]",
    )


def test_an_alibi_bias_becomes_slopes(same_numerics) -> None:
    slopes = torch.tensor([0.5, 0.125])
    alibi = (slopes[:, None, None] * torch.arange(T)).expand(1, 2, T, T)  # BLOOM: slope · key
    g = parse(ONNX_SDPA.replace("param %bias: f32[1,1,6,6]", "param %bias: f32[1,2,6,6]"))
    g.weights["bias"] = alibi.contiguous()
    g = same_numerics(g, "canonicalize,fuse-attention,canonicalize")
    assert fused_attention(g) == (
        ["q", "k", "v"],
        {
            "num_heads": 2,
            "causal": False,
            "scale": 0.25,
            "num_kv_heads": 2,
            "window": 0,
            "alibi_slopes": [0.5, 0.125],
        },
    )


BMM = """\
graph @bmm(%q: f32[4,6,4], %k: f32[4,6,4], %v: f32[4,6,4], %m: f32[6,6]) {
  %kt = transpose(%k) {perm=[0, 2, 1]} : f32[4,4,6]
  %s = matmul(%q, %kt) : f32[4,6,6]
  %c = constant() {dtype="f32", shape=[], value=0.5} : f32[]
  %scaled = mul(%s, %c) : f32[4,6,6]
  %masked = add(%scaled, %m) : f32[4,6,6]
  %p = softmax(%masked) {axis=-1} : f32[4,6,6]
  %out = matmul(%p, %v) : f32[4,6,4]
  return %out
}
"""


def test_bmm_attention_is_a_batch_of_single_heads(rewrite_text, same_numerics) -> None:
    """nn.MultiheadAttention's need_weights path: [b·h, t, d] batches, no head axis."""
    assert rewrite_text(BMM, "fuse-attention,canonicalize") == (
        "graph @bmm(%q: f32[4,6,4], %k: f32[4,6,4], %v: f32[4,6,4], %m: f32[6,6]) {\n"
        "  %out = attention(%q, %k, %v, %m) {causal=false, num_heads=1, scale=0.5} : f32[4,6,4]\n"
        "  return %out\n}\n"
    )
    same_numerics(parse(BMM), "fuse-attention")
