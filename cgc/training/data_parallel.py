"""Data-parallel training over torch.distributed: each worker computes the loss and gradients of
its share of the global batch, all_reduce sums them across the workers (the SwarmX reduce of a
Cerebras cluster), and every worker applies the same update to its own replica of the
parameters and optimizer state.

Every rank updates, rather than rank 0 updating and broadcasting the new weights (MemoryX):
all_reduce hands every rank the same sum, and the update is the same program on the same
inputs, so the replicas stay equal without moving the weights again; a broadcast would send
every parameter from rank 0 each step on top of the reduce, while the replicated update costs
each worker one pass of the optimizer, small beside its forward and backward pass. That the
replicas are equal is checked (`check_replicas`) before every checkpoint.

The step graph is cut at its gradients (cgc.training.split): the joint part (parameters, batch
-> loss, grad.P) runs in a gradient session (cgc.training.runners) that reads the live
parameters of the session running the update part (parameters, state, step, grad.P -> new
ones) and writes the loss and gradients into one flat buffer per dtype, which is reduced in
one all_reduce and then read by the update as its input, with no copy on the way. On the wafer
(cgc.backends.cerebras.training.WaferGradients) each worker simulates one system of the
cluster running its share, and the update runs on the host, in MemoryX's place.

The loss of the global batch is what one process computes on all of it. A mean cross-entropy
divides by the targets that are not ignore_index, which need not be equal across shares: each
worker weighs its loss and gradients by its count over the total (summed first), so the sum is
the global mean. A summed loss is summed; a mean over all elements is averaged (equal shapes).
Any other loss is refused: its global value is not a known sum of the workers' values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cgc.errors import InputError
from cgc.ir import Graph, interpret
from cgc.ir.ops.random import RNG_SEED
from cgc.training.distributed import World, collective
from cgc.training.runners import UPDATED_BY, open_gradients, open_session
from cgc.training.split import carried, split_step
from cgc.training.step import LOSS, STEP

_ALIGN = 16  # elements: each tensor in a bucket starts on a 64-byte boundary, as ORT allocates


@dataclass
class LossShare:
    """How the global batch's loss follows from the workers' losses: `kind` is "count" (mean
    cross-entropy: weights are target counts, `targets` computes a worker's targets from its
    batch), "sum" or "mean"."""

    kind: str
    targets: Graph | None = None
    ignore_index: int = 0

    @staticmethod
    def of(joint: Graph, params: set[str]) -> LossShare:
        """The rule for the loss of `joint` (its first output; `params` are the inputs holding
        the trained parameters), or InputError."""
        from cgc.passes.canonicalize import eliminate_dead

        loss = joint.outputs[0].producer
        op = loss.op if loss is not None else "an input"
        if op == "cross_entropy" and loss.attrs["reduction"] == "mean":
            targets = joint.copy()
            position = joint.nodes.index(loss)
            targets.outputs = [targets.nodes[position].inputs[1]]
            eliminate_dead(targets)
            targets.inputs = [v for v in targets.inputs if v.users or v in targets.outputs]
            if any(v.name in params for v in targets.inputs):
                raise InputError(
                    f"the targets of the loss %{joint.outputs[0].name} depend on the trained "
                    "parameters; data-parallel training cannot count them per worker"
                )
            return LossShare("count", targets, loss.attrs["ignore_index"])
        if op == "cross_entropy":
            return LossShare("sum")
        if op in ("reduce_sum", "reduce_mean"):  # over every axis: the loss is 0-d
            return LossShare("sum" if op == "reduce_sum" else "mean")
        raise InputError(
            f"data-parallel training needs a loss whose global value follows from the workers' "
            f"(cross_entropy, or a sum or mean over all elements); %{joint.outputs[0].name} is "
            f"computed by {op}"
        )

    def weight(self, inputs: Mapping[str, torch.Tensor], world: World) -> float:
        """This worker's weight in the global loss for its batch `inputs` (a collective)."""
        if self.kind == "sum":
            return 1.0
        if self.kind == "mean":
            return 1.0 / world.size
        names = [v.name for v in self.targets.inputs]
        (targets,) = interpret(self.targets, *(inputs[n] for n in names))
        counts = torch.tensor([int((targets != self.ignore_index).sum())], dtype=torch.int64)
        local = int(counts)
        with collective("summing the target counts"):
            dist.all_reduce(counts)
        return local / int(counts) if int(counts) else math.nan


class DataParallelSession:
    """A StepSession for one worker of a data-parallel run: the step graph split at its
    gradients, the gradients of the worker's share summed over all workers between the two."""

    def __init__(
        self,
        backend: str,
        step_graph: Graph,
        state: dict[str, torch.Tensor],
        eval_graph: Graph | None,
        world: World,
        *,
        threads: int | None = None,
        in_place: bool = False,
        target: str | None = None,
        precision: str | None = None,
    ) -> None:
        from cgc.passes.canonicalize import eliminate_dead

        joint, update, self.params = split_step(step_graph)
        for name in self.params:
            joint.param_to_input(name)
        eliminate_dead(joint)  # the constants only the other part reads: ORT warns of them
        eliminate_dead(update)
        self.share = LossShare.of(joint, set(self.params))
        self.world = world
        _broadcast(state, sorted(set(carried(update)) & set(state)))
        self.update = open_session(
            UPDATED_BY.get(backend, backend),
            update,
            state,
            eval_graph,
            threads=threads,
            in_place=in_place,
        )
        self.buckets, views = _buckets(joint)
        self.loss = views[joint.outputs[0].name]
        self.grads = {v.name: views[v.name] for v in joint.outputs[1:]}
        wafer = {"target": target, "precision": precision, "systems": world.size}
        self.gradients = open_gradients(
            backend, joint, self.update, views, threads=threads, eval_graph=eval_graph, **wafer
        )

    def step(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One step on this worker's share of the global batch; the global loss, grad_norm, lr
        (and a simulated system's cycles and tokens/s for its share)."""
        local = dict(inputs)
        if RNG_SEED in local:  # each worker its own dropout masks (see rng_seed)
            local[RNG_SEED] = local[RNG_SEED] * self.world.size + self.world.rank
        weight = self.share.weight(local, self.world)
        metrics = self.gradients.run(local)
        for bucket in self.buckets:
            if weight == 0:  # an empty share: its NaN mean must not reach the sum
                bucket.zero_()
            elif weight != 1:
                bucket.mul_(weight)
        with collective("summing the gradients"):
            for bucket in self.buckets:
                dist.all_reduce(bucket)
        scalars = self.update.step({**self.grads, STEP: inputs[STEP]})
        return {LOSS: float(self.loss), **scalars, **metrics}

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The global loss of the batch whose share `inputs` is (the evaluation graph's only
        output), no update."""
        (loss,) = self.gradients.evaluate(inputs)
        weight = self.share.weight(inputs, self.world)
        total = torch.tensor([float(loss) * weight if weight else 0.0], dtype=torch.float64)
        with collective("summing the validation loss"):
            dist.all_reduce(total)
        return [total[0].to(loss.dtype)]

    def check_replicas(self) -> None:
        """Raise if the workers' parameters differ (they never should: see the module doc)."""
        state = self.update.state_dict()
        local = torch.stack([state[p].double().sum() for p in self.params])
        agreed = local.clone()
        with collective("comparing the replicas"):
            dist.all_reduce(agreed, dist.ReduceOp.MAX)
        if not torch.equal(local, agreed):
            raise RuntimeError(f"rank {self.world.rank}: its parameters differ from the others'")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.update.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.update.load_state_dict(state)


def _broadcast(state: dict[str, torch.Tensor], names: list[str]) -> None:
    """Give every worker rank 0's starting parameters and optimizer state, in place."""
    with collective("sharing rank 0's starting state"):
        for name in names:
            dist.broadcast(state[name], src=0)


def _buckets(joint: Graph) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One flat buffer per dtype holding the joint graph's outputs (loss and gradients), and a
    view of it per output: what all_reduce sums in one call."""
    sizes: dict[torch.dtype, int] = {}
    places = {}
    for v in joint.outputs:
        dtype = v.type.torch_dtype
        start = sizes.get(dtype, 0)
        places[v.name] = (dtype, start, v.type.shape)
        sizes[dtype] = start + -(-math.prod(v.type.shape) // _ALIGN) * _ALIGN
    buckets = {dtype: torch.zeros(size, dtype=dtype) for dtype, size in sizes.items()}
    views = {
        name: buckets[dtype][start : start + math.prod(shape)].view(shape)
        for name, (dtype, start, shape) in places.items()
    }
    return list(buckets.values()), views
