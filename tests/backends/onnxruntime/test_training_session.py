"""The ORT training session: state stays in ORT buffers, updated in place when every read of a
value provably comes first, through two swapping buffers otherwise."""

import torch

from cgc.backends.onnxruntime.training import OrtTrainingSession
from cgc.ir import interpret, parse

# new.w = w - 0.5·x, while %loss also reads w: no path from that read to new.w, so ORT could
# run it after the update and w must not be overwritten in place. new.m reads m only in the
# elementwise node writing it, which is safe in place.
GRAPH = """
graph @g(%w: f32[4], %m: f32[4], %x: f32[4]) {
  %half = constant() {dtype="f32", shape=[], value=0.5} : f32[]
  %scaled = mul(%x, %half) : f32[4]
  %new.w = sub(%w, %scaled) : f32[4]
  %new.m = add(%m, %x) : f32[4]
  %prod = mul(%w, %x) : f32[4]
  %loss = reduce_sum(%prod) {axes=[0], keepdim=false} : f32[]
  return %loss, %new.w, %new.m
}
"""


def test_state_carries_over_in_place_or_double_buffered() -> None:
    graph = parse(GRAPH)
    w, m = torch.arange(4.0), torch.zeros(4)
    session = OrtTrainingSession(graph, {"w": w, "m": m}, eval_graph=None, threads=1)
    assert session.pairs == {"w": "new.w", "m": "new.m"}
    assert session.in_place == {"m"}
    for step in range(3):
        x = torch.full((4,), float(step + 1))
        loss, w, m = interpret(graph, w, m, x)
        assert session.step({"x": x}) == {"loss": float(loss)}
    state = session.state_dict()
    assert torch.equal(state["w"], w) and torch.equal(state["m"], m)
    session.load_state_dict({"w": torch.ones(4), "m": torch.ones(4)})
    assert session.step({"x": torch.ones(4)}) == {"loss": 4.0}
    assert torch.equal(session.state_dict()["w"], torch.full((4,), 0.5))
