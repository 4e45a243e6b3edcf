"""Greedy generation with Cerebras-GPT 111M on CPU: cgc's kv-cache step graphs on ONNX Runtime
against Hugging Face `generate` (eager PyTorch with its own cache) and against ONNX Runtime
running a `torch.onnx.export` of a one-token decode step with past key-values.

All three hold the same seeded random weights (cgc's built-in 111M, copied into a
GPT2LMHeadModel of the same config) and generate NEW tokens greedily after the same PROMPT-token
prompt, batch 1, with --threads intra-op threads (torch.set_num_threads for PyTorch). Each
contender reports the prefill time (the prompt's forward pass, up to the first new token's
logits) and decode tokens/s (the NEW - 1 one-token steps after it). The exported step is run
the usual way: its present key-values (the past grown by one token) feed the next step through
IO binding as OrtValues, no numpy copy; the cgc step updates its cache in place. The three run
in turn, round after round, and the table gives medians over rounds; all must produce the same
tokens. Every runtime's idle threads wait passively (ORT: allow_spinning=0, as cgc's step
program sets it; torch: OMP_WAIT_POLICY=PASSIVE), so none spins on cores another one needs.

cgc's decode session reads its weights unpacked (`session.disable_prepacking`, see
backends/onnxruntime/steps.py). The exported step runs as users run it, ORT's defaults (weights
prepacked); a fourth contender runs its decode steps in a second session with prepacking off
as cgc's, its prompt in the first, so the table separates what the session option gives from
what the graph does. The ratio lines also give the median of the per-round ratios.

    python bench/generate.py [--prompt 128] [--new 64] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP threads must not spin

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor  # noqa: E402

from cgc import models  # noqa: E402
from cgc.generation import Sampler, generate, step_program, trace_step_graphs  # noqa: E402

MODEL = "cerebras-gpt-111m"
PAUSE = 0.2  # seconds between contenders: ORT's worker threads spin for a while after a run


def hf_model(module: models.GPT) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel with the config and weights of cgc's GPT (Conv1D weights are [in, out])."""
    c = module.config
    config = GPT2Config(
        n_layer=c.n_layer,
        n_embd=c.n_embd,
        n_head=c.n_head,
        n_inner=c.n_inner,
        n_positions=c.n_positions,
        vocab_size=c.vocab_size,
        layer_norm_epsilon=c.layer_norm_epsilon,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config).eval()
    state = {}
    for name, tensor in module.state_dict().items():
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tensor = tensor.t()
        state[name] = tensor.contiguous()
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


class _Clock(LogitsProcessor):
    """Records when each new token's logits reach the sampler (greedy: argmax after this)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


@torch.no_grad()
def run_hf(
    model: GPT2LMHeadModel, prompt: torch.Tensor, new: int
) -> tuple[list[int], float, float]:
    clock = _Clock()
    start = time.perf_counter()
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        logits_processor=[clock],
        pad_token_id=0,
    )
    prefill = clock.times[0] - start
    decode = (new - 1) / (clock.times[-1] - clock.times[0])
    return out[0, prompt.shape[1] :].tolist(), prefill, decode


class DecodeStep(nn.Module):
    """One GPT-2 step with past key-values in plain torch: ids [1, T] at `position` after the
    past [1, heads, S, d] of each layer; returns logits [1, vocab] and the presents [.., S+T, d]."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, position, *past):
        t = self.model.transformer
        heads = self.model.config.n_head
        x = t.wte(ids) + t.wpe(position)
        presents = []
        for i, block in enumerate(t.h):
            h = block.ln_1(x)
            q, k, v = block.attn.c_attn(h).split(x.shape[-1], dim=2)
            b, n, e = q.shape
            q, k, v = (y.view(b, n, heads, e // heads).transpose(1, 2) for y in (q, k, v))
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            keys = torch.arange(k.shape[2], device=k.device)
            causal = keys[None, :] <= position[0][:, None]  # aligned to the past's end
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            x = x + block.attn.c_proj(y.transpose(1, 2).reshape(b, n, e))
            x = x + block.mlp(block.ln_2(x))
        logits = self.model.lm_head(t.ln_f(x[:, -1]))
        return (logits, *presents)


def export_step(model: GPT2LMHeadModel, folder: Path) -> Path:
    """torch.onnx.export of DecodeStep with dynamic past and token lengths."""
    c = model.config
    d = c.n_embd // c.n_head
    layers = c.n_layer
    past = [torch.zeros(1, c.n_head, 4, d) for _ in range(2 * layers)]
    names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes = {n: {2: "past"} for n in names}
    axes |= {n: {2: "total"} for n in outs[1:]}
    axes |= {"ids": {1: "new"}, "position": {1: "new"}}
    path = folder / "step.onnx"
    torch.onnx.export(
        DecodeStep(model),
        (torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), 4), *past),
        str(path),
        input_names=["ids", "position", *names],
        output_names=outs,
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return path


def run_exported(
    session: ort.InferenceSession,
    config: GPT2Config,
    prompt: torch.Tensor,
    new: int,
    decode_session: ort.InferenceSession | None = None,
) -> tuple[list[int], float, float]:
    """Prefill with the exported step on the whole prompt (empty past), then one token a step
    (in `decode_session` when given), each step's present OrtValues bound as the next step's
    past."""
    d = config.n_embd // config.n_head
    layers = config.n_layer
    names = [f"{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    past = [
        ort.OrtValue.ortvalue_from_numpy(np.zeros((1, config.n_head, 0, d), np.float32))
        for _ in names
    ]
    tokens: list[int] = []
    ids = prompt.numpy()
    position = np.arange(ids.shape[1])[None]
    times = []
    start = time.perf_counter()
    for step in range(new):
        runner = decode_session if step and decode_session else session
        binding = runner.io_binding()
        binding.bind_cpu_input("ids", np.ascontiguousarray(ids))
        binding.bind_cpu_input("position", np.ascontiguousarray(position))
        for name, value in zip(names, past, strict=True):
            binding.bind_ortvalue_input(f"past.{name}", value)
        binding.bind_output("logits")
        for name in names:
            binding.bind_output(f"present.{name}")
        runner.run_with_iobinding(binding)
        logits, *past = binding.get_outputs()
        token = int(logits.numpy().argmax())
        times.append(time.perf_counter())
        tokens.append(token)
        ids = np.array([[token]])
        position = position[:, -1:] + 1
    prefill = times[0] - start
    return tokens, prefill, (new - 1) / (times[-1] - times[0])


def run_cgc(program, graphs, prompt: torch.Tensor, new: int) -> tuple[list[int], float, float]:
    result = generate(
        program,
        prompt.tolist(),
        prompt_tokens=graphs.prompt_tokens,
        capacity=graphs.capacity,
        max_new_tokens=new,
        sampler=Sampler(),
    )
    return result.tokens[0], result.prefill_seconds, result.decode_tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = models.build(MODEL).eval()
    prompt = torch.randint(0, 50257, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    print(
        f"{MODEL}: batch 1, prompt {args.prompt}, {args.new} new tokens, greedy, fp32, "
        f"{args.threads} threads, medians of {args.rounds} rounds"
    )

    graphs = trace_step_graphs(
        module, batch=1, capacity=args.prompt + args.new - 1, prompt_tokens=args.prompt
    )
    program = step_program("onnxruntime", graphs.prefill, graphs.decode, threads=args.threads)
    hf = hf_model(module)
    scratch = tempfile.TemporaryDirectory(prefix="cgc-bench-generate-")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as cgc's steps
    step_file = str(export_step(hf, Path(scratch.name)))
    exported = ort.InferenceSession(step_file, options, providers=["CPUExecutionProvider"])
    options.add_session_config_entry("session.disable_prepacking", "1")  # as cgc's decode
    unpacked = ort.InferenceSession(step_file, options, providers=["CPUExecutionProvider"])
    contenders = {
        "cgc (onnxruntime)": lambda: run_cgc(program, graphs, prompt, args.new),
        "hf generate (eager)": lambda: run_hf(hf, prompt, args.new),
        "exported step (ort)": lambda: run_exported(exported, hf.config, prompt, args.new),
        "exported, unpacked": lambda: run_exported(
            exported, hf.config, prompt, args.new, decode_session=unpacked
        ),
    }
    for fn in contenders.values():  # warm-up
        fn()
    runs: dict[str, list[tuple[list[int], float, float]]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        names = list(contenders)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(PAUSE)
            runs[name].append(contenders[name]())
    tokens = {name: rs[0][0] for name, rs in runs.items()}
    same = len({tuple(t) for t in tokens.values()}) == 1
    # A decode step reads every weight once (the embedding tables only a row): the weight bytes
    # times tokens/s is the read rate a contender reached, to set against bench/decode_roofline.py.
    weight_bytes = sum(
        w.numel() * w.element_size()
        for name, w in graphs.decode.weights.items()
        if name not in ("transformer.wpe.weight",)
    )
    print(f"{'':<22} {'prefill ms':>11} {'decode tok/s':>13} {'weights GB/s':>13}")
    med = {}
    for name, rs in runs.items():
        prefill = statistics.median(r[1] for r in rs) * 1e3
        decode = statistics.median(r[2] for r in rs)
        med[name] = (prefill, decode)
        print(f"{name:<22} {prefill:>11.1f} {decode:>13.1f} {decode * weight_bytes / 1e9:>13.1f}")
    print(f"weights read per decode step: {weight_bytes / 1e6:.0f} MB")
    ours = med["cgc (onnxruntime)"][1]
    for name, target in (
        ("hf generate (eager)", "2x"),
        ("exported step (ort)", "1.2x"),
        ("exported, unpacked", "-"),
    ):
        per_round = statistics.median(
            a[2] / b[2] for a, b in zip(runs["cgc (onnxruntime)"], runs[name], strict=True)
        )
        print(
            f"cgc decode / {name}: {ours / med[name][1]:.2f}x of medians, "
            f"{per_round:.2f}x median per round (target {target})"
        )
    print("tokens: " + ("all contenders equal" if same else "DIFFER: " + repr(tokens)))


if __name__ == "__main__":
    main()
