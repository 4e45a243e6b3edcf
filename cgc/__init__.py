"""cgc: a graph compiler toolkit for GPT models."""

from cgc.errors import CgcError

__all__ = ["CgcError"]
