"""Worker processes for data-parallel training: who this process is (its rank in the world),
starting N local workers, and turning a worker's failure into one line that names its rank.

Workers are started and watched by torch.distributed.elastic, the agent behind `torchrun`, with
no restarts: `cgc train --systems N` runs the agent in-process over N local workers, and
`torchrun --nnodes M --nproc-per-node K -m cgc train ...` runs one agent per machine; either way
a worker finds its rank in the environment the agent sets (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and joins a gloo process group. The agent notices a worker that dies
(whatever killed it) within its monitor interval, stops the others and reports the failures,
so a dead worker never leaves the rest waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cgc.errors import CgcError, first_line

# How long a collective waits for the slowest rank: above a checkpoint write or a validation
# pass of the largest model cgc trains on CPU (rank 0 does them while the others wait), so that
# only a worker that is gone, not one that is busy, ends the run.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# A worker whose peers vanished waits this long for the agent to stop it, so that the agent
# reports the worker that died first rather than the ones that noticed.
PEER_GRACE_SECONDS = 60.0

T = TypeVar("T")


class WorkerFailed(CgcError):
    """A worker process died or stopped with an error: the run is over (exit code 1)."""

    exit_code = 1


class PeerLost(WorkerFailed):
    """A collective failed because another worker is gone."""


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    size: int = 1
    local_size: int = 1  # workers on this machine

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder, metrics and checkpoints and shows progress."""
        return self.rank == 0

    @staticmethod
    def from_env() -> World | None:
        """The world a launcher (torchrun, or `--systems N`) started this process in, or None."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        size = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        return World(int(os.environ["RANK"]), size, local)

    def join(self) -> bool:
        """Join the gloo process group of the workers; False if this process already has."""
        if dist.is_initialized():
            return False
        with collective("joining the other workers"):
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
        return True

    def leave(self) -> None:
        """Leave the process group."""
        dist.destroy_process_group()

    def threads(self, given: int | None) -> int:
        """CPU threads for each worker: the machine's cores shared among its workers."""
        return given or max(1, (os.cpu_count() or 1) // self.local_size)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: rank r takes the r-th of `size` equal slices."""
        rows = batch.shape[0] // self.size
        return batch[self.rank * rows : (self.rank + 1) * rows]

    def barrier(self) -> None:
        """Wait until every worker has got here."""
        if self.size > 1:
            with collective("a barrier"):
                dist.barrier()


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Run collectives, turning a failure (another worker is gone) into PeerLost. Under an agent,
    first wait for it to stop this worker (see PEER_GRACE_SECONDS)."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            time.sleep(PEER_GRACE_SECONDS)
        first = first_line(e)
        rank = dist.get_rank() if dist.is_initialized() else os.environ.get("RANK", "?")
        raise PeerLost(f"rank {rank}: {what} failed, another worker is gone ({first})") from None


class _InputFailure(Exception):
    """A CgcError raised in a worker, carried to the launcher by the agent's error file."""


def _worker(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """A spawned worker: join the group, run fn(*args); a CgcError travels to the launcher."""
    world = World.from_env()
    assert world is not None  # the agent sets the environment
    # The agent stops the other workers with SIGTERM when one fails: unwind, so that rank 0
    # closes its progress bar and files.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    world.join()
    try:
        return fn(*args)
    except PeerLost:
        raise
    except CgcError as e:
        raise _InputFailure(str(e)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def launch(systems: int, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) in `systems` local worker processes (spawned, so `fn` and `args` must
    pickle) under torch's elastic agent; rank 0's result. A worker that dies or fails stops
    them all: WorkerFailed names its rank; a CgcError in a worker is raised here as one."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=systems,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",  # as `torchrun --standalone`: a store on a free local port
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    # A killed worker leaves semaphores behind, and multiprocessing's resource tracker (a
    # process of its own, started with this environment) warns of them at exit.
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    with _quiet_agent():
        try:
            return elastic_launch(config, _worker)(fn, args)[0]
        except ChildFailedError as e:
            raise _failure(e.failures, systems) from None
        except SignalException as e:
            if e.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            stopped = f"the launcher received {e.sigval.name}; all workers stopped"
            raise WorkerFailed(stopped) from None


@contextmanager
def _quiet_agent() -> Iterator[None]:
    """The agent logs each failure with tracebacks; cgc reports it in one line instead."""
    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _failure(failures: dict[int, Any], systems: int) -> CgcError:
    """The error that explains a run's failed workers: a worker killed by a signal or exiting on
    its own comes before the ones that only saw it go (PeerLost), and an input error is
    reported as itself."""

    def message(f: Any) -> str:
        text = f.message.get("message", "") if isinstance(f.message, dict) else str(f.message)
        return text.strip().splitlines()[0] if text.strip() else ""

    def cause(rank: int) -> tuple[int, int]:
        f, text = failures[rank], message(failures[rank])
        return (0 if f.exitcode < 0 else 2 if text.startswith(PeerLost.__name__) else 1, rank)

    rank = min(failures, key=cause)
    f, text = failures[rank], message(failures[rank])
    prefix = f"{_InputFailure.__name__}: "
    if text.startswith(prefix):
        return CgcError(text[len(prefix) :])
    if f.exitcode < 0:
        return WorkerFailed(f"worker rank {rank} of {systems} was killed by {f.signal_name()}")
    detail = f": {text}" if os.path.isfile(f.error_file) else ""
    return WorkerFailed(f"worker rank {rank} of {systems} exited with code {f.exitcode}{detail}")
