"""Gradients of whole models from the autodiff pass against torch autograd, in fp32.

Per parameter tensor, max |cgc - torch| <= 1e-4 · max |torch|, from the interpreter and from
ONNX Runtime, for every built-in tiny model, Hugging Face GPT-2 (eager and sdpa attention, with
`labels=`), nanoGPT- and minGPT-style models with `targets=`, and an ONNX export of GPT-2.
Models returning logits get `add_next_token_loss`; torch computes the same shifted
cross-entropy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from zoo import mingpt, nanogpt

from cgc import models
from cgc.driver import compile_graph, load_onnx, run_passes, trace
from cgc.ir import Graph, interpret, parse
from cgc.passes.autodiff import GRAD_PREFIX
from cgc.training import add_next_token_loss

TOLERANCE = 1e-4  # relative to the largest |gradient| of each tensor
BACKENDS = ["interpreter", "onnxruntime"]


def _perturb(module: torch.nn.Module) -> torch.nn.Module:
    """Seeded noise on every weight, so zero biases and unit gains are not special cases."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return module


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _joint(graph: Graph, ids: str | None = None) -> Graph:
    """The training graph: default pipeline, next-token loss, autodiff; it round-trips as text."""
    graph = run_passes(graph, "default")
    add_next_token_loss(graph, ids=ids)
    graph = run_passes(graph, "autodiff")
    assert str(parse(str(graph))) == str(graph)
    return graph


def _torch_grad(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The gradient torch holds for graph parameter `name`; a weight cgc stores transposed
    (`<name>.transpose`, Hugging Face's Conv1D) compares with the transposed gradient."""
    if name.endswith(".transpose"):
        return module.get_parameter(name.removesuffix(".transpose")).grad.T
    return module.get_parameter(name).grad


def _errors(
    graph: Graph, inputs: tuple, module: torch.nn.Module, loss: torch.Tensor, backend: str
) -> dict[str, float]:
    """Max relative error of the loss and of every parameter's gradient."""
    if backend == "interpreter":
        outputs = interpret(graph, *inputs)
    else:
        outputs = compile_graph(graph, backend).run(*inputs)
    got = dict(zip((v.name for v in graph.outputs), outputs, strict=True))
    errors = {"loss": abs(got.pop("loss").item() - loss.item()) / abs(loss.item())}
    grads = {name.removeprefix(GRAD_PREFIX): g for name, g in got.items()}
    assert set(grads) == graph.trainable, "every trainable parameter has a gradient"
    for name, grad in grads.items():
        want = _torch_grad(module, name)
        errors[name] = ((grad - want).abs().max() / want.abs().max()).item()
    return errors


def _check(errors: dict[str, float]) -> None:
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f"gradients off by more than {TOLERANCE} (relative): {bad}"


@pytest.mark.parametrize("name", [n for n in models.available() if n.startswith("tiny-")])
def test_builtin_tiny_models(name: str) -> None:
    module = _perturb(models.build(name))
    (ids,) = models.example_inputs(module.config, batch=2, seq_len=8)
    graph = _joint(trace(module, (ids,)))
    assert set(graph.trainable) == {n for n, _ in module.named_parameters()}  # lm_head is wte
    loss = _next_token_loss(module(ids), ids)
    loss.backward()
    for backend in BACKENDS:
        _check(_errors(graph, (ids,), module, loss, backend))


class _Logits(torch.nn.Module):
    """Hugging Face GPT-2 returning its logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _hf(attn: str, cls: type = transformers.GPT2LMHeadModel) -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32, attn_implementation=attn
    )
    torch.manual_seed(0)  # transformers initialises from the global generator
    return _perturb(cls(config))


IDS = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))


class _Labelled(transformers.GPT2LMHeadModel):
    """Hugging Face GPT-2 computing its own loss from `labels=`."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        return super().forward(input_ids=input_ids, labels=labels, use_cache=False)


def _labelled(attn: str) -> tuple[torch.nn.Module, tuple]:
    labels = IDS.clone()
    labels[1, 5:] = -100  # ignored positions
    return _hf(attn, _Labelled).eval(), (IDS, labels)  # eval: no dropout


def _zoo(module) -> tuple[torch.nn.Module, tuple]:
    model, (ids,) = module.get_model()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -1  # their ignore_index
    return _perturb(model.eval()), (ids, targets)


LOSS_MODELS = {
    "hf-eager-labels": lambda: _labelled("eager"),
    "hf-sdpa-labels": lambda: _labelled("sdpa"),
    "nanogpt-targets": lambda: _zoo(nanogpt),
    "mingpt-targets": lambda: _zoo(mingpt),
}


@pytest.mark.parametrize("name", sorted(LOSS_MODELS))
def test_models_computing_their_own_loss(name: str) -> None:
    """The model's 0-d output is the loss: traced, fused to cross_entropy, differentiated."""
    module, inputs = LOSS_MODELS[name]()
    graph = run_passes(run_passes(trace(module, inputs), "default"), "autodiff")
    assert graph.op_counts()["cross_entropy_grad"] == 1
    loss = [t for t in torch.utils._pytree.tree_leaves(module(*inputs)) if t.dim() == 0][0]
    loss.backward()
    for backend in BACKENDS:
        _check(_errors(graph, inputs, module, loss, backend))


def test_onnx_export_of_gpt2(tmp_path: Path) -> None:
    """torch.onnx's dynamo exporter, with a dynamic sequence length as usual: a fixed one lets
    its optimizer fold wpe's rows for positions 0..T-1 into a constant, leaving no wpe weight."""
    module = _Logits(_hf("eager")).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=32)}
    torch.onnx.export(
        module, (IDS,), str(tmp_path / "gpt2.onnx"), dynamo=True, dynamic_shapes=(dims,)
    )
    graph = _joint(load_onnx(tmp_path / "gpt2.onnx", input_shapes={"input_ids": [2, 8]}))
    # the exporter's transposed copy of the tied LM head is restored: one weight, one gradient
    assert len(graph.trainable) == len(list(module.parameters()))
    assert {"model.lm_head.weight", "model.transformer.wpe.weight"} <= graph.trainable
    loss = module.model(input_ids=IDS, labels=IDS, use_cache=False).loss
    loss.backward()
    for backend in BACKENDS:
        _check(_errors(graph, (IDS,), module, loss, backend))


def test_check_can_fail() -> None:
    """The comparison is not vacuous: a wrong gradient is caught."""
    module = _perturb(models.build("tiny-111m"))
    (ids,) = models.example_inputs(module.config, batch=1, seq_len=4)
    graph = _joint(trace(module, (ids,)))
    _next_token_loss(module(ids), ids).backward()
    module.transformer.h[0].mlp.c_fc.bias.grad[3] += 1e-3
    errors = _errors(graph, (ids,), module, _next_token_loss(module(ids), ids), "interpreter")
    with pytest.raises(AssertionError, match="c_fc.bias"):
        _check(errors)
