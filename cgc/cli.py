"""The `cgc` command line: compile, run and check models; list models and passes.

Errors a user can cause print one line on stderr and exit with code 2; `--debug` shows the
traceback instead. `cgc check` exits 1 when outputs are out of tolerance.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cgc.debug.flags import debug_flags
from cgc.debug.options import DebugOptions
from cgc.errors import CgcError, InputError

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class Console:
    """Where progress, detail and results go, by verbosity (-q, default, -v)."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose

    def step(self, message: str) -> None:
        """Progress of a long step, on stderr; silent with -q."""
        if not self.quiet:
            click.echo(message, err=True)

    def detail(self, message: str) -> None:
        """Extra detail shown with -v."""
        if self.verbose and not self.quiet:
            click.echo(message, err=True)

    def result(self, message: str) -> None:
        """The command's result, on stdout; silent with -q."""
        if not self.quiet:
            click.echo(message)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add -q/-v/--debug to a command and turn CgcError into one line and exit code 2."""

    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
    @click.option("-v", "--verbose", is_flag=True, help="Print more detail.")
    @click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
    @functools.wraps(fn)
    def wrapper(quiet: bool, verbose: bool, debug: bool, **kwargs: Any) -> None:
        console = Console(quiet, verbose)
        try:
            code = fn(console, **kwargs)
        except CgcError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(getattr(e, "exit_code", EXIT_USAGE))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            if debug:
                raise
            click.echo(
                f"internal error: {type(e).__name__}: {e} (rerun with --debug and report it)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)
        sys.exit(code or 0)

    return wrapper


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


MODEL_HELP = (
    "MODEL is a built-in name (see `cgc models`), a Hugging Face GPT-2 checkpoint folder "
    "(config.json + model.safetensors), an ONNX file (model.onnx), or a Python file: model.py "
    "exposing get_model() -> (module, example_inputs), or module-level `model` and "
    "`example_inputs`; model.py:NAME calls NAME() instead."
)
_batch = click.option(
    "--batch", type=int, callback=_positive, help="Batch size of the example inputs [1]."
)
_seq_len = click.option(
    "--seq-len", type=int, callback=_positive, help="Sequence length of the example inputs [128]."
)
_seed = click.option("--seed", type=int, default=0, show_default=True, help="Weight/input seed.")
_input_shape = click.option(
    "--input-shape",
    multiple=True,
    metavar="NAME=AxB",
    help="Fix a dynamic input of an .onnx model, e.g. input_ids=1x128 (repeatable).",
)


def _shapes(specs: tuple[str, ...]) -> dict[str, list[int]] | None:
    """`("input_ids=1x128",)` -> {"input_ids": [1, 128]}."""
    shapes = {}
    for spec in specs:
        name, _, dims = spec.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise InputError(
                f"--input-shape {spec!r}: expected NAME=AxB, e.g. input_ids=1x128"
            ) from None
        if not name or any(d < 1 for d in shapes[name]):
            raise InputError(f"--input-shape {spec!r}: expected NAME=AxB with positive sizes")
    return shapes or None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cgc")
def main() -> None:
    """cgc: a graph compiler toolkit for GPT models.

    Traces a PyTorch GPT model, lowers it to the cgc IR, fuses and partitions it, and emits an
    ONNX model run by ONNX Runtime, checking numerics against PyTorch at every stage.
    """


@main.command("compile", help=f"Compile MODEL into an artifact folder.\n\n{MODEL_HELP}")
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Artifact folder [out/MODEL]."
)
@click.option(
    "--backend",
    help="Target backend: cerebras (a simulated wafer) or onnxruntime [cerebras; onnxruntime "
    "with --generate].",
)
@click.option("--target", help="Wafer for --backend cerebras: wse2, wse3 or fabric:WxH [wse2].")
@click.option(
    "--mode",
    type=click.Choice(["auto", "pipelined", "streaming"]),
    help="Wafer execution mode: layer-pipelined, weight streaming, or auto (pipelined when the "
    "weights fit) [auto].",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "cb16"]),
    help="Wafer arithmetic precision (fp32 accumulation) [fp32].",
)
@click.option("--passes", "pipeline", default="default", show_default=True, help="Pass pipeline.")
@_batch
@_seq_len
@_seed
@_input_shape
@click.option("--print-ir", is_flag=True, help="Print the IR after the passes.")
@click.option(
    "--generate",
    is_flag=True,
    help="Write a generation artifact instead: the kv-cache prefill (--seq-len tokens [32]) and "
    "decode graphs for `cgc generate ARTIFACT`.",
)
@click.option(
    "--max-len",
    type=int,
    callback=_positive,
    help="With --generate: cache capacity in tokens [the model's context, at most 256].",
)
@debug_flags
@_common
def compile_cmd(
    console: Console,
    model: str,
    output: Path | None,
    backend: str,
    target: str | None,
    mode: str | None,
    precision: str | None,
    pipeline: str,
    batch: int | None,
    seq_len: int | None,
    seed: int,
    input_shape: tuple[str, ...],
    print_ir: bool,
    generate: bool,
    max_len: int | None,
    debug_options: DebugOptions,
) -> int:
    from cgc import driver
    from cgc.debug.instrumented import run_instrumented

    if generate:
        if mode not in (None, "pipelined"):
            raise InputError("--generate plans decode layer-pipelined; drop --mode")
        wafer = {k: v for k, v in {"target": target, "precision": precision}.items() if v}
        return _compile_generation(
            console,
            model,
            output,
            backend or "onnxruntime",
            pipeline,
            batch,
            seq_len,
            max_len,
            seed,
            wafer,
        )
    if max_len is not None:
        raise InputError("--max-len applies to --generate")
    backend = backend or "cerebras"
    start = time.perf_counter()
    backend_module = driver.get_backend(backend)  # a bad name fails before the long steps
    wafer = {"target": target, "mode": mode, "precision": precision}
    options = {k: v for k, v in wafer.items() if v is not None}
    if options and backend != "cerebras":
        given = ", ".join(f"--{k}" for k in options)
        raise InputError(f"{given} only apply to --backend cerebras, not {backend}")
    if driver.is_onnx(model):
        name, weights = Path(model).stem, f"from {Path(model).name}"
        frontend = "import"
        console.step(f"importing {model} ...")
        graph, t_trace = driver.timed(lambda: driver.load_onnx(model, _shapes(input_shape)))
        parameters = sum(v.type.numel for v in graph.params.values() if v.type.is_float)
    else:
        if input_shape:
            raise InputError("--input-shape applies to .onnx models; use --batch and --seq-len")
        loaded = driver.load_model(model, batch=batch, seq_len=seq_len, seed=seed)
        name, weights, parameters = loaded.name, loaded.weights, loaded.num_parameters()
        frontend = "trace"
        console.step(f"tracing {name} ...")
        graph, t_trace = driver.timed(lambda: driver.trace(loaded.module, loaded.example_inputs))
    console.detail(f"imported in {t_trace:.2f} s: {len(graph.nodes)} nodes")
    _, t_passes = driver.timed(lambda: run_instrumented(graph, pipeline, debug_options))
    console.detail(f"passes {pipeline!r} in {t_passes:.2f} s")
    if print_ir:
        click.echo(str(graph), nl=False)
    info = {"model": name, "pipeline": pipeline, "weights": weights}
    artifact = backend_module.compile(graph, info, **options)
    folder = output or Path("out") / name
    console.step(f"writing {folder} ...")
    _, t_save = driver.timed(lambda: artifact.save(folder, progress=console.detail))
    ops = ", ".join(f"{op} {n}" for op, n in graph.op_counts().items())
    shapes = ", ".join(f"{v.name} {v.type}" for v in graph.inputs)
    console.result(
        f"{name}: {parameters:,} parameters, weights {weights}\n"
        f"inputs: {shapes}\n"
        f"ops: {ops}\n"
        f"artifact: {folder} ({backend}; {frontend} {t_trace:.1f} s, passes {t_passes:.1f} s, "
        f"write {t_save:.1f} s, total {time.perf_counter() - start:.1f} s)"
    )
    if summary := artifact.summary():
        console.result(summary)
    return 0


def _compile_generation(
    console: Console,
    model: str,
    output: Path | None,
    backend: str,
    pipeline: str,
    batch: int | None,
    seq_len: int | None,
    max_len: int | None,
    seed: int,
    wafer: dict[str, str],
) -> int:
    """`cgc compile --generate`: the step graphs of MODEL as a generation artifact (for the
    wafer, its decode program)."""
    from cgc import driver
    from cgc.generation import context_length, trace_step_graphs
    from cgc.generation.artifact import GenerationArtifact
    from cgc.generation.session import model_tokenizer

    if backend not in ("onnxruntime", "cerebras"):
        raise InputError(f"--generate compiles for onnxruntime or cerebras, not {backend!r}")
    if wafer and backend != "cerebras":
        given = ", ".join(f"--{k}" for k in wafer)
        raise InputError(f"{given} only apply to --backend cerebras, not {backend}")
    if driver.is_onnx(model):
        raise InputError("--generate traces a PyTorch model; an .onnx file cannot be used")
    loaded = driver.load_model(model, seed=seed)
    context = context_length(loaded.module, loaded.example_inputs)
    capacity = max_len or min(context, 256)
    if capacity > context:
        raise InputError(f"--max-len {capacity} exceeds the model's context of {context}")
    prompt_tokens = seq_len or min(32, capacity)
    if prompt_tokens > capacity:
        raise InputError(f"--seq-len {prompt_tokens} exceeds the cache capacity {capacity}")
    console.step(f"tracing {loaded.name} at {capacity} positions and deriving the step graphs ...")
    graphs = trace_step_graphs(
        loaded.module,
        batch=batch or 1,
        capacity=capacity,
        prompt_tokens=prompt_tokens,
        pipeline=pipeline,
    )
    info = {"model": loaded.name, "pipeline": pipeline, "weights": loaded.weights}
    program = None
    if backend == "cerebras":
        from cgc.backends.cerebras.decode_plan import compile_decode

        console.step(f"planning decode for {wafer.get('target', 'wse2')} ...")
        program = compile_decode(graphs.decode, info, prompt_tokens=prompt_tokens, **wafer)
        info = program.info
    artifact = GenerationArtifact(graphs, model_tokenizer(model), info, program)
    folder = output or Path("out") / f"{loaded.name}-generate"
    console.step(f"writing {folder} ...")
    artifact.save(folder, progress=console.detail)
    ops = ", ".join(f"{op} {n}" for op, n in graphs.decode.op_counts().items())
    console.result(
        f"{loaded.name}: {loaded.num_parameters():,} parameters, weights {loaded.weights}\n"
        f"decode ops: {ops}\n{artifact.summary()}\nartifact: {folder} ({backend})"
    )
    return 0


@main.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(path_type=Path),
    help="Inputs as a .safetensors file keyed by input name [seeded random ids].",
)
@click.option(
    "--outputs",
    "outputs_file",
    type=click.Path(path_type=Path),
    help="Save outputs to .safetensors.",
)
@_seed
@_common
def run_cmd(
    console: Console, artifact: Path, inputs_file: Path | None, outputs_file: Path | None, seed: int
) -> int:
    """Run a compiled ARTIFACT folder and print its outputs' shapes and statistics."""
    from cgc import driver
    from cgc.io import load_inputs, random_inputs, save_tensors

    art = driver.load(artifact)
    types = art.input_types()
    inputs = load_inputs(inputs_file, types) if inputs_file else random_inputs(types, seed)
    outputs, t_run = driver.timed(lambda: art.run(*inputs))
    for v, out in zip(art.graph.outputs, outputs, strict=True):
        o = out.double()
        console.result(
            f"{v.name}: {v.type}  mean {float(o.mean()):.6g}  std {float(o.std()):.6g}  "
            f"min {float(o.min()):.6g}  max {float(o.max()):.6g}"
        )
    if outputs_file:
        save_tensors(
            outputs_file, {v.name: t for v, t in zip(art.graph.outputs, outputs, strict=True)}
        )
    console.result(f"ran {artifact} ({art.backend}) in {t_run * 1e3:.1f} ms")
    if run_report := art.run_report():
        console.result(run_report)
    return 0


@main.command("check", help=f"Compare backends with eager PyTorch on MODEL.\n\n{MODEL_HELP}")
@click.argument("model")
@click.option(
    "--backends",
    default="onnxruntime",
    show_default=True,
    help="Comma-separated backends to check besides the IR interpreter.",
)
@click.option(
    "--rtol",
    type=float,
    help="Relative tolerance, applied to every target when given [1e-4; 32 unit roundoffs for "
    "cerebras at a 16-bit --precision].",
)
@click.option(
    "--atol",
    type=float,
    help="Absolute tolerance, applied to every target when given [1e-4; 32 unit roundoffs for "
    "cerebras at a 16-bit --precision].",
)
@click.option("--passes", "pipeline", default="default", show_default=True, help="Pass pipeline.")
@_batch
@_seq_len
@_seed
@_input_shape
@click.option("--target", help="Wafer for the cerebras backend: wse2, wse3 or fabric:WxH [wse2].")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "cb16"]),
    help="Arithmetic precision of the cerebras backend (fp32 accumulation) [fp32].",
)
@click.option(
    "--generate",
    "generate_tokens",
    type=int,
    callback=_positive,
    metavar="N",
    help="Check greedy generation of N tokens instead: tokens and every step's logits against "
    "eager PyTorch recomputing the full sequence. The prompt is the example input (for "
    "built-in models and checkpoints --batch x --seq-len, [32] tokens).",
)
@click.option(
    "--train",
    is_flag=True,
    help="Compare training instead: --steps AdamW steps (loss per step, first gradients, final "
    "parameters) against eager PyTorch; tolerance rtol·max|ref| per tensor [rtol 1e-4, atol 0; "
    "32 unit roundoffs for cerebras at a 16-bit --precision].",
)
@click.option("--steps", type=int, default=3, show_default=True, help="Training steps (--train).")
@click.option(
    "--reference",
    type=click.Choice(["fp32", "fp64"]),
    default="fp32",
    show_default=True,
    help="Arithmetic of the eager PyTorch reference (--train): fp64 is the exact answer to compare "
    "fp32 against, since Adam turns eager fp32's own rounding of small gradients into moves.",
)
@click.option(
    "--json", "json_file", type=click.Path(path_type=Path), help="Also write the report as JSON."
)
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(path_type=Path),
    help="Also write JUnit XML: one testcase per target and output.",
)
@_common
def check_cmd(
    console: Console,
    model: str,
    backends: str,
    rtol: float | None,
    atol: float | None,
    pipeline: str,
    batch: int | None,
    seq_len: int | None,
    seed: int,
    input_shape: tuple[str, ...],
    target: str | None,
    precision: str | None,
    train: bool,
    steps: int,
    reference: str,
    json_file: Path | None,
    junit_file: Path | None,
    generate_tokens: int | None,
) -> int:
    from cgc.check import check_model

    names = [b.strip() for b in backends.split(",") if b.strip()]
    wafer = {k: v for k, v in {"target": target, "precision": precision}.items() if v}
    if wafer and "cerebras" not in names:
        raise InputError(
            f"--{', --'.join(wafer)} apply to the cerebras backend; add it to --backends"
        )
    if generate_tokens is not None:
        if json_file or junit_file:
            raise InputError("--json and --junit do not apply to --generate; drop them")
        return _check_generation(
            console,
            model,
            names,
            generate_tokens,
            rtol,
            atol,
            pipeline,
            batch,
            seq_len,
            seed,
            wafer,
        )
    tolerances: dict[str, tuple[float, float]] = {}
    if precision not in (None, "fp32"):
        from cgc.backends.cerebras import UNIT_ROUNDOFF

        # Only the wafer computes in 16 bits; see README: 16-bit tolerances.
        wafer_tol = 32 * UNIT_ROUNDOFF[precision]
        tolerances["cerebras"] = (
            wafer_tol if rtol is None else rtol,
            wafer_tol if atol is None else atol,
        )
    if train:
        from cgc.training.check import check_training

        if input_shape:
            raise InputError("--input-shape does not apply to --train")
        if "cerebras" in tolerances and atol is None:  # as for fp32: atol 0 (README)
            tolerances["cerebras"] = (tolerances["cerebras"][0], 0.0)
        report = check_training(
            model,
            names,
            steps=steps,
            batch=batch,
            seq_len=seq_len,
            seed=seed,
            rtol=1e-4 if rtol is None else rtol,
            atol=0.0 if atol is None else atol,
            pipeline=pipeline,
            target=target,
            precision=precision,
            tolerances=tolerances,
            reference=reference,
            progress=console.step,
        )
        return _report(console, report, json_file, junit_file)
    report = check_model(
        model,
        names,
        rtol=1e-4 if rtol is None else rtol,
        atol=1e-4 if atol is None else atol,
        tolerances=tolerances,
        wafer=wafer,
        pipeline=pipeline,
        batch=batch,
        seq_len=seq_len,
        seed=seed,
        input_shapes=_shapes(input_shape),
        progress=console.step,
    )
    return _report(console, report, json_file, junit_file)


def _report(console: Console, report: Any, json_file: Path | None, junit_file: Path | None) -> int:
    """Print a check report, write its JSON and JUnit files; the exit code."""
    from cgc.debug.report import save_report

    console.result(report.text())
    if json_file:
        console.detail(f"wrote {save_report(json_file, report.json())}")
    if junit_file:
        console.detail(f"wrote {save_report(junit_file, report.junit())}")
    return 0 if report.ok else EXIT_MISMATCH


@main.command(
    "generate",
    help="Generate text from MODEL (see cgc compile) or a `cgc compile --generate` ARTIFACT "
    "folder, through the kv-cache step graphs. Tokens print as they are produced; the end "
    "gives prompt tokens, new tokens, prefill ms and decode tokens/s.",
)
@click.argument("model")
@click.option("--prompt", help="The prompt text.")
@click.option(
    "--batch-prompts",
    type=click.Path(path_type=Path),
    help="A file with one prompt per line, generated as one batch.",
)
@click.option("--max-new-tokens", type=int, default=64, show_default=True, callback=_positive)
@click.option(
    "--temperature", type=float, default=0.0, show_default=True, help="0 is greedy (argmax)."
)
@click.option("--top-k", type=int, help="Sample from the K most likely tokens.")
@click.option(
    "--top-p", type=float, help="Sample from the most likely tokens holding P of the mass."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling (and weight) seed.")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "interpreter", "cerebras"]),
    help="[onnxruntime; an ARTIFACT's own backend]",
)
@click.option("--target", help="Wafer for --backend cerebras: wse2, wse3 or fabric:WxH [wse2].")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "cb16"]),
    help="Wafer arithmetic precision for --backend cerebras (fp32 accumulation) [fp32].",
)
@click.option(
    "--max-len",
    type=int,
    callback=_positive,
    help="Cache capacity C in tokens [prompt + new tokens - 1].",
)
@click.option(
    "--stream/--no-stream", default=True, show_default=True, help="Print tokens as produced."
)
@_common
def generate_cmd(
    console: Console,
    model: str,
    prompt: str | None,
    batch_prompts: Path | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    backend: str | None,
    target: str | None,
    precision: str | None,
    max_len: int | None,
    stream: bool,
) -> int:
    from cgc.generation import Sampler
    from cgc.generation.session import open_generator

    if (prompt is None) == (batch_prompts is None):
        raise InputError("give --prompt TEXT or --batch-prompts FILE (one of them)")
    if batch_prompts is not None:
        try:
            texts = [line for line in batch_prompts.read_text().splitlines() if line.strip()]
        except OSError as e:
            raise InputError(f"{batch_prompts}: cannot read it ({e.strerror})") from None
        if not texts:
            raise InputError(f"{batch_prompts}: no prompts (one per line)")
    else:
        texts = [prompt]
    sampler = Sampler(temperature, top_k, top_p, seed)
    generator, prompts = open_generator(
        model,
        texts,
        max_new_tokens=max_new_tokens,
        backend=backend,
        capacity=max_len,
        seed=seed,
        wafer={k: v for k, v in {"target": target, "precision": precision}.items() if v},
        progress=console.step,
    )
    tokenizer = generator.tokenizer
    streaming = stream and len(prompts) == 1 and not console.quiet
    produced: list[int] = []
    shown = [0, 0]  # characters printed, tokens not yet printed

    def on_token(row: int, token: int) -> None:
        produced.append(token)
        text = tokenizer.decode(produced)
        # Hold back a few tokens that may be the start of a multi-byte character.
        if text.endswith("\ufffd") and shown[1] < 3:
            shown[1] += 1
            return
        click.echo(text[shown[0] :], nl=False)
        shown[:] = [len(text), 0]

    if streaming:
        click.echo(texts[0], nl=False)
    result = generator.run(prompts, max_new_tokens, sampler, on_token if streaming else None)
    if streaming:
        click.echo(tokenizer.decode(result.tokens[0])[shown[0] :])
    else:
        for text, tokens in zip(texts, result.tokens, strict=True):
            console.result(text + tokenizer.decode(tokens))
    new = sum(map(len, result.tokens))
    console.step(
        f"prompt tokens {sum(map(len, prompts))}, new tokens {new}, "
        f"prefill {result.prefill_seconds * 1e3:.1f} ms, "
        f"decode {result.decode_tokens_per_second:.1f} tokens/s ({generator.backend})"
    )
    if generator.backend == "cerebras":
        console.step(generator.program.report())
    return 0


@main.command(
    "train",
    help="Train MODEL on text: compile the whole training step (loss, backward, optimizer) "
    "into one graph and run it, with validation, checkpoints and metrics in a run folder.\n\n"
    f"{MODEL_HELP} A run folder is a MODEL too (its latest checkpoint).",
)
@click.argument("model")
@click.option(
    "--data",
    required=True,
    help="A UTF-8 text file, a folder of them, or 'stdlib' (the Python "
    "standard library's own sources).",
)
@click.option("--steps", type=int, help="Optimizer steps [100].")
@click.option("--batch", type=int, help="Windows per step [2].")
@click.option(
    "--seq-len", type=int, help="Tokens predicted per window (windows hold one more) [128]."
)
@click.option("--lr", type=float, help="Peak learning rate [6e-4, Cerebras-GPT 111M's].")
@click.option("--warmup", type=int, help="Linear warmup steps [steps·1525/9037, as Cerebras-GPT].")
@click.option(
    "--schedule",
    type=click.Choice(["linear", "cosine", "constant"]),
    help="Decay after warmup, to --min-lr at the last step [linear].",
)
@click.option("--min-lr", type=float, help="Learning rate the decay ends at [lr/10].")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), help="[adamw].")
@click.option(
    "--weight-decay",
    type=float,
    help="Decoupled (AdamW) or L2 (SGD) decay of weight matrices and embeddings "
    "[AdamW 0.1, SGD 0].",
)
@click.option("--momentum", type=float, help="SGD momentum [0.9].")
@click.option("--clip", type=float, help="Global gradient-norm clipping; 0 turns it off [1.0].")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "interpreter", "cerebras"]),
    help="What runs the step graph [onnxruntime]; cerebras: a simulated wafer computes loss and "
    "gradients, the host the fp32 update (MemoryX).",
)
@click.option("--target", help="Wafer of the cerebras backend: wse2, wse3 or fabric:WxH [wse2].")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "cb16"]),
    help="Arithmetic of the cerebras backend's wafer (fp32 accumulation and master weights; "
    "fp16 with dynamic loss scaling) [fp32].",
)
@click.option(
    "--systems",
    type=int,
    help="Data-parallel worker processes (torch.distributed, gloo), each with --batch/N of the "
    "global batch (on cerebras, one simulated system each); under torchrun, the workers it "
    "started [1].",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Run folder [runs/MODEL].")
@click.option("--save-every", type=int, help="Steps between checkpoints (and the last) [100].")
@click.option("--keep", type=int, help="Checkpoints kept [2].")
@click.option("--val-every", type=int, help="Steps between validation losses [50].")
@click.option("--val-batches", type=int, help="Batches of held-out windows per validation [8].")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue RUN_DIR from its latest checkpoint (or a checkpoint folder in it).",
)
@click.option("--tokenizer", help="'bytes' or a Hugging Face tokenizer.json [bytes].")
@click.option("--seed", type=int, help="Weights, data order and dropout seed [0].")
@click.option("--threads", type=int, callback=_positive, help="CPU threads [all].")
@debug_flags
@_common
def train_cmd(
    console: Console,
    model: str,
    data: str,
    output: Path | None,
    resume: Path | None,
    threads: int | None,
    debug_options: DebugOptions,
    **given: Any,
) -> int:
    from cgc.training.distributed import World
    from cgc.training.loop import train

    world = World.from_env()
    if world is not None and not world.is_main:  # under torchrun: rank 0 reports
        console = Console(quiet=True, verbose=False)
    result = train(
        model,
        data,
        given,
        output=output,
        resume=resume,
        debug=debug_options,
        threads=threads,
        progress=console.step,
        bar=not console.quiet,
    )
    if not result.val_losses:  # a worker other than rank 0
        return 0
    (first_step, first), (last_step, last) = result.val_losses[0], result.val_losses[-1]
    console.result(
        f"{result.folder}: {result.steps} steps, loss {result.loss:.4f}; validation loss "
        f"{first:.4f} (step {first_step}) -> {last:.4f} (step {last_step})\n"
        f"checkpoint: {result.checkpoint}; metrics: {result.folder / 'metrics.jsonl'}, "
        f"{result.folder / 'loss.png'}"
    )
    return 0


def _check_generation(
    console: Console,
    model: str,
    backends: list[str],
    new_tokens: int,
    rtol: float | None,
    atol: float | None,
    pipeline: str,
    batch: int | None,
    seq_len: int | None,
    seed: int,
    wafer: dict[str, str],
) -> int:
    """`cgc check MODEL --generate N`."""
    from cgc import driver
    from cgc.generation import context_length
    from cgc.generation.check import check_generation
    from cgc.generation.steps import BACKENDS

    for name in backends:
        if name not in BACKENDS:
            raise InputError(
                f"unknown generation backend {name!r}; choose one of {', '.join(BACKENDS)}"
            )
    tolerances = {}
    if wafer.get("precision", "fp32") != "fp32":
        from cgc.backends.cerebras import UNIT_ROUNDOFF

        # Only the wafer computes in 16 bits; see README: 16-bit tolerances.
        wafer_tol = 32 * UNIT_ROUNDOFF[wafer["precision"]]
        tolerances["cerebras"] = (
            wafer_tol if rtol is None else rtol,
            wafer_tol if atol is None else atol,
        )
    if driver.is_onnx(model):
        raise InputError("--generate traces a PyTorch model; an .onnx file cannot be used")
    python_file = model.endswith(".py") or ".py:" in model
    loaded = driver.load_model(model, batch=None if python_file else batch, seed=seed)
    ids = loaded.example_inputs[0]
    context = context_length(loaded.module, loaded.example_inputs)
    if not python_file:
        length = seq_len or max(1, min(32, context - new_tokens))
        ids = driver.load_model(model, batch=batch, seq_len=length, seed=seed).example_inputs[0]
    elif seq_len is not None or ids.shape[-1] + new_tokens > context:
        # A model file's example input is the prompt: its first tokens when it is too long.
        length = seq_len or max(1, context - new_tokens)
        console.step(f"the prompt is the first {length} tokens of the example input")
        ids = ids[..., :length]
    report = check_generation(
        loaded.name,
        loaded.module,
        ids.tolist(),
        new_tokens,
        [b for b in backends if b != "interpreter"],
        rtol=1e-4 if rtol is None else rtol,
        atol=1e-4 if atol is None else atol,
        pipeline=pipeline,
        options={"cerebras": wafer},
        tolerances=tolerances,
        progress=console.step,
    )
    console.result(report.text())
    return 0 if report.ok else EXIT_MISMATCH


@main.command("opt")
@click.argument("file")
@click.option("--passes", "pipeline", default="", help="Pass pipeline [none: print the IR].")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the IR here [stdout].")
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Parameter data for FILE (.safetensors), as a crash reproducer writes it.",
)
@debug_flags
@_common
def opt_cmd(
    console: Console,
    file: str,
    pipeline: str,
    output: Path | None,
    weights: Path | None,
    debug_options: DebugOptions,
) -> int:
    """Run passes on textual IR (FILE.cgc, or - for stdin) and print the result, like mlir-opt.

    The input is verified first with --verify-each (otherwise it runs as given, so a crash
    reproducer replays exactly).
    """
    from cgc.debug.instrumented import run_instrumented
    from cgc.debug.irfile import read_ir, write_ir
    from cgc.ir import verify

    graph = read_ir(file, weights)
    if debug_options.verify_each:
        verify(graph)
    run_instrumented(graph, pipeline, debug_options)
    if output:
        write_ir(output, graph)
    else:
        click.echo(str(graph), nl=False)
    return 0


@main.command(
    "bisect",
    help="Find the first pass, then the first rewrite, after which MODEL's outputs leave "
    "tolerance (like LLVM's -opt-bisect-limit), and compare node by node around it.\n\n"
    f"{MODEL_HELP} MODEL may also be textual IR (FILE.cgc, with --weights).",
)
@click.argument("model")
@click.option("--passes", "pipeline", default="default", show_default=True, help="Pass pipeline.")
@click.option("--backend", help="Check the outputs of this backend [the IR interpreter].")
@click.option(
    "--reference",
    type=click.Choice(["eager", "ir"]),
    help="Compare with eager PyTorch, or with the interpreter on the graph before the passes "
    "[eager; ir for .cgc files].",
)
@click.option("--weights", type=click.Path(path_type=Path), help="Parameter data of a .cgc MODEL.")
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(path_type=Path),
    help="Inputs of a .cgc MODEL (.safetensors by input name) [seeded random], e.g. the first "
    "step's inputs that `cgc train --dump-dir` writes.",
)
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative tolerance.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Absolute tolerance.")
@_batch
@_seq_len
@_seed
@_input_shape
@_common
def bisect_cmd(
    console: Console,
    model: str,
    pipeline: str,
    backend: str | None,
    reference: str | None,
    weights: Path | None,
    inputs_file: Path | None,
    rtol: float,
    atol: float,
    batch: int | None,
    seq_len: int | None,
    seed: int,
    input_shape: tuple[str, ...],
) -> int:
    from cgc.debug.bisect import bisect_model

    result = bisect_model(
        model,
        pipeline,
        rtol=rtol,
        atol=atol,
        backend=backend,
        reference=reference,
        weights=weights,
        inputs_file=inputs_file,
        batch=batch,
        seq_len=seq_len,
        seed=seed,
        input_shapes=_shapes(input_shape),
        progress=console.step,
    )
    console.result(result.text())
    return 0 if result.ok else EXIT_MISMATCH


@main.command(
    "viz",
    help="Draw MODEL or FILE.cgc as a graph picture (nodes coloured by fused op, boxed by "
    "pipeline stage).\n\n" + MODEL_HELP,
)
@click.argument("model")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("graph.svg"),
    show_default=True,
    help=".svg/.png/.pdf through Graphviz dot (DOT text beside it without dot), or .dot.",
)
@click.option("--passes", "pipeline", help="Pass pipeline [default for models; none for .cgc].")
@_batch
@_seq_len
@_seed
@_input_shape
@_common
def viz_cmd(
    console: Console,
    model: str,
    output: Path,
    pipeline: str | None,
    batch: int | None,
    seq_len: int | None,
    seed: int,
    input_shape: tuple[str, ...],
) -> int:
    from cgc.debug.viz import load_graph, render

    graph = load_graph(
        model, pipeline, batch=batch, seq_len=seq_len, seed=seed, input_shapes=_shapes(input_shape)
    )
    written, fmt = render(graph, output)
    if written != output:
        render_it = f"dot -T{output.suffix[1:]} {written} -o {output}"
        console.step(f"Graphviz dot is not installed; wrote DOT text instead ({render_it})")
    console.result(f"wrote {written} ({fmt}, {len(graph.nodes)} nodes)")
    return 0


@main.command("models")
@_common
def models_cmd(console: Console) -> int:
    """List the built-in models with their sizes."""
    from cgc import models

    console.result(f"{'name':<24} {'layers':>6} {'d_model':>7} {'heads':>5} {'parameters':>15}")
    for name in models.available():
        c = models.get_config(name)
        console.result(
            f"{name:<24} {c.n_layer:>6} {c.n_embd:>7} {c.n_head:>5} {c.num_parameters():>15,}"
        )
    return 0


@main.command("passes")
@_common
def passes_cmd(console: Console) -> int:
    """List every pass with its description and options, as written in --passes."""
    from cgc.passes import DEFAULT_PIPELINE, all_passes

    passes = all_passes()
    width = max(map(len, passes))
    for name, cls in passes.items():
        console.result(f"{name:<{width}}  {cls.description()}")
        for option in cls.options().values():
            default = option.default
            shown = str(default).lower() if isinstance(default, bool) else default
            console.result(f"{'':<{width}}    {option.spelling}={shown} ({option.type.__name__})")
    console.result(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0
