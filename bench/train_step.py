"""One training step of Cerebras-GPT 111M on CPU: cgc's compiled step on ONNX Runtime against
eager PyTorch, torch.compile (Inductor) and ONNX Runtime's own training build.

Every system trains the same model (seeded random weights, 111M with its 50257-token vocabulary)
on the same batch (1 x 128 token ids, next-token cross-entropy over 127 positions) with AdamW
(betas 0.9/0.95, weight decay 0.1 on matrices) and gradient-norm clipping at 1.0, using
--threads intra-op threads, each in a subprocess of its own so that peak RSS (ru_maxrss) is the
system's. Reported: the first step (for cgc: trace, passes, autodiff, lowering, session and the
step; for torch.compile its compilation; for ORT training export, artifact generation and
session set-up), the median of the steps after it, and the peak RSS.

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


def _batch():
    import torch

    return torch.randint(0, 50257, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _loss(logits, ids):
    import torch

    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)
    )


def _torch_steps(steps: int, compiled: bool) -> tuple[float, list[float]]:
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
    first = time.perf_counter() - began
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return first, times


def _cgc_steps(steps: int, threads: int) -> tuple[float, list[float]]:
    import cgc
    from cgc import models

    module = models.build(MODEL)
    ids = _batch()
    began = time.perf_counter()
    trainer = cgc.compile_train(module, ids, cgc.AdamW(), threads=threads)
    del module  # the session holds the weights now
    trainer.step(ids)
    first = time.perf_counter() - began
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        trainer.step(ids)
        times.append(time.perf_counter() - began)
    return first, times


def _ort_training_steps(steps: int, threads: int) -> tuple[float, list[float]]:
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
    first = time.perf_counter() - began
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return first, times


def _run_one(system: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if system == "cgc":
        first, times = _cgc_steps(steps, threads)
    elif system == "ort-training":
        first, times = _ort_training_steps(steps, threads)
    else:
        first, times = _torch_steps(steps, compiled=system == "torch.compile")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"system": system, "first": first, "step": statistics.median(times), "rss": rss,
            "steps": times}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--ort-training-python", type=Path, default=Path("venv-ort-training/bin/python")
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one system (a subprocess)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_run_one(args.one, args.steps, args.threads)))
        return
    rows = []
    for system in args.systems.split(","):
        python = sys.executable
        if system == "ort-training":
            if not args.ort_training_python.is_file():
                print(f"{system}: skipped, no {args.ort_training_python} (see the docstring)")
                continue
            python = str(args.ort_training_python)
        print(f"{system} ...", file=sys.stderr, flush=True)
        command = [python, __file__, "--one", system, "--steps", str(args.steps)]
        command += ["--threads", str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{system}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    eager = next((r for r in rows if r["system"] == "eager"), None)
    how = f"AdamW, {args.threads} threads, median of {args.steps} steps"
    print(f"\n{MODEL}, batch {BATCH} x {SEQ}, {how}")
    print(f"{'system':<14} {'step s':>8} {'x eager':>8} {'first step s':>13} {'peak RSS GiB':>13}")
    for r in rows:
        ratio = f"{r['step'] / eager['step']:.2f}" if eager else "-"
        print(
            f"{r['system']:<14} {r['step']:>8.3f} {ratio:>8} {r['first']:>13.1f} {r['rss']:>13.2f}"
        )


if __name__ == "__main__":
    main()
