"""Attention backward (attention_grad): FlashAttention's backward on the forward's lane chains.

The layout is the forward's (kernels/attention.py): lanes take (batch, key-value head) pairs,
whose queries are those of every query head of the group sharing the keys (grouped-query
attention), or a share of a pair's queries when lanes outnumber pairs (`query_split`); along a
lane a chain of PEs each holds one block of `kv_tile` keys and values, now with fp32
accumulators for their gradients dK and dV. A shared head's dK and dV are thus the sums over its
query-head group, accumulated where its keys are held. Each query's q, dy and log-sum-exp travel
east along its lane, with D = dy·y, which the west PE computes once. Every PE recomputes its
block's weights p = exp(q·kᵀ·scale + bias - lse) (no [T, T] tensor is ever stored), adds pᵀ·dy
to dV, forms dp = dy·vᵀ and ds = p·(dp - D)·scale, adds dsᵀ·q to dK and sends ds·k west, where
the partial dq's are summed from east to west and the west PE emits dq. After the last query
every PE sends its dK and dV blocks out; lanes that split a pair's queries first sum their
blocks along a chain.

Numerics: scores, p, dp and ds are fp32; p and ds are rounded to the precision before they
multiply (as stored operands), products accumulate in fp32, dq's partials add in chain order
and dK, dV over the query groups in lane order.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.attention import (
    attention_bias,
    lane_candidate,
    merge_heads,
    split_heads,
)
from cgc.backends.cerebras.kernels.base import (
    Cost,
    Kernel,
    ceil_div,
    chain_reduce_cycles,
    pick_tiling,
    words,
)
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import chain_sum
from cgc.errors import UnsupportedOpError


class AttentionGrad(Kernel):
    """dq, dk, dv from dy, q, k, v, y and the log-sum-exp, keys and values resident by block."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        dy, q, k, v = self.in_types[:4]
        if self.attrs["window"] or self.attrs["alibi_slopes"]:
            raise UnsupportedOpError(
                "attention_grad: the wafer's attention backward handles no sliding window and "
                "no ALiBi bias"
            )
        self.heads = self.attrs["num_heads"]
        self.kv_heads = self.attrs["num_kv_heads"]
        self.group = self.heads // self.kv_heads  # query heads per key-value head
        self.batch, self.q_len, _ = q.shape
        self.kv_len = k.shape[1]
        self.head_dim = q.shape[2] // self.heads
        self.value_dim = v.shape[2] // self.kv_heads
        self.mask = len(self.in_types) == 7
        self.weight_slots = (6,) if self.mask else ()

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """Among all chains, the fastest that fits in SRAM (`pick_tiling`), else the least SRAM.

        Unlike the forward, chains longer than MAX_CHAIN compete on cycles: a block now also
        holds the fp32 gradients of its keys and values, so long sequences need long chains,
        and the shortest one that fits would leave the region's other kernels no SRAM.
        """
        fitting, spilling = [], []
        for chain in range(1, min(cols, self.kv_len) + 1):
            t = self._candidate(rows, cols, chain)
            if t is None:
                continue
            sram = self._sram(t)
            if sram > self.machine.sram_usable_bytes:
                spilling.append((sram, chain, t))
            else:
                fitting.append((self._cost(rows, t).total, sram, chain, t))
        best = pick_tiling(fitting, spilling)
        return {
            "kernel": "attention_grad",
            "rows": rows,
            "cols": cols,
            "batch": self.batch,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "q_len": self.q_len,
            "kv_len": self.kv_len,
            "head_dim": self.head_dim,
            "value_dim": self.value_dim,
            **best,
            "reduce": "dq east to west; dk, dv over query groups in lane order",
        }

    def _candidate(self, rows: int, cols: int, chain: int) -> dict[str, int] | None:
        # A pair's queries: every query head of its key-value head's group.
        pairs, queries = self.batch * self.kv_heads, self.group * self.q_len
        return lane_candidate(rows, cols, chain, self.kv_len, pairs, queries)

    def sram_bytes(self, rows: int, cols: int) -> int:
        """K, V blocks; their fp32 gradients; query buffers; fp32 p, dp, ds rows and dq."""
        return self._sram(self.tiling(rows, cols))

    def _sram(self, t: dict[str, Any]) -> int:
        b = BYTES[self.precision]
        kv, d, dv = t["kv_tile"], self.head_dim, self.value_dim
        blocks = t["pairs_per_lane"] * kv * (d + dv)
        queries = 2 * (d + dv) * b + 2 * 2 * 4  # q, dy double-buffered; lse and D in fp32
        scratch = 3 * kv * 4 + d * 4 * (2 if t["chain"] > 1 else 1)
        mask = t["q_tile"] * kv * b if self.mask else 0
        return blocks * (b + 4) + queries + scratch + mask

    def resident_bytes(self) -> int:
        """Every key and value of every key-value head, and their fp32 gradients."""
        pairs = self.batch * self.kv_heads
        return pairs * self.kv_len * (self.head_dim + self.value_dim) * (BYTES[self.precision] + 4)

    def cost(self, rows: int, cols: int) -> Cost:
        """Per query and block: scores, weights, dV, dp, ds, dK, dq's partial; then the blocks
        drain (after the split lanes sum theirs)."""
        return self._cost(rows, self.tiling(rows, cols))

    def _cost(self, rows: int, t: dict[str, Any]) -> Cost:
        m, p, b = self.machine, self.precision, BYTES[self.precision]
        kv, d, dv, chain = t["kv_tile"], self.head_dim, self.value_dim, t["chain"]
        vec_kv, vec_d, vec_dv = (m.vector_cycles(n, p) for n in (kv, d, dv))
        masking = vec_kv * (int(self.attrs["causal"]) + int(self.mask))
        weights = vec_kv * (VECTOR_OP_COST["add"] + VECTOR_OP_COST["exp"] + VECTOR_OP_COST["mul"])
        ds = vec_kv * (VECTOR_OP_COST["add"] + 2 * VECTOR_OP_COST["mul"])
        products = d * vec_kv + kv * vec_dv + dv * vec_kv + 2 * kv * vec_d
        peak = products + masking + weights + ds + vec_dv + (vec_d if chain > 1 else 0)
        queries = t["pairs_per_lane"] * t["q_tile"]
        compute = queries * (m.sustained_cycles(peak) + m.task_overhead_cycles)
        block_words = self.kv_len * (words(d, b) + words(dv, b))
        east = t["pairs_per_lane"] * (t["q_tile"] * (words(d, b) + words(dv, b) + 2) + block_words)
        west = queries * (d if chain > 1 else words(d, b)) + t["pairs_per_lane"] * block_words
        fabric = max(east, west)
        split = chain_reduce_cycles(m, t["query_split"], t["pairs_per_lane"] * kv * (d + dv))
        latency = m.hop_latency_cycles * (rows + chain) + m.task_overhead_cycles + split
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        h, g, t, s, p = self.heads, self.kv_heads, self.q_len, self.kv_len, self.precision
        scale = self.attrs["scale"]
        kv, q_tile = tiling["kv_tile"], tiling["q_tile"]
        queries = self.group * t  # a pair's: its group's query heads, one after another
        groups = ceil_div(queries, q_tile)
        pad = groups * q_tile - queries  # empty query slots of the last group: lse = inf, p = 0

        def grouped(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            """[b, h, t, e] -> [b, kv_heads, groups, q_tile, e]: a pair's queries, one group per
            lane sharing the pair."""
            x = x.reshape(x.shape[0], g, queries, x.shape[-1])
            x = torch.nn.functional.pad(x, (0, 0, 0, pad), value=fill)
            return x.reshape(x.shape[0], g, groups, q_tile, x.shape[-1])

        dy, q, y = (split_heads(x, h) for x in (args[0], args[1], args[4]))
        k, v = (split_heads(x, g) for x in args[2:4])
        lse = grouped(args[5].unsqueeze(-1), torch.inf)
        rowdot = grouped((dy * y).sum(-1, keepdim=True))  # D, at each lane's west PE
        dy, q = grouped(dy), grouped(q)
        bias = attention_bias(t, s, self.attrs["causal"], args[6] if self.mask else None)
        bias = grouped(bias.expand(dy.shape[0], h, t, s))
        dq_parts, dk_blocks, dv_blocks = [], [], []
        for k0 in range(0, s, kv):
            kb, vb = k[..., None, k0 : k0 + kv, :], v[..., None, k0 : k0 + kv, :]
            scores = (q @ kb.transpose(-1, -2)) * scale
            probs = torch.exp(scores + bias[..., k0 : k0 + kv] - lse)
            dv_parts = round_to(probs, p).transpose(-1, -2) @ dy
            dscores = round_to(probs * (dy @ vb.transpose(-1, -2) - rowdot) * scale, p)
            dk_parts = dscores.transpose(-1, -2) @ q
            dq_parts.append(dscores @ kb)
            dk_blocks.append(chain_sum(dk_parts.unbind(2)))  # the lanes, in order
            dv_blocks.append(chain_sum(dv_parts.unbind(2)))
        dq = chain_sum(reversed(dq_parts))  # east to west along the chain
        dq = dq.reshape(dq.shape[0], g, groups * q_tile, -1)[..., :queries, :]
        dq = dq.reshape(dq.shape[0], h, t, -1)
        dk, dv = torch.cat(dk_blocks, dim=-2), torch.cat(dv_blocks, dim=-2)
        return [round_to(merge_heads(x), p) for x in (dq, dk, dv)]
