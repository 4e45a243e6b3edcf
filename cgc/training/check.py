"""`cgc check MODEL --train`: the same training steps in eager PyTorch (torch.optim with the same
parameter groups, clip_grad_norm_, a LambdaLR on the same schedule), the IR interpreter and each
backend, on the same seeded batches; compared are the loss of every step, the gradients of the
first step (before clipping), and the parameters after the last step.

Losses use the elementwise rule |got - ref| <= atol + rtol·|ref|. Gradients and parameters are
compared per tensor against its largest value, |got - ref| <= atol + rtol·max|ref|: fp32 sums
taken in another order leave errors of about rtol·max|ref| on every element, nearly-zero ones
included. Parameter elements whose first gradient is zero within that tolerance are left out
of the parameter comparison (and counted): Adam's first step moves every element by lr·g/|g|
whatever the gradient's size, so an element whose gradient is zero up to rounding (the key
bias of attention, whose gradient is exactly zero in exact arithmetic) moves by ±lr in any two
fp32 implementations, eager PyTorch against itself on another thread count included. Their
gradients are compared like all others.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch

from cgc import driver
from cgc.debug.numerics import Comparison, compare
from cgc.debug.report import CheckReport, Tolerance
from cgc.errors import InputError, ModelError
from cgc.ir import Graph, interpret
from cgc.ir.ops.random import RNG_SEED
from cgc.training.optim import MAX_GRAD_NORM, AdamW, Optimizer
from cgc.training.runners import INTERPRETER, open_session
from cgc.training.schedule import Schedule
from cgc.training.step import GRAD, STEP
from cgc.training.task import _feed, _kind_of
from cgc.training.trainer import select_loss, training_graphs

TRAIN_BACKENDS = ("onnxruntime", "cerebras")

REFERENCES = ("fp32", "fp64")  # the eager reference's arithmetic


class TrainingTolerance(Tolerance):
    """The rules of the module docstring, with one rtol and atol."""

    def text(self) -> str:
        a, r = f"{self.atol:g}", f"{self.rtol:g}"
        return f"loss |got - ref| <= {a} + {r}·|ref|, tensors |got - ref| <= {a} + {r}·max|ref|"


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The loss cgc adds to a model returning logits, in eager PyTorch."""
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)
    )


def _loss(out, batch: Sequence[torch.Tensor], own: bool) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    scalars = [t for t in leaves if t.dim() == 0 and t.is_floating_point()]
    if scalars:
        return scalars[0]
    logits = next(t for t in leaves if t.dim() == 3 and t.is_floating_point())
    return next_token_loss(logits, batch[0])


def check_training(
    spec: str,
    backends: Sequence[str],
    *,
    steps: int = 3,
    optimizer: Optimizer | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 0.0,
    pipeline: str = "default",
    target: str | None = None,
    precision: str | None = None,
    tolerances: dict[str, tuple[float, float]] | None = None,
    reference: str = "fp32",
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Train MODEL for `steps` steps in eager PyTorch, the interpreter and `backends`;
    `target` and `precision` choose the cerebras backend's simulated wafer, and `tolerances`
    gives a backend its own (rtol, atol) instead of `rtol` and `atol`. `reference` "fp64"
    trains the eager reference in float64: the exact answer, where eager fp32 after a few Adam
    steps is off by its own rounding (README: Training)."""
    if reference not in REFERENCES:
        raise InputError(f"unknown reference {reference!r}; choose {' or '.join(REFERENCES)}")
    for name in backends:
        if name not in TRAIN_BACKENDS:
            raise InputError(
                f"backend {name!r} does not train; --train checks {', '.join(TRAIN_BACKENDS)}"
            )
    if driver.is_onnx(spec):
        raise InputError("--train compares with eager PyTorch: give a PyTorch model, not .onnx")
    if steps < 1:
        raise InputError("--steps must be at least 1")
    loaded = driver.load_model(spec, batch=batch, seq_len=seq_len, seed=seed)
    module = loaded.module
    if any(p.is_meta for p in module.parameters()):
        raise ModelError(f"{loaded.name} is built on the meta device (no weights) and cannot train")
    optimizer = optimizer or AdamW()
    schedule = Schedule("linear", warmup=1, total=steps)
    kind = _kind_of(module)
    batches = _batches(loaded.example_inputs, kind, steps, seed)
    progress("tracing ...")
    module.train()
    graph = driver.trace(module, batches[0])
    if any(v.name == RNG_SEED for v in graph.inputs):
        raise ModelError(f"{loaded.name} has dropout; compare its training with dropout p = 0")
    names = [v.name for v in graph.inputs]
    select_loss(graph, own_loss=kind != "ids")
    joint = graph.copy()
    progress(f"eager PyTorch ({reference}) ...")
    eager = copy.deepcopy(module)
    ref = _eager(eager.double() if reference == "fp64" else eager, batches, optimizer, schedule,
                 kind != "ids")  # fmt: skip
    for part in ("grads", "params"):  # compared as the fp32 values they round to
        ref[part] = {n: x.float() for n, x in ref[part].items()}
    progress("compiling the training step ...")
    graphs = training_graphs(graph, optimizer, schedule, MAX_GRAD_NORM, pipeline=pipeline)
    driver.run_passes(joint, f"{pipeline},autodiff" if pipeline else "autodiff")
    shapes = ", ".join(str(list(t.shape)) for t in batches[0])
    undetermined = sum(
        int((~_determined(ref["grads"].get(n), rtol, atol)).sum()) for n in ref["params"]
    )
    total = sum(p.numel() for p in ref["params"].values())
    tols = {t: (tolerances or {}).get(t, (rtol, atol)) for t in (INTERPRETER, *backends)}
    wafer = {"target": target, "precision": precision}
    report = CheckReport(
        loaded.name,
        f"{steps} {optimizer.name} steps on batches {shapes}, weights {loaded.weights}; "
        f"{undetermined} of {total:,} parameter elements have a first gradient that is zero up "
        "to rounding and are not compared after the last step",
        f"eager PyTorch in {reference} (torch.optim, clip_grad_norm_, LambdaLR)",
        {t: TrainingTolerance(*tol) for t, tol in tols.items()},
        pipeline=f"{pipeline},autodiff,train-step",
        detail_ok=False,
    )
    for backend, (b_rtol, b_atol) in tols.items():
        progress(f"training with {backend} ...")
        began = time.perf_counter()
        options = wafer if backend == "cerebras" else {}
        session = open_session(backend, graphs.step, graphs.initial, **options)
        losses = []
        for i, b in enumerate(batches):
            losses.append(
                session.step(dict(zip(names, b, strict=True)) | {STEP: torch.tensor(i)})["loss"]
            )
            if i == 0 and backend == "cerebras":  # the wafer's own program, not a second plan
                grads = {n[len(GRAD) :]: g for n, g in session.last_gradients.items()}
        params = session.state_dict()
        if backend != "cerebras":
            grads = _gradients(joint, batches[0], backend)
        report.seconds[backend] = time.perf_counter() - began
        rows = [
            compare(
                "loss",
                torch.tensor(losses, dtype=torch.float64),
                ref["loss"],
                rtol=b_rtol,
                atol=b_atol,
            )
        ]
        rows += [
            _per_tensor(f"grad.{n}", grads[n], g, b_rtol, b_atol) for n, g in ref["grads"].items()
        ]
        for n, p in ref["params"].items():
            determined = _determined(ref["grads"].get(n), b_rtol, b_atol)
            got_p = torch.where(determined, params[n], p)  # the rest equal by fiat
            rows.append(_per_tensor(n, got_p, p, b_rtol, b_atol))
        report.results[backend] = rows
    return report


def _batches(example: Sequence[torch.Tensor], kind: str, steps: int, seed: int) -> list[tuple]:
    """Seeded token windows shaped like the example ids (one token longer when the model
    takes targets), fed as the model takes them."""
    ids = example[0]
    if ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
        raise ModelError("--train feeds token ids [batch, seq]; the model's first input is not")
    vocab = int(ids.max()) + 1  # example ids are drawn from the vocabulary: stay below their top
    b, t = ids.shape
    gen = torch.Generator().manual_seed(seed)
    width = t + 1 if kind == "targets" else t
    feed = _feed(kind)
    return [feed(torch.randint(0, vocab, (b, width), generator=gen)) for _ in range(steps)]


def _eager(module, batches, optimizer, schedule, own) -> dict:
    params = dict(module.named_parameters())
    opt = optimizer.to_torch(optimizer.torch_groups(params.items()))
    lr = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    losses, grads = [], {}
    for i, batch in enumerate(batches):
        loss = _loss(module(*batch), batch, own)
        opt.zero_grad()
        loss.backward()
        if i == 0:
            grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        opt.step()
        lr.step()
        losses.append(float(loss.detach()))
    final = {n: p.detach().clone() for n, p in params.items()}
    return {"loss": torch.tensor(losses, dtype=torch.float64), "grads": grads, "params": final}


def _gradients(
    joint: Graph, batch: Sequence[torch.Tensor], backend: str
) -> dict[str, torch.Tensor]:
    """The first step's gradients from the joint (loss, grad.<param>) graph on `backend` (the
    wafer's come from its training session's first step)."""
    if backend == INTERPRETER:
        outputs = interpret(joint, *batch)
    else:
        artifact = driver.compile_graph(joint, backend, {"purpose": "check --train"})
        outputs = artifact.run(*batch)
    return {
        v.name[len(GRAD) :]: t
        for v, t in zip(joint.outputs, outputs, strict=True)
        if v.name.startswith(GRAD)
    }


def _per_tensor(
    name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float
) -> Comparison:
    """Elementwise, against atol + rtol·max|ref|."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return compare(name, got, ref, rtol=0.0, atol=atol + rtol * scale)


def _determined(grad: torch.Tensor | None, rtol: float, atol: float) -> torch.Tensor:
    """Where a parameter's first gradient is not zero within the gradient tolerance."""
    if grad is None:
        return torch.tensor(True)
    return grad.abs() > atol + rtol * float(grad.abs().max())
