"""Kernel library: coverage of fused GPT graphs, exact tilings and cycle counts, SRAM floors."""

import json

import pytest

from cgc.backends.cerebras import WSE2, get_machine, kernel_for
from cgc.backends.cerebras.kernels import MAX_CHAIN, Cost
from cgc.errors import InputError, UnsupportedOpError
from cgc.ir import get_op

LINEAR_4X4 = (
    "%y = linear(%x, %w, %b) : f32[1,8,64]",
    "%x: f32[1,8,64]",
    "  param %w: f32[64,64]\n  param %b: f32[64]\n",
)
LINEAR_CHAIN = (
    "%y = linear(%x, %w) : f32[1,4,8]",
    "%x: f32[1,4,4096]",
    "  param %w: f32[8,4096]\n",
)
MATMUL_4X4 = ("%y = matmul(%a, %b) : f32[32,16]", "%a: f32[32,48], %b: f32[48,16]")


def test_every_op_of_a_fused_gpt_graph_has_a_kernel(fused_gpt) -> None:
    g = fused_gpt()
    kinds = {n.op: type(kernel_for(n, WSE2, "fp16")).__name__ for n in g.nodes}
    assert kinds == {
        "add": "Elementwise",
        "attention": "Attention",
        "embedding": "Embedding",
        "gelu": "Elementwise",
        "layer_norm": "LayerNorm",
        "linear": "Linear",
        "slice": "Free",
    }
    for node in g.nodes:
        kernel = kernel_for(node, WSE2, "fp16")
        assert kernel.flops() == get_op(node.op).flops(
            [v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs
        )
        assert json.loads(json.dumps(kernel.tiling(3, 5))) == kernel.tiling(3, 5)


def test_linear_on_4x4_has_an_exact_tiling_sram_and_cycle_count(one_node) -> None:
    k = kernel_for(one_node(*LINEAR_4X4), WSE2, "fp32")
    assert k.weight_slots == (1, 2)
    # The fastest fitting tiling copies the weights into 8 token groups (5667 cycles); within
    # 2% of it, 2 groups need the least SRAM. No K split: the chain is 1.
    assert k.tiling(4, 4) == {
        "kernel": "gemm",
        "style": "stationary",
        "rows": 4,
        "cols": 4,
        "m": 8,
        "k": 64,
        "n": 64,
        "chain": 1,
        "lanes": 16,
        "token_groups": 2,
        "m_tile": 4,
        "k_tile": 64,
        "n_tile": 8,
        "reduce": "chain west to east, bias at the east end",
    }
    # weight 64·8·4 + bias 8·4 + x buffers 2·64·4 + accumulator 8·4
    assert k.sram_bytes(4, 4) == 2048 + 32 + 512 + 32
    # per token: 64 FMAC vectors of 8 + bias 8 = 520 peak cycles, ⌈520 / 0.37⌉ = 1406, + 20
    # task = 1426, x 4 tokens. Column links carry all 8 tokens' 64-word x. Latency: 4 rows +
    # 1 chain hop + 20 launch.
    assert k.cost(4, 4) == Cost(5704, 512, 25, 5729)
    assert k.cycles(4, 4) == 5729
    assert kernel_for(one_node(*LINEAR_4X4), WSE2, "fp16").weight_bytes() == (64 * 64 + 64) * 2


def test_a_linear_that_needs_a_k_chain(one_node) -> None:
    k = kernel_for(one_node(*LINEAR_CHAIN), WSE2, "fp32")
    # chains 1 and 2 would hold 64 KB and 48 KB per PE; chain 4 fits
    t = k.tiling(1, 4)
    assert (t["chain"], t["lanes"], t["token_groups"], t["k_tile"], t["n_tile"]) == (
        4,
        1,
        1,
        1024,
        8,
    )
    # weight 1024·8·4 + x buffers 2·1024·4 + accumulator 8·4 + incoming partials 2·8·4
    assert k.sram_bytes(1, 4) == 32768 + 8192 + 32 + 64
    # per token: 1024 FMAC vectors of 8 + partial add 8 = 8200 peak → ⌈8200 / 0.37⌉ = 22163,
    # + 20 = 22183, x 4 tokens; column links 4 x 1024 words; 1 + 4 hops + 20
    assert k.cost(1, 4) == Cost(88732, 4096, 25, 88757)


def test_summa_matmul_on_4x4_has_an_exact_tiling_sram_and_cycle_count(one_node) -> None:
    k = kernel_for(one_node(*MATMUL_4X4), WSE2, "fp32")
    assert k.weight_slots == ()
    t = k.tiling(4, 4)
    assert (t["style"], t["steps"], t["m_tile"], t["k_tile"], t["n_tile"]) == ("summa", 4, 8, 12, 4)
    # home A 8·12 + home B 12·4 + one in-flight panel of each, fp32; C tile 8·4 fp32
    assert k.sram_bytes(4, 4) == (96 + 48 + 96 + 48) * 4 + 32 * 4
    # per step: broadcast max(96 + 3, 48 + 3) + 20 = 119; product 12·4 vectors of 8 = 384
    # peak → ⌈384 / 0.37⌉ = 1038; 4 steps, no overlap, + 20 launch
    assert k.cost(4, 4) == Cost(4 * 1038, 4 * 119, 20, 4648)


def test_summa_reproduces_the_published_wse2_gemm(one_node) -> None:
    """Matsuzaki et al.: 349.0 TFLOP/s, fp32 33,000² on 750 x 750 PEs (calibration point)."""
    node = one_node(
        "%y = matmul(%a, %b) : f32[33000,33000]", "%a: f32[33000,33000], %b: f32[33000,33000]"
    )
    k = kernel_for(node, WSE2, "fp32")
    t = k.tiling(750, 750)
    assert (t["steps"], t["m_tile"], t["k_tile"], t["n_tile"]) == (750, 44, 44, 44)
    assert k.sram_bytes(750, 750) == 5 * 44 * 44 * 4 <= WSE2.sram_usable_bytes
    # per step: broadcast 1936 + 749 hops + 20 = 2705; product ⌈85,184 / 0.37⌉ = 230,228
    assert k.cost(750, 750) == Cost(750 * 230_228, 750 * 2705, 20, 174_699_770)
    tflops = 2 * 33_000**3 / (174_699_770 / WSE2.clock_hz) / 1e12
    assert tflops == pytest.approx(349.70, abs=0.01)
    assert abs(tflops / 349.0 - 1) < 0.15


def test_more_pes_make_a_linear_faster(one_node) -> None:
    k = kernel_for(one_node(*LINEAR_4X4), WSE2, "fp16")
    cycles = [k.cycles(n, n) for n in (1, 2, 4, 8)]
    assert cycles == sorted(cycles, reverse=True) and cycles[0] > 4 * cycles[-1]


def test_gemm_chains_stay_within_max_chain(one_node) -> None:
    vocab = kernel_for(
        one_node(
            "%y = linear(%x, %w) : f32[1,128,50257]",
            "%x: f32[1,128,768]",
            "  param %w: f32[50257,768]\n",
        ),
        WSE2,
        "fp16",
    )
    for rows, cols in [(60, 60), (200, 300), (500, 520)]:
        assert 1 <= vocab.tiling(rows, cols)["chain"] <= MAX_CHAIN == 16
        assert vocab.fits(rows, cols)


def test_long_sequences_lengthen_attention_chains_until_keys_fit(one_node) -> None:
    node = one_node(
        "%y = attention(%q, %q, %q) {causal=true, num_heads=40, scale=0.08} : f32[1,2048,5120]",
        "%q: f32[1,2048,5120]",
    )
    k = kernel_for(node, WSE2, "cb16")
    t = k.tiling(40, 64)
    # 16 blocks of 128 keys x 256 dims x 2 bytes = 64 KB per PE: too much; 24 blocks of 86 fit
    assert (t["chain"], t["kv_tile"], t["pairs_per_lane"]) == (24, 86, 1)
    assert k.fits(40, 64) and k.min_rect() == (40, 24)


def test_sram_over_budget_grows_min_pes(one_node) -> None:
    def linear(n: int, k: int, precision: str):
        node = one_node(
            f"%y = linear(%x, %w) : f32[1,4,{n}]",
            f"%x: f32[1,4,{k}]",
            f"  param %w: f32[{n},{k}]\n",
        )
        return kernel_for(node, WSE2, precision)

    # 256 KB of fp32 weights need at least 6 PEs of 46 KB; in fp16 half as many
    assert linear(256, 256, "fp32").min_rect() == (2, 3)
    assert linear(256, 256, "fp16").min_pes() == 3
    assert linear(1024, 256, "fp32").min_pes() == 24
    assert linear(1024, 256, "fp16").min_pes() == 12
    for kernel in (linear(256, 256, "fp32"), linear(1024, 256, "fp32")):
        rows, cols = kernel.min_rect()
        assert kernel.fits(rows, cols)
        assert kernel.weight_bytes() <= rows * cols * WSE2.sram_usable_bytes


BIG_KERNELS = {
    "linear": (
        "%y = linear(%x, %w, %b) : f32[2,8,1024]",
        "%x: f32[2,8,512]",
        "  param %w: f32[1024,512]\n  param %b: f32[1024]\n",
    ),
    "attention": (
        "%y = attention(%q, %q, %q) {causal=true, num_heads=4, scale=0.125} : f32[1,512,256]",
        "%q: f32[1,512,256]",
        "",
    ),
    "embedding": (
        "%y = embedding(%t, %i) : f32[1,16,64]",
        "%i: i64[1,16]",
        "  param %t: f32[5000,64]\n",
    ),
    "matmul": ("%y = matmul(%a, %b) : f32[512,512]", "%a: f32[512,512], %b: f32[512,512]", ""),
    "layer_norm": (
        "%y = layer_norm(%x, %w, %b) {eps=1e-05} : f32[1,4,40000]",
        "%x: f32[1,4,40000]",
        "  param %w: f32[40000]\n  param %b: f32[40000]\n",
    ),
    "transpose": (
        "%t = neg(%x) : f32[96,1000]\n  %y = transpose(%t) {perm=[1,0]} : f32[1000,96]",
        "%x: f32[96,1000]",
        "",
    ),
}


@pytest.mark.parametrize("precision", ["fp32", "cb16"])
@pytest.mark.parametrize("name", sorted(BIG_KERNELS))
def test_min_rect_matches_brute_force_on_a_small_fabric(one_node, name, precision) -> None:
    k = kernel_for(one_node(*BIG_KERNELS[name]), get_machine("fabric:32x32"), precision)
    fitting = [
        (r * c, abs(r - c), r, c) for r in range(1, 33) for c in range(1, 33) if k.fits(r, c)
    ]
    best = min(fitting)
    assert k.min_rect() == (best[2], best[3])
    assert best[0] > 1  # the SRAM floor is real for these


def test_min_rect_is_none_when_the_wafer_is_too_small(one_node) -> None:
    node = one_node(
        "%y = embedding(%t, %i) : f32[1,16,768]", "%i: i64[1,16]", "  param %t: f32[50257,768]\n"
    )
    small = kernel_for(node, get_machine("fabric:32x32"), "fp32")
    assert small.min_rect() is None and small.min_pes() is None
    # 77.2 MB of fp16 table over 46 KB PEs needs at least 1,639 PEs; 103 x 16 blocks of
    # 488 x 48 use 47,048 bytes each
    wafer = kernel_for(node, WSE2, "fp16")
    assert wafer.min_rect() == (103, 16)
    assert wafer.sram_bytes(103, 16) == 488 * 48 * 2 + 2 * 48 * 2 + 8


@pytest.mark.parametrize(
    ("body", "inputs", "params", "free"),
    [
        ("%y = reshape(%x) {shape=[8,6]} : f32[8,6]", "%x: f32[2,4,6]", "", True),
        (
            "%y = slice(%x) {axis=2, end=3, start=0, step=1} : f32[2,4,3]",
            "%x: f32[2,4,6]",
            "",
            True,
        ),
        ('%y = cast(%x) {dtype="f16"} : f16[2,4,6]', "%x: f32[2,4,6]", "", True),
        ("%y = transpose(%w) {perm=[1,0]} : f32[6,4]", "", "  param %w: f32[4,6]\n", True),
        # moving a size-1 axis keeps the row-major order
        (
            "%t = neg(%x) : f32[1,4,6]\n  %y = transpose(%t) {perm=[1,0,2]} : f32[4,1,6]",
            "%x: f32[1,4,6]",
            "",
            True,
        ),
        (
            "%t = neg(%x) : f32[2,4,6]\n  %y = transpose(%t) {perm=[0,2,1]} : f32[2,6,4]",
            "%x: f32[2,4,6]",
            "",
            False,
        ),
    ],
)
def test_data_movement_is_free_unless_it_reorders_the_stream(one_node, body, inputs, params, free):
    k = kernel_for(one_node(body, inputs, params), WSE2, "fp32")
    assert k.free is free
    if free:
        assert k.min_pes() == 0
        assert k.cost(0, 0) == Cost(0, 0, 0, 0)
    else:
        # 48 words in over 2 columns, out over 3 rows; 5 hops + 20 launch
        assert k.cost(3, 2) == Cost(0, 24 + 16, 25, 65)


def test_reductions_off_the_last_and_leading_axes_are_unsupported(one_node) -> None:
    node = one_node("%y = reduce_sum(%x) {axes=[1], keepdim=false} : f32[4,6]", "%x: f32[4,5,6]")
    with pytest.raises(
        UnsupportedOpError, match="reduces only along the last axis or across leading axes"
    ):
        kernel_for(node, WSE2, "fp32")
    node = one_node("%y = reduce_sum(%x) {axes=[0], keepdim=false} : f32[6]", "%x: f32[4,6]")
    assert type(kernel_for(node, WSE2, "fp32")).__name__ == "TokenReduction"


def test_an_op_without_a_kernel_is_named(one_node) -> None:
    node = one_node("%y = neg(%x) : f32[4]", "%x: f32[4]")
    node.op = "frobnicate"
    with pytest.raises(UnsupportedOpError, match="no kernel for op 'frobnicate'"):
        kernel_for(node, WSE2, "fp32")


def test_bad_rectangles_and_precisions_are_input_errors(one_node) -> None:
    with pytest.raises(InputError, match="unknown precision 'fp64'"):
        kernel_for(one_node(*LINEAR_4X4), WSE2, "fp64")
    k = kernel_for(one_node(*LINEAR_4X4), WSE2, "fp32")
    with pytest.raises(InputError, match=r"at least a 1x1 rectangle, got 0x4"):
        k.cycles(0, 4)


def test_elementwise_keeps_token_invariant_operands_resident(one_node) -> None:
    bias = one_node("%y = add(%x, %b) : f32[2,8,64]", "%x: f32[2,8,64]", "  param %b: f32[64]\n")
    mask = one_node("%y = add(%x, %m) : f32[2,8,64]", "%x: f32[2,8,64]", "  param %m: f32[8,64]\n")
    assert kernel_for(bias, WSE2, "fp32").weight_slots == (1,)
    assert kernel_for(mask, WSE2, "fp32").weight_slots == ()  # [8, 64] varies between tokens


def test_every_op_of_a_fused_llama_block_has_a_kernel(one_node) -> None:
    kinds = {
        op: type(kernel_for(one_node(body, inputs, params), WSE2, "fp16")).__name__
        for op, (body, inputs, params) in LLAMA_OPS.items()
    }
    assert kinds == {
        "rms_norm": "RMSNorm",
        "rotary_embedding": "RotaryEmbedding",
        "swiglu": "SwiGLU",
        "cumsum": "Scan",
        "silu": "Elementwise",
        "cos": "Elementwise",
        "sin": "Elementwise",
    }


LLAMA_OPS = {
    "rms_norm": (
        "%y = rms_norm(%x, %w) {eps=1e-06} : f32[1,8,64]",
        "%x: f32[1,8,64]",
        "  param %w: f32[64]\n",
    ),
    "rotary_embedding": (
        "%y = rotary_embedding(%x, %c, %s) {interleaved=false, num_heads=4, rotary_dim=8}"
        " : f32[1,8,64]",
        "%x: f32[1,8,64]",
        "  param %c: f32[8,4]\n  param %s: f32[8,4]\n",
    ),
    "swiglu": (
        "%y = swiglu(%x, %g, %u) : f32[1,8,32]",
        "%x: f32[1,8,64]",
        "  param %g: f32[32,64]\n  param %u: f32[32,64]\n",
    ),
    "cumsum": ("%y = cumsum(%x) {axis=1} : i64[2,16]", "%x: i64[2,16]", ""),
    "silu": ("%y = silu(%x) : f32[2,8]", "%x: f32[2,8]", ""),
    "cos": ("%y = cos(%x) : f32[2,8]", "%x: f32[2,8]", ""),
    "sin": ("%y = sin(%x) : f32[2,8]", "%x: f32[2,8]", ""),
}


def test_rms_norm_on_4x4_has_an_exact_tiling_sram_and_cycle_count(one_node) -> None:
    k = kernel_for(one_node(*LLAMA_OPS["rms_norm"]), WSE2, "fp32")
    assert k.weight_slots == (1,)
    t = k.tiling(4, 4)
    assert (t["kernel"], t["m_tile"], t["d_tile"], t["chain"]) == ("rms_norm", 2, 16, 4)
    # scale slice 16·4 + double-buffered token slice 2·16·4
    assert k.sram_bytes(4, 4) == 64 + 128
    # per token: square-sum, normalise, scale: 3 vectors of 16 + 2 scalar + rsqrt 6 = 56 peak
    # → ⌈56 / 0.37⌉ = 152, + 20 task = 172, x 2 tokens; column links carry 8 tokens x 16
    # words; latency 4 rows + 2 x 4 chain hops + 20
    assert k.cost(4, 4) == Cost(344, 128, 32, 376)


def test_rotary_embedding_keeps_whole_heads_on_a_pe(one_node) -> None:
    k = kernel_for(one_node(*LLAMA_OPS["rotary_embedding"]), WSE2, "fp32")
    assert k.weight_slots == ()  # the cos and sin rows vary from token to token: they stream
    t = k.tiling(4, 3)
    # 4 heads over 3 columns: 2 heads per PE, so 2 columns are used and no pair is split
    assert (t["m_tile"], t["head_tile"], t["used_cols"], t["rotary_dim"]) == (2, 2, 2, 8)
    # token slice 2·16 features double-buffered, cos and sin rows of 4 double-buffered, output
    assert k.sram_bytes(4, 3) == 2 * 32 * 4 + 2 * 2 * 4 * 4 + 32 * 4
    # per token: 4 vectors over 2 heads x 4 pairs = 32 peak → ⌈32 / 0.37⌉ = 87, + 20, x 2;
    # column links: 8 tokens x (32 feature words + 2 x 4 table words)
    assert k.cost(4, 3) == Cost(214, 320, 24, 344)


def test_swiglu_sends_x_once_for_both_products(one_node) -> None:
    k = kernel_for(one_node(*LLAMA_OPS["swiglu"]), WSE2, "fp32")
    assert k.weight_slots == (1, 2)
    assert k.weight_bytes() == 2 * 32 * 64 * 4
    t = k.tiling(4, 4)
    assert (t["kernel"], t["chain"], t["lanes"], t["token_groups"]) == ("swiglu", 1, 16, 2)
    assert (t["m_tile"], t["k_tile"], t["n_tile"]) == (4, 64, 4)
    # x double buffer 2·64·4; per output, both weight columns and fp32 accumulators
    assert k.sram_bytes(4, 4) == 512 + 4 * 2 * (64 * 4 + 4)
    # per token: 2 x 64 FMAC vectors of 4 + sigmoid 10 + 2 multiplies = 140 vectors = 560 peak
    # → ⌈560 / 0.37⌉ = 1514, + 20, x 4 tokens. Column links carry every token's x once (8 x
    # 64 words), as one linear of the same shape would: the up projection adds no traffic.
    assert k.cost(4, 4) == Cost(6136, 512, 25, 6161)
    up = one_node(
        "%y = linear(%x, %u) : f32[1,8,32]", "%x: f32[1,8,64]", "  param %u: f32[32,64]\n"
    )
    assert kernel_for(up, WSE2, "fp32").cost(4, 4).fabric == 512


def test_cumsum_on_2x4_has_an_exact_tiling_and_cycle_count(one_node) -> None:
    k = kernel_for(one_node(*LLAMA_OPS["cumsum"]), WSE2, "fp32")
    t = k.tiling(2, 4)
    assert (t["kernel"], t["m_tile"], t["d_tile"], t["chain"]) == ("scan", 1, 4, 4)
    assert k.sram_bytes(2, 4) == 3 * 4 * 4
    # per token: 4 scalar adds + one carry vector of 4 + 1 = 9 peak → ⌈9 / 0.37⌉ = 25, + 20;
    # latency 2 rows + 4 chain hops + 20
    assert k.cost(2, 4) == Cost(45, 8, 26, 71)
    node = one_node("%y = cumsum(%x) {axis=0} : i64[2,16]", "%x: i64[2,16]")
    with pytest.raises(UnsupportedOpError, match="scans only along the last axis"):
        kernel_for(node, WSE2, "fp32")


def _attention(one_node, attrs: str, kv_width: int):
    q, kv = "f32[1,64,256]", f"f32[1,64,{kv_width}]"
    node = one_node(f"%y = attention(%q, %k, %v) {{{attrs}}} : {q}", f"%q: {q}, %k: {kv}, %v: {kv}")
    return kernel_for(node, WSE2, "fp16")


def test_grouped_query_attention_holds_each_key_value_head_once(one_node) -> None:
    mha = _attention(one_node, "causal=true, num_heads=8, scale=0.125", 256)
    gqa = _attention(one_node, "causal=true, num_heads=8, num_kv_heads=2, scale=0.125", 64)
    mqa = _attention(one_node, "causal=true, num_heads=8, num_kv_heads=1, scale=0.125", 32)
    # 8, 2 and 1 key-value heads of 64 keys x (32 + 32) dims x 2 bytes
    assert [k.resident_bytes() for k in (mha, gqa, mqa)] == [65536, 16384, 8192]
    # On a 1x2 rectangle: MHA's lanes hold 4 heads' keys each; GQA's one group's, shared by
    # its 4 query heads, whose 4 x 64 queries stream through the same lane.
    t_mha, t_gqa = mha.tiling(1, 2), gqa.tiling(1, 2)
    assert (t_mha["chain"], t_mha["pairs_per_lane"], t_mha["q_tile"]) == (1, 4, 64)
    assert (t_gqa["chain"], t_gqa["pairs_per_lane"], t_gqa["q_tile"]) == (1, 1, 256)
    # K and V blocks 4 x 64 x 64 x 2 (MHA) and 64 x 64 x 2 (GQA), + q buffers 2·32·2, fp32
    # scores 64·4 and output 32·4
    assert mha.sram_bytes(1, 2) == 32768 + 128 + 256 + 128
    assert gqa.sram_bytes(1, 2) == 8192 + 128 + 256 + 128
    # the same queries meet the same number of keys: the work is the same
    assert mha.cost(1, 2).compute == gqa.cost(1, 2).compute
    assert (mha.min_rect(), gqa.min_rect(), mqa.min_rect()) == ((1, 2), (1, 1), (1, 1))


def test_a_sliding_window_keeps_only_its_keys_resident(one_node) -> None:
    full = _attention(one_node, "causal=true, num_heads=8, num_kv_heads=2, scale=0.125", 64)
    window = _attention(
        one_node, "causal=true, num_heads=8, num_kv_heads=2, scale=0.125, window=16", 64
    )
    assert window.resident_bytes() == full.resident_bytes() // 4 == 4096
    t = window.tiling(4, 8)
    assert (t["kv_resident"], t["chain"], t["kv_tile"]) == (16, 1, 16)
    # 16 keys x 64 dims x 2 bytes + q buffers 128 + fp32 scores 16·4 + output 128 + the
    # keys-only work: each query scores 16 keys, not 64
    assert window.sram_bytes(4, 8) == 2048 + 128 + 64 + 128
    assert full.sram_bytes(4, 8) == 8192 + 128 + 256 + 128
    assert window.cost(4, 8) == Cost(15552, 2304, 25, 15577)
    assert full.cost(4, 8) == Cost(54992, 2304, 25, 55017)


def test_alibi_costs_one_vector_per_block(one_node) -> None:
    slopes = [2.0**-i for i in range(1, 9)]
    plain = _attention(one_node, "causal=true, num_heads=8, num_kv_heads=2, scale=0.125", 64)
    alibi = _attention(
        one_node,
        f"alibi_slopes={slopes}, causal=true, num_heads=8, num_kv_heads=2, scale=0.125",
        64,
    )
    assert alibi.tiling(4, 8) == plain.tiling(4, 8)
    assert alibi.sram_bytes(4, 8) == plain.sram_bytes(4, 8)
    # one more vector of 64 keys at 4 FMAC/cycle = 16 peak cycles a query, 43 sustained
    # (⌈(p + 16)/0.37⌉ - ⌈p/0.37⌉ at this p); 16 queries a lane
    assert alibi.cost(4, 8).compute - plain.cost(4, 8).compute == 16 * 43
