"""FX frontend: exact IR, numerics against eager PyTorch, meta weights, meta data, errors."""

import re
import resource
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from cgc import driver
from cgc.errors import ModelError, UnsupportedOpError
from cgc.frontends import trace
from cgc.ir import interpret, parse, print_graph, verify
from cgc.models import GPT, TINY, GPTConfig, build, example_inputs

HERE = Path(__file__).parent
aten = torch.ops.aten


def line_of(marker: str) -> int:
    """The line of this file that ends with `# <marker>` (so tests survive edits above it)."""
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {marker}"))


# -- test modules -------------------------------------------------------------------------------


class TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # tiny-fc
        return self.ln(self.act(h))  # tiny-act-ln


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 64)
        self.down = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh")).relu()


class MaskedFillAttention(nn.Module):
    """Manual causal attention as GPT-2 code writes it."""

    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5  # scores
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class Nested(nn.Module):
    """Puts the attention at scope `transformer.h.0.attn`, as in GPT-2."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({"h": nn.ModuleList([nn.Module()])})
        self.transformer.h[0].attn = MaskedFillAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.h[0].attn(x)


class CausalSDPA(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor):
        return self.fn(*args)


class MixedDtypes(nn.Module):
    """Integer/float promotion, scalars, splits, selects, reductions and casts."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.ln = nn.LayerNorm([2, 4])
        self.register_buffer("scale", torch.tensor([2.0]))

    def forward(self, ids: torch.Tensor, x: torch.Tensor, n: torch.Tensor):
        a, b = self.emb(ids).split(4, dim=-1)
        y = torch.cat([b, a], dim=-1) * self.scale
        y = self.ln(y.view(2, 3, 2, 4)).flatten(2)
        y = (y + n / 3).masked_fill(n > 2, 0.5)
        y = torch.where(y > 0, y, 0.1 * y).clamp(-1.0, 1.0) ** 2
        var, mean = torch.var_mean(y, dim=-1, keepdim=True)
        y = (y - mean) * torch.rsqrt(var + 1e-3)
        z = F.log_softmax(y, dim=1) + y.amax(dim=0, keepdim=True)
        z = z + y.sum(-1, keepdim=True, dtype=torch.float64).float()
        first, _, last = torch.unbind(z, dim=1)
        w = first + last + z.select(1, -1) + z[:, 1:, :].mean(1) + x.squeeze(1).half().float()
        return w, (w.half() * 2, (ids + 1) * 2, x.transpose(0, 2).contiguous())


class LogitsGPT2(GPT2LMHeadModel):
    """Hugging Face GPT-2 returning only the logits, without a KV cache."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids=input_ids, use_cache=False).logits


def hf_gpt2(attn_implementation: str) -> LogitsGPT2:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn_implementation,
    )
    return LogitsGPT2(config).eval()


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


# -- exact IR -----------------------------------------------------------------------------------


def test_trainable_parameters_are_those_requiring_grad() -> None:
    """Parameters that require grad are trainable; frozen ones and buffers are not."""
    block = TinyBlock()
    block.ln.weight.requires_grad_(False)
    block.register_buffer("scale", torch.full((8,), 2.0))
    block.forward = lambda x: block.ln(block.act(block.fc(x))) * block.scale
    graph = trace(block, (randn(2, 3, 4),))
    assert graph.trainable == {"fc.weight", "fc.bias", "ln.bias"}
    assert {"ln.weight", "scale"} <= set(graph.params)


def test_tiny_block_ir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)  # sources print relative to the working directory
    graph = trace(TinyBlock(), (randn(2, 3, 4),))
    fc = f'scope="fc", source="test_fx.py:{line_of("tiny-fc")}"'
    act = f'scope="act", source="test_fx.py:{line_of("tiny-act-ln")}"'
    ln = f'scope="ln", source="test_fx.py:{line_of("tiny-act-ln")}"'
    expected = f"""\
graph @TinyBlock(%x: f32[2,3,4]) {{
  param trainable %fc.weight: f32[8,4]
  param trainable %fc.bias: f32[8]
  param trainable %ln.weight: f32[8]
  param trainable %ln.bias: f32[8]
  %linear.transpose = transpose(%fc.weight) {{perm=[1, 0]}} : f32[4,8] #{{{fc}}}
  %linear.matmul = matmul(%x, %linear.transpose) : f32[2,3,8] #{{{fc}}}
  %linear = add(%linear.matmul, %fc.bias) : f32[2,3,8] #{{{fc}}}
  %gelu.constant = constant() {{dtype="f32", shape=[], value=0.7071067811865475}} : f32[] #{{{act}}}
  %gelu.mul = mul(%linear, %gelu.constant) : f32[2,3,8] #{{{act}}}
  %gelu.erf = erf(%gelu.mul) : f32[2,3,8] #{{{act}}}
  %gelu.constant_1 = constant() {{dtype="f32", shape=[], value=0.5}} : f32[] #{{{act}}}
  %gelu.mul_1 = mul(%linear, %gelu.constant_1) : f32[2,3,8] #{{{act}}}
  %gelu.constant_2 = constant() {{dtype="f32", shape=[], value=1.0}} : f32[] #{{{act}}}
  %gelu.add = add(%gelu.erf, %gelu.constant_2) : f32[2,3,8] #{{{act}}}
  %gelu = mul(%gelu.mul_1, %gelu.add) : f32[2,3,8] #{{{act}}}
  %layer_norm.reduce_mean = reduce_mean(%gelu) {{axes=[-1], keepdim=true}} : f32[2,3,1] #{{{ln}}}
  %layer_norm.sub = sub(%gelu, %layer_norm.reduce_mean) : f32[2,3,8] #{{{ln}}}
  %layer_norm.mul = mul(%layer_norm.sub, %layer_norm.sub) : f32[2,3,8] #{{{ln}}}
  %layer_norm.reduce_mean_1 = reduce_mean(%layer_norm.mul) {{axes=[-1], keepdim=true}} : f32[2,3,1] #{{{ln}}}
  %layer_norm.constant = constant() {{dtype="f32", shape=[], value=1e-05}} : f32[] #{{{ln}}}
  %layer_norm.add = add(%layer_norm.reduce_mean_1, %layer_norm.constant) : f32[2,3,1] #{{{ln}}}
  %layer_norm.rsqrt = rsqrt(%layer_norm.add) : f32[2,3,1] #{{{ln}}}
  %layer_norm.mul_1 = mul(%layer_norm.sub, %layer_norm.rsqrt) : f32[2,3,8] #{{{ln}}}
  %layer_norm.mul_2 = mul(%layer_norm.mul_1, %ln.weight) : f32[2,3,8] #{{{ln}}}
  %output = add(%layer_norm.mul_2, %ln.bias) : f32[2,3,8] #{{{ln}}}
  return %output
}}
"""  # noqa: E501
    assert str(graph) == expected
    assert print_graph(parse(str(graph))) == str(graph)


def test_graph_name_inputs_and_weights_by_reference() -> None:
    model = TinyBlock()
    graph = trace(model, randn(2, 3, 4), name="block")  # a lone tensor is one input
    assert graph.name == "block"
    assert [v.name for v in graph.inputs] == ["x"]
    assert graph.weights["fc.weight"] is model.fc.weight
    assert graph.weights["ln.bias"] is model.ln.bias


# -- numerics -----------------------------------------------------------------------------------

ATTN_Q, ATTN_K, ATTN_V = randn(2, 4, 8, 16), randn(2, 4, 6, 16), randn(2, 4, 6, 17)
GQA_K, GQA_V = randn(2, 2, 6, 16), randn(2, 2, 6, 17)
BOOL_MASK = (randn(2, 1, 8, 6) > -0.5) | (torch.arange(6) == 0)  # no fully masked row
PADDING_MASK = torch.ones(8, 6, dtype=torch.bool).tril(-2) & (torch.arange(6) >= 1)
FLOAT_MASK = randn(8, 6)


def _sdpa_ref(**kwargs):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kwargs)


CASES = {
    "mlp": (MLP, (randn(3, 5, 16),)),
    "masked-fill-attention": (Nested, (randn(2, 7, 32),)),
    "sdpa-causal": (CausalSDPA, (randn(2, 4, 8, 16), randn(2, 4, 8, 16), randn(2, 4, 8, 16))),
    "sdpa-bool-mask": (
        lambda: Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
        (ATTN_Q, ATTN_K, ATTN_V, BOOL_MASK),
    ),
    "sdpa-padding-mask": (  # queries 0-2 see no key: zeros, as torch gives
        lambda: Lambda(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
        (ATTN_Q, ATTN_K, ATTN_V, PADDING_MASK),
    ),
    "sdpa-float-mask-scale": (
        lambda: Lambda(
            lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.1)
        ),
        (ATTN_Q, ATTN_K, ATTN_V, FLOAT_MASK),
    ),
    "sdpa-gqa": (
        lambda: Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
        (ATTN_Q, GQA_K, GQA_V),
    ),
    "mixed-dtypes": (
        MixedDtypes,
        (torch.tensor([[1, 2, 3], [4, 5, 9]]), randn(2, 1, 8), torch.arange(48).view(2, 3, 8) % 5),
    ),
    "hf-gpt2-eager": (lambda: hf_gpt2("eager"), (torch.tensor([[1, 5, 7, 9, 2, 3], [4] * 6]),)),
    "hf-gpt2-sdpa": (lambda: hf_gpt2("sdpa"), (torch.tensor([[1, 5, 7, 9, 2, 3], [4] * 6]),)),
    "cgc-tiny-111m": (lambda: build("tiny-111m"), example_inputs(TINY["tiny-111m"], 2, 9)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_matches_eager(case: str) -> None:
    make, inputs = CASES[case]
    model = make()
    graph = trace(model, inputs)
    verify(graph)
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(model(*inputs))
    got = interpret(graph, *inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("op", "ref"),
    [
        (
            lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0],
            _sdpa_ref(is_causal=True),
        ),
        (
            lambda q, k, v: aten._scaled_dot_product_attention_math(q, k, v, scale=0.3)[0],
            _sdpa_ref(scale=0.3),
        ),
        (
            lambda q, k, v: aten._scaled_dot_product_efficient_attention(
                q, k, v, None, False, is_causal=True
            )[0],
            _sdpa_ref(is_causal=True),
        ),
    ],
    ids=["flash-for-cpu", "math", "efficient"],
)
def test_sdpa_kernels_import_as_primitives(op, ref) -> None:
    q, k, v = ATTN_Q, ATTN_K, randn(2, 4, 6, 16)
    graph = trace(Lambda(op), (q, k, v))
    verify(graph)
    counts = {"matmul": 2, "mul": 1, "softmax": 1, "transpose": 1}
    assert {k: graph.op_counts()[k] for k in counts} == counts
    torch.testing.assert_close(interpret(graph, q, k, v)[0], ref(q, k, v), atol=1e-5, rtol=1e-5)


INDEXED = randn(4, 5, 6)
ROWS, COLS = torch.tensor([[0, 3], [-1, 2]]), torch.tensor([4, -2])

INDEX_CASES = {
    # name: (indexing, inputs after x, the graph's gathers)
    "x[rows, cols]": (lambda x, i, j: x[i, j], (ROWS, COLS), 1),
    "x[:, cols]": (lambda x, j: x[:, j], (COLS,), 1),
    "x[:, rows, cols]": (lambda x, i, j: x[:, i, j], (ROWS, COLS), 1),
    "x[..., cols]": (lambda x, j: x[..., j], (COLS,), 1),
    "x[rows, :, cols]": (lambda x, i, j: x[i, :, j], (ROWS, COLS), 1),  # index axes lead
    "x[rows.int()]": (lambda x, i: x[i.int()], (ROWS,), 1),
    "constant indices": (lambda x: x[torch.tensor([2, 0]), :, torch.tensor([1, -1])], (), 1),
    # Hugging Face's mask builders: aranges broadcast against each other take every row in order
    "aranges": (
        lambda x: x[torch.arange(4).view(4, 1, 1, 1), torch.arange(5).view(1, 1, 5, 1)],
        (),
        0,
    ),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_index_matches_eager(case: str) -> None:
    index, inputs, gathers = INDEX_CASES[case]
    graph = trace(Lambda(index), (INDEXED, *inputs))
    verify(graph)
    assert graph.op_counts().get("embedding", 0) == gathers
    assert torch.equal(interpret(graph, INDEXED, *inputs)[0], index(INDEXED, *inputs))


@pytest.mark.parametrize(
    ("backend", "options"), [("onnxruntime", {}), ("cerebras", {"target": "fabric:32x32"})]
)
def test_index_runs_on_the_backends(backend: str, options: dict) -> None:
    """The gather reads a table computed in the graph (not a weight) with computed rows."""
    index, inputs, _ = INDEX_CASES["x[rows, :, cols]"]
    model = Lambda(lambda x, i, j: index(x * 2, i, j))
    args = (INDEXED, *inputs)
    (got,) = driver.compile(model, args, backend, **options).run(*args)
    assert torch.equal(got, index(INDEXED * 2, *inputs))


def test_index_of_aranges_is_a_reshape() -> None:
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]]).bool()
    index = Lambda(lambda m: m[torch.arange(2).view(2, 1, 1, 1), torch.arange(3).view(1, 1, 1, 3)])
    graph = trace(index, (mask,))
    assert [(n.op, n.attrs) for n in graph.nodes] == [("reshape", {"shape": [2, 1, 1, 3]})]
    assert torch.equal(interpret(graph, mask)[0], mask.view(2, 1, 1, 3))


def test_boolean_mask_index_is_unsupported() -> None:
    with pytest.raises(UnsupportedOpError, match=r"aten.index.Tensor .*: boolean mask indices"):
        trace(Lambda(lambda x, m: x[m]), (randn(3, 4), torch.tensor([True, False, True])))


def test_causal_sdpa_form() -> None:
    graph = trace(CausalSDPA(), (ATTN_Q, ATTN_Q, ATTN_Q))
    assert [n.op for n in graph.nodes] == [
        "transpose",
        "matmul",
        "constant",
        "mul",
        "constant",
        "where",
        "softmax",
        "matmul",
    ]
    mask = graph.params["causal_mask_8x8"]
    assert graph.nodes[5].inputs[0] is mask
    assert torch.equal(graph.weights["causal_mask_8x8"], torch.ones(8, 8, dtype=torch.bool).tril())
    assert graph.nodes[2].attrs["value"] == 0.25
    assert graph.nodes[4].attrs["value"] == float("-inf")
    assert graph.nodes[6].attrs == {"axis": -1}


# -- the GPT models -----------------------------------------------------------------------------


def test_cgc_gpt_structure() -> None:
    model = build("tiny-111m")
    graph = trace(model, example_inputs(TINY["tiny-111m"], 2, 9))
    assert graph.op_counts() == {
        "add": 25,
        "constant": 15,
        "embedding": 2,
        "erf": 2,
        "matmul": 13,
        "mul": 23,
        "reduce_mean": 10,
        "reshape": 8,
        "rsqrt": 5,
        "slice": 6,
        "softmax": 2,
        "sub": 5,
        "transpose": 19,
        "where": 2,
    }
    assert [v.name for v in graph.inputs] == ["input_ids"]
    # Tied lm_head appears once, under the first name; weights are the module's tensors.
    assert "lm_head.weight" not in graph.params
    assert graph.weights["transformer.wte.weight"] is model.transformer.wte.weight
    # Positions and the causal mask were folded; both layers share one mask parameter.
    assert {k: str(v.type) for k, v in graph.params.items() if k.startswith("const")} == {
        "const_0": "i64[9]",
        "const_1": "bool[9,9]",
    }
    assert torch.equal(graph.weights["const_0"], torch.arange(9))
    assert torch.equal(graph.weights["const_1"], ~torch.ones(9, 9, dtype=torch.bool).tril())
    wheres = [n for n in graph.nodes if n.op == "where"]
    assert [n.meta["scope"] for n in wheres] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert all(n.inputs[0] is graph.params["const_1"] for n in wheres)
    assert graph.nodes[0].meta == {"scope": "transformer.wte", "source": "cgc/models/gpt.py:128"}


HF_COUNTS = {
    "add": 27,
    "constant": 17,
    "embedding": 2,
    "expand": 2,
    "matmul": 13,
    "mul": 25,
    "pow": 2,
    "reduce_mean": 10,
    "reshape": 24,
    "rsqrt": 5,
    "slice": 6,
    "softmax": 2,
    "sub": 5,
    "tanh": 2,
    "transpose": 11,
}


@pytest.mark.parametrize(
    ("impl", "counts", "mask"),
    [
        # eager adds a float mask (0 / finfo.min)
        ("eager", {**HF_COUNTS, "add": 29}, "f32[1,1,6,6]"),
        # sdpa passes a bool mask: where(mask, scores, -inf)
        ("sdpa", {**HF_COUNTS, "constant": 19, "where": 2}, "bool[1,1,6,6]"),
    ],
)
def test_hf_gpt2_structure(impl: str, counts: dict, mask: str) -> None:
    graph = trace(hf_gpt2(impl), (torch.tensor([[1, 5, 7, 9, 2, 3], [4] * 6]),))
    assert graph.op_counts() == counts
    assert "transformer.h.1.attn.c_attn.weight" in graph.params
    assert "lm_head.weight" not in graph.params
    # HF builds the mask per batch row; equal rows are stored once and expanded per layer.
    assert {k: str(v.type) for k, v in graph.params.items() if k.startswith("const")} == {
        "const_0": "i64[1,6]",
        "const_1": mask,
    }
    expands = [n for n in graph.nodes if n.op == "expand"]
    assert all(n.inputs[0] is graph.params["const_1"] for n in expands)
    softmax = [n for n in graph.nodes if n.op == "softmax"]
    assert [n.meta["scope"] for n in softmax] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert softmax[0].meta["source"].startswith("modeling_gpt2.py:")


def test_scope_and_source_point_at_user_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    graph = trace(Nested(), (randn(1, 5, 32),))
    mul = next(n for n in graph.nodes if n.op == "mul")
    assert mul.meta == {
        "scope": "transformer.h.0.attn",
        "source": f"test_fx.py:{line_of('scores')}",
    }
    linear = graph.nodes[0]
    assert linear.meta["scope"] == "transformer.h.0.attn.c_attn"


# -- meta weights -------------------------------------------------------------------------------


def test_meta_model_traces_without_data() -> None:
    real = trace(build("tiny-111m"), example_inputs(TINY["tiny-111m"], 1, 8))
    graph = trace(build("tiny-111m", device="meta"), example_inputs(TINY["tiny-111m"], 1, 8))
    verify(graph)
    assert str(graph) == str(real)
    assert sorted(graph.weights) == ["const_0", "const_1"]  # folded constants only
    assert not graph.weights["const_1"].is_meta


def test_wide_meta_model_allocates_no_weights() -> None:
    # 4.6 GB of fp32 weights if anything were materialized.
    config = GPTConfig(n_layer=1, n_embd=8192, n_head=64, n_inner=32768)
    model = GPT(config, device="meta")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    graph = trace(model, example_inputs(config, 1, 16))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 400, f"peak RSS grew by {grown_mib:.0f} MiB"
    assert graph.params["transformer.h.0.mlp.c_fc.weight"].shape == (32768, 8192)


# -- errors -------------------------------------------------------------------------------------


class Cumprod(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(x, dim=-1)  # cumprod


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def test_unsupported_op_names_op_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)
    with pytest.raises(UnsupportedOpError) as info:
        trace(Cumprod(), (randn(2, 3),))
    assert str(info.value) == (
        f"unsupported operation aten.cumprod at test_fx.py:{line_of('cumprod')}"
        " (in the top-level module)"
    )


def test_unsupported_op_inside_a_submodule() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Lambda(torch.special.bessel_j0))
    with pytest.raises(UnsupportedOpError) as info:
        trace(model, (randn(2, 3),))
    assert re.fullmatch(
        r"unsupported operation aten.special_bessel_j0 at \S*test_fx.py:\d+ \(in 1\)",
        str(info.value),
    )


def test_unsupported_output_of_a_multi_output_op() -> None:
    logsumexp = Lambda(lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[1])
    with pytest.raises(UnsupportedOpError, match=r"_for_cpu at .*: its output 1 is not supported"):
        trace(logsumexp, (ATTN_Q, ATTN_Q, ATTN_Q))


def test_data_dependent_control_flow_is_a_model_error() -> None:
    with pytest.raises(ModelError) as info:
        trace(DataDependent(), (randn(2, 3),))
    message = str(info.value)
    assert message.startswith("torch.export failed: Could not guard on data-dependent expression")
    assert "\n" not in message


class NativeMultiHeadAttention(nn.Module):
    """nn.MultiheadAttention's fused fast path, called as its forward calls it."""

    def __init__(self, mask_type: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.mha
        return aten._native_multi_head_attention(
            x, x, x, 16, 4, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight,
            a.out_proj.bias, mask, False, True, self.mask_type,
        )[0]  # fmt: skip


@pytest.mark.parametrize(
    ("mask_type", "mask"),
    [
        (0, torch.ones(5, 5, dtype=torch.bool).triu(1)),  # [t, s], True = masked
        (1, torch.tensor([[False] * 5, [True, True, False, False, False]])),  # key padding
    ],
    ids=["attn-mask", "key-padding"],
)
def test_native_multi_head_attention_fuses(mask_type: int, mask: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = NativeMultiHeadAttention(mask_type).eval()
    x = randn(2, 5, 16)
    graph = driver.run_passes(trace(model, (x, mask)), "default")
    counts = graph.op_counts()
    assert (counts["attention"], counts["linear"]) == (1, 4) and "softmax" not in counts
    with torch.no_grad():
        want = model(x, mask)
    torch.testing.assert_close(interpret(graph, x, mask)[0], want, atol=1e-5, rtol=1e-5)
