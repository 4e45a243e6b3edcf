"""The training loop behind `cgc train`: data, the compiled step, validation, checkpoints,
metrics, and resuming.

A run lives in one folder (cgc.training.checkpoint). Everything the loss trajectory depends
on (model, data, tokenizer, optimizer, schedule, batch, seed) is recorded in run.json, and a
step is a function of the state a checkpoint holds (weights, optimizer state, step, data
position; dropout seeds derive from seed and step), so a resumed run gives exactly the losses
the uninterrupted run gives. A non-finite loss stops the run at that step, before anything
is saved, so the last checkpoint stays the last good one.

With `systems` > 1 the run is data parallel (cgc.training.data_parallel): `train` starts that
many local workers (cgc.training.distributed) or, started by torchrun, is one of them. Each
worker reads the data and compiles the step for its share of the global batch; rank 0 alone
writes the run folder, metrics and checkpoints and shows progress.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cgc.debug.options import DebugOptions
from cgc.errors import CgcError, InputError
from cgc.tokenizer import TOKENIZER_FILE, load_tokenizer
from cgc.training.checkpoint import (
    checkpoint_name,
    checkpoints,
    is_run,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    read_run,
    write_run,
)
from cgc.training.data import Windows, check_source, read_text, tokenize
from cgc.training.distributed import WorkerFailed, World, launch
from cgc.training.metrics import MetricsLog, plot, read_metrics
from cgc.training.optim import LR, MAX_GRAD_NORM, OPTIMIZERS, Optimizer
from cgc.training.runners import BACKENDS, open_session
from cgc.training.schedule import FLOOR, KINDS, WARMUP_SHARE, Schedule
from cgc.training.task import Feed, load_task
from cgc.training.trainer import Trainer, training_graphs

# Options that change the losses of a run; a resumed run must keep them.
_TRAJECTORY = (
    "steps", "batch", "seq_len", "lr", "warmup", "schedule", "min_lr", "optimizer",
    "weight_decay", "momentum", "clip", "seed", "val_every", "val_batches", "target",
    "precision",
)  # fmt: skip


# What a simulated wafer's session reports per step besides the step graph's scalars
# (cgc.backends.cerebras.training; the cluster's tokens/s with --systems > 1); recorded in
# metrics.jsonl as they come.
WAFER_METRICS = (
    "wafer_cycles", "wafer_tokens_per_s", "wafer_cluster_tokens_per_s", "loss_scale", "skipped"
)  # fmt: skip


class TrainingStopped(CgcError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class RunConfig:
    """The options of a run (what `cgc train` takes besides MODEL and --data)."""

    steps: int = 100
    batch: int = 2
    seq_len: int = 128
    lr: float = LR
    warmup: int | None = None  # [steps · 1525/9037, Cerebras-GPT 111M's share]
    schedule: str = "linear"
    min_lr: float | None = None  # [lr · 0.1, Cerebras-GPT's floor]
    optimizer: str = "adamw"
    weight_decay: float | None = None  # [the optimizer's: AdamW 0.1, SGD 0]
    momentum: float = 0.9
    clip: float = MAX_GRAD_NORM  # 0 turns clipping off
    backend: str = "onnxruntime"
    target: str | None = None  # [wse2] the cerebras backend's wafer
    precision: str | None = None  # [fp32] and its arithmetic
    tokenizer: str = "bytes"
    seed: int = 0
    save_every: int = 100
    val_every: int = 50
    val_batches: int = 8
    keep: int = 2  # checkpoints kept
    systems: int = 1  # data-parallel workers; batch is the global batch

    def __post_init__(self) -> None:
        positive = ("steps", "batch", "seq_len", "save_every", "val_every", "val_batches", "keep")
        for name in (*positive, "systems"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch % self.systems:
            raise InputError(
                f"--batch {self.batch} (the global batch) is not divisible by --systems "
                f"{self.systems}; give a multiple of {self.systems}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")
        if self.schedule not in KINDS:
            raise InputError(f"unknown schedule {self.schedule!r}; choose {', '.join(KINDS)}")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        wafer = [k for k in ("target", "precision") if getattr(self, k) is not None]
        if wafer and self.backend != "cerebras":
            raise InputError(f"--{wafer[0]} applies to --backend cerebras")
        if self.systems > 1 and self.precision == "fp16":
            raise InputError(
                f"--systems {self.systems}: data parallel on the wafer runs fp32, cb16 or bf16; "
                "fp16's dynamic loss scaling is not shared between systems"
            )
        if self.lr <= 0 or (self.min_lr is not None and not 0 <= self.min_lr <= self.lr):
            raise InputError("--lr must be positive and --min-lr between 0 and --lr")

    def build_optimizer(self) -> Optimizer:
        """The optimizer these options describe."""
        if self.optimizer == "sgd":
            decay = 0.0 if self.weight_decay is None else self.weight_decay
            return OPTIMIZERS["sgd"](self.lr, self.momentum, decay)
        decay = 0.1 if self.weight_decay is None else self.weight_decay
        return OPTIMIZERS["adamw"](self.lr, weight_decay=decay)

    def build_schedule(self) -> Schedule:
        """The learning-rate schedule these options describe."""
        warmup = round(self.steps * WARMUP_SHARE) if self.warmup is None else self.warmup
        floor = FLOOR if self.min_lr is None else self.min_lr / self.lr
        return Schedule(self.schedule, warmup, self.steps, floor)


@dataclass
class RunResult:
    """What a finished run reports."""

    folder: Path
    steps: int
    loss: float
    val_losses: list[tuple[int, float]]
    checkpoint: Path
    note: str


def _config(given: Mapping[str, Any], recorded: Mapping[str, Any] | None, run: Path) -> RunConfig:
    """The run's options: given ones over defaults, or the recorded ones when resuming (a given
    option that would change the losses must equal the recorded value)."""
    names = {f.name for f in fields(RunConfig)}
    given = {k: v for k, v in given.items() if v is not None and k in names}
    if recorded is None:
        return RunConfig(**given)
    config = RunConfig(**{k: v for k, v in recorded.items() if k in names})
    for key, value in given.items():
        if key in _TRAJECTORY and value != getattr(config, key):
            raise InputError(
                f"--{key.replace('_', '-')} {value} differs from the run's {getattr(config, key)} "
                f"({run}); a resumed run keeps the options it started with"
            )
    return replace(config, **{k: v for k, v in given.items() if k not in _TRAJECTORY})


def print_nothing(message: str) -> None:
    """The default progress callback (a function, not a lambda: workers receive it pickled)."""


def train(
    model: str,
    data: str,
    given: Mapping[str, Any],
    *,
    output: Path | None = None,
    resume: Path | None = None,
    debug: DebugOptions | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = print_nothing,
    bar: bool = True,
    world: World | None = None,
) -> RunResult:
    """Train MODEL on `data` (a path or "stdlib") for the options `given` (None = default);
    `resume` continues a run folder (or one of its checkpoints). `world` is this worker's place
    in a data-parallel run (default: the one torchrun started this process in, if any)."""
    run, checkpoint = _folders(model, output, resume)
    recorded = read_run(run) if checkpoint is not None else None
    if recorded and _spec(model) != _spec(recorded["model"]):
        raise InputError(
            f"{run} was trained with {recorded['model']}, not {model}; resume it with that MODEL"
        )
    config = _config(given, recorded["options"] if recorded else None, run)
    world = world or World.from_env()
    if world is None and config.systems > 1:
        check_source(data)
        args = (model, data, given, output, resume, debug, threads, progress, bar)
        return _launch(config.systems, run, recorded is None, args, progress)
    world = world or World()
    if given.get("systems") not in (None, world.size):
        raise InputError(
            f"--systems {given['systems']}: this worker is one of {world.size} (WORLD_SIZE); "
            "under torchrun leave --systems out"
        )
    config = replace(config, systems=world.size)
    joined = world.size > 1 and world.join()
    try:
        world.barrier()  # every worker has checked the run folder before rank 0 writes to it
        return _train(model, data, given, run, checkpoint, recorded, config, world, debug,
                      threads, progress if world.is_main else print_nothing,
                      bar and world.is_main)  # fmt: skip
    finally:
        if joined:
            world.leave()


def _launch(
    systems: int, run: Path, new: bool, args: tuple[Any, ...], progress: Callable[[str], None]
) -> RunResult:
    """Run `train(*args)` in `systems` local workers; a failure names the worker and where
    `--resume` continues from."""
    progress(f"starting {systems} workers (torch.distributed, gloo) ...")
    try:
        return launch(systems, _worker, *args)
    except WorkerFailed as e:
        saved = checkpoints(run) if run.is_dir() else {}
        steps = [r["step"] for r in read_metrics(run)] if run.is_dir() else []
        at = f" after step {max(steps)}" if steps else ""
        if saved:
            then = f"--resume {run} continues from {saved[max(saved)].name}"
        else:
            then = "no checkpoint was written, nothing to resume"
        raise WorkerFailed(f"{e}{at}; {then}") from None
    finally:
        if new and run.is_dir() and not checkpoints(run):  # nothing to resume: leave no folder
            shutil.rmtree(run, ignore_errors=True)


def _worker(
    model: str,
    data: str,
    given: Mapping[str, Any],
    output: Path | None,
    resume: Path | None,
    debug: DebugOptions | None,
    threads: int | None,
    progress: Callable[[str], None],
    bar: bool,
) -> RunResult:
    """One worker of `_launch` (module-level, so a spawned process can find it)."""
    world = World.from_env()
    return train(model, data, given, output=output, resume=resume,
                 debug=debug if world.is_main else None, threads=threads, progress=progress,
                 bar=bar, world=world)  # fmt: skip


def _train(
    model: str,
    data: str,
    given: Mapping[str, Any],
    run: Path,
    checkpoint: Path | None,
    recorded: dict[str, Any] | None,
    config: RunConfig,
    world: World,
    debug: DebugOptions | None,
    threads: int | None,
    progress: Callable[[str], None],
    bar: bool,
) -> RunResult:
    tokenizer = load_tokenizer(config.tokenizer, base=run if recorded else None)
    if recorded and given.get("tokenizer") is not None:
        _same_tokenizer(load_tokenizer(given["tokenizer"]), tokenizer, run)
    check_source(data)
    progress(f"loading {model} ...")  # before reading the data: bad options fail fast
    share = config.batch // world.size  # windows per worker and step
    task = load_task(
        model, tokenizer, share, config.seq_len, seed=config.seed, checkpoint=checkpoint
    )
    progress(f"reading {data} ...")
    text = read_text(data)
    windows = Windows(tokenize(text, tokenizer, bar=bar), config.seq_len, config.seed)
    progress(f"{text.description}: {len(windows.tokens):,} tokens, {len(windows.train):,} training "
             f"and {len(windows.val):,} validation windows of {config.seq_len + 1}")  # fmt: skip
    if recorded and recorded["data_digest"] != windows.digest:
        raise InputError(f"{data} is not the data {run} was trained on ({recorded['data']})")
    if task.note:
        progress(task.note)
    if recorded and recorded["parameters"] != task.signature:
        raise InputError(
            f"{run} was trained with {recorded['model']} ({len(recorded['parameters'])} parameter "
            f"tensors); {model} is another model, resume with that one"
        )
    optimizer, schedule = config.build_optimizer(), config.build_schedule()
    progress("compiling the training step (loss, autodiff, optimizer) ...")
    graphs = training_graphs(task.graph, optimizer, schedule, config.clip or None, debug=debug)
    state = dict(graphs.initial)
    graphs.initial = {}
    start, position = 0, 0
    if checkpoint is not None:
        saved = read_checkpoint(checkpoint)
        missing = sorted(set(graphs.optimizer_state()) - set(saved.optimizer))
        if missing:
            raise InputError(f"{checkpoint}: no optimizer state {missing[0]}")
        state |= saved.optimizer  # the optimizer state, and what else the session keeps
        start, position = saved.step, int(saved.state["data_position"])
        if start >= config.steps:
            raise InputError(f"{run} has finished its {config.steps} steps; nothing to resume")
    progress(f"starting the {config.backend} session ...")
    # The model was loaded for this run alone: train its tensors rather than a copy of them.
    if world.size == 1:
        session = open_session(
            config.backend,
            graphs.step,
            state,
            graphs.eval,
            threads=threads,
            in_place=True,
            target=config.target,
            precision=config.precision,
        )
    else:
        from cgc.training.data_parallel import DataParallelSession

        session = DataParallelSession(
            config.backend, graphs.step, state, graphs.eval, world,
            threads=world.threads(threads), in_place=True, target=config.target,
            precision=config.precision,
        )  # fmt: skip
    trainer = Trainer(
        graphs, session, task.batch_names, optimizer, seed=config.seed, save_model=task.save_model
    )
    trainer.steps = start
    if debug is not None and debug.dump_dir is not None:
        first = task.feed(world.shard(windows.train_batch(position, config.batch)))
        _dump_step(debug.dump_dir, graphs.step, session.state_dict() | trainer.inputs(*first))
    if recorded is None and world.is_main:
        run.mkdir(parents=True, exist_ok=True)
        tokenizer_spec = tokenizer.save(run)
        write_run(run, {
            "model": model, "name": task.name, "data": data, "data_digest": windows.digest,
            "tokenizer": tokenizer_spec, "parameters": task.signature,
            "options": asdict(replace(config, tokenizer=tokenizer_spec)), "note": task.note,
        })  # fmt: skip
    feed = lambda windows: task.feed(world.shard(windows))  # noqa: E731
    try:
        return _loop(run, config, trainer, feed, windows, start, position, task.note, bar, world)
    except BaseException:
        if recorded is None and world.is_main and not checkpoints(run):  # nothing to resume
            shutil.rmtree(run, ignore_errors=True)
        raise


def _dump_step(folder: Path, graph, inputs: Mapping[str, Any]) -> None:
    """Beside the dumped stages: the step graph's weights (those not trained) and the inputs of
    the next step, so `cgc bisect` can replay the step graph on real values."""
    from cgc.debug.irfile import real_weights, write_weights

    write_weights(folder / "weights.safetensors", real_weights(graph))
    write_weights(folder / "inputs.safetensors", {v.name: inputs[v.name] for v in graph.inputs})


def _spec(model: str) -> str:
    """MODEL as a comparable string: paths resolved, names as given."""
    path = Path(model.split(".py:")[0] + ".py" if ".py:" in model else model)
    return str(path.resolve()) if path.exists() else model


def _same_tokenizer(given, recorded, run: Path) -> None:
    """A resumed run keeps its tokenizer: a --tokenizer given again must be the same one."""
    same = given.spec == recorded.spec or (
        given.spec != "bytes"
        and recorded.spec != "bytes"
        and Path(given.spec).read_bytes() == Path(recorded.spec).read_bytes()
    )
    if not same:
        raise InputError(f"--tokenizer {given.spec} is not the tokenizer {run} was trained with")


def _folders(model: str, output: Path | None, resume: Path | None) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from (None for a new run)."""
    if resume is None:
        run = output or Path("runs") / Path(model).stem
        if run.exists() and (is_run(run) or any(run.iterdir())):
            what = "a run: --resume it" if is_run(run) else "not empty"
            raise InputError(f"{run} is {what}, or choose another -o")
        return run, None
    if (resume / "trainer_state.json").is_file():
        run, checkpoint = resume.parent, resume
    else:
        run, checkpoint = resume, None
    if not is_run(run):
        raise InputError(f"{resume}: not a training run (no run.json) to resume")
    if output is not None and output.resolve() != run.resolve():
        raise InputError(f"--resume continues {run} in place; leave out -o {output}")
    return run, checkpoint or latest_checkpoint(run)


def _loop(
    run: Path,
    config: RunConfig,
    trainer: Trainer,
    feed: Feed,
    windows: Windows,
    start: int,
    position: int,
    note: str,
    bar: bool,
    world: World,
) -> RunResult:
    metrics = MetricsLog(run, resume_step=start) if world.is_main else None
    val = windows.val_batches(config.batch, config.val_batches)

    def validate() -> float:
        return sum(trainer.evaluate(*feed(b)) for b in val) / len(val)

    def write(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(record)

    if start == 0:
        write({"step": 0, "val_loss": validate()})
    tokens = config.batch * config.seq_len
    saved = checkpoints(run) if run.is_dir() else {}
    last_good = saved[max(saved)] if saved else None
    loss = math.nan
    progress = tqdm(
        total=config.steps, initial=start, unit="step", disable=not bar, dynamic_ncols=True
    )
    try:
        for step in range(start + 1, config.steps + 1):
            began = time.perf_counter()
            loss = trainer.step(*feed(windows.train_batch(position, config.batch)))
            seconds = time.perf_counter() - began
            if not math.isfinite(loss):
                where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint"
                raise TrainingStopped(
                    f"the loss is {loss} at step {step}; training stopped ({where})"
                )
            position += config.batch
            record = {
                "step": step,
                "loss": loss,
                "lr": trainer.last["lr"],
                "grad_norm": trainer.last["grad_norm"],
                "tokens_per_s": tokens / seconds,
            }
            # A simulated wafer's step: its cycles and the tokens/s they give (the wall clock
            # above times the simulation).
            wafer = {k: trainer.last[k] for k in WAFER_METRICS if k in trainer.last}
            record |= wafer
            if step % config.val_every == 0 or step == config.steps:
                record["val_loss"] = validate()
            write(record)
            postfix = {"loss": f"{loss:.4f}", "tok_s": f"{tokens / seconds:,.0f}"}
            if "wafer_tokens_per_s" in wafer:
                postfix["wafer_tok_s"] = f"{wafer['wafer_tokens_per_s']:,.0f}"
            progress.set_postfix(postfix)
            progress.update()
            if step % config.save_every == 0 or step == config.steps:
                if world.size > 1:
                    trainer.session.check_replicas()
                last_good = run / checkpoint_name(step)
                if world.is_main:
                    trainer.save(
                        last_good,
                        {"data_position": position, "data_digest": windows.digest, "loss": loss},
                        run / TOKENIZER_FILE if (run / TOKENIZER_FILE).is_file() else None,
                    )
                    prune_checkpoints(run, config.keep)
                    plot(run, f"{run.name}: training and validation loss")
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()
    if not world.is_main:
        return RunResult(run, config.steps, loss, [], last_good, note)
    plot(run, f"{run.name}: training and validation loss")
    val_losses = [(r["step"], r["val_loss"]) for r in read_metrics(run) if "val_loss" in r]
    return RunResult(run, config.steps, loss, val_losses, latest_checkpoint(run), note)
