"""compile_train: a model and an example batch in, a Trainer out. The forward graph gets its
loss, the default passes, `autodiff` and `train-step`, and the resulting step graph runs in a
backend's training session (or the interpreter) with the parameters and optimizer state live.

    trainer = cgc.compile_train(model, (ids,), optimizer=cgc.AdamW(lr=3e-4))
    for batch in batches:
        loss = trainer.step(batch)
    trainer.save("checkpoint")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgc.debug.options import DebugOptions
from cgc.errors import InputError, ModelError
from cgc.ir import Graph
from cgc.ir.ops.random import RNG_SEED
from cgc.training.checkpoint import save_weights, write_checkpoint
from cgc.training.optim import MAX_GRAD_NORM, AdamW, Optimizer
from cgc.training.runners import StepSession, open_session
from cgc.training.schedule import Schedule
from cgc.training.step import LOSS, STEP, carried

SaveModel = Callable[[Mapping[str, torch.Tensor], Path], None]


def rng_seed(seed: int, step: int) -> int:
    """The dropout seed of a step: a function of (run seed, step), so a resumed run draws the
    masks the uninterrupted run drew (cgc.ir.ops.random)."""
    return seed * 2**32 + step


@dataclass
class TrainingGraphs:
    """The compiled step, the evaluation graph (the loss alone), and the starting weights.

    `initial` refers to the model's own tensors (no copy): a session copies them into its
    buffers, and optimizer state it is not given starts at zero there, so a 111M model is not
    held three times while its session starts.
    """

    step: Graph
    eval: Graph
    trained: list[str]  # the trainable parameters, as step inputs
    initial: dict[str, torch.Tensor]  # their values before the first step

    def optimizer_state(self) -> list[str]:
        """The inputs holding optimizer state."""
        return [x for x in carried(self.step) if x not in self.trained]


def select_loss(graph: Graph, *, own_loss: bool) -> None:
    """Keep the loss as the graph's only output: the model's own 0-d loss, or else (a model
    returning logits) the shifted next-token cross-entropy added to its logits.

    `own_loss` says the model computes a loss (it takes targets): then a missing scalar is an
    error rather than a reason to add one.
    """
    from cgc.training.loss import add_next_token_loss

    outputs = ", ".join(f"%{v.name}: {v.type}" for v in graph.outputs)
    named = [v for v in graph.outputs if v.name == LOSS]
    if named and named[0].type.rank:
        raise ModelError(f"the model's loss %loss is {named[0].type}, not a scalar: reduce it")
    scalars = [v for v in graph.outputs if v.type.rank == 0 and v.type.is_float]
    if len(scalars) > 1:
        raise ModelError(
            f"the model returns {len(scalars)} scalars ({outputs}); which is the loss?"
        )
    if not scalars:
        if own_loss:
            raise ModelError(
                f"the model takes targets but returns no scalar loss ({outputs}); "
                "a loss must be 0-d (mean or sum it)"
            )
        add_next_token_loss(graph)
        scalars = [graph.outputs[0]]
    graph.outputs = scalars


def training_graphs(
    graph: Graph,
    optimizer: Optimizer,
    schedule: Schedule,
    max_grad_norm: float | None,
    *,
    pipeline: str = "default",
    debug: DebugOptions | None = None,
) -> TrainingGraphs:
    """The step and evaluation graphs of `graph` (whose only output is its loss): `pipeline`,
    autodiff and train-step run as one pipeline, under the pass-debugging instruments `debug`
    asks for; the graph after `pipeline` is kept as the evaluation graph."""
    from cgc.debug.instrumented import run_instrumented
    from cgc.passes import parse_pipeline
    from cgc.passes.train_step import TrainStep

    if not graph.trainable_params():
        raise ModelError(f"graph @{graph.name} has no trainable parameters: nothing to train")
    weights = {v.name: graph.weights.get(v.name) for v in graph.trainable_params()}
    forward = parse_pipeline(pipeline)
    passes = [
        *forward,
        *parse_pipeline("autodiff"),
        TrainStep.of(optimizer, schedule, max_grad_norm),
    ]
    kept = [graph.copy()] if not forward else []

    def keep_forward(p, g: Graph, result, ctx) -> None:
        if p is forward[-1]:
            kept.append(g.copy())

    run_instrumented(
        graph, passes, debug or DebugOptions(reproducer=False), after_pass=[keep_forward]
    )
    eval_graph = _without_dropout(kept[0])
    trained = [x for x in carried(graph) if x in weights]
    for name in trained:
        eval_graph.param_to_input(name)
    missing = [n for n in trained if weights[n] is None or weights[n].is_meta]
    if missing:
        raise ModelError(f"parameter {missing[0]} has no data (meta weights): load real weights")
    initial = {n: weights[n].detach() for n in trained}
    return TrainingGraphs(graph, eval_graph, trained, initial)


def _without_dropout(graph: Graph) -> Graph:
    """`graph` evaluating as in eval mode: every dropout is the identity (and %rng_seed goes)."""
    for node in [n for n in graph.nodes if n.op == "dropout"]:
        graph.replace_all_uses(node.output, node.inputs[0])
        graph.erase_node(node)
    seed = [v for v in graph.inputs if v.name == RNG_SEED and not v.users]
    graph.inputs = [v for v in graph.inputs if v not in seed]
    return graph


class Trainer:
    """A compiled training step with its live parameters and optimizer state."""

    def __init__(
        self,
        graphs: TrainingGraphs,
        session: StepSession,
        batch_names: Sequence[str],
        optimizer: Optimizer,
        *,
        seed: int = 0,
        save_model: SaveModel = lambda params, folder: save_weights(params, folder),
    ) -> None:
        self.graphs = graphs
        self.session = session
        self.batch_names = list(batch_names)
        self.optimizer = optimizer
        self.seed = seed
        self.save_model = save_model
        self.steps = 0  # steps taken
        self.last: dict[str, float] = {}  # the scalars of the last step: loss, grad_norm, lr
        self._dropout = any(v.name == RNG_SEED for v in graphs.step.inputs)

    def inputs(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step graph's inputs for `batch` besides parameters and optimizer state: the
        batch by input name, the step counter and, with dropout, its seed."""
        if len(batch) != len(self.batch_names):
            names = ", ".join(self.batch_names)
            raise InputError(
                f"a batch holds {len(self.batch_names)} tensors ({names}), got {len(batch)}"
            )
        inputs = dict(zip(self.batch_names, batch, strict=True))
        if self._dropout:
            inputs[RNG_SEED] = torch.tensor(rng_seed(self.seed, self.steps))
        return inputs | {STEP: torch.tensor(self.steps)}

    def step(self, *batch: torch.Tensor) -> float:
        """One optimizer step on `batch` (the tensors the model takes); returns the loss."""
        self.last = self.session.step(self.inputs(*batch))
        self.steps += 1
        return self.last[LOSS]

    def evaluate(self, *batch: torch.Tensor) -> float:
        """The loss on `batch` with the current parameters, no update (dropout off)."""
        inputs = {k: v for k, v in self.inputs(*batch).items() if k not in (RNG_SEED, STEP)}
        (loss,) = self.session.evaluate(inputs)
        return float(loss)

    def params(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable parameters, by name."""
        state = self.session.state_dict()
        return {n: state[n] for n in self.graphs.trained}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters, optimizer state (`exp_avg.<param>`, ...) and `step`, as tensors."""
        return {**self.session.state_dict(), STEP: torch.tensor(self.steps)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self.session.load_state_dict(state)
        self.steps = int(state[STEP])

    def save(
        self,
        folder: str | Path,
        state: Mapping[str, Any] | None = None,
        tokenizer: Path | None = None,
    ) -> Path:
        """Write a checkpoint folder atomically: the weights, the optimizer state, and
        trainer_state.json (step and seed, and `state`); a copy of `tokenizer` beside them."""
        live = self.session.state_dict()
        params = {n: live.pop(n) for n in self.graphs.trained}
        trainer_state = {"step": self.steps, "seed": self.seed, **(state or {})}
        return write_checkpoint(
            Path(folder), lambda f: self.save_model(params, f), live, trainer_state, tokenizer
        )


def compile_train(
    module: torch.nn.Module,
    example_batch: Any,
    optimizer: Optimizer | None = None,
    *,
    backend: str = "onnxruntime",
    schedule: Schedule | None = None,
    max_grad_norm: float | None = MAX_GRAD_NORM,
    pipeline: str = "default",
    seed: int = 0,
    threads: int | None = None,
    in_place: bool = False,
    target: str | None = None,
    precision: str | None = None,
) -> Trainer:
    """Compile `module`'s training step for `backend` ("onnxruntime", "interpreter" or
    "cerebras": a simulated wafer on `target` [wse2] in `precision` [fp32] computes loss and
    gradients, the host the fp32 update; `trainer.last` then holds the step's simulated
    `wafer_cycles` and `wafer_tokens_per_s`).

    `example_batch` is what the module takes (a tensor or a tuple). A module returning a 0-d
    loss is trained on it; one returning logits on the next-token cross-entropy of its input
    ids (position t predicts token t + 1, as Hugging Face's labels=input_ids). The schedule
    defaults to a constant learning rate, the optimizer to AdamW with Cerebras-GPT's settings.
    `in_place` trains the module's own parameter tensors, as torch.optim would, instead of a
    copy of them (one copy of the weights less in memory).
    """
    from cgc import driver

    batch = (example_batch,) if isinstance(example_batch, torch.Tensor) else tuple(example_batch)
    batch = tuple(t.contiguous() for t in batch)  # export cannot view a strided slice flat
    optimizer = optimizer or AdamW()
    schedule = schedule or Schedule("constant")
    was_training = module.training
    module.train()
    try:
        graph = driver.trace(module, batch)
    finally:
        module.train(was_training)
    batch_names = [v.name for v in graph.inputs if v.name != RNG_SEED]
    select_loss(graph, own_loss=len(batch) > 1)
    graphs = training_graphs(graph, optimizer, schedule, max_grad_norm, pipeline=pipeline)
    session = open_session(
        backend,
        graphs.step,
        graphs.initial,
        graphs.eval,
        threads=threads,
        in_place=in_place,
        target=target,
        precision=precision,
    )
    graphs.initial = {}
    return Trainer(
        graphs, session, batch_names, optimizer, seed=seed, save_model=model_saver(module)
    )


def model_saver(module: torch.nn.Module | None, eos_id: int | None = None) -> SaveModel:
    """How a checkpoint stores `module`'s weights: a Hugging Face checkpoint for cgc's GPT
    (GPT-2's layout) and for a transformers causal LM (its own), the parameters by name
    otherwise."""
    from cgc.models import GPT, save_hf_checkpoint
    from cgc.models.causal_lm import CausalLM, save_causal_lm

    if isinstance(module, GPT):
        config = module.config
        return lambda params, folder: save_hf_checkpoint(config, params, folder, eos_id=eos_id)
    if isinstance(module, CausalLM):
        return lambda params, folder: save_causal_lm(module, params, folder)
    return lambda params, folder: save_weights(params, folder)
