"""Losses and dropout through torch.export: every form people write imports, and the default
pipeline makes it one cross_entropy that matches eager PyTorch; what cgc cannot import fails
with one line."""

import pytest
import torch
import torch.nn.functional as F

from cgc import run_passes, trace
from cgc.errors import UnsupportedOpError
from cgc.ir import interpret

B, T, V = 2, 5, 11


class Loss(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(x, t)


def _lse_gather(x, t):
    index = t.masked_fill(t == -1, 0).unsqueeze(-1)
    rows = torch.logsumexp(x, -1) - torch.gather(x, -1, index).squeeze(-1)
    return rows.masked_fill(t == -1, 0).sum() / (t != -1).sum()


# name -> (loss, expected cross_entropy attrs, other ops left after the default pipeline)
FORMS = {
    "nanogpt": (
        lambda x, t: F.cross_entropy(x.view(-1, V), t.view(-1), ignore_index=-1),
        {"ignore_index": -1, "reduction": "mean"},
        {"reshape": 2},
    ),
    "sum": (
        lambda x, t: F.cross_entropy(x.view(-1, V), t.view(-1), ignore_index=-1, reduction="sum"),
        {"ignore_index": -1, "reduction": "sum"},
        {"reshape": 2},
    ),
    "nll_log_softmax": (
        lambda x, t: F.nll_loss(F.log_softmax(x, -1).view(-1, V), t.view(-1), ignore_index=-1),
        {"ignore_index": -1, "reduction": "mean"},
        {"reshape": 2},
    ),
    "none_sum_over_count": (
        lambda x, t: (
            F.cross_entropy(x.view(-1, V), t.view(-1), ignore_index=-1, reduction="none")
            .sum()
            .div((t != -1).sum())
        ),
        {"ignore_index": -1, "reduction": "mean"},
        {"reshape": 2},
    ),
    "classes_on_axis_1": (
        lambda x, t: F.cross_entropy(x.transpose(1, 2), t, ignore_index=-1),
        {"ignore_index": -1, "reduction": "mean"},
        {"reshape": 2},
    ),
    "logsumexp_minus_gather": (
        _lse_gather,
        {"ignore_index": -1, "reduction": "mean"},
        {"reshape": 2},
    ),
    "take_along_dim_mean": (
        lambda x, t: (
            torch.logsumexp(x, -1) - torch.take_along_dim(x, t.abs()[..., None], -1)[..., 0]
        ).mean(),
        {"ignore_index": -100, "reduction": "sum"},
        {"abs": 1, "reshape": 2, "constant": 1, "div": 1},
    ),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_loss_form_fuses_into_one_cross_entropy(form: str) -> None:
    fn, attrs, rest = FORMS[form]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, V, generator=gen)
    t = torch.randint(0, V, (B, T), generator=gen)
    t[0, :2] = -1
    g = run_passes(trace(Loss(fn), (x, t)), "default")
    (ce,) = (n for n in g.nodes if n.op == "cross_entropy")
    assert ce.attrs == attrs
    assert {k: v for k, v in g.op_counts().items() if k != "cross_entropy"} == rest
    torch.testing.assert_close(interpret(g, x, t)[0], fn(x, t), atol=1e-5, rtol=1e-5)


def test_shifted_labels_padded_with_ignore_index() -> None:
    """Hugging Face's causal-LM loss: pad the labels with -100, shift left, mean over the rest."""

    def fn(x, labels):
        shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
        return F.cross_entropy(x.float().view(-1, V), shifted.reshape(-1))

    x, labels = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    g = run_passes(trace(Loss(fn), (x, labels)), "default")
    assert g.op_counts()["cross_entropy"] == 1 and "log_softmax" not in g.op_counts()
    torch.testing.assert_close(interpret(g, x, labels)[0], fn(x, labels))


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda x, t: F.cross_entropy(x, t, weight=torch.ones(V)), "class weights"),
        (lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), "label_smoothing=0.1"),
        (lambda x, t: F.cross_entropy(x, x.softmax(-1)), "f32 targets"),
    ],
    ids=["weight", "label_smoothing", "probabilities"],
)
def test_unsupported_loss_options_fail_clearly(fn, message) -> None:
    x, t = torch.randn(4, V), torch.randint(0, V, (4,))
    with pytest.raises(UnsupportedOpError, match=message) as error:
        trace(Loss(fn), (x, t))
    assert str(error.value).startswith("unsupported operation aten.cross_entropy_loss at ")
    assert "test_fx_losses.py:" in str(error.value)


class Dropouts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(x)
        p = 0.5 if self.training else 0.0
        return F.scaled_dot_product_attention(y, y, y, dropout_p=p, is_causal=True)


def test_training_mode_dropout_reads_one_rng_seed_input() -> None:
    x = torch.randn(1, 2, 4, 8)
    g = trace(Dropouts().train(), (x,))
    assert [v.name for v in g.inputs] == ["x", "rng_seed"]
    drops = [n for n in g.nodes if n.op == "dropout"]
    assert [(n.attrs["p"], n.attrs["stream"]) for n in drops] == [(0.25, 0), (0.5, 1)]
    assert all(n.inputs[1] is g.inputs[1] for n in drops)
    seed = torch.tensor(42)
    first, second = interpret(g, x, seed)[0], interpret(g, x, torch.tensor(43))[0]
    assert torch.equal(first, interpret(g, x, seed)[0]) and not torch.equal(first, second)


def test_eval_mode_dropout_is_the_identity() -> None:
    x = torch.randn(1, 2, 4, 8)
    g = trace(Dropouts().eval(), (x,))
    assert [v.name for v in g.inputs] == ["x"] and "dropout" not in g.op_counts()


def test_a_tuples_scalar_output_is_named_loss() -> None:
    class LogitsAndLoss(torch.nn.Module):
        def forward(self, x, t):
            return x * 2, F.cross_entropy(x, t)

    g = trace(LogitsAndLoss(), (torch.randn(4, V), torch.randint(0, V, (4,))))
    assert [v.name for v in g.outputs] == ["output_0", "loss"]
