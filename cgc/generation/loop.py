"""The generation loop: prefill, then one decode step per token, sampling outside the graphs.

Sequences of a batch may have prompts of different lengths. Every sequence holds the same
number of tokens in its cache at every step: prefill runs the first tokens all prompts have,
then each decode step feeds every sequence its next token, a prompt token while its prompt
lasts (its logits are not used) and a sampled one after. So a batch needs no padding, every
position is a real token, and the step graphs take one past length for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from cgc.errors import InputError
from cgc.generation.sampling import Sampler
from cgc.generation.steps import StepProgram

PAD = 0  # fills prefill rows past a short prompt; those slots are overwritten before use


@dataclass
class Generation:
    """New tokens per sequence, what each was chosen from, and the time taken."""

    prompts: list[list[int]]
    tokens: list[list[int]]
    logits: list[list[torch.Tensor]] = field(default_factory=list)  # per sequence, per token
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens the decode steps processed per second, over the whole batch."""
        steps = self.decode_steps * len(self.prompts)
        return steps / self.decode_seconds if self.decode_seconds else float("nan")


def generate(
    program: StepProgram,
    prompts: Sequence[Sequence[int]],
    *,
    prompt_tokens: int,
    capacity: int,
    max_new_tokens: int,
    sampler: Sampler,
    eos_id: int | None = None,
    keep_logits: bool = False,
    on_token: Callable[[int, int], None] | None = None,
) -> Generation:
    """Generate up to `max_new_tokens` after each prompt (one per batch row), stopping a
    sequence at `eos_id`. `prompt_tokens` is the prefill graph's length; `on_token(row, id)`
    sees each new token as it is chosen."""
    prompts = [list(p) for p in prompts]
    if any(not p for p in prompts):
        raise InputError("a prompt is empty; give at least one token")
    longest = max(map(len, prompts))
    if longest + max_new_tokens - 1 > capacity:
        raise InputError(
            f"a {longest}-token prompt and {max_new_tokens} new tokens need "
            f"{longest + max_new_tokens - 1} cache slots, but the capacity is {capacity}"
        )
    result = Generation(prompts, [[] for _ in prompts], [[] for _ in prompts])
    shortest = min(map(len, prompts))
    # Prefill whole prompt tokens when every prompt has a block of them; else the tokens before
    # each prompt's last one, padded (their slots are rewritten by decode steps before use).
    filled = prompt_tokens if shortest >= prompt_tokens else shortest - 1
    logits = None
    start = time.perf_counter()
    if filled:
        block = [p[:filled] + [PAD] * (prompt_tokens - filled) for p in prompts]
        logits = program.prefill(torch.tensor(block))
        logits = logits.reshape(len(prompts), -1) if filled == prompt_tokens else None
    result.prefill_seconds = time.perf_counter() - start
    done = [False] * len(prompts)
    past = filled
    start = time.perf_counter()
    while True:
        feed = []
        for row, prompt in enumerate(prompts):
            if past < len(prompt):
                feed.append(prompt[past])
                continue
            token = int(sampler(logits[row : row + 1])[0]) if not done[row] else PAD
            if not done[row]:
                result.tokens[row].append(token)
                if keep_logits:
                    result.logits[row].append(logits[row].clone())
                if on_token is not None:
                    on_token(row, token)
                done[row] = token == eos_id or len(result.tokens[row]) == max_new_tokens
            feed.append(token)
        if all(done):
            break
        logits = program.decode(torch.tensor(feed).reshape(-1, 1), past).reshape(len(prompts), -1)
        result.decode_steps += 1
        past += 1
    result.decode_seconds = time.perf_counter() - start
    return result
