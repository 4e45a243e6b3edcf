"""The optimizer graph alone, gradients fed as inputs, against torch.optim + clip_grad_norm_ +
LambdaLR on the same gradients: equal to fp32 rounding, step after step."""

import pytest
import torch

from cgc.backends.onnxruntime.training import OrtTrainingSession
from cgc.ir import TensorType, interpret, verify
from cgc.training import SGD, AdamW, Schedule
from cgc.training.optim import decays
from cgc.training.step import GRAD, NEW, update_graph

SHAPES = {"wte": (11, 6), "h.0.w": (6, 6), "h.0.b": (6,), "ln.weight": (6,)}
STEPS = 6


def _torch_run(optimizer, schedule, max_norm, params, grads):
    """Parameters after each step, torch's way."""
    tensors = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    opt = optimizer.to_torch(optimizer.torch_groups(tensors.items()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.factor)
    history = []
    for step_grads in grads:
        for n, p in tensors.items():
            p.grad = step_grads[n].clone()
        norm = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        history.append(({n: p.detach().clone() for n, p in tensors.items()}, float(norm), lr))
    return history


def _graph_run(backend, graph, params, grads):
    """Parameters, grad norm and lr after each step of the update graph on `backend`."""
    state = {v.name: torch.zeros(v.shape) for v in graph.inputs if v.name.startswith("exp_avg")}
    state |= {v.name: torch.zeros(v.shape) for v in graph.inputs if v.name.startswith("momentum")}
    current = {**{n: p.clone() for n, p in params.items()}, **state}
    session = OrtTrainingSession(graph, current) if backend == "onnxruntime" else None
    history = []
    for t, step_grads in enumerate(grads):
        feeds = {"step": torch.tensor(t), **{GRAD + n: g for n, g in step_grads.items()}}
        if session is not None:
            scalars = session.step(feeds)
            current = session.state_dict()
        else:
            feeds |= current
            outs = interpret(graph, *(feeds[v.name] for v in graph.inputs))
            scalars = dict(zip([v.name for v in graph.outputs], outs, strict=True))
            current = {n: scalars[NEW + n] for n in current}
        history.append(
            ({n: current[n] for n in params}, float(scalars["grad_norm"]), float(scalars["lr"]))
        )
    if session is not None:
        assert sorted(session.in_place) == sorted(current)  # no second buffers were needed
    return history


OPTIMIZERS = {
    "adamw": (AdamW(lr=1e-2), Schedule("linear", warmup=2, total=5), 0.5),
    "adamw_cosine_no_clip": (AdamW(lr=3e-3, weight_decay=0.3), Schedule("cosine", 1, 4), None),
    "sgd_nesterov_decay": (
        SGD(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
        Schedule("constant", warmup=3, total=6),
        1.0,
    ),
    "sgd_plain": (SGD(lr=0.05, momentum=0.0), Schedule("linear", 0, 4, floor=0.0), 2.0),
}


@pytest.mark.parametrize("backend", ["interpreter", "onnxruntime"])
@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_update_matches_torch(case: str, backend: str) -> None:
    optimizer, schedule, max_norm = OPTIMIZERS[case]
    gen = torch.Generator().manual_seed(0)
    params = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    grads = [
        {n: torch.randn(s, generator=gen) * (0.01 if t % 2 else 3.0) for n, s in SHAPES.items()}
        for t in range(STEPS)
    ]
    graph = update_graph(
        {n: TensorType(s, "f32") for n, s in SHAPES.items()}, optimizer, schedule, max_norm
    )
    verify(graph)
    got = _graph_run(backend, graph, params, grads)
    want = _torch_run(optimizer, schedule, max_norm or float("inf"), params, grads)
    for t, ((p_got, norm_got, lr_got), (p_want, norm_want, lr_want)) in enumerate(
        zip(got, want, strict=True)
    ):
        assert lr_got == pytest.approx(lr_want, rel=1e-15), t
        assert norm_got == pytest.approx(norm_want, rel=1e-6), t
        for n in SHAPES:
            torch.testing.assert_close(p_got[n], p_want[n], rtol=1e-6, atol=1e-7, msg=f"{n} {t}")


def test_update_graph_signature_and_state_names() -> None:
    types = {"w": TensorType((3, 2), "f32"), "b": TensorType((2,), "f32")}
    graph = update_graph(types, AdamW(), Schedule(total=10), 1.0)
    assert [v.name for v in graph.inputs] == [
        "w", "b", "exp_avg.w", "exp_avg_sq.w", "exp_avg.b", "exp_avg_sq.b", "step",
        "grad.w", "grad.b",
    ]  # fmt: skip
    assert [v.name for v in graph.outputs] == [
        "grad_norm", "lr", "new.w", "new.b", "new.exp_avg.w", "new.exp_avg_sq.w",
        "new.exp_avg.b", "new.exp_avg_sq.b",
    ]  # fmt: skip
    assert [str(v.type) for v in graph.outputs[:2]] == ["f32[]", "f64[]"]
    # decoupled weight decay multiplies the matrix, not the bias
    keep = [n for n in graph.nodes if n.op == "mul" and n.inputs[0].name in ("w", "b")]
    assert [n.inputs[0].name for n in keep] == ["w"]
    assert graph.op_counts()["pow"] == 4  # two bias corrections per parameter
    sgd = update_graph(types, SGD(momentum=0.0), Schedule(total=10), None)
    assert [v.name for v in sgd.inputs] == ["w", "b", "step", "grad.w", "grad.b"]


def test_decay_groups_by_rank() -> None:
    assert decays(TensorType((50257, 768), "f32"))
    assert decays(TensorType((3, 4, 5), "f32"))
    assert not decays(TensorType((768,), "f32"))


def test_bad_hyperparameters_are_clear_errors() -> None:
    from cgc.errors import InputError

    with pytest.raises(InputError, match="betas in"):
        AdamW(betas=(0.9, 1.0))
    with pytest.raises(InputError, match="Nesterov"):
        SGD(momentum=0.0, nesterov=True)
