"""fuse-cross-entropy: every primitive form of a loss becomes one cross_entropy, and only when
the divisor provably counts the same non-ignored targets does it become the mean."""

import pytest
import torch

from cgc.ir import Graph, TensorType, interpret, parse
from cgc.ir.ops import loss
from cgc.passes.fuse_cross_entropy import cross_entropy_sum
from cgc.passes.pattern import explain

PIPELINE = "canonicalize,fuse-cross-entropy,canonicalize"
ROWS, V = 6, 7


def fused(out: str, reduction: str, ignore: int, tail: str = "") -> str:
    return (
        f"graph @g(%x: f32[{ROWS},{V}], %t: i64[{ROWS}]) {{\n"
        f"  %{out} = cross_entropy(%x, %t) {{ignore_index={ignore}, "
        f'reduction="{reduction}"}} : f32[]\n{tail}'
        f"  return %{out}\n}}\n"
    )


def _graph(build) -> Graph:
    """A graph over x [ROWS, V] and t [ROWS] whose one output `build(g, x, t)` computes."""
    g = Graph("g")
    x = g.add_input("x", TensorType((ROWS, V), "f32"))
    t = g.add_input("t", TensorType((ROWS,), "i64"))
    g.outputs = [build(g, x, t)]
    return g


def _targets() -> torch.Tensor:
    return torch.tensor([1, -1, 6, 0, -1, 3])


def _same(g: Graph, run_pipeline, targets: torch.Tensor | None = None) -> Graph:
    """Run the pipeline, checking the interpreter before and after on ignored rows too."""
    x = torch.randn(ROWS, V, generator=torch.Generator().manual_seed(0))
    t = _targets() if targets is None else targets
    (want,) = interpret(g, x, t)
    after = run_pipeline(g, PIPELINE)
    (got,) = interpret(after, x, t)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    return after


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignore", [-1, -100, 0])
def test_registry_decomposition_fuses(decomposed, run_pipeline, reduction, ignore) -> None:
    g = decomposed(
        "cross_entropy",
        {"x": f"f32[{ROWS},{V}]", "t": f"i64[{ROWS}]"},
        reduction=reduction,
        ignore_index=ignore,
    )
    out = g.outputs[0].name
    targets = torch.tensor([1, ignore, 6, 0, ignore, 3]) if ignore < 0 else _targets().abs()
    assert str(_same(g, run_pipeline, targets)) == fused(out, reduction, ignore)


def _lse_minus_gather(g: Graph, x, t):
    """logsumexp(x) - gather(x, t), as torch.logsumexp and torch.gather import."""
    lse = loss.logsumexp(g, x, [-1], keepdim=False)
    picked = loss.gather(g, x, 1, g.call("reshape", t, shape=[ROWS, 1]))
    return g.call("sub", lse, g.call("reshape", picked, shape=[ROWS]))


def test_written_out_loss_over_the_count_of_valid_targets_is_the_mean(run_pipeline) -> None:
    """(logsumexp(x) - gather(x, t)).masked_fill(t == -1, 0).sum() / (t != -1).sum()"""

    def build(g, x, t):
        rows = _lse_minus_gather(g, x, t)
        ignored = g.call("eq", t, g.constant(-1, "i64"))
        total = g.call("reduce_sum", g.call("where", ignored, g.constant(0.0), rows), axes=[0])
        valid = g.call("logical_not", g.call("eq", t, g.constant(-1, "i64")))
        count = g.call("reduce_sum", g.call("cast", valid, dtype="i64"), axes=[0])
        return g.call("div", total, g.call("cast", count, dtype="f32"))

    g = _graph(build)
    assert str(_same(g, run_pipeline)) == fused(g.outputs[0].name, "mean", -1)


def test_count_of_other_targets_stays_a_division(run_pipeline) -> None:
    """A divisor that counts t != -100 while the mask ignores -1 is not the mean's count."""

    def build(g, x, t):
        rows = loss.nll_loss(
            g, g.call("log_softmax", x, axis=-1), t, ignore_index=-1, reduction="none"
        )
        total = g.call("reduce_sum", rows, axes=[0])
        return g.call("div", total, loss.count(g, g.call("ne", t, g.constant(-100, "i64")), "f32"))

    g = run_pipeline(_graph(build), PIPELINE)
    assert g.op_counts() == {
        "cast": 2,
        "constant": 1,
        "cross_entropy": 1,
        "div": 1,
        "ne": 1,
        "reduce_sum": 1,
    }
    (ce,) = (n for n in g.nodes if n.op == "cross_entropy")
    assert ce.attrs == {"ignore_index": -1, "reduction": "sum"}


def test_divisor_from_outside_stays_a_division(run_pipeline) -> None:
    """Hugging Face's sum / num_items_in_batch: the sum fuses, the division stays."""
    text = (
        f"graph @g(%x: f32[{ROWS},{V}], %t: i64[{ROWS}], %n: f32[]) {{\n"
        "  param %iota: i64[7]\n"
        f"  %lp = log_softmax(%x) {{axis=-1}} : f32[{ROWS},{V}]\n"
        f"  %t1 = reshape(%t) {{shape=[{ROWS}, 1]}} : i64[{ROWS},1]\n"
        f"  %hot = eq(%t1, %iota) : bool[{ROWS},{V}]\n"
        '  %z = constant() {dtype="f32", shape=[], value=0.0} : f32[]\n'
        f"  %sel = where(%hot, %lp, %z) : f32[{ROWS},{V}]\n"
        f"  %pick = reduce_sum(%sel) {{axes=[1], keepdim=false}} : f32[{ROWS}]\n"
        f"  %nll = neg(%pick) : f32[{ROWS}]\n"
        '  %c = constant() {dtype="i64", shape=[], value=-100} : i64[]\n'
        f"  %valid = ne(%t, %c) : bool[{ROWS}]\n"
        f"  %rows = where(%valid, %nll, %z) : f32[{ROWS}]\n"
        "  %total = reduce_sum(%rows) {axes=[0], keepdim=false} : f32[]\n"
        "  %loss = div(%total, %n) : f32[]\n"
        "  return %loss\n}\n"
    )
    g = parse(text)
    g.weights["iota"] = torch.arange(V)
    out = run_pipeline(g, PIPELINE)
    assert str(out) == (
        f"graph @g(%x: f32[{ROWS},{V}], %t: i64[{ROWS}], %n: f32[]) {{\n"
        '  %cross_entropy = cross_entropy(%x, %t) {ignore_index=-100, reduction="sum"} : f32[]\n'
        "  %loss = div(%cross_entropy, %n) : f32[]\n"
        "  return %loss\n}\n"
    )


def test_mean_of_rows_is_the_sum_over_the_row_count(run_pipeline) -> None:
    """(logsumexp(x) - gather(x, t)).mean(): every row counts, so sum / rows."""

    def build(g, x, t):
        return g.call("reduce_mean", _lse_minus_gather(g, x, t), axes=[0])

    g = _graph(build)
    t = torch.tensor([1, 5, 6, 0, 2, 3])
    tail = (
        f'  %constant_2 = constant() {{dtype="f32", shape=[], value={float(ROWS)}}} : f32[]\n'
        f"  %{g.outputs[0].name} = div(%cross_entropy, %constant_2) : f32[]\n"
    )
    text = fused("cross_entropy", "sum", -100).replace(
        "  return %cross_entropy\n", tail + f"  return %{g.outputs[0].name}\n"
    )
    assert str(_same(g, run_pipeline, t)) == text


def test_negated_mean_log_likelihood(run_pipeline) -> None:
    """-log_softmax(x).gather(1, t[:, None]).mean()"""

    def build(g, x, t):
        logp = g.call("log_softmax", x, axis=-1)
        picked = loss.gather(g, logp, 1, g.call("reshape", t, shape=[ROWS, 1]))
        return g.call("neg", g.call("reduce_mean", picked, axes=[0, 1]))

    g = _same(_graph(build), run_pipeline, torch.tensor([1, 5, 6, 0, 2, 3]))
    assert g.op_counts() == {"constant": 1, "cross_entropy": 1, "div": 1}


def test_logits_of_any_rank_are_flattened(run_pipeline) -> None:
    """F.cross_entropy on [B, T, V] written without views: the fused op gets [B·T, V]."""
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 3, V), "f32"))
    t = g.add_input("t", TensorType((2, 3), "i64"))
    logp = g.call("log_softmax", x, axis=-1)
    g.outputs = [loss.nll_loss(g, logp, t, ignore_index=-1, reduction="mean")]
    out = g.outputs[0].name
    xs = torch.randn(2, 3, V)
    ts = _targets().reshape(2, 3)
    (want,) = interpret(g, xs, ts)
    g = run_pipeline(g, PIPELINE)
    assert str(g) == (
        f"graph @g(%x: f32[2,3,{V}], %t: i64[2,3]) {{\n"
        f"  %reshape_2 = reshape(%x) {{shape=[6, {V}]}} : f32[6,{V}]\n"
        "  %reshape_3 = reshape(%t) {shape=[6]} : i64[6]\n"
        f'  %{out} = cross_entropy(%reshape_2, %reshape_3) {{ignore_index=-1, reduction="mean"}}'
        " : f32[]\n"
        f"  return %{out}\n}}\n"
    )
    torch.testing.assert_close(interpret(g, xs, ts)[0], want)


def test_broadcast_rows_do_not_fuse(run_pipeline) -> None:
    """logsumexp [6] - pick [6, 1] broadcasts to [6, 6]: not one loss per row."""

    def build(g, x, t):
        lse = loss.logsumexp(g, x, [-1], keepdim=False)
        picked = loss.gather(g, x, 1, g.call("reshape", t, shape=[ROWS, 1]))
        return g.call("reduce_sum", g.call("sub", lse, picked), axes=[0, 1])

    g = run_pipeline(_graph(build), PIPELINE)
    assert "cross_entropy" not in g.op_counts()
    root = g.outputs[0].producer
    assert "constraint failed: one target per row of x" in explain(cross_entropy_sum, root, g)


def test_clamped_targets_without_the_mask_do_not_fuse(run_pipeline) -> None:
    """gather(log_softmax(x), where(t != -1, t, 0)) unmasked picks class 0 for ignored rows."""

    def build(g, x, t):
        clamped = g.call("where", g.call("ne", t, g.constant(-1, "i64")), t, g.constant(0, "i64"))
        picked = loss.gather(
            g, g.call("log_softmax", x, axis=-1), 1, g.call("reshape", clamped, shape=[ROWS, 1])
        )
        return g.call("neg", g.call("reduce_sum", picked, axes=[0, 1]))

    g = run_pipeline(_graph(build), PIPELINE)
    assert "cross_entropy" not in g.op_counts()
