"""Reads the text form written by `cgc.ir.graph.print_graph` back into a Graph.

A small hand-written recursive-descent parser: the grammar is a dozen productions and no
parsing library in our dependency set reads it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cgc.errors import CgcError, IRError
from cgc.ir.graph import Graph
from cgc.ir.types import TensorType

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+|\#\#[^\n]*|//[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<symbol>@[A-Za-z0-9_.]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:inf|nan)\b|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>\#\{|[(){}\[\]:,=])
    """,
    re.VERBOSE,
)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, str, int]] = []
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise IRError(f"line {line}: unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind == "nl":
                line += 1
            elif kind != "ws":
                self.items.append((kind, m.group(), line))
            pos = m.end()
        self.items.append(("eof", "", line))
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.items[self.i]

    def next(self) -> tuple[str, str, int]:
        tok = self.items[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, got, line = self.next()
        if got != text:
            raise IRError(f"line {line}: expected {text!r}, got {got or 'end of input'!r}")

    def expect_kind(self, kind: str) -> str:
        got_kind, got, line = self.next()
        if got_kind != kind:
            raise IRError(f"line {line}: expected a {kind}, got {got or 'end of input'!r}")
        return got

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False


def _type(toks: _Tokens) -> TensorType:
    line = toks.peek()[2]
    dtype = toks.expect_kind("ident")
    toks.expect("[")
    dims: list[int] = []
    while not toks.accept("]"):
        dims.append(int(toks.expect_kind("number")))
        toks.accept(",")
    try:
        return TensorType(tuple(dims), dtype)
    except ValueError as e:
        raise IRError(f"line {line}: {e}") from None


def _attr_value(toks: _Tokens) -> Any:
    kind, text, line = toks.next()
    if kind == "number":
        return float(text) if any(c in text for c in ".eEin") else int(text)
    if kind == "string":
        return json.loads(text)
    if kind == "ident" and text in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[text]
    if text == "[":
        items = []
        while not toks.accept("]"):
            items.append(_attr_value(toks))
            toks.accept(",")
        return items
    raise IRError(f"line {line}: expected an attribute value, got {text!r}")


def _dict(toks: _Tokens) -> dict[str, Any]:
    out: dict[str, Any] = {}
    while not toks.accept("}"):
        key = toks.expect_kind("ident")
        toks.expect("=")
        out[key] = _attr_value(toks)
        toks.accept(",")
    return out


def parse(text: str) -> Graph:
    """Parse the text form of one graph; raises IRError with the line of the first problem."""
    toks = _Tokens(text)
    toks.expect("graph")
    graph = Graph(toks.expect_kind("symbol")[1:])
    values: dict[str, Any] = {}

    def lookup(name: str, line: int):
        try:
            return values[name[1:]]
        except KeyError:
            raise IRError(f"line {line}: {name} is used before it is defined") from None

    def claim(v) -> None:
        values[v.name] = v

    toks.expect("(")
    while not toks.accept(")"):
        name = toks.expect_kind("value")[1:]
        toks.expect(":")
        claim(graph.add_input(name, _type(toks)))
        toks.accept(",")
    toks.expect("{")
    while True:
        kind, text, line = toks.peek()
        if text == "param":
            toks.next()
            trainable = toks.accept("trainable")
            name = toks.expect_kind("value")[1:]
            toks.expect(":")
            type_ = _type(toks)
            try:
                claim(graph.add_param(name, type_, trainable=trainable))
            except IRError as e:
                raise IRError(f"line {line}: {e}") from None
        elif text == "return":
            toks.next()
            while toks.peek()[0] == "value":
                _, name, line = toks.next()
                graph.outputs.append(lookup(name, line))
                toks.accept(",")
            toks.expect("}")
            break
        elif kind == "value":
            names = []
            while toks.peek()[0] == "value":
                names.append(toks.next()[1][1:])
                toks.accept(",")
            toks.expect("=")
            op = toks.expect_kind("ident")
            toks.expect("(")
            inputs = []
            while not toks.accept(")"):
                _, name, vline = toks.next()
                inputs.append(lookup(name, vline))
                toks.accept(",")
            attrs = _dict(toks) if toks.accept("{") else {}
            toks.expect(":")
            types = [_type(toks)]
            while toks.accept(","):
                types.append(_type(toks))
            meta = _dict(toks) if toks.accept("#{") else {}
            try:
                node = graph.add_node(op, inputs, attrs, meta, names=names, types=types)
            except CgcError as e:  # unknown op or bad attributes
                raise IRError(f"line {line}: {e}") from None
            for v in node.outputs:
                claim(v)
        else:
            raise IRError(f"line {line}: expected a node, 'param' or 'return', got {text!r}")
    if toks.peek()[0] != "eof":
        raise IRError(f"line {toks.peek()[2]}: unexpected text after the graph")
    return graph
