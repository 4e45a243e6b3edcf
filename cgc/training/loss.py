"""The language-modelling loss cgc adds to a graph that returns logits."""

from __future__ import annotations

from cgc.errors import InputError
from cgc.ir import Graph, Value

IGNORE_INDEX = -100  # torch's default; token ids are never negative


def add_next_token_loss(
    graph: Graph, *, logits: str | None = None, ids: str | None = None
) -> Value:
    """Add the shifted next-token cross-entropy of `logits` as the graph's first output, `%loss`.

    Position t predicts token t + 1 of the input ids, as Hugging Face's `labels=input_ids` does:
    the mean over batch·(seq-1) predictions of -log softmax(logits[:, t])[ids[:, t + 1]], one
    `cross_entropy` over every position, the last one's target being ignore_index (so the
    logits are not sliced, and the last position's gradient is zero). `logits` names the
    [batch, seq, vocab] output (default: the only float output of rank 3) and `ids` the
    [batch, seq] integer input (default: the only integer input). Returns the loss value.
    """
    logit = _one(
        [v for v in graph.outputs if v.type.rank == 3 and v.type.is_float],
        logits,
        "output",
        "a [batch, seq, vocab] float output",
        graph,
    )
    token = _one(
        [v for v in graph.inputs if v.dtype in ("i64", "i32") and v.type.rank == 2],
        ids,
        "input",
        "a [batch, seq] integer input of token ids",
        graph,
    )
    batch, seq, vocab = logit.shape
    if token.shape != (batch, seq):
        raise InputError(f"token ids %{token.name}: {token.type} do not match logits {logit.type}")
    if seq < 2:
        raise InputError(f"sequence length {seq}: next-token loss needs at least 2 positions")
    with graph.inserting_before(None, {"scope": "loss"}):
        following = graph.call("slice", token, axis=1, start=1, end=seq)
        none = {"value": IGNORE_INDEX, "dtype": token.dtype, "shape": [batch, 1]}
        last = graph.add_node("constant", [], none).output
        targets = graph.call("concat", following, last, axis=1)
        rows = graph.call("reshape", logit, shape=[batch * seq, vocab])
        flat = graph.call("reshape", targets, shape=[batch * seq])
        loss = graph.call("cross_entropy", rows, flat, ignore_index=IGNORE_INDEX, reduction="mean")
    graph.rename(loss, graph.fresh_name("loss"))
    graph.outputs.insert(0, loss)
    return loss


def _one(candidates: list[Value], name: str | None, kind: str, what: str, graph: Graph) -> Value:
    if name is not None:
        for v in candidates:
            if v.name == name:
                return v
        raise InputError(f"graph @{graph.name} has no {kind} %{name} that is {what}")
    if len(candidates) != 1:
        found = ", ".join(f"%{v.name}" for v in candidates) or "none"
        raise InputError(
            f"graph @{graph.name} needs exactly one {kind} that is {what} (found: {found}); name it"
        )
    return candidates[0]
