"""The interpreter keeps a value only until its last use."""

import gc
import weakref

import torch

from cgc.ir import interpret, parse


def test_intermediates_are_freed_after_their_last_use() -> None:
    graph = parse(
        """graph @g(%x: f32[64]) {
  %a = exp(%x) : f32[64]
  %b = neg(%a) : f32[64]
  %c = mul(%b, %b) : f32[64]
  return %c, %a
}
"""
    )
    seen = {}
    out = interpret(
        graph, torch.ones(64), hook=lambda n, o: seen.__setitem__(n.op, weakref.ref(o[0]))
    )
    gc.collect()
    assert seen["neg"]() is None  # %b died after its last use
    assert seen["exp"]() is out[1]  # %a is an output: kept
    torch.testing.assert_close(out[0], torch.exp(torch.ones(64)) ** 2)
