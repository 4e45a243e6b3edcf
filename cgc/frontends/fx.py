"""The PyTorch frontend: torch.export a module, then import its core-ATen FX graph into the IR.

Export runs on fake tensors, so a module whose weights live on the meta device (a 13B model)
traces without allocating them, and real weights enter the graph by reference. Nodes that depend
on neither inputs nor weights (causal masks, position ids) are evaluated at import with torch on
CPU and become constants; every other node goes through the table in `cgc.frontends.aten`,
which emits IR primitives only.
"""

from __future__ import annotations

import operator
import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, OutputKind, OutputSpec
from torch.fx import Node as FxNode
from torch.fx.node import map_arg

from cgc.errors import CgcError, IRError, ModelError, UnsupportedOpError, first_line
from cgc.frontends.aten import CONVERTERS
from cgc.ir import Graph, TensorType, Value
from cgc.ir.types import DTYPE_NAMES, FLOAT_DTYPES, TORCH_DTYPES

aten = torch.ops.aten

# Kept whole through decomposition: the frontend emits attention in the one form the fusion
# pass matches, and the default decomposition of SDPA yields outputs whose strides differ from
# the kernels', which breaks the later `.view()` of Hugging Face GPT-2 (sdpa) during export.
_KEEP_WHOLE = (
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_attention_math.default,
)

# Runtime checks that export leaves in the graph; shapes and dtypes are static here.
_ASSERTIONS = frozenset(
    {
        aten._assert_tensor_metadata.default,
        aten._assert_scalar.default,
        aten._assert_async.msg,
        aten.sym_constrain_range_for_size.default,
    }
)

# Ops that read only the shape and dtype of their tensor input, so they fold even when the
# input depends on the graph inputs.
_SHAPE_ONLY = frozenset(
    {
        aten.full_like.default,
        aten.zeros_like.default,
        aten.ones_like.default,
        aten.new_full.default,
        aten.new_zeros.default,
        aten.new_ones.default,
    }
)

_MUTATIONS = frozenset(
    {
        OutputKind.BUFFER_MUTATION,
        OutputKind.USER_INPUT_MUTATION,
        OutputKind.PARAMETER_MUTATION,
    }
)

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_FRONTEND_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CPU = torch.device("cpu")

# A multi-output op yields one entry per output: a thunk that emits it when a getitem asks for
# it (so unused outputs cost nothing), None when cgc cannot produce it, or the emitted value.
Output = Value | Callable[[], Value] | None


def trace(module: torch.nn.Module, example_inputs: tuple, *, name: str | None = None) -> Graph:
    """Export `module` on `example_inputs` and import it as a graph of IR primitives.

    The graph is specialised to the example inputs' shapes and dtypes (shapes are static).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    program = _export(module, tuple(example_inputs))
    graph_name = name or re.sub(r"[^A-Za-z0-9_.]", "_", type(module).__name__)
    graph = FxImporter(program, module, graph_name).run()
    _name_outputs(graph, program)
    return graph


def _name_outputs(graph: Graph, program: ExportedProgram) -> None:
    """Name outputs after the model's output structure (`logits` of a dict or HF output;
    `output` for a bare tensor, `output_0`, `output_1` ... for a tuple), so reports read well.
    A model's only 0-d float output without a name of its own is its `loss`."""
    spec = program.call_spec.out_spec
    if spec is None or spec.num_leaves != len(graph.outputs):
        return
    tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    paths = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    scalars = [v for v in graph.outputs if v.type.rank == 0 and v.type.is_float]
    for value, path in zip(list(graph.outputs), paths, strict=True):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", "")))) for k in path]
        hint = "_".join(keys) if keys and not keys[0].isdigit() else "_".join(["output", *keys])
        if scalars == [value] and hint.startswith("output"):
            hint = "loss"
        if value.producer is not None and value.name != hint and value not in graph.inputs:
            graph.rename(value, graph.fresh_name(hint))


def _export(module: torch.nn.Module, example_inputs: tuple) -> ExportedProgram:
    """ATen program of `module`, decomposed to core ATen (SDPA kept whole) only when it uses an
    op the importer has no converter for; torch failures become one line.

    Decomposition costs more than the export itself (1.5 s of 2.2 s on the 111M model), and
    GPT models written the usual way only use ops the importer reads directly.
    """
    try:
        with warnings.catch_warnings():
            # torch.export's own pytree handling warns about its deprecated LeafSpec; not ours.
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            program = torch.export.export(module, example_inputs, strict=False)
            if not _needs_decomposition(program):
                program.graph.eliminate_dead_code()  # unused outputs of multi-output ops
                return program
            table = torch.export.default_decompositions()
            for op in _KEEP_WHOLE:
                del table[op]
            return program.run_decompositions(table)
    except CgcError:
        raise
    except Exception as e:  # torch raises many types; the user needs the first line only
        raise ModelError(f"torch.export failed: {first_line(e)}") from None


def _needs_decomposition(program: ExportedProgram) -> bool:
    """Whether an op without a converter computes on live data (inputs or weights).

    Ops on constants only (ones, tril, arange, ...) fold at import whatever they are.
    """
    live: set[FxNode] = set()
    for node in program.graph.nodes:
        if node.op == "placeholder":
            live.add(node)
        elif node.op == "call_function" and any(a in live for a in node.all_input_nodes):
            live.add(node)
            target = node.target
            if isinstance(target, torch._ops.OpOverload) and target not in CONVERTERS:
                if target not in _ASSERTIONS:
                    return True
    return False


def _op_name(target: Any) -> str:
    """`aten.cumsum` for an ATen overload (`aten.div.Tensor_mode` when not the default one)."""
    if isinstance(target, torch._ops.OpOverload):
        name = f"{target.namespace}.{target._schema.name.split('::')[-1]}"
        return name if target._overloadname == "default" else f"{name}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def _display_path(path: str) -> str:
    """Relative to the working directory when the file is under it, else the file name."""
    path = os.path.abspath(path)
    cwd = os.getcwd() + os.sep
    return path[len(cwd) :] if path.startswith(cwd) else os.path.basename(path)


def _source(stack_trace: str | None) -> str | None:
    """`file.py:LINE` of the innermost frame outside torch and this frontend."""
    for path, line in reversed(_FRAME.findall(stack_trace or "")):
        full = os.path.abspath(path)
        if path.startswith("<") or full.startswith((_TORCH_DIR, _FRONTEND_DIR)):
            continue
        return f"{_display_path(path)}:{line}"
    return None


def _memo_key(obj: Any) -> Any:
    """A hashable key for folded-op arguments; scalars keep their type (True is not 1.0)."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", id(obj))
    if isinstance(obj, list | tuple):
        return tuple(map(_memo_key, obj))
    if isinstance(obj, dict):
        return tuple((k, _memo_key(v)) for k, v in sorted(obj.items()))
    return (type(obj).__name__, obj)


def _scalar_value(value: Any, dtype: str) -> bool | int | float:
    """A Python scalar typed like elements of `dtype`."""
    if dtype == "bool":
        return bool(value)
    return float(value) if dtype in FLOAT_DTYPES else int(value)


class FxImporter:
    """Walks an exported program's FX graph once, building the IR graph node by node.

    Converters in `cgc.frontends.aten` receive this object: they read operands through
    `value`/`operand`, the node's torch-reported result type through `out`, and build IR
    through `g`.
    """

    def __init__(self, program: ExportedProgram, module: torch.nn.Module, name: str) -> None:
        self.program = program
        self.g = Graph(name)
        self.values: dict[FxNode, Value] = {}
        self.folded: dict[FxNode, Any] = {}
        self.multi: dict[FxNode, list[Output]] = {}
        self.node: FxNode | None = None  # the FX node whose result is being built
        self._op_node: FxNode | None = None  # the FX node named in errors
        self._tensors = dict(module.named_parameters(remove_duplicate=False))
        self._tensors.update(module.named_buffers(remove_duplicate=False))
        # Tied weights (lm_head.weight is transformer.wte.weight) get their first name.
        self._canonical: dict[int, str] = {}
        for fqn, tensor in self._tensors.items():
            self._canonical.setdefault(id(tensor), fqn)
        # Each layer rebuilds the same causal mask: folding memoizes on the op and its
        # arguments (folded tensors by identity; they stay alive in `folded`), so the mask is
        # computed and stored once.
        self._fold_memo: dict[Any, Any] = {}
        self._storage: dict[tuple[int, str], Value | bool | int | float] = {}
        self._consts: dict[tuple[torch.dtype, tuple[int, ...]], list[tuple[torch.Tensor, Value]]]
        self._consts = {}
        self._const_count = 0
        self._causal: dict[tuple[int, int], Value] = {}
        self._meta_cache: dict[tuple[str | None, str], dict[str, str]] = {}

    # -- the walk ------------------------------------------------------------------------------

    def run(self) -> Graph:
        """Import every FX node; returns the finished graph."""
        signature = self.program.graph_signature
        inputs = {spec.arg.name: spec for spec in signature.input_specs}
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, inputs[node.name])
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                self._outputs(node.args[0], signature.output_specs)
            else:
                raise UnsupportedOpError(self._unsupported_message(node, f"FX {node.op} node"))
        return self.g

    def _placeholder(self, node: FxNode, spec: InputSpec) -> None:
        if spec.kind == InputKind.USER_INPUT:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                self.values[node] = self.g.add_input(node.name, TensorType.of(val))
            else:  # a Python value export specialised the graph on
                self.folded[node] = val
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            tensor = self._tensors[spec.target]
            # Trainable: an nn.Parameter that requires grad; buffers and frozen weights are fixed.
            trainable = spec.kind == InputKind.PARAMETER and tensor.requires_grad
            self.values[node] = self._param(spec.target, tensor, trainable=trainable)
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            tensor = self.program.constants[spec.target]
            if tensor.is_meta:
                self.values[node] = self._param(spec.target, tensor)
            else:
                self.folded[node] = tensor
        else:
            raise UnsupportedOpError(
                f"model input {node.name} is a {spec.kind.name.lower()}; cgc imports tensors only"
            )

    def _param(self, fqn: str, tensor: torch.Tensor, *, trainable: bool = False) -> Value:
        name = self._canonical.get(id(tensor), fqn)
        if name in self.g.params:
            return self.g.params[name]
        data = None if tensor.is_meta else tensor
        trainable = trainable and tensor.is_floating_point()
        return self.g.add_param(name, TensorType.of(tensor), data, trainable=trainable)

    def _call(self, node: FxNode) -> None:
        target = node.target
        if target in _ASSERTIONS:
            return
        if target is operator.getitem and node.args[0] in self.multi:
            self._getitem(node)
        elif self._foldable(node):
            self.folded[node] = self._fold(node)
        else:
            convert = CONVERTERS.get(target)
            if convert is None:
                raise UnsupportedOpError(self._unsupported_message(node))
            self._build(node, node, lambda: convert(self, *node.args, **node.kwargs))

    def _getitem(self, node: FxNode) -> None:
        source, index = node.args
        outputs = self.multi[source]
        item = outputs[index]
        if item is None:
            raise UnsupportedOpError(
                self._unsupported_message(source, f"its output {index} is not supported")
            )
        if isinstance(item, Value):
            self.values[node] = item
        else:
            outputs[index] = self._build(node, source, item)

    def _build(self, node: FxNode, op_node: FxNode, emit: Callable[[], Any]) -> Any:
        """Run a converter with `node`'s meta on new nodes, then name and check its result."""
        start = len(self.g.nodes)
        self.node, self._op_node = node, op_node
        try:
            with self.g.inserting_before(None, self._meta(node)):
                result = emit()
        except IRError as e:
            raise RuntimeError(
                f"cgc internal error importing {_op_name(op_node.target)}"
                f" {self._location(op_node)}: {e}"
            ) from e
        if not isinstance(result, Value):
            self.multi[node] = list(result)
            return result
        self._adopt(node, op_node, result, self.g.nodes[start:])
        self.values[node] = result
        return result

    def _adopt(self, node: FxNode, op_node: FxNode, result: Value, new: Sequence) -> None:
        """Name the result after the FX node and helpers `<op's FX name>.<op>`; type-check it.

        FX names never contain a dot, so helper names cannot take a later FX node's name.
        """
        for n in new:
            for out in n.outputs:
                if out is not result:
                    self.g.rename(out, self.g.fresh_name(f"{op_node.name}.{n.op}"))
        if any(n is result.producer for n in new) and result.name != node.name:
            self.g.rename(result, self.g.fresh_name(node.name))
        expected = self._val_type(node)
        if expected is not None and result.type != expected:
            raise RuntimeError(
                f"cgc internal error: {_op_name(node.target)} {self._location(node)} was"
                f" imported as {result.type} but torch says {expected}"
            )

    def _outputs(self, args: Sequence[Any], specs: Sequence[OutputSpec]) -> None:
        for spec, arg in zip(specs, args, strict=True):
            if spec.kind in _MUTATIONS:
                raise UnsupportedOpError(
                    f"the model mutates {spec.target} in forward; cgc compiles pure functions,"
                    " so move state updates out of forward"
                )
            if spec.kind not in (OutputKind.USER_OUTPUT, OutputKind.LOSS_OUTPUT):
                continue
            if not isinstance(arg, FxNode):
                continue
            if arg in self.folded and isinstance(self.folded[arg], torch.Tensor):
                self._build(arg, arg, lambda arg=arg: self.value(arg))
            if arg in self.values:
                self.g.outputs.append(self.values[arg])

    # -- constant folding ----------------------------------------------------------------------

    def _foldable(self, node: FxNode) -> bool:
        target = node.target
        if isinstance(target, torch._ops.HigherOrderOperator):
            return False
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            return False
        if target in _SHAPE_ONLY:
            return True
        return all(n in self.folded for n in node.all_input_nodes)

    def _fold(self, node: FxNode) -> Any:
        """Evaluate `node` with torch on CPU (device arguments rewritten, so meta models fold)."""

        def arg(n: FxNode) -> Any:
            if n in self.folded:
                return self.folded[n]
            val = n.meta["val"]  # a shape-only op's input: its shape and dtype suffice
            return torch.empty(val.shape, dtype=val.dtype, device="meta")

        args = map_arg(node.args, arg)
        kwargs = {
            k: _CPU if isinstance(v, torch.device) else v
            for k, v in map_arg(node.kwargs, arg).items()
        }
        if node.target in _SHAPE_ONLY:
            kwargs["device"] = _CPU
            key = None  # its stand-in inputs die young, so their ids are no key
        else:
            key = _memo_key((node.target, args, kwargs))
        if key in self._fold_memo:
            return self._fold_memo[key]
        try:
            with torch.no_grad():
                result = node.target(*args, **kwargs)
        except Exception as e:  # a bug in cgc: export ran this op on these very shapes
            raise RuntimeError(
                f"cgc internal error: folding {_op_name(node.target)} {self._location(node)}"
                f" failed: {e}"
            ) from e
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and (result.shape, result.dtype) != (val.shape, val.dtype):
            raise RuntimeError(
                f"cgc internal error: folding {_op_name(node.target)} {self._location(node)} gave"
                f" {result.dtype}{list(result.shape)} but torch export says"
                f" {val.dtype}{list(val.shape)}"
            )
        if key is not None:
            self._fold_memo[key] = result
        return result

    def _stored(self, tensor: torch.Tensor) -> Value | bool | int | float:
        """How a folded tensor is kept: its one value when uniform, else a parameter.

        Axes along which every slice is equal (a mask built per batch row, an expanded view)
        are stored once, so the parameter may be smaller than the tensor; uses expand it.
        """
        compact = tensor
        for axis, size in enumerate(tensor.shape):
            if size > 1 and torch.equal(compact, compact.narrow(axis, 0, 1).expand_as(compact)):
                compact = compact.narrow(axis, 0, 1)
        flat = compact.reshape(-1)
        if flat.numel() == 0 or bool((flat == flat[0]).all()):
            return _scalar_value(flat[0].item() if flat.numel() else 0, TensorType.of(tensor).dtype)
        return self._const_param(compact.contiguous())

    def _const_param(self, data: torch.Tensor) -> Value:
        """A parameter holding `data`; equal folded tensors (one mask per layer) share one."""
        same_type = self._consts.setdefault((data.dtype, tuple(data.shape)), [])
        for other, value in same_type:
            if torch.equal(other, data):
                return value
        name = self.g.fresh_name(f"const_{self._const_count}")
        self._const_count += 1
        value = self.g.add_param(name, TensorType.of(data), data)
        same_type.append((data, value))
        return value

    # -- what converters use -------------------------------------------------------------------

    @property
    def out(self) -> TensorType:
        """The result type torch reports for the node being built."""
        assert self.node is not None
        expected = self._val_type(self.node)
        if expected is None:
            raise RuntimeError(f"cgc internal error: {self.node.name} has no tensor result")
        return expected

    def type_of(self, arg: Any) -> TensorType | None:
        """The type of a tensor argument; None for a Python scalar."""
        if isinstance(arg, FxNode):
            if arg in self.values:
                return self.values[arg].type
            if isinstance(self.folded.get(arg), torch.Tensor):
                return TensorType.of(self.folded[arg])
        return None

    def value(self, arg: FxNode) -> Value:
        """The IR value of a tensor argument (a folded one enters the graph here)."""
        if arg in self.values:
            return self.values[arg]
        return self.operand(arg, TensorType.of(self.folded[arg]).dtype)

    def operand(self, arg: Any, dtype: str) -> Value:
        """A tensor or Python scalar argument as a value of `dtype` (cast when it differs)."""
        if isinstance(arg, FxNode) and arg in self.values:
            value = self.values[arg]
            return value if value.dtype == dtype else self.g.call("cast", value, dtype=dtype)
        if isinstance(arg, FxNode) and isinstance(self.folded.get(arg), torch.Tensor):
            return self._folded_operand(self.folded[arg], dtype)
        if isinstance(arg, FxNode):
            arg = self.folded[arg]
        if isinstance(arg, bool | int | float):
            return self.scalar(arg, dtype)
        raise RuntimeError(f"cgc internal error: cannot use {arg!r} as a tensor operand")

    def _folded_operand(self, folded: torch.Tensor, dtype: str) -> Value:
        """A folded tensor in the graph; constant and expand nodes are made per use, so no
        node feeds two layers, while the parameter behind them is shared."""
        key = (id(folded), dtype)
        if key not in self._storage:
            self._storage[key] = self._stored(folded.to(TORCH_DTYPES[dtype]))
        return self._materialized(self._storage[key], list(folded.shape), dtype)

    def tensor(self, data: torch.Tensor) -> Value:
        """A tensor a converter computed at import (a folded gather index) as a graph value."""
        return self._materialized(self._stored(data), list(data.shape), TensorType.of(data).dtype)

    def _materialized(
        self, stored: Value | bool | int | float, shape: list[int], dtype: str
    ) -> Value:
        """A stored tensor at its full shape: a constant node, the parameter, or its expand."""
        if not isinstance(stored, Value):
            attrs = {"value": stored, "dtype": dtype, "shape": shape}
            return self.g.add_node("constant", [], attrs).output
        if list(stored.shape) == shape:
            return stored
        return self.g.call("expand", stored, shape=shape)

    def scalar(self, value: bool | int | float, dtype: str) -> Value:
        """A scalar `constant` node."""
        return self.g.constant(_scalar_value(value, dtype), dtype)

    def result_dtype(self, *args: Any) -> str:
        """The dtype torch promotes these operands to (what a comparison computes in)."""

        def witness(arg: Any) -> Any:
            t = self.type_of(arg)
            if t is None:
                return self.folded[arg] if isinstance(arg, FxNode) else arg
            return torch.empty((0,) if t.shape else (), dtype=t.torch_dtype)

        return TensorType.of(torch.empty((), dtype=torch.result_type(*map(witness, args)))).dtype

    def causal_mask(self, queries: int, keys: int) -> Value:
        """A bool [queries, keys] parameter, true where key index <= query index (torch SDPA)."""
        if (queries, keys) not in self._causal:
            mask = torch.ones(queries, keys, dtype=torch.bool).tril()
            name = self.g.fresh_name(f"causal_mask_{queries}x{keys}")
            self._causal[queries, keys] = self.g.add_param(name, TensorType.of(mask), mask)
        return self._causal[queries, keys]

    def unsupported(self, reason: str) -> UnsupportedOpError:
        """The error for an op cgc maps only in part; converters `raise cx.unsupported(...)`."""
        assert self._op_node is not None
        return UnsupportedOpError(self._unsupported_message(self._op_node, reason))

    # -- meta and messages ---------------------------------------------------------------------

    def _val_type(self, node: FxNode) -> TensorType | None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        if val.dtype not in DTYPE_NAMES:
            reason = f"dtype {val.dtype} is not supported by cgc"
            raise UnsupportedOpError(self._unsupported_message(node, reason))
        return TensorType.of(val)

    def _meta(self, node: FxNode) -> dict[str, str]:
        """`scope` (innermost module path) and `source` (user file:line) of an FX node."""
        stack = node.meta.get("nn_module_stack")
        scope = next(reversed(stack.values()))[0] if stack else ""
        key = (node.meta.get("stack_trace"), scope)
        if key not in self._meta_cache:
            meta = {}
            if scope:
                meta["scope"] = scope
            source = _source(key[0])
            if source:
                meta["source"] = source
            self._meta_cache[key] = meta
        return self._meta_cache[key]

    def _location(self, node: FxNode) -> str:
        meta = self._meta(node)
        scope = meta.get("scope", "the top-level module")
        return f"at {meta.get('source', 'an unknown line')} (in {scope})"

    def _unsupported_message(self, node: FxNode, reason: str | None = None) -> str:
        message = f"unsupported operation {_op_name(node.target)} {self._location(node)}"
        if reason is None and torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
            reason = "random ops cannot be compiled; call model.eval() to drop dropout"
        return f"{message}: {reason}" if reason else message
