"""Attention of new tokens against a K/V cache resident in the region's SRAM (`cached_attention`).

Each (sequence, key-value head) pair of the batch owns a *group* of `blocks` PEs, a near-square
`group_rows` x `group_cols` block of the region; PE j of a group (row-major) holds cache slots
[j·kv_tile, (j+1)·kv_tile) of that pair's keys and values. A grouped-query cache holds its
num_kv_heads heads only, each once for the num_heads / num_kv_heads query heads that share it
(query head h reads key-value head h // group, as in kernels/attention.py), so SRAM follows the
key-value heads and the work the query heads. The region keeps the caches of `cache_sequences`
sequences (the batch, or all the sequences a decode pipeline keeps in flight, each with its own
slots); a pass attends for one sequence per batch row, so the kept sequences are spread over
`sequence_groups` copies of the groups, as many as the PEs allow, each PE holding the blocks of
its share of them. When the pairs outnumber the PEs, a PE holds whole caches of `pairs_per_pe`
pairs instead.

Per new token: its key and value go to the PE owning slot past + t and are written there in
place (the `.next` caches are the same SRAM); the queries of the query heads sharing them are
multicast to the group one after another; every PE scores each against its block (d_head FMAC
vectors of length kv_tile) and masks slots after past + t; the group takes the global max
(chains along its rows, then up its first column) and broadcasts it back; every PE computes
p = exp(s - max), its sum and p·V; the (o, l) partial sums chain the same way, each PE adding
its own as the wavelets pass (pipelined chains: one hop per PE), and the group's first PE
divides o by l. The cost is that of a full cache (every block scored), the upper bound of the
last token.

Numerics: scores and softmax statistics fp32; p is rounded to the precision before it
multiplies V; the partial sums add in chain order: each group row from its last PE to its
first, then the rows' sums from the last row to the first.
"""

from __future__ import annotations

from math import isqrt
from typing import Any

import torch
import torch.nn.functional as F

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, pick_tiling, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import chain_sum
from cgc.errors import InputError, UnsupportedOpError

# Node meta key: how many sequences' caches the region keeps (at least the batch). A decode
# pipeline with several passes in flight needs one cache per sequence in flight.
CACHE_SEQUENCES = "cache_sequences"


class CachedAttention(Kernel):
    """softmax(q·Kᵀ·scale)·V over cache slots 0 … past + t, the new K/V written in place; each
    cached key-value head serves its group of query heads."""

    weight_slots = (3, 4)  # the caches: resident, updated in place

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        q, cache = self.in_types[0], self.in_types[3]
        self.batch, self.new, _ = q.shape
        _, self.kv_heads, self.capacity, self.head_dim = cache.shape
        self.heads = self.attrs["num_heads"]
        self.group = self.heads // self.kv_heads  # query heads per key-value head
        if self.attrs["window"] or self.attrs["alibi_slopes"]:
            raise UnsupportedOpError(
                f"cached_attention at {self.where}: the wafer's decode kernel handles no sliding "
                "window and no ALiBi bias"
            )
        sequences = int(node.meta.get(CACHE_SEQUENCES, self.batch))
        if sequences < self.batch:
            raise InputError(
                f"cached_attention at {self.where}: {sequences} cached sequences are fewer "
                f"than the batch of {self.batch}"
            )
        # Part of the kernel's identity: memoised tilings and costs must not mix pool sizes.
        self.attrs[CACHE_SEQUENCES] = sequences
        self.sequences = sequences
        self.pool = ceil_div(sequences, self.batch)  # caches kept per batch row

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """Of the group sizes that fit in SRAM, the fewest cycles (`pick_tiling`)."""
        fitting, spilling = [], []
        for t in self._candidates(rows * cols):
            sram = self._sram(t)
            if sram > self.machine.sram_usable_bytes:
                spilling.append((sram, t["blocks"], t))
            else:
                fitting.append((self._cost(rows, cols, t).total, sram, t["blocks"], t))
        return {
            "kernel": "cached_attention",
            "rows": rows,
            "cols": cols,
            "batch": self.batch,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "new_tokens": self.new,
            "capacity": self.capacity,
            "head_dim": self.head_dim,
            "cache_sequences": self.sequences,
            **pick_tiling(fitting, spilling),
            "reduce": "max, then (o, l), chained along each group row, then up its first column",
        }

    def _candidates(self, pes: int) -> list[dict[str, int]]:
        """One tiling per distinct block size: groups of up to pes // pairs PEs."""
        pairs = self.batch * self.kv_heads
        if pes < pairs:
            return [{**_group(1, self.capacity, 1), "pairs_per_pe": ceil_div(pairs, pes)}]
        most = min(pes // pairs, self.capacity)
        tiles = sorted({ceil_div(self.capacity, b) for b in range(1, most + 1)}, reverse=True)
        out = []
        for kv in tiles:
            blocks = ceil_div(self.capacity, kv)
            out.append(_group(blocks, kv, min(self.pool, pes // (pairs * blocks))))
        return out

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Cache blocks of every kept sequence, query and new K/V buffers, fp32 scratch."""
        return self._sram(self.tiling(rows, cols))

    def _sram(self, t: dict[str, Any]) -> int:
        b, d, kv = BYTES[self.precision], self.head_dim, t["kv_tile"]
        kept = ceil_div(self.pool, t["sequence_groups"])
        resident = kept * t["pairs_per_pe"] * kv * 2 * d * b
        buffers = 2 * d * b + 2 * d * b  # query double buffer, the new key and value
        scratch = kv * 4 + 2 * (d + 1) * 4  # scores; own and arriving (o, l)
        return resident + buffers + scratch

    def resident_bytes(self) -> int:
        """The caches of every kept sequence: num_kv_heads heads each."""
        pairs = self.sequences * self.kv_heads
        return pairs * self.capacity * 2 * self.head_dim * BYTES[self.precision]

    def cost(self, rows: int, cols: int) -> Cost:
        """Per query (of every query head sharing a cached head) on the group's first PE (the
        busiest): score its block, softmax, p·V, add the arriving partial sums, divide. Its
        links carry the queries, the max and the partial sums, and each new key and value once;
        the chains add one hop per PE of the group."""
        return self._cost(rows, cols, self.tiling(rows, cols))

    def _cost(self, rows: int, cols: int, t: dict[str, Any]) -> Cost:
        m, p, b = self.machine, self.precision, BYTES[self.precision]
        d, kv = self.head_dim, t["kv_tile"]
        vec_kv, vec_d = m.vector_cycles(kv, p), m.vector_cycles(d + 1, p)
        ops = VECTOR_OP_COST
        scores = d * vec_kv + 2 * vec_kv  # q·k, then scale and the causal select
        softmax = vec_kv * (ops["max"] + ops["add"] + ops["exp"] + ops["add"])
        values = kv * vec_d  # p·V and l
        finish = vec_d + ops["reciprocal"] + vec_d * ops["mul"]  # add the partials, divide
        per_query = m.sustained_cycles(scores + softmax + values + finish)
        queries = t["pairs_per_pe"] * self.group * self.new
        compute = queries * (per_query + 3 * m.task_overhead_cycles)  # three tasks per query
        written = t["pairs_per_pe"] * min(self.new, kv) * words(2 * d, b)
        fabric = queries * (words(d, b) + 2 + d + 1) + written
        chains = t["group_rows"] + t["group_cols"] - 2  # along a row, then up a column
        latency = m.hop_latency_cycles * (rows + cols + 3 * chains) + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _resident(self, slot: int, t: torch.Tensor) -> torch.Tensor:
        """The cache itself, not a rounded copy: it holds what this kernel wrote, already in the
        precision, and is updated in place."""
        return t

    def _execute(self, args, tiling):
        q, k, v, k_cache, v_cache, past = args
        b, t, h, d = self.batch, self.new, self.heads, self.head_dim
        if int(past.min()) < 0 or int(past.max()) + t > self.capacity:
            raise InputError(
                f"cached_attention at {self.where}: {t} new tokens after {past.tolist()} cached "
                f"exceed the capacity of {self.capacity} slots"
            )

        def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
            return x.reshape(b, t, heads, d).transpose(1, 2)

        g = self.kv_heads
        slot = (past.reshape(-1, 1) + torch.arange(t)).reshape(b, 1, t, 1).expand(b, g, t, d)
        k_cache.scatter_(2, slot, split_heads(k, g))
        v_cache.scatter_(2, slot, split_heads(v, g))
        # Query head h reads the cache of key-value head h // group.
        keys, values = (c.repeat_interleave(self.group, 1) for c in (k_cache, v_cache))
        scores = (split_heads(q, h) @ keys.transpose(-1, -2)) * self.attrs["scale"]
        last = past.reshape(-1, 1, 1, 1) + torch.arange(t).reshape(1, 1, -1, 1)
        visible = torch.arange(self.capacity).reshape(1, 1, 1, -1) <= last
        scores = scores.masked_fill(~visible, -torch.inf)
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        kv, blocks = tiling["kv_tile"], tiling["blocks"]
        pad = blocks * kv - self.capacity
        by_block = F.pad(probs, (0, pad)).reshape(b, h, t, blocks, kv)
        values = F.pad(values, (0, 0, 0, pad)).reshape(b, h, blocks, kv, d)
        o = torch.einsum("bhtjs,bhjsd->bhtjd", round_to(by_block, self.precision), values)
        partial = torch.cat([o, by_block.sum(-1, keepdim=True)], dim=-1)
        gr, gc = tiling["group_rows"], tiling["group_cols"]
        partial = F.pad(partial, (0, 0, 0, gr * gc - blocks)).reshape(b, h, t, gr, gc, d + 1)
        by_row = chain_sum(reversed(partial.unbind(4)))  # each row, last PE first
        total = chain_sum(reversed(by_row.unbind(3)))  # then the rows, last first
        out = total[..., :d] / total[..., d:]
        out = out.transpose(1, 2).reshape(b, t, h * d)
        return [round_to(out, self.precision), k_cache, v_cache]


def _group(blocks: int, kv_tile: int, sequence_groups: int) -> dict[str, int]:
    """A pair's group of `blocks` PEs as a near-square block, `kv_tile` slots each, repeated
    for `sequence_groups` shares of the kept sequences."""
    cols = isqrt(blocks - 1) + 1  # ⌈√blocks⌉
    return {
        "blocks": blocks,
        "kv_tile": kv_tile,
        "pairs_per_pe": 1,
        "group_rows": ceil_div(blocks, cols),
        "group_cols": cols,
        "sequence_groups": sequence_groups,
    }
