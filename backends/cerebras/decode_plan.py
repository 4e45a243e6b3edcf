"""Decode on the layer-pipelined wafer: plan the kv-cache pass's decode graph with its caches.

The decode graph (one new token per sequence) is planned as its own program, its regions sized
for one token per pass, and a prompt streams through the same program one token per pass, so
the caches and weights never move between prefill and decode (bench/decode_wafer.py gives the
numbers against decoding on a 128-token plan's regions).

Every `cached_attention` keeps its layer's K/V caches in its region's SRAM, which the planner
counts with the weights; caches that do not fit are a PlanError. A pipeline kept full has
several passes in flight, each of other sequences, and each sequence needs its own cache
slots, so the plan keeps the caches of every sequence in flight: it is planned for the batch,
then for the sequences that plan needs in flight, until they fit (when they do not, it keeps
the batch's and says so).
"""

from __future__ import annotations

from typing import Any

from cgc.backends.cerebras.artifact import CerebrasArtifact, compile
from cgc.backends.cerebras.decode import estimate, size_text
from cgc.backends.cerebras.kernels.cached_attention import CACHE_SEQUENCES
from cgc.backends.cerebras.planner import PlanError
from cgc.backends.cerebras.precision import BYTES
from cgc.errors import InputError
from cgc.ir import Graph, Node
from cgc.text import count

# Re-plans for the sequences a plan needs in flight: one or two settle it in practice.
MAX_ROUNDS = 4


def compile_decode(
    graph: Graph,
    info: dict[str, Any],
    *,
    target: str = "wse2",
    precision: str = "fp32",
    prompt_tokens: int = 1,
    sequences: int | None = None,
) -> CerebrasArtifact:
    """Plan, place and emit a decode step graph, layer-pipelined, keeping the caches of
    `sequences` sequences (default: every sequence a full pipeline has in flight, when they
    fit, else the batch's). `prompt_tokens` is the prompt the report's prefill figure streams."""
    attention = _cached_attention(graph)
    batch = graph.inputs[0].shape[0]
    _, kv_heads, capacity, head_dim = attention[0].inputs[3].shape  # the cached heads
    slot_bytes = len(attention) * kv_heads * 2 * head_dim * BYTES[precision]

    def build(kept: int, unfit: int | None = None) -> CerebrasArtifact:
        for node in attention:
            node.meta[CACHE_SEQUENCES] = kept
        try:
            artifact = compile(graph, info, target=target, mode="pipelined", precision=precision)
        except PlanError as e:
            raise PlanError(
                f"decode with the K/V caches of {count(kept, 'sequence')} x {capacity} slots "
                f"({size_text(kept * capacity * slot_bytes)}) does not fit {target}: {e}"
            ) from None
        artifact.program["generation"] = {
            "batch": batch,
            "capacity": capacity,
            "cache_sequences": kept,
            "cache_bytes": kept * capacity * slot_bytes,
            "caches": [[a.name, b.name] for a, b in _cache_pairs(graph)],
            "prompt_tokens": prompt_tokens,
            "unfit_sequences": unfit,
        }
        return artifact

    if sequences is not None:
        return build(sequences)
    kept, artifact = batch, build(batch)
    for _ in range(MAX_ROUNDS):
        needed = estimate(artifact.program)["sequences_in_flight"]
        if needed <= kept:
            break
        try:
            artifact, kept = build(needed), needed
        except PlanError:
            # Planned again: the graph's annotations must be those of the plan returned.
            return build(kept, unfit=needed)
    return artifact


def _cached_attention(graph: Graph) -> list[Node]:
    """The graph's cached_attention nodes, after checking it is a one-token decode graph."""
    attention = [n for n in graph.nodes if n.op == "cached_attention"]
    ids = graph.inputs[0] if graph.inputs else None
    if not attention or ids is None or len(ids.shape) != 2 or ids.shape[1] != 1:
        raise InputError(
            f"graph @{graph.name} is not a decode step (one token per sequence, "
            "cached_attention); derive one with the kv-cache pass"
        )
    return attention


def _cache_pairs(graph: Graph):
    """(cache input, its updated output) of every layer, from the cached_attention nodes."""
    return [
        (v_in, v_out)
        for n in graph.nodes
        if n.op == "cached_attention"
        for v_in, v_out in zip(n.inputs[3:5], n.outputs[1:], strict=True)
    ]
