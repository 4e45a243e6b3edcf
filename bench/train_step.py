"""One training step of Cerebras-GPT 111M on CPU: cgc's compiled step on ONNX Runtime against
eager PyTorch, torch.compile (Inductor) and ONNX Runtime's own training build.

Every system trains the same model (seeded random weights, 111M with its 50257-token vocabulary)
on the same batch (1 x 128 token ids, next-token cross-entropy over 127 positions) with AdamW
(betas 0.9/0.95, weight decay 0.1 on matrices) and gradient-norm clipping at 1.0, using
--threads intra-op threads, each in a subprocess of its own so that peak RSS (ru_maxrss) is the
system's. Reported: the first step (for cgc: trace, passes, autodiff, lowering, session and the
step; for torch.compile its compilation; for ORT training export, artifact generation and
session set-up), the median of the steps after it, and the peak RSS. After every system has
taken its first step, the processes take steps in turn, round after round, one at a time, so a
change in machine load hits all of them alike (the machine is shared).

ONNX Runtime's training build cannot share an environment with the inference package cgc
uses (both install `onnxruntime`), so it runs in a separate venv, made once with

    python -m venv --system-site-packages venv-ort-training
    venv-ort-training/bin/pip install "onnxruntime-training-cpu==1.19.*"

and named with --ort-training-python venv-ort-training/bin/python (skipped when absent). Its
AdamW kernel has no clipping, and its weight decay is the artifact default (0.01): it does a
little less work per step than the others.

    python bench/train_step.py [--steps 10] [--threads 2] [--ort-training-python PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MODEL = "cerebras-gpt-111m"
BATCH, SEQ = 1, 128
SYSTEMS = ("eager", "torch.compile", "cgc", "ort-training")
PAUSE = 0.2  # seconds before each timed step: ORT's worker threads spin a while after a run


def _batch():
    import torch

    return torch.randint(0, 50257, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _loss(logits, ids):
    import torch

    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)
    )


def _torch_steps(compiled: bool):
    import torch

    from cgc import models
    from cgc.training import AdamW

    module = models.build(MODEL).train()
    ids = _batch()
    optimizer = AdamW()
    opt = optimizer.to_torch(optimizer.torch_groups(module.named_parameters()))
    params = list(module.parameters())

    def step():
        loss = _loss(module(ids), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    if compiled:
        step = torch.compile(step)
    began = time.perf_counter()
    step()
    return time.perf_counter() - began, step


def _cgc_steps(threads: int):
    import cgc
    from cgc import models

    module = models.build(MODEL)
    ids = _batch()
    began = time.perf_counter()
    # in_place: the session trains the module's tensors, as eager PyTorch does, not a copy
    trainer = cgc.compile_train(module, ids, cgc.AdamW(), threads=threads, in_place=True)
    trainer.step(ids)
    return time.perf_counter() - began, lambda: trainer.step(ids)


def _ort_training_steps(threads: int):
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.training import artifacts
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    from cgc import models

    class WithLoss(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return _loss(self.model(ids), ids)

    module = WithLoss(models.build(MODEL)).train()
    ids = _batch()
    folder = Path(tempfile.mkdtemp(prefix="ort-training-"))
    began = time.perf_counter()
    path = folder / "forward.onnx"
    # Opset 14, in training mode: ORT 1.19's gradient builder fails on opset 17's one-output
    # LayerNormalization; its loader reads IR version 10 at most.
    torch.onnx.export(
        module, (ids,), str(path), input_names=["ids"], output_names=["loss"], dynamo=False,
        opset_version=14, do_constant_folding=False, training=torch.onnx.TrainingMode.TRAINING,
    )  # fmt: skip
    model = onnx.load(str(path))
    trained = [t.name for t in model.graph.initializer if t.name.startswith("model.")]
    artifacts.generate_artifacts(
        model, requires_grad=trained, loss=None, optimizer=artifacts.OptimType.AdamW,
        artifact_directory=str(folder),
    )  # fmt: skip
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        saved = onnx.load(str(folder / name))
        saved.ir_version = min(saved.ir_version, 10)
        onnx.save(saved, str(folder / name))
    ort.set_default_logger_severity(3)
    state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    train = Module(str(folder / "training_model.onnx"), state, str(folder / "eval_model.onnx"))
    opt = Optimizer(str(folder / "optimizer_model.onnx"), train)
    opt.set_learning_rate(6e-4)
    feed = ids.numpy()

    def step():
        train.train()
        loss = train(feed)
        opt.step()
        train.lazy_reset_grad()
        return float(loss)

    step()
    return time.perf_counter() - began, step


def _serve(system: str, threads: int) -> None:
    """Set `system` up, report its first step, then time one step per line read from stdin
    (an empty line ends it with the peak RSS)."""
    import torch

    torch.set_num_threads(threads)
    if system == "cgc":
        first, step = _cgc_steps(threads)
    elif system == "ort-training":
        first, step = _ort_training_steps(threads)
    else:
        first, step = _torch_steps(compiled=system == "torch.compile")
    print(json.dumps({"first": first}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        time.sleep(PAUSE)
        began = time.perf_counter()
        step()
        print(json.dumps({"step": time.perf_counter() - began}), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"rss": rss}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--ort-training-python", type=Path, default=Path("venv-ort-training/bin/python")
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # a system's worker process
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.threads)
        return
    workers, first = {}, {}
    for system in args.systems.split(","):
        python = sys.executable
        if system == "ort-training":
            if not args.ort_training_python.is_file():
                print(f"{system}: skipped, no {args.ort_training_python} (see the docstring)")
                continue
            python = str(args.ort_training_python)
        print(f"{system}: first step ...", file=sys.stderr, flush=True)
        command = [python, __file__, "--serve", system, "--threads", str(args.threads)]
        worker = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        line = worker.stdout.readline()  # the others wait: set-up is timed alone
        if not line:
            print(f"{system}: failed (exit {worker.wait()})")
            continue
        workers[system], first[system] = worker, json.loads(line)["first"]
    times: dict[str, list[float]] = {s: [] for s in workers}
    for i in range(args.steps):
        print(f"round {i + 1}/{args.steps}", file=sys.stderr, flush=True)
        for system, worker in workers.items():
            worker.stdin.write("step\n")
            times[system].append(json.loads(worker.stdout.readline())["step"])
    rss = {}
    for system, worker in workers.items():
        worker.stdin.write("\n")
        rss[system] = json.loads(worker.stdout.readline())["rss"]
        worker.wait()
    median = {s: statistics.median(t) for s, t in times.items()}
    eager = median.get("eager")
    how = f"AdamW, {args.threads} threads, median of {args.steps} rounds"
    print(f"\n{MODEL}, batch {BATCH} x {SEQ}, {how}")
    print(f"{'system':<14} {'step s':>8} {'x eager':>8} {'first step s':>13} {'peak RSS GiB':>13}")
    for s in workers:
        ratio = f"{median[s] / eager:.2f}" if eager else "-"
        print(f"{s:<14} {median[s]:>8.3f} {ratio:>8} {first[s]:>13.1f} {rss[s]:>13.2f}")


if __name__ == "__main__":
    main()
