"""`cgc check MODEL --generate N`: greedy generation on each backend against eager PyTorch.

The reference recomputes the whole sequence in eager PyTorch at every step (no cache), one
sequence at a time, and takes the argmax. Each target generates from the same prompts through
the kv-cache step graphs; the report gives, per target, how many tokens equal the reference's
and the largest error of the logits every token was chosen from, compared step by step up to
the first token that differs (after it the two continue from different sequences).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from cgc.check import Tolerance, run_eager
from cgc.errors import InputError
from cgc.generation.build import trace_step_graphs
from cgc.generation.loop import generate
from cgc.generation.sampling import Sampler
from cgc.generation.steps import step_program
from cgc.models.context import declared_context


def last_logits(output: object) -> torch.Tensor:
    """The last position's logits [batch, vocab] from what a model returns: a tensor, a tuple
    whose first item is the logits ((logits, loss) in nanoGPT and minGPT), or an object with
    `.logits` (Hugging Face)."""
    if hasattr(output, "logits"):
        output = output.logits
    if isinstance(output, tuple | list):
        output = output[0]
    return output[:, -1, :] if output.dim() == 3 else output


@torch.no_grad()
def eager_greedy(
    module: torch.nn.Module, prompt: Sequence[int], new_tokens: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and the logits each came from, recomputing the full sequence every step."""
    ids = torch.tensor([list(prompt)])
    tokens, logits = [], []
    for _ in range(new_tokens):
        step = last_logits(run_eager(module, (ids,)))[0].float()
        token = int(step.argmax())
        tokens.append(token)
        logits.append(step)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logits


@dataclass
class TargetResult:
    """One target's tokens and logit errors against the reference."""

    equal: int  # tokens equal to the reference's, over all sequences
    total: int
    first_difference: tuple[int, int] | None  # (sequence, step)
    max_abs: float
    max_rel: float
    at: tuple[int, int]
    seconds: float
    ok: bool


@dataclass
class GenerationReport:
    """Per target: token equality and per-step logit errors; PASS when all agree."""

    model: str
    prompts: list[list[int]]
    new_tokens: int
    tolerance: Tolerance
    results: dict[str, TargetResult] = field(default_factory=dict)
    own_tolerances: dict[str, Tolerance] = field(default_factory=dict)  # targets not at `tolerance`

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    def text(self) -> str:
        """The report in `cgc check`'s style: a line per target, then PASS or FAIL."""
        lengths = ", ".join(str(len(p)) for p in self.prompts)
        lines = [
            f"{self.model}: {len(self.prompts)} prompt(s) of {lengths} tokens, "
            f"{self.new_tokens} new tokens, greedy",
            "reference: eager PyTorch recomputing the full sequence at every step",
            f"tolerance {self.tolerance.text()}: every step's logits",
            *(f"tolerance of {t}: {tol.text()}" for t, tol in self.own_tolerances.items()),
            f"{'target':<14} {'tokens equal':>14} {'max abs':>10} {'max rel':>10}  "
            f"[seq,step]   status",
        ]
        for target, r in self.results.items():
            status = "ok" if r.ok else "MISMATCH"
            lines.append(
                f"{target:<14} {f'{r.equal}/{r.total}':>14} {r.max_abs:>10.3e} {r.max_rel:>10.3e}"
                f"  [{r.at[0]},{r.at[1]}]{'':<6} {status}"
            )
        for target, r in self.results.items():
            if r.first_difference is not None:
                seq, step = r.first_difference
                lines.append(f"{target}: sequence {seq} differs from step {step} on")
        lines.append("PASS" if self.ok else "FAIL: tokens or logits differ")
        return "\n".join(lines)


def check_generation(
    name: str,
    module: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    backends: Sequence[str],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    pipeline: str = "default",
    options: dict[str, dict] | None = None,
    tolerances: dict[str, tuple[float, float]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> GenerationReport:
    """Greedy generation of `new_tokens` after each prompt on the interpreter and `backends`,
    against eager full recomputation. `options` go to a backend's step program (the wafer's
    target and precision); `tolerances` give a target its own (rtol, atol)."""
    prompts = [list(p) for p in prompts]
    context = declared_context(module)
    longest = max(map(len, prompts))
    if context is not None and longest + new_tokens > context:
        raise InputError(
            f"--generate {new_tokens} after a {longest}-token prompt passes the model's context "
            f"of {context} positions"
        )
    tol = Tolerance(rtol, atol)
    report = GenerationReport(name, prompts, new_tokens, tol)
    progress("running eager PyTorch, full recomputation per token ...")
    reference = [eager_greedy(module, p, new_tokens) for p in prompts]
    progress("tracing and deriving the step graphs ...")
    graphs = trace_step_graphs(
        module,
        batch=len(prompts),
        capacity=longest + new_tokens - 1,
        prompt_tokens=min(map(len, prompts)),
        pipeline=pipeline,
    )
    for target in ["interpreter", *backends]:
        progress(f"generating on {target} ...")
        start = time.perf_counter()
        program = step_program(
            target, graphs.prefill, graphs.decode, **(options or {}).get(target, {})
        )
        got = generate(
            program,
            prompts,
            prompt_tokens=graphs.prompt_tokens,
            capacity=graphs.capacity,
            max_new_tokens=new_tokens,
            sampler=Sampler(),
            keep_logits=True,
        )
        target_tol = Tolerance(*(tolerances or {}).get(target, tol))
        if target_tol != tol:
            report.own_tolerances[target] = target_tol
        report.results[target] = _compare(got.tokens, got.logits, reference, target_tol)
        report.results[target].seconds = time.perf_counter() - start
    return report


def _compare(tokens, logits, reference, tol: Tolerance) -> TargetResult:
    equal = total = 0
    first = None
    worst, worst_rel, at = 0.0, 0.0, (0, 0)
    within = True
    for seq, ((ref_tokens, ref_logits), got_tokens, got_logits) in enumerate(
        zip(reference, tokens, logits, strict=True)
    ):
        total += len(ref_tokens)
        equal += sum(a == b for a, b in zip(ref_tokens, got_tokens, strict=False))
        for step, (ref, got) in enumerate(zip(ref_logits, got_logits, strict=False)):
            diff = (got.float() - ref).abs()
            err = float(diff.max())
            rel = float((diff / ref.abs().clamp_min(1e-30)).max())
            within &= bool((diff <= tol.atol + tol.rtol * ref.abs()).all())
            if err > worst:
                worst, at = err, (seq, step)
            worst_rel = max(worst_rel, rel)
            if ref_tokens[step] != got_tokens[step]:
                first = first or (seq, step)
                break
        if len(got_tokens) != len(ref_tokens) and first is None:
            first = (seq, min(len(got_tokens), len(ref_tokens)))
    ok = equal == total and first is None and within
    return TargetResult(equal, total, first, worst, worst_rel, at, 0.0, ok)
