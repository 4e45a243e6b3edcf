"""Models that return a loss trace and fuse: one cross_entropy after the default pipeline, no
softmax left outside attention, and eager = interpreter = ONNX Runtime within 1e-4."""

import pytest
import torch
import torch.nn.functional as F
from zoo import mingpt, nanogpt

from cgc import models, run_passes, trace
from cgc.driver import compile_graph
from cgc.ir import interpret

transformers = pytest.importorskip("transformers")
TOL = 1e-4


class LabelledGPT2(transformers.GPT2LMHeadModel):
    def forward(self, input_ids, labels):
        return super().forward(input_ids=input_ids, labels=labels, use_cache=False)


class BuiltinWithLoss(torch.nn.Module):
    """The built-in GPT with the shifted next-token loss a trainer adds."""

    def __init__(self) -> None:
        super().__init__()
        self.gpt = models.build("tiny-111m").eval()

    def forward(self, ids, targets):
        logits = self.gpt(ids)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def _hf(attn: str):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    ids = torch.randint(0, 50, (2, 8))
    labels = ids.clone()
    labels[1, 5:] = -100
    return LabelledGPT2(config).eval(), (ids, labels), ["loss", "logits"]


def _zoo(module):
    model, (ids,) = module.get_model()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -1
    return model, (ids, targets), ["output_0", "loss"]


def _builtin():
    config = models.get_config("tiny-111m")
    (ids,) = models.example_inputs(config, 2, 8)
    targets = torch.roll(ids, -1, dims=1)
    return BuiltinWithLoss().eval(), (ids, targets), ["output_0", "loss"]


MODELS = {
    "hf-eager": lambda: _hf("eager"),
    "hf-sdpa": lambda: _hf("sdpa"),
    "nanogpt": lambda: _zoo(nanogpt),
    "mingpt": lambda: _zoo(mingpt),
    "builtin": _builtin,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_returning_a_loss_fuses_and_matches_eager(name: str) -> None:
    module, inputs, outputs = MODELS[name]()
    with torch.no_grad():
        want = [t for t in torch.utils._pytree.tree_leaves(module(*inputs))]
    g = run_passes(trace(module, inputs), "default")
    counts = g.op_counts()
    assert [v.name for v in g.outputs] == outputs
    assert counts["cross_entropy"] == 1 and counts["attention"] == 2
    assert "log_softmax" not in counts and "softmax" not in counts
    for target, got in (
        ("interpreter", interpret(g, *inputs)),
        ("onnxruntime", compile_graph(g, "onnxruntime").run(*inputs)),
    ):
        for w, out in zip(want, got, strict=True):
            torch.testing.assert_close(
                out, w, atol=TOL, rtol=TOL, msg=lambda m, t=target: f"{t}: {m}"
            )
