"""The cgc graph IR: types, graph, op registry, text form, verifier and interpreter."""

from cgc.ir.graph import Graph, Node, Value, print_graph
from cgc.ir.interpreter import Interpreter, interpret
from cgc.ir.ops import OpDef, all_ops, get_op, register
from cgc.ir.parser import parse
from cgc.ir.types import TensorType
from cgc.ir.verifier import verify

__all__ = [
    "Graph",
    "Interpreter",
    "Node",
    "OpDef",
    "TensorType",
    "Value",
    "all_ops",
    "get_op",
    "interpret",
    "parse",
    "print_graph",
    "register",
    "verify",
]
