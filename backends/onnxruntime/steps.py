"""Runs the prefill and decode graphs of generation in ONNX Runtime, the K/V cache in place.

Every buffer a step touches is allocated once: the caches as OrtValues bound as both the input
and the output of their layer (GroupQueryAttention then writes the new slots in place, see the
`cached_attention` lowering), and the token ids, past length and logits as numpy arrays bound
by address. A step writes the ids and past length into their arrays, runs the bound session
and reads the logits array: no per-token allocation and no copy of the cache through numpy.

With batch 1, the decode session reads its weights where ORT loaded them instead of its
prepacked copies (`session.disable_prepacking`). A one-token step multiplies one row by every
weight once, so it is bound by reading them, and for one row MLAS runs its GEMV kernels on the
weight as stored, which read it as fast as or faster than its GEMM kernel reads packed panels
(bench/decode_roofline.py, 2 threads, the [768, 50257] LM head with Gemm transB=1: 23.8 GB/s
unpacked against 22.4 prepacked on a quiet machine, 15.1 against 7.5 on a busy one; the 111M
step 33.8 ms against 38.0, interleaved). Prefill, and decode of a batch, keep the packed weights
their GEMMs reuse across rows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cgc.backends.onnxruntime.export import to_onnx_models
from cgc.ir import Graph

PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
WEIGHTS_FILE = "weights.onnx.data"


class _BoundSession:
    """One step graph in an ORT session whose inputs and outputs stay bound between runs."""

    def __init__(
        self,
        path: Path,
        graph: Graph,
        caches: list[ort.OrtValue],
        threads: int | None,
        *,
        prepack: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # Worker threads wait passively between kernels (as torch's with OMP_WAIT_POLICY=PASSIVE):
        # a decode step is a chain of short GEMVs, and spinning workers took the cores from the
        # thread doing the work (111M decode step, 2 threads, busy machine: 96-114 ms spinning,
        # 63-69 ms passive).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ids, past, *cache_inputs = graph.inputs
        logits, *cache_outputs = graph.outputs
        self.ids = np.zeros(ids.shape, dtype=np.int64)
        self.past = np.zeros(past.shape, dtype=np.int64)
        self.logits = np.zeros(logits.shape, dtype=np.float32)
        self.binding = self.session.io_binding()
        self._bind_input(ids.name, self.ids)
        self._bind_input(past.name, self.past)
        self.binding.bind_output(
            logits.name, "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data
        )
        for cache, i, o in zip(caches, cache_inputs, cache_outputs, strict=True):
            self.binding.bind_ortvalue_input(i.name, cache)
            self.binding.bind_ortvalue_output(o.name, cache)

    def _bind_input(self, name: str, array: np.ndarray) -> None:
        self.binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def run(self, ids: torch.Tensor, past: int) -> torch.Tensor:
        """Logits of the last new token; the caches are updated in place."""
        self.ids[...] = ids.numpy()
        self.past[0] = past
        self.session.run_with_iobinding(self.binding)
        return torch.from_numpy(self.logits)


class OrtSteps:
    """Prefill and decode sessions sharing one set of in-place K/V caches."""

    def __init__(
        self,
        prefill: Graph,
        decode: Graph,
        folder: Path | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        self._scratch = None
        if folder is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="cgc-steps-")
            folder = Path(self._scratch.name)
            to_onnx_models({PREFILL_FILE: prefill, DECODE_FILE: decode}, folder, WEIGHTS_FILE)
        self.caches = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(v.shape, dtype=np.float32))
            for v in decode.inputs[2:]
        ]
        self.prefill_session = _BoundSession(folder / PREFILL_FILE, prefill, self.caches, threads)
        self.decode_session = _BoundSession(
            folder / DECODE_FILE,
            decode,
            self.caches,
            threads,
            prepack=decode.inputs[0].shape[0] > 1,
        )

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt block from an empty cache; the last token's logits."""
        return self.prefill_session.run(ids, 0)

    def decode(self, ids: torch.Tensor, past: int) -> torch.Tensor:
        """One token per sequence after `past` cached ones; its logits."""
        return self.decode_session.run(ids, past)
