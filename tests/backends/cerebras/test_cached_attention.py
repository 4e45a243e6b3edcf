"""The cached_attention wafer kernel: exact tiling, SRAM and cycles; the cache of every kept
sequence in SRAM; execution equal to the op's reference with the cache updated in place."""

import pytest
import torch

from cgc.backends.cerebras import WSE2, kernel_for
from cgc.backends.cerebras.kernels import Cost
from cgc.backends.cerebras.kernels.cached_attention import CACHE_SEQUENCES
from cgc.errors import InputError, UnsupportedOpError
from cgc.ir import get_op


def _node(one_node, batch=1, new=1, heads=2, d=4, capacity=16):
    e = heads * d
    x, cache = f"f32[{batch},{new},{e}]", f"f32[{batch},{heads},{capacity},{d}]"
    body = (
        f"%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) "
        f"{{num_heads={heads}, scale=0.5}} : {x}, {cache}, {cache}"
    )
    inputs = f"%q: {x}, %k: {x}, %v: {x}, %kc: {cache}, %vc: {cache}, %past: i64[{batch}]"
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


@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (4, 8)])
def test_execution_equals_the_reference_and_writes_the_cache_in_place(one_node, rows, cols):
    node = _node(one_node, batch=2, new=3, heads=2, d=4, capacity=16)
    k = kernel_for(node, WSE2, "fp32")
    g = torch.Generator().manual_seed(0)
    q, key, value = (torch.randn(2, 3, 8, generator=g) for _ in range(3))
    k_cache, v_cache = torch.randn(2, 2, 16, 4, generator=g), torch.randn(2, 2, 16, 4, generator=g)
    past = torch.tensor([0, 5])  # ragged: the sequences hold different lengths
    op = get_op("cached_attention")
    attrs = op.complete_attrs({"num_heads": 2, "scale": 0.5})
    ref = op.impl(q, key, value, k_cache.clone(), v_cache.clone(), past, **attrs)
    if (rows, cols) == (4, 8):  # 8 PEs per pair, as a 3 x 3 group with one PE unused
        t = k.tiling(rows, cols)
        assert (t["blocks"], t["kv_tile"], t["group_rows"], t["group_cols"]) == (8, 2, 3, 3)
    out, k_next, v_next = k.execute([q, key, value, past], [k_cache, v_cache], rows, cols)
    assert k_next is k_cache and v_next is v_cache  # the same SRAM, updated in place
    torch.testing.assert_close(out, ref[0], rtol=1e-6, atol=1e-6)
    for b, p in enumerate(past.tolist()):  # slots 0 .. past + 2 are defined
        torch.testing.assert_close(k_next[b, :, : p + 3], ref[1][b, :, : p + 3], rtol=0, atol=0)
        torch.testing.assert_close(v_next[b, :, : p + 3], ref[2][b, :, : p + 3], rtol=0, atol=0)


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


def test_grouped_query_caches_are_refused_in_one_line(one_node) -> None:
    body = (
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) "
        "{num_heads=2, num_kv_heads=1, scale=0.5} : f32[1,1,8], f32[1,1,16,4], f32[1,1,16,4]"
    )
    inputs = (
        "%q: f32[1,1,8], %k: f32[1,1,4], %v: f32[1,1,4], %kc: f32[1,1,16,4], "
        "%vc: f32[1,1,16,4], %past: i64[1]"
    )
    with pytest.raises(UnsupportedOpError, match="one key-value head per query head"):
        kernel_for(one_node(body, inputs), WSE2, "fp32")
