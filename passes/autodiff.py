"""autodiff: append the backward pass of a scalar loss, making the joint (training) graph.

    graph @g(inputs) { ... return %loss, %logits }
      becomes
    graph @g(inputs) { ...forward... ...backward... return %loss, %grad.<param>, ... }

Reverse-mode differentiation on the IR, so any graph trains, ONNX imports included. Each op
declares its vector-Jacobian product beside its reference implementation (`vjp=` in the op
registry, contract at `VjpFn`); this pass only orders the rules. It

1. picks the loss (the one 0-d float output, or `loss=NAME`) and the parameters to
   differentiate (the trainable ones, or those matching `wrt`);
2. keeps the nodes on a path from those parameters to the loss (active nodes), so no gradient
   nobody needs is computed, and integer and bool values never carry one;
3. walks the active nodes backwards from a seed of 1.0 (%seed), calling each op's rule with the
   cotangents of its outputs and summing the cotangents a value receives from its several
   uses: tied weights (the LM head and the embedding) get one summed gradient. The sum is an
   `add` chain, except that padded slices tiling the value (the q, k, v thirds of one
   projection) are joined with one `concat`, and an embedding's scattered rows are added into
   the rest in place (`embedding_grad`'s accumulator operand) rather than into a zero table;
4. returns (loss, [other forward outputs with keep_outputs], grad.<param> for every parameter
   the loss depends on), and erases the dead forward nodes (rules may swap a forward node for
   one that saves a residual, e.g. `attention` -> `attention_lse`).

Parameters the loss does not depend on get no gradient output (counted as `unreached`).
"""

from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase

from cgc.errors import InputError, IRError
from cgc.ir import Graph, Node, Value, get_op, verify
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.registry import register_pass

GRAD_PREFIX = "grad."
SEED = "seed"  # the loss's cotangent, 1.0: where a loss scale enters (`scale_loss`)


def grad_name(param: str) -> str:
    """The name of a parameter's gradient output: `grad.transformer.wte.weight`."""
    return GRAD_PREFIX + param


def differentiate(
    graph: Graph,
    *,
    loss: str | None = None,
    wrt: list[str] | None = None,
    keep_outputs: bool = False,
) -> dict[str, int]:
    """Append the backward pass to `graph` in place (see the module docstring); counts.

    `wrt` lists parameter names or globs (`transformer.h.*`); None means the trainable ones.
    """
    target = _loss_output(graph, loss)
    params = _selected(graph, wrt)
    depends = _depending(graph, params)
    if id(target) not in depends:
        raise InputError(
            f"loss %{target.name} does not depend on any of the {len(params)} parameter(s) to"
            " differentiate; nothing to train"
        )
    active = _active(graph, target, depends)
    forward = {id(v) for v in graph.values()}
    cotangents: dict[int, list[Value]] = {}
    with graph.inserting_before(None, target.producer.meta if target.producer else {}):
        seed = graph.constant(1.0, target.dtype)
        graph.rename(seed, graph.fresh_name(SEED))
        cotangents[id(target)] = [seed]
    for node in active:
        _backward(graph, node, cotangents, depends)
    outputs = [target]
    if keep_outputs:
        outputs += [v for v in graph.outputs if v is not target]
    grads: list[Value] = []
    for param in params:
        if id(param) not in cotangents:
            continue
        with graph.inserting_before(None, {"scope": param.name.rpartition(".")[0]}):
            grad = _sum(graph, cotangents.pop(id(param)))
        if id(grad) in forward or grad in outputs or grad in grads:  # one name per value
            grad = graph.call("reshape", grad, shape=list(grad.shape))
        graph.rename(grad, graph.fresh_name(grad_name(param.name)))
        grads.append(grad)
    graph.outputs = outputs + grads
    dead = _eliminate_dead(graph)
    verify(graph)
    return {
        "active-nodes": len(active),
        "gradients": len(grads),
        "unreached": len(params) - len(grads),
        "dead-nodes": dead,
    }


def scale_loss(graph: Graph, name: str = "loss_scale") -> Value:
    """Seed the backward of a joint graph with a new 0-d input `name` instead of 1.0.

    Every gradient is linear in the seed, so they all come out multiplied by the input's
    value: the loss scaling of mixed-precision training, which keeps small gradients above a
    16-bit format's underflow (the caller divides them by the scale in fp32, see
    cgc.training.loss_scale). Returns the new input.
    """
    seed = next((v for v in graph.values() if v.name == SEED), None)
    node = seed.producer if seed is not None else None
    if node is None or node.op != "constant" or node.attrs["value"] != 1.0 or seed.type.rank:
        raise InputError(
            f"graph @{graph.name} has no backward seed %{SEED} (autodiff's constant 1.0); "
            "loss scaling applies to a graph the autodiff pass made"
        )
    scale = graph.add_input(graph.fresh_name(name), seed.type)
    graph.replace_all_uses(seed, scale)
    graph.erase_node(node)
    return scale


def _loss_output(graph: Graph, name: str | None) -> Value:
    if name:
        for v in graph.outputs:
            if v.name == name:
                if v.type.rank != 0 or not v.type.is_float:
                    raise InputError(f"loss %{name} is {v.type}; the loss must be a 0-d float")
                return v
        names = ", ".join(f"%{v.name}" for v in graph.outputs)
        raise InputError(f"graph @{graph.name} has no output %{name}; its outputs: {names}")
    scalars = [v for v in graph.outputs if v.type.rank == 0 and v.type.is_float]
    if len(scalars) == 1:
        return scalars[0]
    outs = ", ".join(f"%{v.name}: {v.type}" for v in graph.outputs)
    if scalars:
        raise InputError(
            f"graph @{graph.name} has {len(scalars)} scalar outputs ({outs}); say which is the"
            " loss with autodiff{loss=NAME}"
        )
    raise InputError(
        f"autodiff needs a scalar (0-d) float loss output; graph @{graph.name} returns {outs}."
        " Add a loss first (cgc.training.add_next_token_loss for a model returning logits)"
    )


def _selected(graph: Graph, wrt: list[str] | None) -> list[Value]:
    if wrt is None:
        params = graph.trainable_params()
        if not params:
            raise InputError(
                f"graph @{graph.name} has no trainable parameters; mark some (`param trainable`)"
                " or name them with autodiff{wrt=...}"
            )
        return params
    params = [
        v
        for name, v in graph.params.items()
        if v.type.is_float and any(fnmatchcase(name, pattern) for pattern in wrt)
    ]
    if not params:
        raise InputError(
            f"no floating-point parameter of graph @{graph.name} matches wrt={'|'.join(wrt)}"
        )
    return params


def _depending(graph: Graph, params: list[Value]) -> set[int]:
    """Ids of the float values that depend differentiably on `params`."""
    depends = {id(p) for p in params}
    for node in graph.nodes:
        if get_op(node.op).differentiable and any(id(v) in depends for v in node.inputs):
            depends.update(id(v) for v in node.outputs if v.type.is_float)
    return depends


def _active(graph: Graph, target: Value, depends: set[int]) -> list[Node]:
    """The nodes on a path from the parameters to the loss, last first."""
    needed = {id(target)}
    active = []
    for node in reversed(graph.nodes):
        if any(id(v) in needed and id(v) in depends for v in node.outputs):
            active.append(node)
            needed.update(id(v) for v in node.inputs if id(v) in depends)
    return active


def _backward(
    graph: Graph, node: Node, cotangents: dict[int, list[Value]], depends: set[int]
) -> None:
    """Call `node`'s VJP rule and add what it returns to its operands' cotangents."""
    opdef = get_op(node.op)
    if opdef.vjp is None:
        raise IRError(f"op {node.op!r} has no VJP rule; it cannot be differentiated")
    with graph.inserting_before(None, node.meta):
        incoming = [_sum(graph, cotangents.pop(id(v), [])) for v in node.outputs]
        grads = opdef.vjp(graph, node, incoming)
        if len(grads) != len(node.inputs):
            raise IRError(
                f"VJP of {node.op} returned {len(grads)} cotangents for {len(node.inputs)} inputs"
            )
        for i, (v, grad) in enumerate(zip(node.inputs, grads, strict=True)):
            if id(v) not in depends:
                continue
            if grad is None:
                raise InputError(
                    f"{node.op} at {node.meta.get('source', 'unknown source')} gives no gradient"
                    f" for its operand {i} (%{v.name}), which depends on the parameters being"
                    " differentiated"
                )
            if grad.type != v.type:
                raise IRError(
                    f"VJP of {node.op}: the cotangent of operand {i} (%{v.name}: {v.type}) is"
                    f" {grad.type}"
                )
            cotangents.setdefault(id(v), []).append(grad)


def _sum(graph: Graph, parts: list[Value]) -> Value | None:
    """The total of the cotangents a value received (None for none)."""
    if len(parts) < 2:
        return parts[0] if parts else None
    tiles = _tiles(parts)
    if tiles is not None:
        return graph.call("concat", *tiles, axis=parts[0].producer.attrs["axis"])
    scattered = [p for p in parts if p.producer is not None and p.producer.op == "embedding_grad"]
    total = None
    for part in parts:
        if not any(part is s for s in scattered):
            total = part if total is None else graph.call("add", total, part)
    for part in scattered:
        node = part.producer
        if total is None or len(node.inputs) == 3:
            total = part if total is None else graph.call("add", total, part)
        else:
            total = graph.call("embedding_grad", *node.inputs, total, **node.attrs)
    return total


def _tiles(parts: list[Value]) -> list[Value] | None:
    """The unpadded pieces, in order, when `parts` are zero-paddings along one axis that
    tile it exactly (so their sum is the concatenation of the pieces); else None."""
    nodes = [p.producer for p in parts]
    if any(n is None or n.op != "pad" or n.attrs["interior"] for n in nodes):
        return None
    if len({n.attrs["axis"] for n in nodes}) != 1:
        return None
    nodes.sort(key=lambda n: n.attrs["before"])
    axis, start = nodes[0].attrs["axis"], 0
    for n in nodes:
        if n.attrs["before"] != start:
            return None
        start += n.inputs[0].shape[axis]
    return [n.inputs[0] for n in nodes] if start == parts[0].shape[axis] else None


def _eliminate_dead(graph: Graph) -> int:
    outputs = {id(v) for v in graph.outputs}
    dead = 0
    for node in reversed(list(graph.nodes)):
        if all(not v.users and id(v) not in outputs for v in node.outputs):
            graph.erase_node(node)
            dead += 1
    return dead


@register_pass
class Autodiff(Pass):
    """Append the backward pass: gradients of the scalar loss w.r.t. the trainable parameters.

    Outputs become (loss, the other forward outputs when keep-outputs, then one
    `%grad.<param>` per parameter the loss depends on, in declaration order). `loss` names the
    loss output when the graph has several 0-d outputs; `wrt` differentiates the parameters
    matching any of its `|`-separated globs (e.g. `transformer.h.*|lm_head.weight`) instead of
    the trainable ones.
    """

    name = "autodiff"
    loss: str = ""
    wrt: str = ""
    keep_outputs: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        wrt = [p for p in self.wrt.split("|") if p] or None
        stats = differentiate(
            graph, loss=self.loss or None, wrt=wrt, keep_outputs=self.keep_outputs
        )
        return PassResult(True, {k: v for k, v in sorted(Counter(stats).items()) if v})
