"""Declarative rewrites: a pattern written like the math, a replacement, and why-not traces.

    x, w, b = Var("x"), Var("w"), Var("b")

    @rewrite(Op.add(Op.matmul(x, Op.transpose(w, perm=[1, 0])), b))
    def linear(m: Match, g: Graph) -> Value:
        '''x·wᵀ + b = linear(x, w, b)'''
        return g.call("linear", m["x"], m["w"], m["b"])

A pattern is a tree of `Op` nodes over the leaves `Var` (any value, bound by name: one name binds
one value) and `Const` (a constant scalar, exact or within a tolerance). Reusing one sub-pattern
object demands one shared value, which is how DAGs such as `d * d` are written. Operators build
ops (`x * 0.5 + y`), commutative ops match either operand order, and `Alt` (or `p | q`) tries
alternatives in order. `explain` reports the constraint that stopped a match.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cgc.errors import IRError
from cgc.ir import Graph, Node, Value, get_op

if TYPE_CHECKING:
    from cgc.passes.base import PassContext

Predicate = Callable[[Any], bool]


def _predicates(where: Predicate | Sequence[Predicate] | None) -> tuple[Predicate, ...]:
    if where is None:
        return ()
    return tuple(where) if isinstance(where, Sequence) else (where,)


def describe(fn: Callable) -> str:
    """What a predicate demands: the first line of its docstring, else its name."""
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else f"{fn.__name__} to hold"


class Pattern:
    """A node of a pattern; arithmetic operators build `Op` patterns over it."""

    def __add__(self, other: Any) -> Op:
        return Op.add(self, other)

    def __radd__(self, other: Any) -> Op:
        return Op.add(other, self)

    def __sub__(self, other: Any) -> Op:
        return Op.sub(self, other)

    def __rsub__(self, other: Any) -> Op:
        return Op.sub(other, self)

    def __mul__(self, other: Any) -> Op:
        return Op.mul(self, other)

    def __rmul__(self, other: Any) -> Op:
        return Op.mul(other, self)

    def __truediv__(self, other: Any) -> Op:
        return Op.div(self, other)

    def __rtruediv__(self, other: Any) -> Op:
        return Op.div(other, self)

    def __pow__(self, other: Any) -> Op:
        return Op.pow(self, other)

    def __neg__(self) -> Op:
        return Op.neg(self)

    def __or__(self, other: Pattern) -> Alt:
        return Alt(self, other)


def as_pattern(item: Pattern | float | int) -> Pattern:
    """A pattern as is; a Python number as the exact constant it names."""
    if isinstance(item, Pattern):
        return item
    if isinstance(item, int | float) and not isinstance(item, bool):
        return Const(float(item))
    raise TypeError(f"cannot use {item!r} in a pattern")


class Var(Pattern):
    """Any value, bound to `name`; every occurrence of the name must be the same value."""

    def __init__(self, name: str, *, where: Predicate | Sequence[Predicate] | None = None):
        self.name = name
        self.where = _predicates(where)

    def __repr__(self) -> str:
        return self.name


class Const(Pattern):
    """A constant scalar: a `constant` node, or a one-element parameter holding data.

    `Const(0.5)` matches exactly, `Const(approx=1/sqrt(2), rtol=1e-6)` within a tolerance,
    `Const(where=pred)` any value the predicate accepts; `name` binds the value and its number.
    """

    def __init__(
        self,
        value: float | None = None,
        *,
        approx: float | None = None,
        rtol: float = 1e-6,
        atol: float = 0.0,
        where: Predicate | Sequence[Predicate] | None = None,
        name: str | None = None,
    ):
        self.value = value
        self.approx = approx
        self.rtol = rtol
        self.atol = atol
        self.where = _predicates(where)
        self.name = name

    def accepts(self, number: float) -> str | None:
        """None when `number` fits; otherwise what was expected."""
        if self.value is not None and number != self.value:
            return f"constant {self.value!r}"
        if self.approx is not None and not math.isclose(
            number, self.approx, rel_tol=self.rtol, abs_tol=self.atol
        ):
            return f"constant ≈{self.approx!r} (rtol {self.rtol:g})"
        for pred in self.where:
            if not pred(number):
                return f"constant: {describe(pred)}"
        return None

    def __repr__(self) -> str:
        if self.value is not None:
            return repr(self.value)
        return f"Const(approx={self.approx!r})" if self.approx is not None else "Const()"


class _OpBuilders(type):
    """`Op.add(a, b)` builds an `Op` pattern for the registered op `add`."""

    def __getattr__(cls, op: str) -> Callable[..., Op]:
        if op.startswith("__"):
            raise AttributeError(op)
        get_op(op)  # a misspelt op fails where the pattern is written

        def build(
            *operands: Pattern | float,
            name: str | None = None,
            where: Predicate | Sequence[Predicate] | None = None,
            **attrs: Any,
        ) -> Op:
            return cls(op, operands, attrs, name=name, where=where)

        return build


class Op(Pattern, metaclass=_OpBuilders):
    """An op with operand patterns and attribute constraints (a value, or a predicate on it).

    `where` predicates receive the matched Node; `name` binds the node's output value.
    """

    def __init__(
        self,
        op: str,
        operands: Iterable[Pattern | float],
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        where: Predicate | Sequence[Predicate] | None = None,
    ):
        self.op = op
        self.operands = [as_pattern(p) for p in operands]
        self.attrs = dict(attrs or {})
        self.name = name
        self.where = _predicates(where)
        self.commutative = get_op(op).commutative and len(self.operands) == 2

    def __repr__(self) -> str:
        return f"{self.op}({', '.join(map(repr, self.operands))})"


class Alt(Pattern):
    """The first of several alternative patterns that matches (backtracking into later ones)."""

    def __init__(self, *options: Pattern | float):
        self.options = [as_pattern(p) for p in options]

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.options))


# -- matching -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """Bindings of one partial match; copied on extension so alternatives can backtrack."""

    values: dict[str, Value] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    shared: dict[int, Value] = field(default_factory=dict)  # id(sub-pattern) -> its value
    nodes: tuple[Node, ...] = ()  # matched op nodes, root first
    leaves: tuple[Node, ...] = ()  # constant nodes matched by Const
    progress: int = 0

    def extend(self, pattern: Pattern, value: Value, *, node=None, leaf=None, number=None):
        values, numbers = self.values, self.numbers
        name = getattr(pattern, "name", None)
        if name is not None:
            values = {**values, name: value}
            if number is not None:
                numbers = {**numbers, name: number}
        return _State(
            values,
            numbers,
            {**self.shared, id(pattern): value},
            self.nodes + ((node,) if node is not None else ()),
            self.leaves + ((leaf,) if leaf is not None else ()),
            self.progress + 1,
        )


@dataclass(frozen=True)
class _Failure:
    progress: int  # pattern nodes matched before it: the furthest failure is the informative one
    value: Value
    message: str
    expected_ops: tuple[str, ...] = ()  # an op mismatch: what was expected ...
    found: str = ""  # ... and what was there


class _Matcher:
    def __init__(self, graph: Graph | None, trace: list[_Failure] | None) -> None:
        self.graph = graph
        self.trace = trace

    def fail(self, state: _State, value: Value, message: str, ops=(), found: str = "") -> None:
        if self.trace is not None:
            self.trace.append(_Failure(state.progress, value, message, tuple(ops), found))

    def kind(self, value: Value) -> str:
        """What produces a value, for messages."""
        if value.producer is not None:
            return value.producer.op
        if self.graph is not None and self.graph.params.get(value.name) is value:
            return "a parameter"
        return "a graph input" if self.graph is not None else "a parameter or graph input"

    def match(self, pattern: Pattern, value: Value, state: _State) -> Iterator[_State]:
        if isinstance(pattern, Var):  # bound by name, which also says more in a trace
            yield from self._var(pattern, value, state)
            return
        seen = state.shared.get(id(pattern))
        if seen is not None:
            if seen is value:
                yield state
            else:
                self.fail(state, value, f"expected the same value as %{seen.name}")
            return
        if isinstance(pattern, Const):
            yield from self._const(pattern, value, state)
        elif isinstance(pattern, Alt):
            for option in pattern.options:
                yield from self.match(option, value, state)
        else:
            yield from self._op(pattern, value, state)

    def _var(self, pattern: Var, value: Value, state: _State) -> Iterator[_State]:
        bound = state.values.get(pattern.name)
        if bound is not None:
            if bound is value:
                yield state
            else:
                self.fail(state, value, f"{pattern.name} is already %{bound.name}")
            return
        for pred in pattern.where:
            if not pred(value):
                self.fail(state, value, f"expected {pattern.name}: {describe(pred)}")
                return
        yield state.extend(pattern, value)

    def _const(self, pattern: Const, value: Value, state: _State) -> Iterator[_State]:
        number = constant_number(value, self.graph)
        if number is None:
            self.fail(state, value, f"expected a constant, found {self.kind(value)}")
            return
        problem = pattern.accepts(number)
        if problem is not None:
            self.fail(state, value, f"expected {problem}, found {number!r}")
            return
        yield state.extend(pattern, value, leaf=value.producer, number=number)

    def _op(self, pattern: Op, value: Value, state: _State) -> Iterator[_State]:
        node = value.producer
        if node is None or node.op != pattern.op:
            found = self.kind(value)
            self.fail(state, value, f"expected op {pattern.op}, found {found}", [pattern.op], found)
            return
        if len(node.inputs) != len(pattern.operands):
            n = len(pattern.operands)
            self.fail(state, value, f"expected {n} operands, found {len(node.inputs)}")
            return
        for key, want in pattern.attrs.items():
            got = node.attrs.get(key)
            ok = want(got) if callable(want) else _same_attr(got, want)
            if not ok:
                wanted = describe(want) if callable(want) else repr(want)
                self.fail(state, value, f"expected {key}={wanted}, found {got!r}")
                return
        for pred in pattern.where:
            if not pred(node):
                self.fail(state, value, f"expected {describe(pred)}")
                return
        state = state.extend(pattern, value, node=node)
        orders = [pattern.operands]
        if pattern.commutative and pattern.operands[0] is not pattern.operands[1]:
            orders.append(pattern.operands[::-1])
        for operands in orders:
            yield from self._all(operands, node.inputs, state)

    def _all(self, patterns: Sequence[Pattern], values: Sequence[Value], state: _State):
        if not patterns:
            yield state
            return
        for first in self.match(patterns[0], values[0], state):
            yield from self._all(patterns[1:], values[1:], first)


def _same_attr(got: Any, want: Any) -> bool:
    if isinstance(want, list | tuple):
        return isinstance(got, list | tuple) and list(got) == list(want)
    return got == want


def constant_number(value: Value, graph: Graph | None) -> float | None:
    """The scalar a value holds: a `constant` node's value, or a one-element parameter's data."""
    node = value.producer
    if node is not None:
        return float(node.attrs["value"]) if node.op == "constant" else None
    if graph is None or value.type.numel != 1 or graph.params.get(value.name) is not value:
        return None
    data = graph.weights.get(value.name)
    if data is None or data.is_meta:
        return None
    return float(data.reshape(()).item())


# -- matches and rewrites -----------------------------------------------------------------------


class Match:
    """A successful match: bound values by name (`m["x"]`), constants' numbers, matched nodes."""

    def __init__(self, graph: Graph | None, root: Node, state: _State) -> None:
        self.graph = graph
        self.root = root
        self.values = state.values
        self.numbers = state.numbers
        self.nodes = state.nodes
        self.leaves = state.leaves

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def number(self, name: str) -> float:
        """The number a named `Const` matched."""
        return self.numbers[name]

    def __repr__(self) -> str:
        items = ", ".join(f"{k}=%{v.name}" for k, v in sorted(self.values.items()))
        return f"<match at %{self.root.output.name}: {items}>"


Replace = Callable[[Match, Graph], Value]
Constraint = Callable[[Match], bool]


@dataclass(frozen=True, eq=False)
class Rewrite:
    """A named pattern, constraints on a whole match, and the function building the replacement.

    `replace(match, graph)` runs with the insertion point before the root and the root's meta
    (scope, source) as default, and returns the value replacing the root's output. With
    `single_use`, a matched interior node whose output is used outside the match blocks it.
    """

    name: str
    pattern: Pattern
    replace: Replace
    where: tuple[Constraint, ...] = ()
    single_use: bool = True

    def root_ops(self) -> frozenset[str] | None:
        """Ops the root can have (None: any), to skip nodes cheaply."""
        return _root_ops(self.pattern)


def _root_ops(pattern: Pattern) -> frozenset[str] | None:
    if isinstance(pattern, Op):
        return frozenset({pattern.op})
    if isinstance(pattern, Alt):
        ops = [_root_ops(p) for p in pattern.options]
        return None if any(o is None for o in ops) else frozenset().union(*ops)
    return None


def rewrite(
    pattern: Pattern,
    *,
    where: Constraint | Sequence[Constraint] = (),
    single_use: bool = True,
) -> Callable[[Replace], Rewrite]:
    """Decorator: the function becomes the replacement; its name (dashed) names the rewrite,
    and its docstring states the identity it applies."""

    def wrap(fn: Replace) -> Rewrite:
        name = fn.__name__.strip("_").replace("_", "-")
        return Rewrite(name, pattern, fn, _predicates(where), single_use)

    return wrap


def find_match(
    rule: Rewrite | Pattern,
    node: Node,
    graph: Graph | None = None,
    trace: list[_Failure] | None = None,
) -> Match | None:
    """The first match of `rule` rooted at `node` that passes every check, or None."""
    if isinstance(rule, Pattern):
        rule = Rewrite("pattern", rule, _no_replacement)
    if len(node.outputs) != 1:
        return None
    matcher = _Matcher(graph, trace)
    root = node.output
    for state in matcher.match(rule.pattern, root, _State()):
        if rule.single_use:
            escaped = _escaping_use(state, graph)
            if escaped is not None:
                value, user = escaped
                matcher.fail(state, value, f"also used outside the match, by {user}")
                continue
        match = Match(graph, node, state)
        failed = next((c for c in rule.where if not c(match)), None)
        if failed is not None:
            matcher.fail(state, root, f"constraint failed: {describe(failed)}")
            continue
        return match
    return None


def _no_replacement(match: Match, graph: Graph) -> Value:
    raise IRError("a bare pattern has no replacement; wrap it in a Rewrite")


def _escaping_use(state: _State, graph: Graph | None) -> tuple[Value, str] | None:
    """An interior value used outside the match: (value, who uses it)."""
    inside = {id(n) for n in state.nodes}
    for node in state.nodes[1:]:
        for out in node.outputs:
            for user in out.users:
                if id(user) not in inside:
                    return out, f"%{user.outputs[0].name} = {user.op}(…)"
            if graph is not None and out in graph.outputs:
                return out, "the graph outputs"
    return None


def explain(rule: Rewrite | Pattern, node: Node, graph: Graph | None = None) -> str:
    """Why `rule` does (or does not) match at `node`: its bindings, or the first failed check.

    The failure reported is the one reached after the most matched pattern nodes; op mismatches
    at the same value are merged ("expected op div or mul, found add"). Pass `graph` so that
    parameters' data (constants, causal masks) can be inspected.
    """
    trace: list[_Failure] = []
    found = find_match(rule, node, graph, trace)
    if found is not None:
        return f"matched {found!r}"
    if not trace:
        return f"at %{node.outputs[0].name}: a multi-output node cannot be a pattern root"
    best = max(f.progress for f in trace)
    failures = [f for f in trace if f.progress == best]
    first = failures[0]
    if first.expected_ops:
        same = [f for f in failures if f.expected_ops and f.value is first.value]
        ops = sorted({op for f in same for op in f.expected_ops})
        message = f"expected op {' or '.join(ops)}, found {first.found}"
    else:
        message = first.message
    return f"at %{first.value.name}: {message}"


# -- applying -----------------------------------------------------------------------------------

_MAX_SWEEPS = 1000


def apply_patterns(
    graph: Graph, rules: Sequence[Rewrite], ctx: PassContext | None = None
) -> dict[str, int]:
    """Apply `rules` greedily until none fires; returns how often each fired.

    Nodes are visited from the outputs backwards so the largest pattern (rooted last) wins, and
    rules are tried in list order. `ctx` (a PassContext) may veto rewrites for bisection.
    """
    roots = [(rule, rule.root_ops()) for rule in rules]
    by_op: dict[str, list[Rewrite]] = {}

    def candidates(op: str) -> list[Rewrite]:
        if op not in by_op:
            by_op[op] = [rule for rule, ops in roots if ops is None or op in ops]
        return by_op[op]

    stats: Counter[str] = Counter()
    for _ in range(_MAX_SWEEPS):
        erased: set[int] = set()
        fired = False
        for node in reversed(list(graph.nodes)):
            if id(node) in erased or len(node.outputs) != 1:
                continue
            for rule in candidates(node.op):
                match = find_match(rule, node, graph)
                if match is None:
                    continue
                if ctx is not None and not ctx.allow_rewrite():
                    return dict(stats)
                erased |= _replace(graph, rule, match)
                stats[rule.name] += 1
                fired = True
                break
        if not fired:
            return dict(stats)
    raise IRError(
        f"pattern rewriting did not settle after {_MAX_SWEEPS} sweeps; rules that kept firing: "
        + ", ".join(sorted(stats))
    )


def _replace(graph: Graph, rule: Rewrite, match: Match) -> set[int]:
    """Build the replacement, reroute the root's uses, erase what died; ids of erased nodes."""
    root = match.root
    with graph.inserting_before(root, root.meta):
        new = rule.replace(match, graph)
    old = root.output
    if new.type != old.type:
        raise IRError(
            f"rewrite {rule.name} replaced %{old.name}: {old.type} with %{new.name}: {new.type}"
        )
    graph.replace_all_uses(old, new)
    erased: set[int] = set()
    pending = [*match.nodes, *match.leaves]
    progress = True
    while progress:
        progress = False
        for node in pending:
            if id(node) in erased:
                continue
            if all(not v.users and v not in graph.outputs for v in node.outputs):
                graph.erase_node(node)
                erased.add(id(node))
                progress = True
    return erased
