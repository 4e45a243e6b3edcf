"""The cached_attention wafer kernel: exact tiling, SRAM and cycles; the cache of every kept
sequence in SRAM; execution equal to the op's reference with the cache updated in place."""

import pytest
import torch

from cgc.backends.cerebras import UNIT_ROUNDOFF, WSE2, kernel_for, round_to
from cgc.backends.cerebras.kernels import Cost
from cgc.backends.cerebras.kernels.cached_attention import CACHE_SEQUENCES
from cgc.errors import InputError, UnsupportedOpError
from cgc.ir import get_op


def _node(one_node, batch=1, new=1, heads=2, d=4, capacity=16, kv_heads=None, attrs=""):
    kv_heads = kv_heads or heads
    q, kv = f"f32[{batch},{new},{heads * d}]", f"f32[{batch},{new},{kv_heads * d}]"
    cache = f"f32[{batch},{kv_heads},{capacity},{d}]"
    body = (
        f"%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) "
        f"{{num_heads={heads}, num_kv_heads={kv_heads}, scale=0.5{attrs}}} : {q}, {cache}, {cache}"
    )
    inputs = f"%q: {q}, %k: {kv}, %v: {kv}, %kc: {cache}, %vc: {cache}, %past: i64[{batch}]"
    return one_node(body, inputs)


def test_a_decode_step_on_2x2_has_an_exact_tiling_sram_and_cycle_count(one_node) -> None:
    k = kernel_for(_node(one_node), WSE2, "fp32")
    assert k.weight_slots == (3, 4)
    t = k.tiling(2, 2)
    # 2 (sequence, head) pairs on 4 PEs: groups of 2 PEs, 8 of the 16 slots each.
    assert (t["blocks"], t["kv_tile"], t["pairs_per_pe"], t["cache_sequences"]) == (2, 8, 1, 1)
    # cache block 8 slots x (4 + 4) x 4 B; query and new K/V buffers 2·16 + 2·16; scores 8·4,
    # own and arriving (o, l) 2·5·4
    assert k.sram_bytes(2, 2) == 256 + 64 + 72
    # per query, peak: scores 4·8 + 2·8, softmax 8·(1+1+8+1), p·V and l 8·5, finish 5+6+5 =
    # 192 -> ⌈192/0.37⌉ = 519, + 3 tasks of 20. Links: q 4 + max 2 + (o, l) 5 words + the new
    # K/V 8. Latency: 2 rows + 2 cols + 3 chains of 1 hop + 20.
    assert k.cost(2, 2) == Cost(579, 19, 27, 606)
    # On 1 x 2 PEs a pair has one PE: 16 slots, ⌈368/0.37⌉ = 995 + 60, latency 1 + 2 + 20.
    assert k.tiling(1, 2)["blocks"] == 1 and k.cycles(1, 2) == 1078


def test_the_kept_sequences_caches_count_in_sram(one_node) -> None:
    node = _node(one_node)
    node.meta[CACHE_SEQUENCES] = 3
    k = kernel_for(node, WSE2, "fp32")
    assert k.tiling(2, 2)["cache_sequences"] == 3
    assert k.sram_bytes(2, 2) == 3 * 256 + 64 + 72
    assert k.resident_bytes() == 3 * 2 * 16 * 8 * 4
    assert k.cycles(2, 2) == 606  # one sequence's block is scored per pass
    node.meta[CACHE_SEQUENCES] = 0
    with pytest.raises(InputError, match="0 cached sequences are fewer than the batch of 1"):
        kernel_for(node, WSE2, "fp32")


def test_kept_sequences_spread_over_copies_of_the_groups_when_pes_are_spare(one_node) -> None:
    node = _node(one_node, capacity=4)
    node.meta[CACHE_SEQUENCES] = 3
    k = kernel_for(node, WSE2, "fp32")
    # 2 pairs x 4 blocks of 1 slot use 8 PEs: on 2 x 4 every PE keeps all 3 sequences' blocks,
    # on 4 x 4 the groups are copied twice and a PE keeps ⌈3/2⌉ = 2 of them.
    t = k.tiling(2, 4)
    assert (t["blocks"], t["kv_tile"], t["sequence_groups"]) == (4, 1, 1)
    assert k.sram_bytes(2, 4) == 3 * 32 + 64 + 44
    t = k.tiling(4, 4)
    assert (t["blocks"], t["kv_tile"], t["sequence_groups"]) == (4, 1, 2)
    assert k.sram_bytes(4, 4) == 2 * 32 + 64 + 44
    assert k.cycles(4, 4) == k.cycles(2, 4) + 2  # one copy works per pass; the region is taller


def test_a_cache_too_big_for_the_wafer_has_no_rectangle(one_node) -> None:
    k = kernel_for(_node(one_node, heads=1, d=64, capacity=2048), WSE2, "fp32")
    assert k.min_rect() is not None
    node = _node(one_node, heads=1, d=64, capacity=2048)
    node.meta[CACHE_SEQUENCES] = 100_000  # 100,000 x 2048 x 128 x 4 B: 105 GB
    assert kernel_for(node, WSE2, "fp32").min_rect() is None


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (4, 8)])
def test_execution_equals_the_reference_and_writes_the_cache_in_place(
    one_node, rows, cols, kv_heads
):
    """Multi-head (2 heads, 2 cached) and multi-query (2 heads sharing 1 cached head)."""
    node = _node(one_node, batch=2, new=3, heads=2, d=4, capacity=16, kv_heads=kv_heads)
    k = kernel_for(node, WSE2, "fp32")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 8, generator=g)
    key, value = (torch.randn(2, 3, 4 * kv_heads, generator=g) for _ in range(2))
    k_cache, v_cache = (torch.randn(2, kv_heads, 16, 4, generator=g) for _ in range(2))
    past = torch.tensor([0, 5])  # ragged: the sequences hold different lengths
    op = get_op("cached_attention")
    attrs = op.complete_attrs({"num_heads": 2, "num_kv_heads": kv_heads, "scale": 0.5})
    ref = op.impl(q, key, value, k_cache.clone(), v_cache.clone(), past, **attrs)
    if (rows, cols, kv_heads) == (4, 8, 2):  # 8 PEs per pair, as a 3 x 3 group, one unused
        t = k.tiling(rows, cols)
        assert (t["blocks"], t["kv_tile"], t["group_rows"], t["group_cols"]) == (8, 2, 3, 3)
    out, k_next, v_next = k.execute([q, key, value, past], [k_cache, v_cache], rows, cols)
    assert k_next is k_cache and v_next is v_cache  # the same SRAM, updated in place
    torch.testing.assert_close(out, ref[0], rtol=1e-6, atol=1e-6)
    for b, p in enumerate(past.tolist()):  # slots 0 .. past + 2 are defined
        torch.testing.assert_close(k_next[b, :, : p + 3], ref[1][b, :, : p + 3], rtol=0, atol=0)
        torch.testing.assert_close(v_next[b, :, : p + 3], ref[2][b, :, : p + 3], rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (4, 8)])
def test_grouped_query_execution_equals_the_reference(one_node, rows, cols, kv_heads, precision):
    """4 query heads on 4, 2 and 1 cached heads: fp32 within 1e-6, bf16 within 32u (the
    tolerance `cgc check` holds 16-bit wafer programs to), the new slots as rounded."""
    node = _node(one_node, batch=2, new=3, heads=4, d=4, capacity=16, kv_heads=kv_heads)
    k = kernel_for(node, WSE2, precision)
    g = torch.Generator().manual_seed(2)
    q = round_to(torch.randn(2, 3, 16, generator=g), precision)
    key, value = (round_to(torch.randn(2, 3, 4 * kv_heads, generator=g), precision) for _ in "kv")
    caches = [round_to(torch.randn(2, kv_heads, 16, 4, generator=g), precision) for _ in "kv"]
    past = torch.tensor([0, 9])
    op = get_op("cached_attention")
    attrs = op.complete_attrs({"num_heads": 4, "num_kv_heads": kv_heads, "scale": 0.5})
    ref = op.impl(q, key, value, *(c.clone() for c in caches), past, **attrs)
    out, k_next, v_next = k.execute([q, key, value, past], caches, rows, cols)
    tol = 1e-6 if precision == "fp32" else 32 * UNIT_ROUNDOFF[precision]
    torch.testing.assert_close(out, ref[0], rtol=tol, atol=tol)
    for b, p in enumerate(past.tolist()):
        assert torch.equal(k_next[b, :, : p + 3], ref[1][b, :, : p + 3])
        assert torch.equal(v_next[b, :, : p + 3], ref[2][b, :, : p + 3])


def test_a_grouped_query_cache_holds_its_key_value_heads_only(one_node) -> None:
    mha, gqa, mqa = (
        kernel_for(_node(one_node, heads=4, kv_heads=n), WSE2, "fp32") for n in (4, 2, 1)
    )
    # 4, 2 and 1 cached heads of 16 slots x (4 + 4) x 4 B
    assert [k.resident_bytes() for k in (mha, gqa, mqa)] == [2048, 1024, 512]
    # On 2 x 2 PEs: MHA's 4 pairs take one PE each; GQA's 2 pairs take groups of 2 PEs (8
    # slots each), MQA's 1 pair all 4 PEs (4 slots each).
    tilings = [k.tiling(2, 2) for k in (mha, gqa, mqa)]
    assert [(t["blocks"], t["kv_tile"], t["kv_heads"]) for t in tilings] == [
        (1, 16, 4),
        (2, 8, 2),
        (4, 4, 1),
    ]
    # cache blocks of 16, 8, 4 slots x 8 x 4 B; buffers 64; scores kv·4 + (o, l) 40
    assert [k.sram_bytes(2, 2) for k in (mha, gqa, mqa)] == [
        512 + 64 + 64 + 40,
        256 + 64 + 32 + 40,
        128 + 64 + 16 + 40,
    ]
    # Every PE scores each of the 4 query heads' queries against its block. MQA, per query:
    # scores 4·4 + 2·4, softmax 4·11, p·V and l 4·5, finish 16 = 104 -> ⌈104/0.37⌉ = 282,
    # + 3 tasks of 20, x 4 queries. Links: 4 x (q 4 + max 2 + (o, l) 5) + the new K/V 8.
    # Latency: 2 rows + 2 cols + 3 chains of 2 hops + 20.
    assert mqa.cost(2, 2) == Cost(4 * 342, 4 * 11 + 8, 30, 4 * 342 + 30)
    # GQA's PEs each score 2 query heads against 8 slots: as many cycles as MHA's 1 x 16 plus
    # the tasks of the second query, and fewer than MHA's 4 query heads on 1 PE would take.
    assert gqa.cost(2, 2).compute < mha.cost(1, 1).compute


def test_fp16_rounds_the_new_keys_and_the_output(one_node) -> None:
    k = kernel_for(_node(one_node), WSE2, "fp16")
    g = torch.Generator().manual_seed(1)
    q, key, value = (torch.randn(1, 1, 8, generator=g) for _ in range(3))
    caches = [torch.zeros(1, 2, 16, 4), torch.zeros(1, 2, 16, 4)]
    out, k_next, _ = k.execute([q, key, value, torch.tensor([0])], caches, 2, 2)
    assert torch.equal(k_next[0, :, 0], key.reshape(2, 4).half().float())
    assert torch.equal(out, out.half().float())
    torch.testing.assert_close(out, value.half().float(), rtol=1e-3, atol=1e-3)  # one slot


def test_tokens_past_the_capacity_are_refused(one_node) -> None:
    k = kernel_for(_node(one_node, new=3), WSE2, "fp32")
    args = [torch.zeros(1, 3, 8)] * 3 + [torch.tensor([14])]
    with pytest.raises(InputError, match=r"3 new tokens after \[14\] cached exceed the capacity"):
        k.execute(args, [torch.zeros(1, 2, 16, 4), torch.zeros(1, 2, 16, 4)], 2, 2)


@pytest.mark.parametrize("attrs", [", window=4", ", alibi_slopes=[0.5, 0.25]"])
def test_windows_and_alibi_are_refused_in_one_line(one_node, attrs) -> None:
    with pytest.raises(
        UnsupportedOpError, match="decode kernel handles no sliding window and no ALiBi bias$"
    ):
        kernel_for(_node(one_node, kv_heads=1, attrs=attrs), WSE2, "fp32")
