"""Every registered op lowers to ONNX that passes the checker and matches the interpreter in ORT."""

import math

import onnx
import pytest
import torch

from cgc.backends.onnxruntime import LOWERINGS, build_model
from cgc.errors import UnsupportedOpError
from cgc.ir import Graph, all_ops, interpret, parse, verify

# case name ("op" or "op:variant") -> (graph signature, body computing %y)
CASES: dict[str, tuple[str, str]] = {
    **{
        op: ("%x: f32[2,3]", f"%y = {op}(%x) : f32[2,3]")
        for op in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal")
        + ("tanh", "erf", "sigmoid", "relu", "silu", "cos", "sin")
    },
    "cos:f64": ("%x: f64[2,3]", "%y = cos(%x) : f64[2,3]"),
    **{
        op: ("%x: f32[2,3], %z: f32[3]", f"%y = {op}(%x, %z) : f32[2,3]")
        for op in ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
    },
    **{
        op: ("%x: f32[2,3], %z: f32[3]", f"%y = {op}(%x, %z) : bool[2,3]")
        for op in ("eq", "ne", "lt", "le", "gt", "ge")
    },
    "logical_and": ("%x: bool[2,3], %z: bool[3]", "%y = logical_and(%x, %z) : bool[2,3]"),
    "logical_and:f32": ("%x: f32[2,3], %z: f32[3]", "%y = logical_and(%x, %z) : bool[2,3]"),
    "logical_or": ("%x: bool[2,3], %z: bool[3]", "%y = logical_or(%x, %z) : bool[2,3]"),
    "logical_not": ("%x: bool[2,3]", "%y = logical_not(%x) : bool[2,3]"),
    "where": ("%c: bool[2,3], %x: f32[2,3], %z: f32[3]", "%y = where(%c, %x, %z) : f32[2,3]"),
    "cast:f32_to_i32": ("%x: f32[2,3]", '%y = cast(%x) {dtype="i32"} : i32[2,3]'),
    "cast:i64_to_f32": ("%x: i64[2,3]", '%y = cast(%x) {dtype="f32"} : f32[2,3]'),
    "cast:f32_to_bool": ("%x: f32[2,3]", '%y = cast(%x) {dtype="bool"} : bool[2,3]'),
    "constant:scalar": ("", '%y = constant() {dtype="f32", shape=[], value=0.5} : f32[]'),
    "constant:fill": ("", '%y = constant() {dtype="f32", shape=[2,3], value=-inf} : f32[2,3]'),
    "constant:i64": ("", '%y = constant() {dtype="i64", shape=[4], value=3} : i64[4]'),
    "reduce_sum": ("%x: f32[2,3,4]", "%y = reduce_sum(%x) {axes=[1,-1], keepdim=false} : f32[2]"),
    "reduce_mean": (
        "%x: f32[2,3,4]",
        "%y = reduce_mean(%x) {axes=[-1], keepdim=true} : f32[2,3,1]",
    ),
    "reduce_max": ("%x: f32[2,3,4]", "%y = reduce_max(%x) {axes=[0], keepdim=false} : f32[3,4]"),
    "var": ("%x: f32[2,3,4]", "%y = var(%x) {axes=[-1], correction=0, keepdim=false} : f32[2,3]"),
    "var:bessel": (
        "%x: f32[2,3,4]",
        "%y = var(%x) {axes=[0,2], correction=1, keepdim=true} : f32[1,3,1]",
    ),
    "cumsum": ("%x: f32[2,3,4]", "%y = cumsum(%x) {axis=1} : f32[2,3,4]"),
    "cumsum:i64": ("%x: i64[2,5]", "%y = cumsum(%x) {axis=1} : i64[2,5]"),
    "softmax": ("%x: f32[2,3,4]", "%y = softmax(%x) {axis=1} : f32[2,3,4]"),
    "log_softmax": ("%x: f32[2,3,4]", "%y = log_softmax(%x) {axis=-1} : f32[2,3,4]"),
    "matmul": ("%x: f32[2,3,4], %z: f32[4,5]", "%y = matmul(%x, %z) : f32[2,3,5]"),
    "matmul:batched": ("%x: f32[2,1,3,4], %z: f32[5,4,2]", "%y = matmul(%x, %z) : f32[2,5,3,2]"),
    "reshape": ("%x: f32[2,3,4]", "%y = reshape(%x) {shape=[6,4]} : f32[6,4]"),
    "transpose": ("%x: f32[2,3,4]", "%y = transpose(%x) {perm=[2,0,1]} : f32[4,2,3]"),
    "expand": ("%x: f32[3,1]", "%y = expand(%x) {shape=[2,3,4]} : f32[2,3,4]"),
    "slice": ("%x: f32[2,5]", "%y = slice(%x) {axis=1, end=4, start=1, step=2} : f32[2,2]"),
    "concat": ("%x: f32[2,3], %z: f32[2,2]", "%y = concat(%x, %z) {axis=1} : f32[2,5]"),
    "embedding": ("%i: i64[2,3]", "param %t: f32[7,4]\n%y = embedding(%t, %i) : f32[2,3,4]"),
    "embedding:i32": ("%i: i32[3]", "param %t: f32[7,4]\n%y = embedding(%t, %i) : f32[3,4]"),
    # fused ops
    "linear": (
        "%x: f32[2,3,4]",
        "param %w: f32[5,4]\nparam %b: f32[5]\n%y = linear(%x, %w, %b) : f32[2,3,5]",
    ),
    "linear:2d_no_bias": ("%x: f32[3,4]", "param %w: f32[5,4]\n%y = linear(%x, %w) : f32[3,5]"),
    "linear:no_bias": (  # an output: FusedMatMul on N-D rows, no copying Reshape
        "%x: f32[2,3,4]",
        "param %w: f32[5,4]\n%y = linear(%x, %w) : f32[2,3,5]",
    ),
    "linear:1d": (
        "%x: f32[4]",
        "param %w: f32[5,4]\nparam %b: f32[5]\n%y = linear(%x, %w, %b) : f32[5]",
    ),
    "layer_norm": (
        "%x: f32[2,3,8]",
        "param %w: f32[8]\nparam %b: f32[8]\n%y = layer_norm(%x, %w, %b) {eps=1e-05} : f32[2,3,8]",
    ),
    "layer_norm:no_bias": (
        "%x: f32[2,3,8]",
        "param %w: f32[8]\n%y = layer_norm(%x, %w) {eps=1e-06} : f32[2,3,8]",
    ),
    "layer_norm:no_affine": ("%x: f32[2,3,8]", "%y = layer_norm(%x) {eps=1e-05} : f32[2,3,8]"),
    "gelu": ("%x: f32[2,3]", '%y = gelu(%x) {approximate="none"} : f32[2,3]'),
    "gelu:tanh": ("%x: f32[2,3]", '%y = gelu(%x) {approximate="tanh"} : f32[2,3]'),
    "attention": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12]",
        "%y = attention(%q, %k, %v) {causal=false, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:causal": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:mask": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12], %m: f32[2,3,5,5]",
        "%y = attention(%q, %k, %v, %m) {causal=false, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:causal_mask": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12], %m: f32[5,5]",
        "%y = attention(%q, %k, %v, %m) {causal=true, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:padding_mask": (  # broadcast over heads and queries: the lowering expands it
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12], %m: f32[2,1,1,5]",
        "%y = attention(%q, %k, %v, %m) {causal=true, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:d_head_10_mup": (  # non-power-of-two head size, muP scale 1/d_head
        "%q: f32[2,6,30], %k: f32[2,6,30], %v: f32[2,6,30]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=3, scale=0.1} : f32[2,6,30]",
    ),
    "attention:d_head_10_mup_mask": (
        "%q: f32[2,6,30], %k: f32[2,6,30], %v: f32[2,6,30], %m: f32[1,1,6,6]",
        "%y = attention(%q, %k, %v, %m) {causal=false, num_heads=3, scale=0.1} : f32[2,6,30]",
    ),
    "attention:longer_keys_causal": (  # 3 queries aligned to the end of 7 keys, as torch does
        "%q: f32[2,3,12], %k: f32[2,7,12], %v: f32[2,7,12]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=3, scale=0.5} : f32[2,3,12]",
    ),
    "attention:longer_keys_causal_mask": (
        "%q: f32[2,3,12], %k: f32[2,7,12], %v: f32[2,7,12], %m: f32[2,1,3,7]",
        "%y = attention(%q, %k, %v, %m) {causal=true, num_heads=3, scale=0.5} : f32[2,3,12]",
    ),
    "attention:value_width": (  # d_v (2) differs from d_head (4)
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,6]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=3, scale=0.5} : f32[2,5,6]",
    ),
    "attention:gqa": (  # 4 query heads share 2 key-value heads
        "%q: f32[2,5,16], %k: f32[2,5,8], %v: f32[2,5,8]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=4, num_kv_heads=2, scale=0.5}"
        " : f32[2,5,16]",
    ),
    "attention:mqa_window_mask": (  # one key-value head, each query sees its last 3 keys
        "%q: f32[2,6,16], %k: f32[2,6,4], %v: f32[2,6,4], %m: f32[2,1,1,6]",
        "%y = attention(%q, %k, %v, %m) {causal=true, num_heads=4, num_kv_heads=1, scale=0.5,"
        " window=3} : f32[2,6,16]",
    ),
    "attention:long_causal_gqa": (  # GroupQueryAttention from GQA_FROM queries on
        "%q: f32[1,520,32], %k: f32[1,520,16], %v: f32[1,520,16]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=4, num_kv_heads=2, scale=0.5}"
        " : f32[1,520,32]",
    ),
    "attention:long_window": (
        "%q: f32[2,520,16], %k: f32[2,520,16], %v: f32[2,520,16]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5, window=100}"
        " : f32[2,520,16]",
    ),
    "attention:long_causal_head_4": (  # a head size GroupQueryAttention refuses
        "%q: f32[1,520,8], %k: f32[1,520,8], %v: f32[1,520,8]",
        "%y = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5} : f32[1,520,8]",
    ),
    "attention:alibi": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12]",
        "%y = attention(%q, %k, %v) {alibi_slopes=[0.5, 0.25, 0.125], causal=true,"
        " num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    "attention:alibi_longer_keys": (
        "%q: f32[2,3,12], %k: f32[2,7,12], %v: f32[2,7,12]",
        "%y = attention(%q, %k, %v) {alibi_slopes=[0.5, 0.25, 0.125], causal=false,"
        " num_heads=3, scale=0.5} : f32[2,3,12]",
    ),
    "attention:cross": (  # 3 queries, 7 keys, not causal
        "%q: f32[2,3,12], %k: f32[2,7,12], %v: f32[2,7,12]",
        "%y = attention(%q, %k, %v) {causal=false, num_heads=3, scale=0.5} : f32[2,3,12]",
    ),
    "rms_norm": (
        "%x: f32[2,3,8]",
        "param %w: f32[8]\n%y = rms_norm(%x, %w) {eps=1e-06} : f32[2,3,8]",
    ),
    "rms_norm:no_scale": ("%x: f32[2,3,8]", "%y = rms_norm(%x) {eps=1e-05} : f32[2,3,8]"),
    "rotary_embedding": (  # half rotation of 4 of each head's 8 features, tables per position
        "%x: f32[2,5,16], %c: f32[5,2], %s: f32[5,2]",
        "%y = rotary_embedding(%x, %c, %s) {interleaved=false, num_heads=2, rotary_dim=4}"
        " : f32[2,5,16]",
    ),
    "rotary_embedding:interleaved_batch": (  # every head feature, tables per batch row
        "%x: f32[2,5,16], %c: f32[2,5,4], %s: f32[2,5,4]",
        "%y = rotary_embedding(%x, %c, %s) {interleaved=true, num_heads=2, rotary_dim=8}"
        " : f32[2,5,16]",
    ),
    "swiglu": (
        "%x: f32[2,3,8]",
        "param %wg: f32[6,8]\nparam %wu: f32[6,8]\n%y = swiglu(%x, %wg, %wu) : f32[2,3,6]",
    ),
    "qkv_attention": (  # d_head 10, muP scale 1/d_head
        "%x: f32[2,6,8]",
        "param %w: f32[90,8]\nparam %b: f32[90]\n"
        "%y = qkv_attention(%x, %w, %b) {causal=true, num_heads=3, scale=0.1} : f32[2,6,30]",
    ),
    "qkv_attention:query_blocks": (  # 2 causal blocks of 260 queries, the second with past
        "%x: f32[1,520,8]",
        "param %w: f32[24,8]\nparam %b: f32[24]\n"
        "%y = qkv_attention(%x, %w, %b) {causal=true, num_heads=2, scale=0.5} : f32[1,520,8]",
    ),
    "qkv_attention:query_blocks_no_bias": (
        "%x: f32[2,768,8]",
        "param %w: f32[24,8]\n"
        "%y = qkv_attention(%x, %w) {causal=true, num_heads=2, scale=0.5} : f32[2,768,8]",
    ),
    # One new token per sequence after 0..4 cached ones (sequences differ), in place of a cache
    # of 8: GroupQueryAttention; three tokens after a past (batch 1, as its CPU kernel needs);
    # head size 10: ScatterElements and Attention-23.
    "cached_attention": (
        "%q: f32[2,1,16], %k: f32[2,1,16], %v: f32[2,1,16], %kc: f32[2,2,8,8], "
        "%vc: f32[2,2,8,8], %past: i64[2]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {num_heads=2, scale=0.35}"
        " : f32[2,1,16], f32[2,2,8,8], f32[2,2,8,8]",
    ),
    "cached_attention:chunk": (
        "%q: f32[1,3,16], %k: f32[1,3,16], %v: f32[1,3,16], %kc: f32[1,2,8,8], "
        "%vc: f32[1,2,8,8], %past: i64[1]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {num_heads=2, scale=0.35}"
        " : f32[1,3,16], f32[1,2,8,8], f32[1,2,8,8]",
    ),
    "cached_attention:head_size_10": (
        "%q: f32[2,1,20], %k: f32[2,1,20], %v: f32[2,1,20], %kc: f32[2,2,8,10], "
        "%vc: f32[2,2,8,10], %past: i64[2]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {num_heads=2, scale=0.3}"
        " : f32[2,1,20], f32[2,2,8,10], f32[2,2,8,10]",
    ),
    # Grouped key-value heads with a window (GroupQueryAttention's local_window_size); multi-query
    # with a window and head size 4, a chunk after a past; ALiBi (both ScatterElements).
    "cached_attention:gqa_window": (
        "%q: f32[2,1,32], %k: f32[2,1,16], %v: f32[2,1,16], %kc: f32[2,2,8,8], "
        "%vc: f32[2,2,8,8], %past: i64[2]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {num_heads=4, "
        "num_kv_heads=2, scale=0.35, window=2} : f32[2,1,32], f32[2,2,8,8], f32[2,2,8,8]",
    ),
    "cached_attention:mqa_window_chunk": (
        "%q: f32[1,3,16], %k: f32[1,3,4], %v: f32[1,3,4], %kc: f32[1,1,8,4], "
        "%vc: f32[1,1,8,4], %past: i64[1]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {num_heads=4, "
        "num_kv_heads=1, scale=0.5, window=2} : f32[1,3,16], f32[1,1,8,4], f32[1,1,8,4]",
    ),
    "cached_attention:alibi": (
        "%q: f32[2,1,16], %k: f32[2,1,16], %v: f32[2,1,16], %kc: f32[2,2,8,8], "
        "%vc: f32[2,2,8,8], %past: i64[2]",
        "%y, %kn, %vn = cached_attention(%q, %k, %v, %kc, %vc, %past) {alibi_slopes=[0.5, "
        "0.25], num_heads=2, scale=0.35} : f32[2,1,16], f32[2,2,8,8], f32[2,2,8,8]",
    ),
    "qkv_attention:no_bias": (
        "%x: f32[2,5,8]",
        "param %w: f32[36,8]\n"
        "%y = qkv_attention(%x, %w) {causal=false, num_heads=3, scale=0.5} : f32[2,5,12]",
    ),
    # losses: integer inputs are in [0, 5), so ignore_index 3 ignores some rows
    "cross_entropy": (
        "%x: f32[6,7], %t: i64[6]",
        '%y = cross_entropy(%x, %t) {ignore_index=3, reduction="mean"} : f32[]',
    ),
    "cross_entropy:sum_i32": (
        "%x: f32[6,7], %t: i32[6]",
        '%y = cross_entropy(%x, %t) {ignore_index=-100, reduction="sum"} : f32[]',
    ),
    "cross_entropy_grad": (
        "%x: f32[6,7], %t: i64[6], %d: f32[]",
        '%y = cross_entropy_grad(%x, %t, %d) {ignore_index=3, reduction="mean"} : f32[6,7]',
    ),
    "cross_entropy_grad:sum": (
        "%x: f32[6,7], %t: i64[6], %d: f32[]",
        '%y = cross_entropy_grad(%x, %t, %d) {ignore_index=-1, reduction="sum"} : f32[6,7]',
    ),
    "dropout": ("%x: f32[3,5,7], %s: i64[]", "%y = dropout(%x, %s) {p=0.3, stream=5} : f32[3,5,7]"),
    "dropout:whole_groups": (
        "%x: f32[4,8], %s: i64[]",
        "%y = dropout(%x, %s) {p=0.5, stream=0} : f32[4,8]",
    ),
    # training: the forward attention keeps its log-sum-exp; backward ops; pad
    "pad": ("%x: f32[2,3]", "%y = pad(%x) {after=1, axis=1, before=2, interior=0} : f32[2,6]"),
    "pad:interior": (  # a stride-3 slice's cotangent: 2 zeros between elements
        "%x: f32[3,2]",
        "%y = pad(%x) {after=1, axis=0, before=1, interior=2} : f32[9,2]",
    ),
    "embedding_grad": (
        "%i: i64[2,3], %d: f32[2,3,4]",
        "%y = embedding_grad(%i, %d) {num_rows=7} : f32[7,4]",
    ),
    "embedding_grad:i32_acc": (
        "%i: i32[5], %d: f32[5,4], %a: f32[7,4]",
        "%y = embedding_grad(%i, %d, %a) {num_rows=7} : f32[7,4]",
    ),
    "embedding_grad:padding": (
        "%i: i64[2,3], %d: f32[2,3,4]",
        "%y = embedding_grad(%i, %d) {num_rows=7, padding_idx=1} : f32[7,4]",
    ),
    "attention_lse": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12]",
        "%y, %y1 = attention_lse(%q, %k, %v) {causal=true, num_heads=3, scale=0.5}"
        " : f32[2,5,12], f32[2,3,5]",
    ),
    "attention_lse:mask": (
        "%q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12], %m: f32[2,1,1,5]",
        "%y, %y1 = attention_lse(%q, %k, %v, %m) {causal=false, num_heads=3, scale=0.5}"
        " : f32[2,5,12], f32[2,3,5]",
    ),
    "attention_lse:queries_without_keys": (  # causal, 5 queries on 3 keys: 2 see no key
        "%q: f32[1,5,12], %k: f32[1,3,12], %v: f32[1,3,12]",
        "%y, %y1 = attention_lse(%q, %k, %v) {causal=true, num_heads=3, scale=0.5}"
        " : f32[1,5,12], f32[1,3,5]",
    ),
    "attention_grad": (
        "%d: f32[2,5,6], %q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,6], %o: f32[2,5,6],"
        " %l: f32[2,3,5]",
        "%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l)"
        " {causal=true, num_heads=3, scale=0.5} : f32[2,5,12], f32[2,5,12], f32[2,5,6]",
    ),
    "attention_grad:mask": (
        "%d: f32[2,5,12], %q: f32[2,5,12], %k: f32[2,5,12], %v: f32[2,5,12], %o: f32[2,5,12],"
        " %l: f32[2,3,5], %m: f32[2,3,5,5]",
        "%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l, %m)"
        " {causal=false, num_heads=3, scale=0.5} : f32[2,5,12], f32[2,5,12], f32[2,5,12]",
    ),
    "attention_grad:queries_without_keys": (  # the log-sum-exp of attention_lse: +inf rows
        "%d: f32[1,5,12], %q: f32[1,5,12], %k: f32[1,3,12], %v: f32[1,3,12]",
        "%o, %l = attention_lse(%q, %k, %v) {causal=true, num_heads=3, scale=0.5}"
        " : f32[1,5,12], f32[1,3,5]\n"
        "%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l)"
        " {causal=true, num_heads=3, scale=0.5} : f32[1,5,12], f32[1,3,12], f32[1,3,12]",
    ),
    "attention_lse:gqa_window_alibi": (  # 4 query heads share 2 key-value heads
        "%q: f32[1,6,16], %k: f32[1,6,8], %v: f32[1,6,8]",
        "%y, %l = attention_lse(%q, %k, %v) {alibi_slopes=[0.5, 0.25, 0.125, 0.0625],"
        " causal=true, num_heads=4, num_kv_heads=2, scale=0.5, window=3}"
        " : f32[1,6,16], f32[1,4,6]",
    ),
    "attention_grad:gqa_window_alibi": (  # shared heads' gradients sum over their groups
        "%d: f32[1,6,16], %q: f32[1,6,16], %k: f32[1,6,8], %v: f32[1,6,8]",
        "%o, %l = attention_lse(%q, %k, %v) {alibi_slopes=[0.5, 0.25, 0.125, 0.0625],"
        " causal=true, num_heads=4, num_kv_heads=2, scale=0.5, window=3}"
        " : f32[1,6,16], f32[1,4,6]\n"
        "%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l) {alibi_slopes=[0.5, 0.25,"
        " 0.125, 0.0625], causal=true, num_heads=4, num_kv_heads=2, scale=0.5, window=3}"
        " : f32[1,6,16], f32[1,6,8], f32[1,6,8]",
    ),
    "layer_norm_grad": (
        "%d: f32[2,3,8], %x: f32[2,3,8]",
        "param %w: f32[8]\n%y, %y1, %y2 = layer_norm_grad(%d, %x, %w) {eps=1e-05}"
        " : f32[2,3,8], f32[8], f32[8]",
    ),
    "layer_norm_grad:no_gain": (
        "%d: f32[6,8], %x: f32[6,8]",
        "%y, %y1, %y2 = layer_norm_grad(%d, %x) {eps=0.001} : f32[6,8], f32[8], f32[8]",
    ),
    "gelu_grad": (
        "%d: f32[2,3], %x: f32[2,3]",
        '%y = gelu_grad(%d, %x) {approximate="none"} : f32[2,3]',
    ),
    "gelu_grad:tanh": (
        "%d: f32[2,3], %x: f32[2,3]",
        '%y = gelu_grad(%d, %x) {approximate="tanh"} : f32[2,3]',
    ),
}

POSITIVE = {"log", "sqrt", "rsqrt", "reciprocal", "div", "pow"}  # keep inputs in the domain
TIES = {"eq", "ne", "lt", "le", "gt", "ge", "maximum", "minimum", "logical_and:f32"}
FUSED_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}  # fused ORT kernels vs torch, fp32
PRIMITIVE_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _graph(case: str) -> Graph:
    """The case's graph; it returns every output of its last node (%y, %y1, ...)."""
    signature, body = CASES[case]
    lines = "\n".join(f"  {line}" for line in body.splitlines())
    outputs = body.splitlines()[-1].split(" = ")[0]
    g = parse(f"graph @t({signature}) {{\n{lines}\n  return {outputs}\n}}\n")
    verify(g)
    return g


def _inputs(g: Graph, case: str, random_tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for v in g.inputs:
        x = random_tensor(v.type, gen)
        if v.type.is_float and case in POSITIVE:
            x = x.abs() + 0.5
        if v.type.is_float and case in TIES:
            x = x.mul(2).round()  # small integers, so equal elements occur
        if case.startswith("cast:f32"):
            x[0, 0] = 0.0  # an exact zero for the bool cast, fractions for the int cast
        inputs.append(x)
    return inputs


def test_every_op_lowers_and_is_tested() -> None:
    assert set(LOWERINGS) == set(all_ops())
    assert {case.split(":")[0] for case in CASES} == set(all_ops())


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "optimized"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_interpreter(
    case: str, reference: bool, with_weights, run_ort, random_tensor
) -> None:
    g = with_weights(_graph(case))
    inputs = _inputs(g, case, random_tensor)
    want = interpret(g, *inputs)
    got = run_ort(g, *inputs, reference=reference)
    op = case.split(":")[0]
    if op == "cached_attention":  # cache slots after the new tokens are unspecified
        end = (inputs[-1] + inputs[0].shape[1]).reshape(-1, 1, 1, 1)
        for caches in (got, want):
            for cache in caches[1:]:
                cache.masked_fill_(torch.arange(cache.shape[2]).reshape(1, 1, -1, 1) >= end, 0.0)
    fused = all_ops()[op].category == "fused"
    torch.testing.assert_close(got, want, **(FUSED_TOLERANCE if fused else PRIMITIVE_TOLERANCE))


def _op_types(g: Graph) -> list[str]:
    return [n.op_type for n in build_model(g).graph.node]


@pytest.mark.parametrize(
    ("case", "op_types"),
    [
        ("layer_norm", ["LayerNormalization"]),
        ("layer_norm:no_affine", ["LayerNormalization"]),
        ("gelu:tanh", ["Gelu"]),
        ("linear", ["Reshape", "Gemm", "Reshape"]),
        ("linear:2d_no_bias", ["Gemm"]),
        ("linear:no_bias", ["FusedMatMul"]),
        ("qkv_attention", ["Transpose", "Attention"]),
        # integer bookkeeping on [batch] lengths, then one kernel
        (
            "cached_attention",
            ["Add", "Cast", "ReduceMax", "Add", "Reshape", "Cast", "GroupQueryAttention"],
        ),
        (
            "cached_attention:gqa_window",
            ["Add", "Cast", "ReduceMax", "Add", "Reshape", "Cast", "GroupQueryAttention"],
        ),
        ("attention:causal", ["Attention"]),
        # a mask's lowest-float entries are raised a hair (Equal, Where): see the next test
        ("attention:padding_mask", ["Equal", "Where", "Expand", "Attention"]),
        ("attention:longer_keys_causal_mask", ["Equal", "Where", "Add", "Attention"]),
        ("rsqrt", ["Sqrt", "Reciprocal"]),
        ("var", ["ReduceMean", "Sub", "Mul", "ReduceMean"]),
    ],
)
def test_fused_ops_lower_to_single_kernels(case: str, op_types: list[str]) -> None:
    assert _op_types(_graph(case)) == op_types


@pytest.mark.parametrize(
    ("case", "op_types"),
    [
        ("pad:interior", ["Unsqueeze", "Pad", "Reshape", "Pad"]),
        ("embedding_grad", ["ConstantOfShape", "Unsqueeze", "ScatterND"]),
        ("embedding_grad:i32_acc", ["Cast", "Unsqueeze", "ScatterND"]),  # into the accumulator
        ("embedding_grad:padding", ["ConstantOfShape", "Unsqueeze", "Equal", "Where", "ScatterND"]),
        (
            "layer_norm_grad",
            ["LayerNormalization", "Mul", "ReduceMean", "Mul", "ReduceMean", "Sub", "Mul"]
            + ["Sub", "Mul", "Mul", "ReduceSum", "ReduceSum"],
        ),
    ],
)
def test_training_ops_lower_to(case: str, op_types: list[str]) -> None:
    assert _op_types(_graph(case)) == op_types


def test_attention_grad_recomputes_the_weights_with_five_products() -> None:
    """Scores, dV, dP, dQ, dK: FusedMatMul transposes operands and scales in the kernel, so no
    [T, T] tensor is transposed or scaled, and nothing is computed in double."""
    model = build_model(_graph("attention_grad"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("FusedMatMul") == 5 and "MatMul" not in ops and "Cast" not in ops
    products = [n for n in model.graph.node if n.op_type == "FusedMatMul"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in products]
    assert attrs == [
        {"transB": 1, "alpha": 0.5},  # scores = s·q·kᵀ
        {"transA": 1},  # dV = Pᵀ·dY
        {"transB": 1},  # dP = dY·Vᵀ
        {"alpha": 0.5},  # dQ = s·dS·K
        {"transA": 1, "alpha": 0.5},  # dK = s·dSᵀ·Q
    ]
    # only head splits (q, k, dY, V, Y) and merges (dQ, dK, dV) move data
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 8
    assert all(list(n.attribute[0].ints) == [0, 2, 1, 3] for n in transposes)


@pytest.mark.parametrize("fill", [-math.inf, torch.finfo(torch.float32).min])
def test_a_query_with_every_key_masked_matches_the_interpreter(fill: float, run_ort) -> None:
    """-inf masks a key: a query without keys outputs zeros (as torch SDPA). The lowest float is
    a finite mask, Hugging Face eager's: the query averages v evenly, where ORT alone gives 0."""
    g = _graph("attention:mask")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 12, generator=gen) for _ in "qkv")
    mask = torch.zeros(2, 3, 5, 5)
    mask[1, :, 0] = fill  # batch 1, query 0
    (want,) = interpret(g, q, k, v, mask)
    (got,) = run_ort(g, q, k, v, mask, reference=False)
    torch.testing.assert_close(got, want, **FUSED_TOLERANCE)
    expected = torch.zeros(12) if fill == -math.inf else v[1].mean(0)
    torch.testing.assert_close(got[1, 0], expected, **FUSED_TOLERANCE)


def test_linear_keeps_the_weight_untransposed() -> None:
    (gemm,) = [n for n in build_model(_graph("linear")).graph.node if n.op_type == "Gemm"]
    assert gemm.input[1:] == ["w", "b"]
    assert {a.name: a.i for a in gemm.attribute} == {"transB": 1}


def test_attention_attributes() -> None:
    square, longer = (
        build_model(_graph(c)).graph.node[-1]
        for c in ("attention:causal", "attention:longer_keys_causal")
    )
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in square.attribute}
    assert attrs == {"q_num_heads": 3, "kv_num_heads": 3, "is_causal": 1, "scale": 0.5}
    # keys longer than queries: the bottom-right causal mask is an explicit bias, not is_causal
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in longer.attribute}
    assert attrs["is_causal"] == 0
    assert list(longer.input) == ["q", "k", "v", "y/causal_bias"]
    bias = onnx.numpy_helper.to_array(
        build_model(_graph("attention:longer_keys_causal")).graph.initializer[0]
    )
    assert bias.shape == (1, 1, 3, 7)
    assert (bias[0, 0] == 0).tolist() == [[k <= q + 4 for k in range(7)] for q in range(3)]
    assert math.isinf(bias[0, 0, 0, 5])


def test_bias_less_linear_is_fused_matmul_only_as_an_output() -> None:
    g = parse(
        "graph @t(%x: f32[2,3,4]) {\n  param %w: f32[4,4]\n"
        "  %h = linear(%x, %w) : f32[2,3,4]\n  %y = linear(%h, %w) : f32[2,3,4]\n"
        "  return %y\n}\n"
    )
    model = build_model(g)
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Gemm", "Reshape", "FusedMatMul"]
    fused = model.graph.node[-1]
    assert (fused.domain, list(fused.input), list(fused.output)) == (
        "com.microsoft",
        ["h", "w"],
        ["y"],
    )
    assert {a.name: a.i for a in fused.attribute} == {"transB": 1}
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 23), ("com.microsoft", 1)]


def test_qkv_attention_is_contrib_attention_on_the_transposed_weight() -> None:
    transpose, attention = build_model(_graph("qkv_attention")).graph.node
    assert (list(transpose.input), {a.name: list(a.ints) for a in transpose.attribute}) == (
        ["w"],
        {"perm": [1, 0]},
    )
    assert (attention.domain, list(attention.input)) == ("com.microsoft", ["x", "y/transpose", "b"])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attention.attribute}
    assert attrs == {"num_heads": 3, "unidirectional": 1, "scale": pytest.approx(0.1)}


def test_nodes_are_named_after_ir_values_with_source_and_scope() -> None:
    g = parse(
        "graph @t(%x: f32[2,3]) {\n"
        '  %r = rsqrt(%x) : f32[2,3] #{scope="h.0.attn", source="model.py:12"}\n'
        "  return %r\n}\n"
    )
    nodes = build_model(g).graph.node
    assert [n.name for n in nodes] == ["r/sqrt", "r"]
    assert [n.output[0] for n in nodes] == ["r/sqrt", "r"]
    assert {n.doc_string for n in nodes} == {"model.py:12"}
    assert {(p.key, p.value) for n in nodes for p in n.metadata_props} == {("scope", "h.0.attn")}


def test_unsupported_op_names_op_and_source(monkeypatch) -> None:
    monkeypatch.delitem(LOWERINGS, "gelu")
    g = parse(
        "graph @t(%x: f32[2,3]) {\n"
        '  %y = gelu(%x) {approximate="none"} : f32[2,3] #{source="model.py:7"}\n'
        "  return %y\n}\n"
    )
    with pytest.raises(UnsupportedOpError) as e:
        build_model(g)
    assert str(e.value) == (
        "the onnxruntime backend cannot lower op 'gelu' (model.py:7); "
        "decompose it into primitives before export"
    )


def test_long_causal_qkv_attention_runs_in_query_blocks() -> None:
    nodes = build_model(_graph("qkv_attention:query_blocks_no_bias")).graph.node
    assert [n.op_type for n in nodes] == ["Transpose"] + ["Slice", "Attention"] * 3 + ["Concat"]
    attentions = [n for n in nodes if n.op_type == "Attention"]
    assert [list(n.input) for n in attentions] == [
        ["y/slice", "y/transpose", "", ""],
        ["y/slice_1", "y/transpose", "", "", "y/present"],
        ["y/slice_2", "y/transpose", "", "", "y/present_1"],
    ]
    assert [list(n.output) for n in attentions] == [
        ["y/block", "y/present"],
        ["y/block_1", "y/present_1"],
        ["y/block_2", "y/present_2"],
    ]
    assert list(nodes[-1].input) == ["y/block", "y/block_1", "y/block_2"]


@pytest.mark.parametrize("seed", [0, -7, 2**40 + 3])
def test_dropout_draws_the_interpreters_mask_bit_for_bit(seed: int, run_ort) -> None:
    g = _graph("dropout")
    x = torch.randn(3, 5, 7)
    (want,) = interpret(g, x, torch.tensor(seed))
    (got,) = run_ort(g, x, torch.tensor(seed))
    assert torch.equal(got, want)
    assert 0 < (want == 0).sum() < want.numel()


def test_cross_entropy_over_no_counted_target_is_nan_and_its_gradient_zero(run_ort) -> None:
    """As torch: the mean over zero targets is NaN, and its gradient is all zeros."""
    x, t, d = torch.randn(6, 7), torch.full((6,), 3), torch.tensor(1.0)
    (loss,) = run_ort(_graph("cross_entropy"), x, t)
    (grad,) = run_ort(_graph("cross_entropy_grad"), x, t, d)
    assert loss.isnan() and torch.equal(grad, torch.zeros(6, 7))


@pytest.mark.parametrize(
    ("case", "op_type"),
    [
        ("attention:gqa", "Attention"),
        ("attention:long_causal_gqa", "GroupQueryAttention"),
        ("attention:long_window", "GroupQueryAttention"),
        ("attention:long_causal_head_4", "Attention"),
    ],
)
def test_long_causal_self_attention_runs_as_group_query_attention(case, op_type) -> None:
    assert _op_types(_graph(case)) == [op_type]
