"""Large elementwise regions as Scan loops over cache-sized chunks.

A training step ends with an optimizer update per parameter: a dozen elementwise ops over
tensors as large as the parameter, which ONNX Runtime runs one full pass over memory each
(for Cerebras-GPT 111M, most of a step's time on a 2-core machine). No ONNX op fuses them, but a
`Scan` whose body holds the whole region, fed the region's inputs in chunks of about 32K
elements, keeps each chunk's intermediates in cache: the region then reads and writes each
full tensor once. On 111M's embedding update (38.6M elements, 2 threads) that took 0.19 s
against 0.30 s op by op; on a 2.4M-element MLP weight, 0.033 s against 0.06 s.

A region is a connected set of elementwise nodes (`ELEMENTWISE`) whose results all have one
shape of at least MIN_ELEMENTS elements, whose operands have that shape or are scalars (captured
from the outer graph by the body), and whose results are used only inside the region or as
graph outputs. A graph input or output that only such a region touches is declared flat,
[chunks, chunk], so the Scan reads and writes the bound buffers directly; the session shapes
its buffers by the model's declarations.

The gradient-norm's sum of squares over the last axis, reduce_sum(mul(x, x), axes=[-1]), is
chunked the same way, in blocks of whole rows: x is read once, and the full-size square (as
large as the gradient, 154 MB for 111M's embedding) is never written. The row sums are the same
ReduceSum over the same rows. Its blocks are larger (up to SUM_CHUNK elements): the body is two
ops, so the Scan's cost per iteration weighs more. On 111M's embedding gradient (2 threads, a
busy machine, medians of 9) blocks of 1733 rows (1.3M elements) took 28-34 ms, blocks of 29 rows
49-58 ms, and Mul then ReduceSum 52-84 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod

from onnx import helper

from cgc.backends.onnxruntime.lowering import ONNX_DTYPES, Emitter
from cgc.ir import Graph, Node, Value

ELEMENTWISE = frozenset({"add", "sub", "mul", "div", "sqrt", "neg"})
MIN_ELEMENTS = 1 << 19  # smaller tensors stay in cache op by op
CHUNK = 1 << 15  # the largest chunk: 32K fp32 elements, 128 KB per tensor
MIN_CHUNK = 1 << 12
SUM_CHUNK = 1 << 21  # the largest block of rows of a chunked sum of squares: 8 MB of fp32


@dataclass
class Region:
    """Nodes to run as one Scan over chunks of `chunk` elements."""

    shape: tuple[int, ...]
    chunk: int
    nodes: list[Node]
    inputs: list[Value] = field(default_factory=list)  # full-size operands from outside
    outputs: list[Value] = field(default_factory=list)  # full-size results used outside

    @property
    def chunks(self) -> int:
        return prod(self.shape) // self.chunk


@dataclass
class SumOfSquares:
    """reduce_sum(mul(x, x), axes=[-1]) run as one Scan over blocks of `rows` rows of x."""

    square: Node
    total: Node
    rows: int

    @property
    def x(self) -> Value:
        return self.square.inputs[0]


def chunk_size(numel: int) -> int | None:
    """The largest divisor of `numel` between MIN_CHUNK and CHUNK (None if there is none)."""
    for size in range(min(CHUNK, numel), MIN_CHUNK - 1, -1):
        if numel % size == 0:
            return size
    return None


def find_regions(graph: Graph) -> list[Region]:
    """The regions of `graph`, in the order their last nodes appear."""
    outputs = {id(v) for v in graph.outputs}

    def fits(node: Node) -> bool:
        if node.op not in ELEMENTWISE or len(node.outputs) != 1 or not node.output.type.is_float:
            return False
        shape = node.output.shape
        return prod(shape) >= MIN_ELEMENTS and all(
            v.shape == shape or v.type.rank == 0 for v in node.inputs
        )

    members = {id(n): n for n in graph.nodes if fits(n)}
    changed = True
    while changed:  # results used outside the region keep their node outside too
        changed = False
        for key, node in list(members.items()):
            if any(id(u) not in members for u in node.output.users):
                del members[key]
                changed = True
    parent: dict[int, int] = {key: key for key in members}

    def root(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for node in members.values():
        for v in node.inputs:
            if v.producer is not None and id(v.producer) in members:
                parent[root(id(v.producer))] = root(id(node))
    groups: dict[int, list[Node]] = {}
    for node in graph.nodes:
        if id(node) in members:
            groups.setdefault(root(id(node)), []).append(node)
    regions = []
    for nodes in groups.values():
        shape = nodes[0].output.shape
        chunk = chunk_size(prod(shape))
        if chunk is None:
            continue
        inside = {id(n) for n in nodes}
        region = Region(shape, chunk, nodes)
        seen: set[int] = set()
        for node in nodes:
            for v in node.inputs:
                outside = v.producer is None or id(v.producer) not in inside
                if outside and v.shape == shape and id(v) not in seen:
                    seen.add(id(v))
                    region.inputs.append(v)
            if id(node.output) in outputs:
                region.outputs.append(node.output)
        regions.append(region)
    return regions


def find_sums(graph: Graph) -> list[SumOfSquares]:
    """The sums of squares over the last axis of tensors of at least MIN_ELEMENTS elements whose
    square nothing else reads, with the most rows per block that divides the rows and keeps a
    block between MIN_CHUNK and SUM_CHUNK elements."""
    outputs = {id(v) for v in graph.outputs}
    sums = []
    for node in graph.nodes:
        square = node.inputs[0].producer if node.op == "reduce_sum" else None
        if square is None or square.op != "mul" or square.inputs[0] is not square.inputs[1]:
            continue
        x = square.inputs[0]
        if x.type.rank < 2 or x.type.numel < MIN_ELEMENTS or not x.type.is_float:
            continue
        if node.attrs["keepdim"] or [a % x.type.rank for a in node.attrs["axes"]] != [
            x.type.rank - 1
        ]:
            continue
        if len(square.output.users) != 1 or id(square.output) in outputs:
            continue
        width, rows = x.shape[-1], prod(x.shape[:-1])
        fits = [k for k in range(1, rows + 1) if rows % k == 0 and k * width <= SUM_CHUNK]
        if fits and fits[-1] * width >= MIN_CHUNK:
            sums.append(SumOfSquares(square, node, fits[-1]))
    return sums


def flat_values(graph: Graph, regions: Sequence[Region]) -> dict[str, list[int]]:
    """Graph inputs and outputs only a region touches, by name, with their flat shape."""
    flat: dict[str, list[int]] = {}
    for region in regions:
        members = {id(n) for n in region.nodes}
        shape = [region.chunks, region.chunk]
        for v in region.inputs:
            if v in graph.inputs and all(id(u) in members for u in v.users):
                flat[v.name] = shape
        for v in region.outputs:
            flat[v.name] = shape
    return flat


def emit_scan(e: Emitter, region: Region, flat: dict[str, list[int]]) -> None:
    """Emit the Scan computing `region`: inputs reshaped (free views) unless declared flat,
    results written flat and reshaped back unless the graph output is flat."""
    shape = [region.chunks, region.chunk]
    e._node = region.nodes[-1]
    scan_inputs = []
    for v in region.inputs:
        if v.name in flat:
            scan_inputs.append(v.name)
        else:
            scan_inputs.append(e.op("Reshape", [v.name, e.ints(shape, "chunks")], allowzero=1))
    body = Emitter(region.outputs)
    body._node = region.nodes[-1]
    chunked = {
        id(v): Value(body.fresh("chunk"), v.type.with_shape((region.chunk,))) for v in region.inputs
    }
    for node in region.nodes:
        inputs = [chunked.get(id(v), v) for v in node.inputs]
        copy = Node(node.op, inputs, node.attrs, node.meta)
        copy.outputs = node.outputs
        body.lower(copy)
    piece = [region.chunk]
    graph = helper.make_graph(
        body.nodes,
        f"{region.outputs[0].name}/body",
        inputs=[
            helper.make_tensor_value_info(c.name, ONNX_DTYPES[c.dtype], piece)
            for c in chunked.values()
        ],
        outputs=[
            helper.make_tensor_value_info(v.name, ONNX_DTYPES[v.dtype], piece)
            for v in region.outputs
        ],
        initializer=body.initializers,
    )
    names = [v.name if v.name in flat else e.fresh("flat") for v in region.outputs]
    e.op("Scan", scan_inputs, names, body=graph, num_scan_inputs=len(scan_inputs))
    for v, name in zip(region.outputs, names, strict=True):
        if v.name not in flat:
            e.op("Reshape", [name, e.ints(v.shape, "shape")], v.name, allowzero=1)


def emit_sum_scan(e: Emitter, s: SumOfSquares) -> None:
    """Emit the Scan computing `s`: x viewed as [blocks, rows, width], one block's squares and
    row sums per iteration, the [blocks, rows] sums reshaped to the reduction's shape."""
    x, out = s.x, s.total.output
    width = x.shape[-1]
    blocks = prod(x.shape[:-1]) // s.rows
    e._node = s.total
    viewed = e.op("Reshape", [x.name, e.ints([blocks, s.rows, width], "blocks")], allowzero=1)
    body = Emitter([out])
    body._node = s.total
    block = Value(body.fresh("block"), x.type.with_shape((s.rows, width)))
    for node in (s.square, s.total):
        copy = Node(node.op, [block if v is x else v for v in node.inputs], node.attrs, node.meta)
        copy.outputs = node.outputs
        body.lower(copy)
    graph = helper.make_graph(
        body.nodes,
        f"{out.name}/body",
        inputs=[helper.make_tensor_value_info(block.name, ONNX_DTYPES[x.dtype], [s.rows, width])],
        outputs=[helper.make_tensor_value_info(out.name, ONNX_DTYPES[out.dtype], [s.rows])],
        initializer=body.initializers,
    )
    sums = e.op("Scan", [viewed], e.fresh("sums"), body=graph, num_scan_inputs=1)
    e.op("Reshape", [sums, e.ints(out.shape, "shape")], out.name, allowzero=1)
