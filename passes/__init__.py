"""Graph passes: the pass manager, the pattern rewriter, and the passes (imported to register)."""

from cgc.passes import (  # noqa: F401  (registration)
    autodiff,
    canonicalize,
    fuse_attention,
    fuse_cross_entropy,
    fuse_gelu,
    fuse_layer_norm,
    fuse_linear,
    fuse_qkv_attention,
    fuse_rms_norm,
    fuse_rotary_embedding,
    fuse_swiglu,
    kv_cache,
    layer_pipeline,
    train_step,
    weight_streaming,
)
from cgc.passes.base import Pass, PassContext, PassResult
from cgc.passes.manager import PassManager, run_passes
from cgc.passes.pattern import Alt, Const, Match, Op, Rewrite, Var, apply_patterns, explain, rewrite
from cgc.passes.pipeline import DEFAULT_PIPELINE, parse_pipeline
from cgc.passes.registry import all_passes, get_pass, register_pass, unregister_pass

__all__ = [
    "DEFAULT_PIPELINE",
    "Alt",
    "Const",
    "Match",
    "Op",
    "Pass",
    "PassContext",
    "PassManager",
    "PassResult",
    "Rewrite",
    "Var",
    "all_passes",
    "apply_patterns",
    "explain",
    "get_pass",
    "parse_pipeline",
    "register_pass",
    "rewrite",
    "run_passes",
    "unregister_pass",
]
