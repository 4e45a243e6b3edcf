"""What `cgc generate` does, the command line aside: resolve MODEL or ARTIFACT, its tokenizer
and context, build the step program of a backend, check the request fits, and generate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cgc.errors import InputError
from cgc.generation.build import StepGraphs, context_length, trace_step_graphs
from cgc.generation.loop import Generation, generate
from cgc.generation.sampling import Sampler
from cgc.generation.steps import StepProgram, step_program
from cgc.tokenizer import TOKENIZER_FILE, ByteTokenizer, Tokenizer, load_tokenizer


@dataclass
class Generator:
    """A model ready to generate: its step program, graphs, tokenizer and limits."""

    name: str
    program: StepProgram
    graphs: StepGraphs
    tokenizer: Tokenizer
    backend: str

    def run(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        sampler: Sampler,
        on_token: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """Generate after each prompt; an artifact's fixed batch is filled with the last prompt."""
        batch = self.graphs.batch
        rows = list(prompts) + [prompts[-1]] * (batch - len(prompts))
        result = generate(
            self.program,
            rows,
            prompt_tokens=self.graphs.prompt_tokens,
            capacity=self.graphs.capacity,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            eos_id=self.tokenizer.eos_id,
            on_token=(lambda row, t: on_token(row, t) if row < len(prompts) else None)
            if on_token
            else None,
        )
        del result.prompts[len(prompts) :], result.tokens[len(prompts) :]
        return result


def encode_prompts(tokenizer: Tokenizer, texts: Sequence[str], vocab: int) -> list[list[int]]:
    """Token ids of each prompt, checked to be non-empty and inside the model's vocabulary."""
    prompts = []
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            raise InputError("the prompt is empty; give at least one character")
        if max(ids) >= vocab:
            raise InputError(
                f"prompt token {max(ids)} is outside the model's vocabulary of {vocab} "
                f"({tokenizer.spec} tokenizer); use characters the vocabulary covers"
            )
        prompts.append(ids)
    return prompts


def open_generator(
    spec: str,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    backend: str | None = None,
    capacity: int | None = None,
    seed: int = 0,
    wafer: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Generator, list[list[int]]]:
    """A generator for MODEL (on `backend`, onnxruntime by default; `wafer`: the cerebras
    target and precision) or ARTIFACT (on the backend it was compiled for) sized for these
    prompts, and the prompts' ids."""
    from cgc.generation.artifact import is_generation_artifact, load_generation

    if is_generation_artifact(spec):
        graphs, tokenizer, manifest = load_generation(spec)
        built = manifest["backend"]
        if backend not in (None, built) or wafer:
            raise InputError(
                f"{spec} runs on {built} as compiled; drop --backend, --target and --precision"
            )
        prompts = encode_prompts(tokenizer, texts, graphs.vocab)
        if len(prompts) > graphs.batch:
            raise InputError(
                f"{len(prompts)} prompts exceed the artifact's batch of {graphs.batch}; "
                "recompile with --batch"
            )
        _fits(prompts, max_new_tokens, graphs.capacity, "the artifact's cache capacity")
        program = _artifact_steps(spec, graphs, manifest)
        return Generator(Path(spec).name, program, graphs, tokenizer, built), prompts
    backend = backend or "onnxruntime"
    if wafer and backend != "cerebras":
        raise InputError(f"--target and --precision apply to --backend cerebras, not {backend}")
    from cgc import driver

    loaded = driver.load_model(spec, seed=seed)
    tokenizer = model_tokenizer(spec)
    vocab = _vocab(loaded.module)
    prompts = encode_prompts(tokenizer, texts, vocab)
    context = context_length(loaded.module, loaded.example_inputs)
    longest = max(map(len, prompts))
    if longest + max_new_tokens > context:
        raise InputError(
            f"--max-new-tokens {max_new_tokens} after a {longest}-token prompt passes the "
            f"model's context of {context} positions"
        )
    needed = longest + max_new_tokens - 1
    if capacity is not None and capacity > context:
        raise InputError(f"--max-len {capacity} exceeds the model's context of {context}")
    capacity = capacity or needed
    _fits(prompts, max_new_tokens, capacity, "--max-len")
    progress(f"tracing {loaded.name} at {capacity} positions and deriving the step graphs ...")
    graphs = trace_step_graphs(
        loaded.module, batch=len(prompts), capacity=capacity, prompt_tokens=min(map(len, prompts))
    )
    progress(f"compiling for {backend} ...")
    program = step_program(backend, graphs.prefill, graphs.decode, **(wafer or {}))
    return Generator(loaded.name, program, graphs, tokenizer, backend), prompts


def _artifact_steps(folder: str, graphs: StepGraphs, manifest: dict) -> StepProgram:
    """The step program of a generation artifact, on the backend it was compiled for."""
    if manifest["backend"] == "cerebras":
        from cgc.backends.cerebras import load
        from cgc.backends.cerebras.steps import CerebrasSteps

        return CerebrasSteps(load(Path(folder), manifest))
    from cgc.backends.onnxruntime.steps import OrtSteps

    return OrtSteps(graphs.prefill, graphs.decode, Path(folder))


def _fits(prompts: list[list[int]], max_new_tokens: int, capacity: int, what: str) -> None:
    longest = max(map(len, prompts))
    if longest > capacity:
        raise InputError(f"the prompt has {longest} tokens, more than {what} of {capacity}")
    if longest + max_new_tokens - 1 > capacity:
        raise InputError(
            f"--max-new-tokens {max_new_tokens} after a {longest}-token prompt needs "
            f"{longest + max_new_tokens - 1} cache slots, more than {what} of {capacity}"
        )


def model_tokenizer(spec: str) -> Tokenizer:
    """tokenizer.json from a checkpoint or run folder, else byte-level (built-in models,
    model.py files)."""
    folder = Path(spec)
    if folder.is_dir() and (folder / TOKENIZER_FILE).is_file():
        return load_tokenizer(folder)
    return ByteTokenizer()


def _vocab(module: torch.nn.Module) -> int:
    """Rows of the token embedding: the first embedding table the module holds."""
    for m in module.modules():
        if isinstance(m, torch.nn.Embedding):
            return m.num_embeddings
    raise InputError("the model has no token embedding (nn.Embedding); cannot check prompt ids")
