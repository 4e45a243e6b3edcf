"""Large elementwise regions run as Scan loops over chunks, with the same results."""

import onnxruntime as ort
import torch

from cgc.backends.onnxruntime import chunked, to_onnx
from cgc.backends.onnxruntime.training import OrtTrainingSession
from cgc.ir import TensorType, interpret, parse
from cgc.training import AdamW, Schedule
from cgc.training.step import GRAD, NEW, update_graph


def test_regions_stop_where_results_leave_them(monkeypatch) -> None:
    monkeypatch.setattr(chunked, "MIN_ELEMENTS", 16)
    monkeypatch.setattr(chunked, "MIN_CHUNK", 4)
    graph = parse(
        """graph @g(%x: f32[8,4], %y: f32[8,4], %s: f32[]) {
  %a = mul(%x, %s) : f32[8,4]
  %b = add(%a, %y) : f32[8,4]
  %c = sqrt(%b) : f32[8,4]
  %t = reduce_sum(%a) {axes=[0, 1], keepdim=false} : f32[]
  %d = div(%c, %y) : f32[8,4]
  return %d, %t, %b
}
"""
    )
    (region,) = chunked.find_regions(graph)
    # %a feeds the reduction outside, so it stays out; %b is an output, so the Scan yields it
    assert [n.output.name for n in region.nodes] == ["b", "c", "d"]
    assert [v.name for v in region.inputs] == ["a", "y"]
    assert [v.name for v in region.outputs] == ["b", "d"]
    assert (region.chunk, region.chunks) == (32, 1)


def test_sums_of_squares_run_in_blocks_of_rows(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(chunked, "MIN_ELEMENTS", 16)
    monkeypatch.setattr(chunked, "MIN_CHUNK", 4)
    monkeypatch.setattr(chunked, "SUM_CHUNK", 16)
    graph = parse(
        """graph @g(%x: f32[12,4], %y: f32[12,4], %z: f32[2,2]) {
  %a = mul(%x, %x) : f32[12,4]
  %s = reduce_sum(%a) {axes=[-1], keepdim=false} : f32[12]
  %b = mul(%y, %y) : f32[12,4]
  %t = reduce_sum(%b) {axes=[1], keepdim=false} : f32[12]
  %u = reduce_sum(%b) {axes=[0], keepdim=false} : f32[4]
  %c = mul(%z, %z) : f32[2,2]
  %v = reduce_sum(%c) {axes=[-1], keepdim=false} : f32[2]
  return %s, %t, %u, %v
}
"""
    )
    # %b's squares are read twice and %z is small: only %x's sum is chunked, 4 rows a block
    (found,) = chunked.find_sums(graph)
    assert (found.total.output.name, found.rows) == ("s", 4)
    model = to_onnx(graph, tmp_path / "s.onnx", external_data=False, chunked=True)
    assert [n.op_type for n in model.graph.node].count("Scan") == 1
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(v.shape, generator=gen) for v in graph.inputs]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {v.name: t.numpy() for v, t in zip(graph.inputs, inputs, strict=True)})
    for g, want in zip(got, interpret(graph, *inputs), strict=True):
        torch.testing.assert_close(torch.from_numpy(g), want, rtol=1e-6, atol=1e-6)


def test_chunk_sizes_divide_the_tensor() -> None:
    assert chunked.chunk_size(38597376) == 27728  # 111M's embedding: 1733·16 divides it
    assert chunked.chunk_size(3 * 2**20) == 2**15
    assert chunked.chunk_size(65537) is None  # a prime: no chunk between 4K and 32K


def test_a_chunked_update_equals_the_interpreter(tmp_path) -> None:
    types = {"w": TensorType((1024, 1024), "f32"), "b": TensorType((1024,), "f32")}
    graph = update_graph(types, AdamW(lr=1e-2), Schedule("linear", 1, 3), 1.0)
    model = to_onnx(graph, tmp_path / "u.onnx", chunked=True)
    # w's update and w's sum of squares for the norm; b is small
    assert [n.op_type for n in model.graph.node].count("Scan") == 2
    dims = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in (*model.graph.input, *model.graph.output)
    }
    # what only the Scan touches is flat; the gradient also feeds the norm, so it keeps its shape
    assert dims["w"] == dims["exp_avg.w"] == dims["new.exp_avg.w"] == dims["new.w"] == [32, 32768]
    assert dims["grad.w"] == [1024, 1024]
    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(1024, 1024, generator=gen), "b": torch.randn(1024, generator=gen)}
    session = OrtTrainingSession(graph, state, threads=2)
    names = [v.name for v in graph.outputs]
    current = dict(state)
    current |= {v.name: torch.zeros(v.shape) for v in graph.inputs if "exp_avg" in v.name}
    for step in range(3):
        inputs = {GRAD + n: torch.randn(t.shape, generator=gen) for n, t in types.items()}
        inputs["step"] = torch.tensor(step)
        session.step(inputs)
        feeds = inputs | current
        outs = interpret(graph, *(feeds[v.name] for v in graph.inputs))
        current = {n: dict(zip(names, outs, strict=True))[NEW + n] for n in current}
    got = session.state_dict()
    for name, want in current.items():
        torch.testing.assert_close(got[name], want, rtol=1e-6, atol=1e-7)
