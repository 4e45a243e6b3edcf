"""autodiff: the joint graph as text, tied weights, pruning, options, errors and the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cgc.cli import main
from cgc.errors import InputError
from cgc.ir import interpret, parse, verify
from cgc.passes.autodiff import differentiate

LINEAR_TANH = """\
graph @g(%x: f32[2,3]) {
  param trainable %w: f32[4,3]
  param trainable %b: f32[4]
  param %scale: f32[4]
  %h = linear(%x, %w, %b) : f32[2,4]
  %s = mul(%h, %scale) : f32[2,4]
  %t = tanh(%s) : f32[2,4]
  %loss = reduce_sum(%t) {axes=[0, 1], keepdim=false} : f32[]
  return %loss, %t
}
"""

BACKWARD = """\
  %seed = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %reshape = reshape(%seed) {shape=[1, 1]} : f32[1,1]
  %expand = expand(%reshape) {shape=[2, 4]} : f32[2,4]
  %constant = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %mul = mul(%t, %t) : f32[2,4]
  %sub = sub(%constant, %mul) : f32[2,4]
  %mul_1 = mul(%expand, %sub) : f32[2,4]
  %mul_2 = mul(%mul_1, %scale) : f32[2,4]
"""


def test_joint_graph_text(rewrite_text) -> None:
    """The forward stays as it was; the backward follows; the buffer %scale gets no gradient."""
    forward = LINEAR_TANH.rsplit("  return", 1)[0]
    assert rewrite_text(LINEAR_TANH, "autodiff") == (
        forward + BACKWARD + "  %transpose = transpose(%mul_2) {perm=[1, 0]} : f32[4,2]\n"
        "  %grad.w = matmul(%transpose, %x) : f32[4,3]\n"
        "  %grad.b = reduce_sum(%mul_2) {axes=[0], keepdim=false} : f32[4]\n"
        "  return %loss, %grad.w, %grad.b\n}\n"
    )


def test_wrt_prunes_gradients_nobody_needs_and_keep_outputs(rewrite_text) -> None:
    forward = LINEAR_TANH.rsplit("  return", 1)[0]
    assert rewrite_text(LINEAR_TANH, "autodiff{wrt=b,keep-outputs=true}") == (
        forward + BACKWARD + "  %grad.b = reduce_sum(%mul_2) {axes=[0], keepdim=false} : f32[4]\n"
        "  return %loss, %t, %grad.b\n}\n"
    )


def test_joint_graph_round_trips_as_text(run_pipeline) -> None:
    g = run_pipeline(LINEAR_TANH, "autodiff")
    assert str(parse(str(g))) == str(g)
    assert parse(str(g)).trainable == {"w", "b"}


TIED = """\
graph @tied(%ids: i64[2,5]) {
  param trainable %wte: f32[7,4]
  param trainable %gain: f32[4]
  %e = embedding(%wte, %ids) : f32[2,5,4]
  %h = mul(%e, %gain) : f32[2,5,4]
  %logits = linear(%h, %wte) : f32[2,5,7]
  %lp = log_softmax(%logits) {axis=-1} : f32[2,5,7]
  %pick = slice(%lp) {axis=2, end=1, start=0, step=1} : f32[2,5,1]
  %loss = reduce_mean(%pick) {axes=[0, 1, 2], keepdim=false} : f32[]
  return %loss
}
"""


def test_tied_weights_get_one_summed_gradient(run_pipeline) -> None:
    """The embedding's rows scatter into the LM head's gradient (embedding_grad's accumulator),
    and the sum matches torch's gradient of the shared tensor."""
    g = run_pipeline(TIED, "autodiff")
    assert [v.name for v in g.outputs] == ["loss", "grad.wte", "grad.gain"]
    (scatter,) = [n for n in g.nodes if n.op == "embedding_grad"]
    assert scatter.outputs[0].name == "grad.wte" and len(scatter.inputs) == 3
    assert "add" not in g.op_counts()  # no zero table added to the head's gradient

    gen = torch.Generator().manual_seed(0)
    wte = torch.randn(7, 4, generator=gen, requires_grad=True)
    gain = torch.randn(4, generator=gen, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5), generator=gen)
    g.weights.update(wte=wte.detach(), gain=gain.detach())
    loss, dwte, dgain = interpret(g, ids)
    logits = F.linear(F.embedding(ids, wte) * gain, wte)
    want = logits.log_softmax(-1)[..., :1].mean()
    want.backward()
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(dwte, wte.grad)
    torch.testing.assert_close(dgain, gain.grad)


class PaddedLM(torch.nn.Module):
    """Token embedding with a padding row (Hugging Face sets padding_idx = pad_token_id) and
    an LM head tied to it."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(7, 4, padding_idx=1)
        self.gain = torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(1)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.linear(self.wte(ids) * self.gain, self.wte.weight).logsumexp(-1).mean()


def test_the_padding_row_gets_only_the_tied_heads_gradient() -> None:
    from cgc import driver

    torch.manual_seed(0)
    model = PaddedLM()
    ids = torch.tensor([[1, 3, 1, 5, 0], [2, 1, 6, 4, 1]])
    g = driver.trace(model, (ids,))
    assert "embedding(%wte.weight, %ids) {padding_idx=1} : f32[2,5,4]" in str(g)
    driver.run_passes(g, "autodiff")
    (scatter,) = [n for n in g.nodes if n.op == "embedding_grad"]
    assert scatter.attrs == {"num_rows": 7, "padding_idx": 1}
    got = dict(zip([v.name for v in g.outputs], interpret(g, ids), strict=True))
    model(ids).backward()
    torch.testing.assert_close(got["grad.wte.weight"], model.wte.weight.grad)
    torch.testing.assert_close(got["grad.gain"], model.gain.grad)


ATTENTION = """\
graph @attn(%x: f32[1,6,8]) {
  param trainable %w: f32[24,8]
  %qkv = linear(%x, %w) : f32[1,6,24]
  %q = slice(%qkv) {axis=2, end=8, start=0, step=1} : f32[1,6,8]
  %k = slice(%qkv) {axis=2, end=16, start=8, step=1} : f32[1,6,8]
  %v = slice(%qkv) {axis=2, end=24, start=16, step=1} : f32[1,6,8]
  %a = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5} : f32[1,6,8]
  %loss = reduce_sum(%a) {axes=[0, 1, 2], keepdim=false} : f32[]
  return %loss, %a
}
"""


def test_attention_saves_its_log_sum_exp_and_no_scores(run_pipeline) -> None:
    g = run_pipeline(ATTENTION, "autodiff{keep-outputs=true}")
    ops = g.op_counts()
    assert "attention" not in ops and ops["attention_lse"] == 1 and ops["attention_grad"] == 1
    (forward,) = [n for n in g.nodes if n.op == "attention_lse"]
    assert [v.name for v in forward.outputs] == ["a", "a.attention_lse"]  # the output keeps %a
    assert [v.name for v in g.outputs] == ["loss", "a", "grad.w"]
    # nothing [T, T] anywhere; the thirds' gradients join in one concat, not three padded adds
    assert not any(v.shape[-2:] == (6, 6) for v in g.values())
    assert ops["concat"] == 1 and "pad" not in ops


def test_a_parameter_off_the_loss_path_gets_no_gradient() -> None:
    g = parse(
        "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n  param trainable %b: f32[3]\n"
        "  %y = mul(%x, %a) : f32[3]\n  %z = mul(%x, %b) : f32[3]\n"
        "  %loss = reduce_sum(%y) {axes=[0], keepdim=false} : f32[]\n  return %loss, %z\n}\n"
    )
    stats = differentiate(g)
    assert stats == {"active-nodes": 2, "gradients": 1, "unreached": 1, "dead-nodes": 2}
    assert [v.name for v in g.outputs] == ["loss", "grad.a"]
    assert "%z" not in str(g)  # keep_outputs=False: the other output's node is dead
    verify(g)


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        (
            "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n"
            "  %y = mul(%x, %a) : f32[3]\n  return %y\n}\n",
            {},
            "autodiff needs a scalar (0-d) float loss output; graph @g returns %y: f32[3]. Add a"
            " loss first (cgc.training.add_next_token_loss for a model returning logits)",
        ),
        (
            "graph @g(%x: f32[3]) {\n  param %a: f32[3]\n  %y = mul(%x, %a) : f32[3]\n"
            "  %l = reduce_sum(%y) {axes=[0], keepdim=false} : f32[]\n  return %l\n}\n",
            {},
            "graph @g has no trainable parameters; mark some (`param trainable`) or name them with"
            " autodiff{wrt=...}",
        ),
        (
            "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n"
            "  %l = reduce_sum(%x) {axes=[0], keepdim=false} : f32[]\n  return %l\n}\n",
            {},
            "loss %l does not depend on any of the 1 parameter(s) to differentiate; nothing to"
            " train",
        ),
        (
            "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n  %y = mul(%x, %a) : f32[3]\n"
            "  %l = reduce_sum(%y) {axes=[0], keepdim=false} : f32[]\n  return %l\n}\n",
            {"wrt": ["b*"]},
            "no floating-point parameter of graph @g matches wrt=b*",
        ),
        (
            "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n  %y = mul(%x, %a) : f32[3]\n"
            "  %l = reduce_sum(%y) {axes=[0], keepdim=false} : f32[]\n  return %l, %l\n}\n",
            {"loss": "m"},
            "graph @g has no output %m; its outputs: %l, %l",
        ),
        (  # an attention mask computed from a weight: its gradient is not supported
            "graph @g(%x: f32[1,2,4]) {\n  param trainable %m: f32[2,2]\n"
            "  %a = attention(%x, %x, %x, %m) {causal=false, num_heads=1, scale=0.5}"
            ' : f32[1,2,4] #{source="m.py:3"}\n'
            "  %l = reduce_sum(%a) {axes=[0, 1, 2], keepdim=false} : f32[]\n  return %l\n}\n",
            {},
            "attention at m.py:3 gives no gradient for its operand 3 (%m), which depends on"
            " the parameters being differentiated",
        ),
    ],
    ids=["no-scalar", "no-trainable", "independent", "wrt-none", "unknown-loss", "mask"],
)
def test_bad_graphs_are_one_line_input_errors(text: str, options: dict, message: str) -> None:
    with pytest.raises(InputError) as info:
        differentiate(parse(text), **options)
    assert str(info.value) == message


def test_two_scalar_outputs_need_the_loss_named() -> None:
    text = (
        "graph @g(%x: f32[3]) {\n  param trainable %a: f32[3]\n  %y = mul(%x, %a) : f32[3]\n"
        "  %l = reduce_sum(%y) {axes=[0], keepdim=false} : f32[]\n"
        "  %m = reduce_mean(%y) {axes=[0], keepdim=false} : f32[]\n  return %l, %m\n}\n"
    )
    with pytest.raises(InputError, match=r"2 scalar outputs .*autodiff\{loss=NAME\}"):
        differentiate(parse(text))
    g = parse(text)
    differentiate(g, loss="m")
    assert [v.name for v in g.outputs] == ["m", "grad.a"]


def test_cli_prints_and_dumps_the_joint_graph(tmp_path) -> None:
    (tmp_path / "g.cgc").write_text(LINEAR_TANH)
    dump = tmp_path / "dump"
    result = CliRunner().invoke(
        main,
        ["opt", str(tmp_path / "g.cgc"), "--passes", "autodiff", "--print-ir-after=autodiff"]
        + ["--dump-dir", str(dump)],
    )
    assert result.exit_code == 0, result.output
    assert "%grad.w = matmul(%transpose, %x)" in result.stderr
    assert sorted(p.name for p in dump.iterdir()) == ["00-input.cgc", "01-autodiff.cgc"]
    assert (dump / "01-autodiff.cgc").read_text().endswith(result.stdout)
    bad = CliRunner().invoke(main, ["opt", str(tmp_path / "g.cgc"), "--passes", "autodiff{loss=t}"])
    assert bad.exit_code == 2
    assert bad.stderr == "error: loss %t is f32[2,4]; the loss must be a 0-d float\n"
