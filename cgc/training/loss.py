"""The language-modelling loss cgc adds to a graph that returns logits."""

from __future__ import annotations

import torch

from cgc.errors import InputError
from cgc.ir import Graph, TensorType, Value


def add_next_token_loss(
    graph: Graph, *, logits: str | None = None, ids: str | None = None
) -> Value:
    """Add the shifted next-token cross-entropy of `logits` as the graph's first output, `%loss`.

    Position t predicts token t + 1 of the input ids, as Hugging Face's `labels=input_ids` does:
    mean over batch·(seq-1) predictions of -log_softmax(logits[:, t])[ids[:, t + 1]]. `logits`
    names the [batch, seq, vocab] output (default: the only float output of rank 3) and `ids`
    the [batch, seq] integer input (default: the only integer input). Returns the loss value.
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
    count = batch * (seq - 1)
    with graph.inserting_before(None, {"scope": "loss"}):
        predictions = graph.call("slice", logit, axis=1, start=0, end=seq - 1)
        targets = graph.call("slice", token, axis=1, start=1, end=seq)
        log_probs = graph.call("log_softmax", predictions, axis=-1)
        # The target's log-probability as a one-hot product: the primitives have no gather.
        name = graph.fresh_name(f"vocab_ids_{vocab}")
        vocab_ids = graph.add_param(
            name,
            TensorType((vocab,), token.dtype),
            torch.arange(vocab, dtype=token.type.torch_dtype),
        )
        column = graph.call("reshape", targets, shape=[batch, seq - 1, 1])
        onehot = graph.call("cast", graph.call("eq", column, vocab_ids), dtype=logit.dtype)
        picked = graph.call("reduce_sum", graph.call("mul", log_probs, onehot), axes=[0, 1, 2])
        loss = graph.call("mul", picked, graph.constant(-1.0 / count, logit.dtype))
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
