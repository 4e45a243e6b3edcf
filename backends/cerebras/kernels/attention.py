"""Fused multi-head attention: keys and values resident, queries streaming (flash style).

Lanes (rows x column groups) take (batch, key-value head) pairs; when there are more lanes than
pairs, a pair's queries are split over several lanes. A pair's queries are those of every query
head sharing its keys (grouped-query attention: num_heads / num_kv_heads of them; 1 for
multi-head), so a group's keys and values are held once and its query heads stream through
them. Along a lane, a chain of `chain` PEs each holds one block of `kv_tile` keys and values.
The tiling takes the fastest chain up to MAX_CHAIN that fits in SRAM, and a longer one only
when long sequences need it (merged (m, l, o) triples are small, so long chains cost little
traffic, but each hop is one more merge to simulate).
Keys and values enter with their tokens (a causal pipeline stores key t before query t needs
it); each query is broadcast east along its lane, every PE scores it against its block
(head_dim FMAC vectors of length kv_tile), takes the block's max m, p = exp(s - m), l = Σp and
o = p·V (kv_tile FMAC vectors of length value_dim), and the (m, l, o) triples merge from east
to west (online softmax: rescale by exp(m_i - m)). The west PE divides o by l and emits the
output (zeros for a query whose every key is masked). The busiest PE does all of this for
every query its lane sees, causal or not: the west block holds keys every query needs.

A sliding window (`window`, causal) keeps only the last `window` keys resident: the blocks form
a ring buffer in which key j takes slot j mod window (key j + window overwrites it once the
query that no longer needs it has passed), so SRAM and per-query work follow the window, not the
sequence. ALiBi (`alibi_slopes`) adds slope_h·(j - position) to each score, one FMAC vector per
block from the head's fp32 slope and the key positions; the causal mask and windows are
compares on the same positions. Cross-attention (keys of another length, from another stream)
holds all its keys before the first query, as the resident blocks do anyway.

Numerics: scores and the softmax statistics are fp32; p is rounded to the precision before it
multiplies V (as it would be stored), o accumulates in fp32; the merge runs in chain order.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import (
    MAX_CHAIN,
    Cost,
    Kernel,
    ceil_div,
    pick_tiling,
    words,
)
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.ir.ops.nn import causal_keep


class Attention(Kernel):
    """softmax(q·kᵀ·scale + bias)·v per head, each key-value head resident once along a lane
    chain (all of it, or the window's last keys), its query heads streaming through."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        q, k, v = self.in_types[:3]
        self.heads = self.attrs["num_heads"]
        self.kv_heads = self.attrs["num_kv_heads"]
        self.group = self.heads // self.kv_heads  # query heads per key-value head
        self.batch, self.q_len, _ = q.shape
        self.kv_len = k.shape[1]
        self.window = self.attrs["window"]
        # Keys a lane holds at once: the window's, as a ring buffer, or all of them.
        self.kv_resident = min(self.window, self.kv_len) if self.window else self.kv_len
        self.head_dim = q.shape[2] // self.heads
        self.value_dim = v.shape[2] // self.kv_heads
        self.mask = len(self.in_types) == 4
        self.weight_slots = (3,) if self.mask else ()

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """Among chains up to MAX_CHAIN that fit in SRAM, the fewest cycles (`pick_tiling`);
        else the shortest longer chain that fits; else the least SRAM."""
        fitting, spilling, long_chain = [], [], None
        for chain in range(1, min(cols, self.kv_resident) + 1):
            t = self._candidate(rows, cols, chain)
            if t is None:
                continue
            sram = self._sram(t)
            if sram > self.machine.sram_usable_bytes:
                spilling.append((sram, chain, t))
            elif chain <= MAX_CHAIN:
                fitting.append((self._cost(rows, t).total, sram, chain, t))
            else:
                long_chain = t
                break
            if chain >= MAX_CHAIN and fitting:
                break
        best = long_chain or pick_tiling(fitting, spilling)
        return {
            "kernel": "attention",
            "rows": rows,
            "cols": cols,
            "batch": self.batch,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "q_len": self.q_len,
            "kv_len": self.kv_len,
            "kv_resident": self.kv_resident,
            "head_dim": self.head_dim,
            "value_dim": self.value_dim,
            **best,
            "reduce": "online softmax merged east to west",
        }

    def _candidate(self, rows: int, cols: int, chain: int) -> dict[str, int] | None:
        # A pair's queries: every query head of its key-value head's group.
        pairs, queries = self.batch * self.kv_heads, self.group * self.q_len
        return lane_candidate(rows, cols, chain, self.kv_resident, pairs, queries)

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Resident K and V blocks, query buffers, fp32 scores and output, merge buffers."""
        return self._sram(self.tiling(rows, cols))

    def _sram(self, t: dict[str, Any]) -> int:
        b = BYTES[self.precision]
        kv, d, dv = t["kv_tile"], self.head_dim, self.value_dim
        resident = t["pairs_per_lane"] * kv * (d + dv) * b
        merge = 2 * (dv + 2) * 4 if t["chain"] > 1 else 0
        mask = t["q_tile"] * kv * b if self.mask else 0
        return resident + 2 * d * b + kv * 4 + dv * 4 + merge + mask

    def resident_bytes(self) -> int:
        """Every resident key and value of every key-value head."""
        dims = self.head_dim + self.value_dim
        return self.batch * self.kv_heads * self.kv_resident * dims * BYTES[self.precision]

    def cost(self, rows: int, cols: int) -> Cost:
        """Per query: scores, block softmax, p·V, merge; K, V and q east, partials west."""
        return self._cost(rows, self.tiling(rows, cols))

    def _per_query_extra(self) -> tuple[int, int]:
        """Peak cycles and west-bound wavelets a subclass adds per query at the west PE."""
        return 0, 0

    def _cost(self, rows: int, t: dict[str, Any]) -> Cost:
        m, p, b = self.machine, self.precision, BYTES[self.precision]
        kv, d, dv, chain = t["kv_tile"], self.head_dim, self.value_dim, t["chain"]
        vec_kv, vec_dv = m.vector_cycles(kv, p), m.vector_cycles(dv, p)
        exp = VECTOR_OP_COST["exp"]
        softmax = vec_kv * (VECTOR_OP_COST["max"] + VECTOR_OP_COST["add"] + exp + 1)
        biases = int(self.attrs["causal"]) + int(self.mask) + bool(self.attrs["alibi_slopes"])
        masking = vec_kv * biases
        merge = (2 * vec_dv + 2 * exp + 4) if chain > 1 else 0
        finish = vec_dv * VECTOR_OP_COST["div"]
        extra, extra_words = self._per_query_extra()
        peak = d * vec_kv + softmax + masking + kv * vec_dv + merge + finish + extra
        per_query = m.sustained_cycles(peak) + m.task_overhead_cycles
        queries = t["pairs_per_lane"] * t["q_tile"]
        compute = queries * per_query
        east = t["pairs_per_lane"] * (
            t["q_tile"] * words(d, b) + self.kv_len * (words(d, b) + words(dv, b))
        )
        west = queries * (((dv + 2) if chain > 1 else words(dv, b)) + extra_words)
        fabric = max(east, west)
        latency = m.hop_latency_cycles * (rows + chain) + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _bias(self, mask: torch.Tensor | None) -> torch.Tensor:
        """The fp32 score bias [heads|1, t, s]: ALiBi from the fp32 slopes and the key offsets,
        -inf outside the causal window, plus the mask."""
        t, s = self.q_len, self.kv_len
        bias = torch.zeros(1, t, s)
        slopes = self.attrs["alibi_slopes"]
        if slopes:
            offset = (torch.arange(s)[None, :] - torch.arange(t)[:, None] - (s - t)).float()
            bias = torch.tensor(slopes, dtype=torch.float32)[:, None, None] * offset
        if self.attrs["causal"]:
            bias = bias.masked_fill(~causal_keep(t, s, self.window), -torch.inf)
        return bias if mask is None else bias + mask

    def _execute(self, args, tiling):
        return [self._flash(args, tiling)[0]]

    def _flash(self, args, tiling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rounded output, and each query's fp32 running max m and Σp [batch, heads, q, 1]."""
        p, s = self.precision, self.kv_len
        q = split_heads(args[0], self.heads)
        k, v = (split_heads(x, self.kv_heads).repeat_interleave(self.group, 1) for x in args[1:3])
        bias = self._bias(args[3] if self.mask else None)
        kv = tiling["kv_tile"]
        # Key j sits in slot j mod kv_resident of the ring (slot j without a window).
        block = torch.arange(s) % self.kv_resident // kv
        partials = []
        for b in range(tiling["chain"]):
            keys = (block == b).nonzero().squeeze(1)
            scores = (q @ k[..., keys, :].transpose(-1, -2)) * self.attrs["scale"]
            scores = scores + bias[..., keys]
            m = scores.amax(-1, keepdim=True)
            # A fully masked block keeps m = -inf and contributes p = 0, l = 0, o = 0.
            probs = torch.exp(scores - torch.where(m == -torch.inf, 0.0, m))
            o = round_to(probs, p) @ v[..., keys, :]
            partials.append((m, probs.sum(-1, keepdim=True), o))
        m, total, o = partials[-1]
        for m_i, total_i, o_i in reversed(partials[:-1]):  # east to west
            top = torch.maximum(m, m_i)
            a, a_i = _rescale(m, top), _rescale(m_i, top)
            m, total, o = top, total * a + total_i * a_i, o * a + o_i * a_i
        # A query whose every key is masked has o = 0 and total = 0: it outputs zeros (the op's
        # semantics, as torch SDPA), not NaN.
        o = o / torch.where(total == 0, 1.0, total)
        return round_to(merge_heads(o), p), m, total


class AttentionLse(Attention):
    """`attention` that also emits each query's log-sum-exp, for the backward (attention_lse).

    The west PE adds log(Σp) to the running max: one log and one add per query, one more fp32
    wavelet west. The log-sum-exp stays fp32 (a softmax statistic, as in the forward); a query
    whose every key is masked gets +inf, so the backward's recomputed weights are zeros.
    """

    def _per_query_extra(self) -> tuple[int, int]:
        return VECTOR_OP_COST["log"] + VECTOR_OP_COST["add"], 1

    def _execute(self, args, tiling):
        out, m, total = self._flash(args, tiling)
        lse = (m + torch.log(total)).squeeze(-1)
        return [out, lse.masked_fill(total.squeeze(-1) == 0, torch.inf)]


def lane_candidate(
    rows: int, cols: int, chain: int, keys: int, pairs: int, queries: int
) -> dict[str, int] | None:
    """The layout of `pairs` (batch, key-value head) pairs with `queries` queries each on lanes of
    `chain` PEs holding `keys` keys in blocks of kv_tile; None when a shorter chain gives the
    same blocks with more lanes."""
    kv_tile = ceil_div(keys, chain)
    if ceil_div(keys, kv_tile) != chain:
        return None
    lanes = rows * (cols // chain)
    split = min(lanes // pairs, queries) if lanes >= pairs else 1
    return {
        "chain": chain,
        "lanes": lanes,
        "pairs_per_lane": 1 if lanes >= pairs else ceil_div(pairs, lanes),
        "query_split": split,
        "q_tile": ceil_div(queries, split),
        "kv_tile": kv_tile,
    }


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, seq, heads·d] -> [batch, heads, seq, d]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, d] -> [batch, seq, heads·d]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention_bias(t: int, s: int, causal: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """The additive [t, s] score bias: -inf above the causal diagonal, plus the mask."""
    bias = torch.zeros(t, s)
    if causal:
        bias = bias.masked_fill(~torch.ones(t, s, dtype=torch.bool).tril(s - t), -torch.inf)
    return bias if mask is None else bias + mask


def _rescale(m: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """exp(m - top), and 0 for an empty partial (m = -inf, even when top is -inf too)."""
    return torch.where(m == -torch.inf, 0.0, torch.exp(m - top))
