"""Runs a training step graph in ONNX Runtime, parameters and optimizer state kept in ORT-owned
buffers from step to step.

The step graph's output `new.X` is its next input `X` (cgc.training.step). Each such X lives in
one OrtValue that IO binding passes as the input X and as the preallocated output new.X, so ORT
updates it in place: the weights never pass through numpy, and they are held once, not twice.
Updating in place is safe when every node reading X runs before the node writing new.X. ONNX
has no control dependencies, so the session makes the learning rate, which every parameter's
update reads, depend on the loss and the gradient norm (lr + 0·(loss + grad_norm), the same
number for a finite loss): every node reading a parameter feeds the loss or a gradient, so it
comes first in any order ORT picks. Readers are checked, and an X that cannot be proven safe
gets two buffers that swap after each step instead.

Batch inputs and the step counter are bound from CPU tensors each step; the scalar outputs
(loss, grad_norm, lr) are read back. An evaluation graph (the loss alone) runs in a second
session bound to the same parameter buffers.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cgc.backends.onnxruntime.export import to_onnx
from cgc.errors import InputError
from cgc.ir import Graph, Node, TensorType, Value
from cgc.training.step import carried

# Elementwise ops that may write their output over an input of the same shape.
_ELEMENTWISE = frozenset({"add", "sub", "mul", "div", "where", "maximum", "minimum"})


def _options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A memory pattern lays every intermediate of the step out in one block planned ahead: for
    # 111M it held 1.46 GB beyond the weights and optimizer state, against 0.53 GB allocated
    # as needed, with no measurable difference in step time (4.47 against 4.42 s, 8 rounds).
    options.enable_mem_pattern = False
    # Idle worker threads wait passively instead of spinning: on a busy 2-core machine a 111M
    # step took 3.99 s against 4.56 s spinning (medians of 8 interleaved steps).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    return options


_NUMPY = {
    "f64": np.float64,
    "f32": np.float32,
    "f16": np.float16,
    "i64": np.int64,
    "i32": np.int32,
    "bool": np.bool_,
}


class OrtTrainingSession:
    """One compiled training step (and optionally its evaluation graph) with live state; the
    carried inputs not in the initial `state` (optimizer state) start at zero. With `in_place`
    the tensors given are the buffers (no copy): training updates them, as torch.optim updates
    a module's parameters.

    Each carried value has one block of memory (two where it cannot be updated in place), seen
    by ORT in the shape the model declares for the input and for the output: flat [chunks,
    chunk] where a chunked update reads or writes it (cgc.backends.onnxruntime.chunked).
    """

    def __init__(
        self,
        step_graph: Graph,
        state: Mapping[str, torch.Tensor],
        *,
        eval_graph: Graph | None = None,
        threads: int | None = None,
        in_place: bool = False,
    ) -> None:
        self.pairs = carried(step_graph)  # X -> new.X
        graph = step_graph.copy()
        barrier = _order_updates_after_reads(graph)
        self.in_place = _in_place(graph, self.pairs, barrier)
        self._scratch = tempfile.TemporaryDirectory(prefix="cgc-train-")
        folder = Path(self._scratch.name)
        self.session = _session(graph, folder / "step.onnx", threads, chunked=True)
        declared = {a.name: a.shape for a in self.session.get_inputs()}
        declared |= {a.name: a.shape for a in self.session.get_outputs()}
        types = {v.name: v.type for v in graph.inputs}
        self._owned: list[ort.OrtValue] = []  # ORT-allocated blocks (kept alive)
        self.memory: dict[str, np.ndarray] = {}  # the current value of each carried input
        self._spare: dict[str, np.ndarray] = {}  # second blocks of X not updated in place
        for x in self.pairs:  # values not given (optimizer state) start at zero
            given = state[x].detach() if x in state else None
            if in_place and given is not None and given.is_contiguous():
                self.memory[x] = given.numpy()
            else:
                self.memory[x] = self._block(types[x])
                self.memory[x][...] = given.numpy() if given is not None else 0
            if x not in self.in_place:
                self._spare[x] = self._block(types[x])
        self._shapes = {x: (declared[x], declared[new]) for x, new in self.pairs.items()}
        self.batch_names = [v.name for v in graph.inputs if v.name not in self.pairs]
        self.binding = self.session.io_binding()
        self._scalars = {}
        for v in graph.outputs:
            if v.type.rank == 0:
                self._scalars[v.name] = self._block(v.type)
                self.binding.bind_ortvalue_output(v.name, _view(self._scalars[v.name], []))
        self._bind_state()
        self.eval_session = None
        if eval_graph is not None:
            self.eval_session = _session(eval_graph, folder / "eval.onnx", threads)
            self.eval_inputs = [v.name for v in eval_graph.inputs]

    def _block(self, t: TensorType) -> np.ndarray:
        """ORT-allocated memory for a value of type `t`, as a numpy view of it."""
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(t.shape), _NUMPY[t.dtype])
        self._owned.append(value)
        return value.numpy()

    def _bind_state(self) -> None:
        for x, new_x in self.pairs.items():
            read, write = self._shapes[x]
            self.binding.bind_ortvalue_input(x, _view(self.memory[x], read))
            target = self._spare.get(x, self.memory[x])
            self.binding.bind_ortvalue_output(new_x, _view(target, write))

    def step(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Run one step on the batch inputs and `step`; returns the scalar outputs."""
        arrays = _arrays(inputs, self.batch_names)  # alive until the run is over
        for name, array in arrays.items():
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        self.session.run_with_iobinding(self.binding)
        if self._spare:
            for x in self._spare:
                self.memory[x], self._spare[x] = self._spare[x], self.memory[x]
            self._bind_state()
        return {name: float(value) for name, value in self._scalars.items()}

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The evaluation graph's outputs on the current parameters and these batch inputs."""
        if self.eval_session is None:
            raise InputError("this training session was built without an evaluation graph")
        binding = self.eval_session.io_binding()
        arrays = _arrays(inputs, [n for n in self.eval_inputs if n not in self.memory])
        for name in self.eval_inputs:
            array = self.memory.get(name, arrays.get(name))
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        for out in self.eval_session.get_outputs():
            binding.bind_output(out.name)
        self.eval_session.run_with_iobinding(binding)
        return [torch.from_numpy(v.numpy().copy()) for v in binding.get_outputs()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters and optimizer state, by input name."""
        return {x: torch.from_numpy(m.copy()) for x, m in self.memory.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the live parameters and optimizer state."""
        for x, memory in self.memory.items():
            memory[...] = state[x].detach().numpy()


class OrtGradients:
    """The joint part of a split step (parameters, batch -> loss, grad.P) in ONNX Runtime, for
    data-parallel training: it reads the parameters from the buffers of the OrtTrainingSession
    that runs the update, and writes the loss and gradients into the given tensors (the buffers
    the workers sum), both bound by IO binding: nothing is copied."""

    def __init__(
        self,
        joint: Graph,
        params: OrtTrainingSession,
        outputs: Mapping[str, torch.Tensor],
        *,
        threads: int | None = None,
    ) -> None:
        self.params = params
        self._scratch = tempfile.TemporaryDirectory(prefix="cgc-grad-")
        self.session = _session(joint, Path(self._scratch.name) / "joint.onnx", threads)
        self._declared = {a.name: a.shape for a in self.session.get_inputs()}
        self.param_names = [v.name for v in joint.inputs if v.name in params.memory]
        self.batch_names = [v.name for v in joint.inputs if v.name not in params.memory]
        self.binding = self.session.io_binding()
        self._outputs = {v.name: outputs[v.name] for v in joint.outputs}  # kept alive
        for out in self.session.get_outputs():
            self.binding.bind_ortvalue_output(
                out.name, _view(self._outputs[out.name].numpy(), out.shape)
            )

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Loss and gradients of the batch `inputs` at the current parameters."""
        for name in self.param_names:  # rebound: a buffer the update swaps moves
            self.binding.bind_ortvalue_input(
                name, _view(self.params.memory[name], self._declared[name])
            )
        arrays = _arrays(inputs, self.batch_names)  # alive until the run is over
        for name, array in arrays.items():
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        self.session.run_with_iobinding(self.binding)
        return {}

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return self.params.evaluate(inputs)


def _view(memory: np.ndarray, shape: list[int]) -> ort.OrtValue:
    """An OrtValue over `memory` (no copy) in the declared `shape`."""
    return ort.OrtValue.ortvalue_from_numpy(memory.reshape(shape))


def _arrays(inputs: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, np.ndarray]:
    """Batch inputs as contiguous numpy arrays sharing the tensors' memory where they can."""
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"the training step needs input {missing[0]!r}")
    return {n: inputs[n].detach().contiguous().numpy() for n in names}


# ORT 1.32's EmbedLayerNormFusion fuses token and position embeddings whose sum feeds the
# residual too when the tables are inputs, and leaves the residual reading a value no node
# computes ("Node input 'add' is not a graph input ..."); it is an inference fusion anyway.
_DISABLED = ["EmbedLayerNormFusion"]


def _session(
    graph: Graph, path: Path, threads: int | None, *, chunked: bool = False
) -> ort.InferenceSession:
    to_onnx(graph, path, chunked=chunked)
    return ort.InferenceSession(
        str(path),
        _options(threads),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=_DISABLED,
    )


def _order_updates_after_reads(graph: Graph) -> Node | None:
    """Feed the learning rate's readers lr + 0·(loss + grad_norm) (see the module doc); returns
    the node computing it, or None when the graph has no such outputs."""
    outputs = {v.name: v for v in graph.outputs}
    lr, loss, norm = outputs.get("lr"), outputs.get("loss"), outputs.get("grad_norm")
    if lr is None or loss is None or norm is None or not lr.users:
        return None
    readers = list(lr.users)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    with graph.inserting_before(min(readers, key=lambda n: order[id(n)])):
        zero = graph.call("mul", graph.call("add", loss, norm), graph.constant(0.0, loss.dtype))
        ordered = graph.call("add", lr, graph.call("cast", zero, dtype=lr.dtype))
    for user in readers:
        for i, v in enumerate(user.inputs):
            if v is lr:
                graph.set_input(user, i, ordered)
    return ordered.producer


def _in_place(graph: Graph, pairs: Mapping[str, str], barrier: Node | None) -> set[str]:
    """The carried inputs X whose every reader runs before new.X is written, in any order ORT
    may pick: each reader is an ancestor of the writer (or the writer itself, when it is
    elementwise on X's shape and so reads each element before writing it)."""
    values: dict[str, Value] = {v.name: v for v in graph.inputs}
    values.update({v.name: v for v in graph.outputs})
    before_barrier = _ancestors(barrier, set()) if barrier is not None else set()
    safe = set()
    for x, new_x in pairs.items():
        writer = values[new_x].producer
        if writer is None or any(v.name == new_x for v in graph.inputs):
            continue
        readers = {id(n) for n in values[x].users}
        if id(writer) in readers:
            if writer.op not in _ELEMENTWISE or values[x].type != values[new_x].type:
                continue
            readers.discard(id(writer))
        if _reach(writer, readers, barrier, before_barrier):
            safe.add(x)
    return safe


def _ancestors(node: Node, found: set[int]) -> set[int]:
    """Ids of `node` and every node it depends on."""
    todo = [node]
    while todo:
        n = todo.pop()
        if id(n) not in found:
            found.add(id(n))
            todo += [v.producer for v in n.inputs if v.producer is not None]
    return found


def _reach(writer: Node, wanted: set[int], barrier: Node | None, before: set[int]) -> bool:
    """Whether every node in `wanted` is an ancestor of `writer` (breadth-first, stopping once
    all are found; reaching the barrier accounts for all of its ancestors at once)."""
    wanted = set(wanted)
    seen: set[int] = set()
    queue = deque([writer])
    while queue and wanted:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        wanted.discard(id(node))
        if node is barrier:
            wanted -= before
            continue
        queue.extend(v.producer for v in node.inputs if v.producer is not None)
    return not wanted
