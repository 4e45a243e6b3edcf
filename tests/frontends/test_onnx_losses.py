"""Losses in ONNX files (torch.onnx.export, dynamo and TorchScript): SoftmaxCrossEntropyLoss,
NegativeLogLikelihoodLoss, GatherElements and ReduceLogSumExp import as primitives that the
default pipeline fuses into one cross_entropy matching ONNX Runtime on the original file."""

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from cgc.frontends.onnx import load_onnx
from cgc.ir import interpret
from cgc.passes import run_passes

N, V = 6, 5


class Loss(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(x, t)


FORMS = {
    "softmax_cross_entropy": (lambda x, t: F.cross_entropy(x, t, ignore_index=-1), "mean"),
    "nll_none_over_count": (
        lambda x, t: (
            F.nll_loss(F.log_softmax(x, -1), t, reduction="none", ignore_index=-1).sum()
            / (t != -1).sum()
        ),
        "mean",
    ),
    "logsumexp_gather_elements": (
        lambda x, t: (torch.logsumexp(x, -1) - torch.gather(x, -1, t.abs()[:, None])[:, 0]).sum(),
        "sum",
    ),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_exported_loss_fuses_and_matches_ort(form: str, dynamo: bool, tmp_path) -> None:
    fn, reduction = FORMS[form]
    x, t = torch.randn(N, V), torch.tensor([1, -1, 4, 0, -1, 3])
    path = tmp_path / "loss.onnx"
    torch.onnx.export(Loss(fn), (x, t), str(path), dynamo=dynamo, input_names=["x", "t"])
    (want,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy(), "t": t.numpy()})
    g = run_passes(load_onnx(path), "default")
    (ce,) = (n for n in g.nodes if n.op == "cross_entropy")
    assert ce.attrs["reduction"] == reduction
    assert "log_softmax" not in g.op_counts() and "reduce_max" not in g.op_counts()
    torch.testing.assert_close(interpret(g, x, t)[0], torch.from_numpy(want), atol=1e-5, rtol=1e-5)
