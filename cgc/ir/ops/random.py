"""Dropout with a counter-based random stream, so a run with dropout is reproducible.

`dropout(x, seed) {p, stream}` keeps element i of x, scaled by 1/(1-p), when the 32-bit word
Philox4x32-10(key = seed, counter = (i // 4, stream, 0, 0))[i % 4] is at least ⌈p·2³²⌉, and
zeroes it otherwise. The mask is a pure function of (seed, stream, i): nothing is stored between
the forward and backward passes (the VJP recomputes it), and every backend that evaluates the
same integer arithmetic draws the same mask, bit for bit.

Philox4x32-10 is the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
numbers: as easy as 1, 2, 3" (SC 2011), the one torch uses for dropout on GPUs and the one
Random123 publishes known-answer vectors for (tests check three). Each round multiplies two
32-bit lanes by constants into 64-bit products and mixes the halves with xor: exactly the
integer ops ONNX Runtime's CPU provider has for uint64 (Mul, BitShift, BitwiseAnd, BitwiseXor),
and torch computes the same bits on int64 (the product wraps modulo 2⁶⁴; the high half is
masked after the arithmetic shift). Four outputs per counter make one call serve four elements.

How a trainer feeds `rng_seed`: a graph traced in training mode with dropout has one extra
input, `%rng_seed: i64[]`, shared by every dropout node (each has its own `stream`). Feed a
different value every step, derived from the run's seed and the step number, for example
`rng_seed = run_seed · 2³² + step` (or any injective mix of the two): the same (run seed, step)
gives the same masks, so a resumed run draws exactly what the uninterrupted run drew, and no
RNG state needs saving beyond the step number. Never feed one seed to two steps: the masks
would repeat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType

# Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, table 2 and section 4).
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
LANES = 4  # 32-bit outputs per counter
MAX_GROUPS = 2**32  # counters (i // 4) fit one 32-bit lane

RNG_SEED = "rng_seed"


def philox(counter: Sequence[Any], key: Sequence[Any], rounds: int = PHILOX_ROUNDS) -> list:
    """Philox4x32-`rounds` of four 32-bit counter lanes and two key lanes held in int64 tensors
    (or Python ints); returns the four output lanes, each in [0, 2³²)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        c0, c1, c2, c3 = (
            ((p1 >> 32) & MASK32) ^ c1 ^ k0,
            p1 & MASK32,
            ((p0 >> 32) & MASK32) ^ c3 ^ k1,
            p0 & MASK32,
        )
    return [c0, c1, c2, c3]


def random_words(seed: torch.Tensor, stream: int, numel: int) -> torch.Tensor:
    """The 32-bit words (in int64) of elements 0 … numel-1 of stream `stream` under `seed`."""
    groups = math.ceil(numel / LANES)
    seed = seed.to(torch.int64)
    key = [seed & MASK32, (seed >> 32) & MASK32]
    zero = torch.zeros((), dtype=torch.int64)
    counter = [torch.arange(groups, dtype=torch.int64), zero + stream, zero, zero]
    lanes = torch.broadcast_tensors(*philox(counter, key))
    return torch.stack(lanes, dim=1).reshape(-1)[:numel]


def keep_threshold(p: float) -> int:
    """Words at or above ⌈p·2³²⌉ are kept, so an element survives with probability 1 - p."""
    return math.ceil(p * 2**32)


def keep_scale(p: float) -> float:
    """1/(1-p), the scale of kept elements (0 when p = 1: nothing is kept)."""
    return 1.0 / (1.0 - p) if p < 1 else 0.0


def keep_mask(seed: torch.Tensor, stream: int, shape: Sequence[int], p: float) -> torch.Tensor:
    """The bool keep-mask of a dropout of `shape`."""
    words = random_words(seed, stream, math.prod(shape))
    return (words >= keep_threshold(p)).reshape(tuple(shape))


def rng_seed(g):
    """The graph's `%rng_seed: i64[]` input, added (as the last input) when missing."""
    for value in g.inputs:
        if value.name == RNG_SEED:
            return value
    return g.add_input(RNG_SEED, TensorType((), "i64"))


def add_dropout(g, x, p: float):
    """A `dropout` of x with probability p on the graph's rng_seed, with a stream of its own."""
    streams = [n.attrs["stream"] for n in g.nodes if n.op == "dropout"]
    stream = max(streams, default=-1) + 1
    return g.call("dropout", x, rng_seed(g), p=float(p), stream=stream)


def _infer_dropout(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, seed = ins
    p, stream = attrs["p"], attrs["stream"]
    if not x.is_float:
        raise IRError(f"dropout: expected a floating-point operand, got {x}")
    if seed != TensorType((), "i64"):
        raise IRError(f"dropout: the seed must be an i64[] scalar, got {seed}")
    if not isinstance(p, int | float) or not 0 <= p <= 1:
        raise IRError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not isinstance(stream, int) or not 0 <= stream <= MASK32:
        raise IRError(f"dropout: stream must be an integer in [0, 2^32), got {stream!r}")
    if math.ceil(x.numel / LANES) > MAX_GROUPS:
        raise IRError(f"dropout: {x} has more elements than one stream numbers (2^34)")
    return [x]


def _dropout_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 2 * ins[0].numel  # scale and select; the Philox rounds are integer work


def _vjp_dropout(g, node, out_grads: Sequence) -> list:
    """dx = dropout(dy) with the same seed and stream: the same mask and scale, recomputed."""
    (dy,) = out_grads
    if dy is None:
        return [None, None]
    return [g.call("dropout", dy, node.inputs[1], **node.attrs), None]


@register(
    "dropout",
    arity=2,
    attrs={"p": REQUIRED, "stream": REQUIRED},
    infer=_infer_dropout,
    flops=_dropout_flops,
    vjp=_vjp_dropout,
)
def dropout(x: torch.Tensor, seed: torch.Tensor, *, p: float, stream: int) -> torch.Tensor:
    """Zero each element with probability p (Philox stream `stream` under `seed`), scale the
    rest by 1/(1-p)."""
    keep = keep_mask(seed, stream, x.shape, p)
    scaled = x * torch.tensor(keep_scale(p), dtype=x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype))
