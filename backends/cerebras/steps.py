"""Runs generation's decode program in the wafer simulator, the K/V caches kept between steps.

The wafer runs one program, the decode graph planned layer-pipelined (decode_plan.py): its
caches stay in the attention regions' SRAM, so the simulator holds them as tensors that every
step's `cached_attention` kernels update in place (the program's `.next` cache outputs are
those same tensors). A prompt streams through the same program one token per pass, as the
wafer runs it; the prefill graph is not compiled for the wafer.
"""

from __future__ import annotations

import torch

from cgc.backends.cerebras.artifact import CerebrasArtifact
from cgc.backends.cerebras.report import estimate, render
from cgc.errors import InputError
from cgc.ir import Graph


class CerebrasSteps:
    """A decode program in the simulator, with its caches."""

    def __init__(self, artifact: CerebrasArtifact) -> None:
        program = artifact.program
        if "generation" not in program:
            raise InputError("this wafer program is not a decode step; compile with --generate")
        self.artifact = artifact
        self.simulator = artifact.simulator
        values = program["values"]
        self.caches = [
            torch.zeros(values[name]["shape"]) for name, _ in program["generation"]["caches"]
        ]

    @classmethod
    def compile(
        cls,
        prefill: Graph,
        decode: Graph,
        *,
        target: str = "wse2",
        precision: str = "fp32",
        info: dict | None = None,
    ) -> CerebrasSteps:
        """Plan `decode` for `target`; `prefill` gives the prompt length the report streams."""
        from cgc.backends.cerebras.decode_plan import compile_decode

        prompt_tokens = prefill.inputs[0].shape[1]
        artifact = compile_decode(
            decode, info or {}, target=target, precision=precision, prompt_tokens=prompt_tokens
        )
        return cls(artifact)

    def _step(self, ids: torch.Tensor, past: int) -> torch.Tensor:
        logits, *self.caches = self.simulator.run(ids, torch.tensor([past]), *self.caches)
        return logits

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Stream a block of prompt tokens [B, P] through the decode program from an empty
        cache; the last token's logits."""
        for t in range(ids.shape[1]):
            logits = self._step(ids[:, t : t + 1], t)
        return logits

    def decode(self, ids: torch.Tensor, past: int) -> torch.Tensor:
        """One token per sequence after `past` cached ones; its logits."""
        return self._step(ids, past)

    def report(self) -> str:
        """The wafer report of the decode program, with the cycles the simulator ran."""
        cycles = self.simulator.region_cycles
        return render(estimate(self.artifact.program, cycles), per_region=False)
