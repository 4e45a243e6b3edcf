"""add_next_token_loss: the shifted cross-entropy the trainer adds to a model returning logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cgc.errors import InputError
from cgc.ir import interpret, parse, verify
from cgc.training import add_next_token_loss

LM = """\
graph @lm(%input_ids: i64[2,4]) {
  param trainable %wte: f32[5,3]
  %h = embedding(%wte, %input_ids) : f32[2,4,3]
  %logits = linear(%h, %wte) : f32[2,4,5]
  return %logits
}
"""


def test_loss_ir() -> None:
    g = parse(LM)
    loss = add_next_token_loss(g)
    verify(g)
    body = LM.split("  return")[0]
    scope = ' #{scope="loss"}'
    assert str(g) == (
        body
        + f"  %slice = slice(%input_ids) {{axis=1, end=4, start=1, step=1}} : i64[2,3]{scope}\n"
        '  %constant = constant() {dtype="i64", shape=[2, 1], value=-100} : i64[2,1]'
        f"{scope}\n"
        f"  %concat = concat(%slice, %constant) {{axis=1}} : i64[2,4]{scope}\n"
        f"  %reshape = reshape(%logits) {{shape=[8, 5]}} : f32[8,5]{scope}\n"
        f"  %reshape_1 = reshape(%concat) {{shape=[8]}} : i64[8]{scope}\n"
        "  %loss = cross_entropy(%reshape, %reshape_1) "
        f'{{ignore_index=-100, reduction="mean"}} : f32[]{scope}\n'
        "  return %loss, %logits\n}\n"
    )
    assert loss is g.outputs[0]


def test_loss_is_torchs_shifted_cross_entropy() -> None:
    g = parse(LM)
    gen = torch.Generator().manual_seed(0)
    wte = torch.randn(5, 3, generator=gen)
    ids = torch.randint(0, 5, (2, 4), generator=gen)
    g.weights["wte"] = wte
    add_next_token_loss(g)
    loss, logits = interpret(g, ids)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 5), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "graph @g(%ids: i64[2,4]) {\n  param %t: f32[5,3]\n"
            "  %h = embedding(%t, %ids) : f32[2,4,3]\n  return %h, %h\n}\n",
            "graph @g needs exactly one output that is a [batch, seq, vocab] float output"
            " (found: %h, %h); name it",
        ),
        (
            "graph @g(%ids: i64[2,1]) {\n  param %t: f32[5,5]\n"
            "  %h = embedding(%t, %ids) : f32[2,1,5]\n  return %h\n}\n",
            "sequence length 1: next-token loss needs at least 2 positions",
        ),
        (
            "graph @g(%ids: i64[2,4], %pos: i64[2,4]) {\n  param %t: f32[5,5]\n"
            "  %h = embedding(%t, %ids) : f32[2,4,5]\n  return %h\n}\n",
            "graph @g needs exactly one input that is a [batch, seq] integer input of token ids"
            " (found: %ids, %pos); name it",
        ),
    ],
    ids=["two-logits", "one-position", "two-id-inputs"],
)
def test_bad_graphs(text: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        add_next_token_loss(parse(text))
    assert str(info.value) == message


def test_named_ids_input_among_several() -> None:
    g = parse(
        "graph @g(%ids: i64[2,4], %pos: i64[2,4]) {\n  param %t: f32[5,5]\n"
        "  %h = embedding(%t, %ids) : f32[2,4,5]\n  return %h\n}\n"
    )
    add_next_token_loss(g, ids="ids")
    assert [v.name for v in g.outputs] == ["loss", "h"]
