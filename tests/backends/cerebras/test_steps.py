"""The wafer's step program: the decode program in the simulator, a prompt streamed through it,
its caches kept in place between steps; logits as the interpreter's step graphs give them."""

import torch

from cgc.backends.cerebras.steps import CerebrasSteps
from cgc.generation import InterpreterSteps


def test_prefill_and_decode_give_the_interpreters_logits(step_graphs) -> None:
    prefill, decode = step_graphs
    wafer = CerebrasSteps.compile(prefill, decode, target="fabric:24x24")
    reference = InterpreterSteps(prefill, decode)
    caches = list(wafer.caches)
    ids = torch.tensor([[5, 17, 3, 42]])
    torch.testing.assert_close(
        wafer.prefill(ids).reshape(1, -1),
        reference.prefill(ids).reshape(1, -1),
        rtol=1e-5,
        atol=1e-5,
    )
    for past, token in enumerate([9, 60, 2], start=4):
        step = torch.tensor([[token]])
        got, want = wafer.decode(step, past), reference.decode(step, past)
        torch.testing.assert_close(got.reshape(1, -1), want.reshape(1, -1), rtol=1e-5, atol=1e-5)
    assert all(a is b for a, b in zip(wafer.caches, caches, strict=True))  # updated in place
    for got, want in zip(wafer.caches, reference.caches, strict=True):
        torch.testing.assert_close(got[:, :, :7], want[:, :, :7], rtol=1e-5, atol=1e-5)
    report = wafer.report()
    assert report.startswith("wafer: fabric:24x24, pipelined, fp32; ")
    assert "\nper-token latency " in report and "\na 4-token prompt streams through in " in report
