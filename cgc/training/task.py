"""What `cgc train` trains: MODEL (anything `cgc compile` takes) as a graph whose only output is
its loss, and how a batch of token windows [batch, seq_len + 1] becomes the model's inputs.

A model whose forward takes `targets` (nanoGPT, minGPT) gets tokens 0..T-1 and, as targets,
tokens 1..T of each window; one taking `labels` (Hugging Face) gets the whole window as both,
shifting inside; any other model gets the whole window as its token ids and, when it returns
logits, cgc adds the next-token cross-entropy (position t predicts token t + 1). Either way a
window of seq_len + 1 tokens trains seq_len predictions. An ONNX model's inputs are matched by
the same names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cgc.errors import InputError, ModelError
from cgc.ir import Graph, TensorType
from cgc.ir.ops.random import RNG_SEED
from cgc.models.context import declared_context
from cgc.tokenizer import Tokenizer
from cgc.training.checkpoint import MODEL_WEIGHTS, load_weights
from cgc.training.trainer import SaveModel, model_saver, select_loss

Feed = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass
class Task:
    """A model ready to compile for training."""

    name: str
    graph: Graph  # outputs: the loss alone
    feed: Feed  # token windows -> the graph's batch inputs, in order
    batch_names: list[str]
    save_model: SaveModel
    weights: str  # where the starting weights come from, for the user
    note: str = ""  # what cgc changed and why (a built-in model's vocabulary)
    signature: dict[str, str] = field(default_factory=dict)  # trainable parameters' types

    def __post_init__(self) -> None:
        self.signature = {v.name: str(v.type) for v in self.graph.trainable_params()}


def _feed(kind: str) -> Feed:
    if kind == "targets":
        return lambda w: (w[:, :-1].contiguous(), w[:, 1:].contiguous())
    if kind == "labels":
        return lambda w: (w, w)
    return lambda w: (w,)


def _kind(names: list[str]) -> str:
    """How inputs named `names` take a window: "targets", "labels" or "ids"."""
    if len(names) == 2 and names[1] in ("targets", "labels"):
        return names[1]
    if len(names) != 1:
        raise ModelError(
            f"the model takes {len(names)} inputs ({', '.join(names)}); cgc train feeds token ids, "
            "and targets or labels as a second input"
        )
    return "ids"


def load_task(
    spec: str,
    tokenizer: Tokenizer,
    batch: int,
    seq_len: int,
    *,
    seed: int = 0,
    checkpoint: Path | None = None,
) -> Task:
    """Load MODEL for training on windows of seq_len + 1 tokens; `checkpoint` (a run's) supplies
    the starting weights instead of the model's own."""
    from cgc import driver, models
    from cgc.training.checkpoint import is_run, latest_checkpoint

    window = torch.zeros(batch, seq_len + 1, dtype=torch.int64)
    if driver.is_onnx(spec):
        return _onnx_task(spec, tokenizer, window, checkpoint)
    note = ""
    if spec in models.available() and checkpoint is None:
        config = models.get_config(spec)
        if config.vocab_size != tokenizer.vocab_size:
            note = (
                f"{spec} is trained from scratch with the {tokenizer.vocab_size}-token vocabulary "
                f"of the tokenizer ({tokenizer.spec}), not its own {config.vocab_size}"
            )
        config = replace(config, vocab_size=tokenizer.vocab_size)
        module: torch.nn.Module = models.GPT(config, seed=seed)
        name, weights = spec, f"random (seed {seed})"
    elif checkpoint is not None and (checkpoint / "config.json").is_file():
        module, name = models.load_hf_checkpoint(checkpoint), spec
        weights = f"checkpoint {checkpoint}"
    elif Path(spec).is_dir() and is_run(spec):
        ckpt = latest_checkpoint(spec)
        module, name, weights = models.load_hf_checkpoint(ckpt), spec, f"checkpoint {ckpt}"
    else:
        loaded = driver.load_model(spec, seed=seed)
        module, name, weights = loaded.module, loaded.name, loaded.weights
    kind = _kind_of(module)
    feed = _feed(kind)
    example = feed(window)
    _check_context(module, example[0].shape[-1], seq_len, name)
    module.train()
    graph = driver.trace(module, example)
    _check_vocabulary(graph, tokenizer, spec)
    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        _load_weights(graph, checkpoint)
        weights = f"checkpoint {checkpoint}"
    batch_names = [v.name for v in graph.inputs if v.name != RNG_SEED]
    select_loss(graph, own_loss=kind != "ids")
    eos = tokenizer.eos_id
    return Task(name, graph, feed, batch_names, model_saver(module, eos), weights, note)


def _kind_of(module: torch.nn.Module) -> str:
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[1] if len(params) > 1 and params[1] in ("targets", "labels") else "ids"


def _onnx_task(spec: str, tokenizer: Tokenizer, window: torch.Tensor, checkpoint) -> Task:
    import onnx

    from cgc import driver

    if not Path(spec).is_file():
        raise InputError(f"{spec}: no such file")
    model = onnx.load(spec, load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    kind = _kind(names)
    example = _feed(kind)(window)
    shapes = {n: list(t.shape) for n, t in zip(names, example, strict=True)}
    graph = driver.load_onnx(spec, input_shapes=shapes)
    _check_vocabulary(graph, tokenizer, spec)
    weights = f"from {Path(spec).name}"
    if checkpoint is not None:
        _load_weights(graph, checkpoint)
        weights = f"checkpoint {checkpoint}"
    select_loss(graph, own_loss=kind != "ids")
    batch_names = [v.name for v in graph.inputs if v.name != RNG_SEED]
    return Task(Path(spec).stem, graph, _feed(kind), batch_names, model_saver(None), weights)


def _check_context(module: torch.nn.Module, length: int, seq_len: int, name: str) -> None:
    """A window must fit the positions the model declares: say so before tracing fails inside it."""
    context = declared_context(module)
    if context is not None and length > context:
        fits = seq_len - (length - context)
        raise InputError(
            f"--seq-len {seq_len} feeds {name} {length} positions but its context holds "
            f"{context}; pass --seq-len {fits} or less"
        )


def _check_vocabulary(graph: Graph, tokenizer: Tokenizer, spec: str) -> None:
    """Token ids index the embedding tables the inputs feed: the tokenizer must fit them."""
    rows = [
        node.inputs[0].shape[0]
        for v in graph.inputs
        for node in v.users
        if node.op == "embedding" and node.inputs[1] is v
    ]
    if rows and tokenizer.vocab_size > min(rows):
        raise InputError(
            f"the tokenizer ({tokenizer.spec}) has {tokenizer.vocab_size} tokens but {spec} "
            f"embeds only {min(rows)}; use a tokenizer of at most that many"
        )


def _load_weights(graph: Graph, checkpoint: Path) -> None:
    """Replace the trainable parameters' data with a checkpoint's model.safetensors."""
    saved = load_weights(checkpoint)
    for v in graph.trainable_params():
        data = saved.get(v.name)
        if data is None or TensorType.of(data) != v.type:
            got = "missing" if data is None else str(TensorType.of(data))
            raise InputError(
                f"{checkpoint / MODEL_WEIGHTS}: parameter {v.name} is {got}, the model has {v.type}"
            )
        graph.weights[v.name] = data
