"""Frontends: bring a model into the cgc IR."""

from cgc.frontends.fx import trace

__all__ = ["trace"]
