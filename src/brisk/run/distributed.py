"""torch.distributed plumbing for runs launched by ``torchrun``; a single process never needs a
group.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for every worker (and
``TORCHELASTIC_RUN_ID`` and ``TORCHELASTIC_RESTART_COUNT``). Tasks that ``srun`` starts without
torchrun get them from SLURM's variables instead (:func:`slurm_env`). The backend follows the device
(gloo on CPU, nccl on CUDA) unless ``trainer.backend`` names one. Every collective runs under a
finite timeout, so a rank that diverged (an exception on one rank that leaves the others waiting in
a collective) ends the run with an error instead of hanging it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from brisk.runtime import is_distributed

# Seconds a collective may wait for the other ranks before it raises. Long enough for rank 0 to
# prepare a data set or write a checkpoint while the others wait at a barrier; raise it for slow
# data preparation.
TIMEOUT_ENV = "BRISK_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0

# Fault injection for tests of resume and elastic restarts: SIGKILL after optimizer step N ...
FAULT_STEP_ENV = "BRISK_FAULT_AT_STEP"
# ... on this rank only (default 0) ...
FAULT_RANK_ENV = "BRISK_FAULT_RANK"
# ... and only in torchrun's first attempt, so the restarted group runs to the end.
RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"
# The signal sent (a name such as TERM or USR1; default KILL): TERM tests a graceful preemption.
FAULT_SIGNAL_ENV = "BRISK_FAULT_SIGNAL"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's files and logs to the console."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process: collectives and sharded sampling are needed."""
        return self.world_size > 1


# The rendezvous port of srun-started ranks: this plus the job id modulo 10000, so that two jobs
# sharing a node do not collide. MASTER_PORT in the environment wins.
SLURM_PORT_BASE = 20000


def slurm_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torchrun's variables for a task of a multi-task ``srun`` step, when torchrun set none.

    ``srun`` (or ``sbatch --ntasks=N`` whose script runs ``srun train ...``) starts N copies of the
    program with ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID``; the rendezvous is the
    first node of ``SLURM_JOB_NODELIST`` on a port derived from the job id. Only inside a job step
    (``SLURM_STEP_ID`` set): the batch script itself also sees ``SLURM_NTASKS=N`` but is one
    process, and mapping it would leave rank 0 waiting for ranks that never start.
    """
    if "WORLD_SIZE" in environ or "SLURM_STEP_ID" not in environ:
        return {}
    world = int(environ.get("SLURM_NTASKS", "1"))
    if world <= 1:
        return {}
    env = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or _first_host(environ["SLURM_JOB_NODELIST"]),
        "MASTER_PORT": environ.get("MASTER_PORT")
        or str(SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % 10000),
    }
    if "SLURM_NTASKS_PER_NODE" in environ and environ["SLURM_NTASKS_PER_NODE"].isdigit():
        env["LOCAL_WORLD_SIZE"] = environ["SLURM_NTASKS_PER_NODE"]
    return env


def launch_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's rank as torchrun or ``srun`` set it, before any group is joined (0 alone):
    what decides, before anything else, which process writes the run's files."""
    env = {**environ, **slurm_env(environ)}
    return int(env.get("RANK", "0"))


def _first_host(nodelist: str) -> str:
    """``node[03-05,07],gpu1`` -> ``node03``: the first host of a SLURM node list."""
    head = re.match(r"[^,\[]+(\[[^\]]*\])?", nodelist)
    if head is None:
        raise ValueError(f"cannot read a host from SLURM_JOB_NODELIST='{nodelist}'")
    prefix, _, ranges = head.group(0).partition("[")
    if not ranges:
        return prefix
    first = ranges.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


def init_distributed(device: torch.device, backend: str = "auto") -> DistInfo:
    """Join the group torchrun (or a multi-task ``srun``) set up; a plain ``train`` joins none."""
    os.environ.update(slurm_env())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = str(getattr(backend, "value", backend))
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        _init_process_group(backend, world, collective_timeout())
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not info.is_main:
        quiet_console()
    return info


def _init_process_group(backend: str, world: int, timeout: timedelta) -> None:
    """``init_process_group`` from torchrun's environment, safe across elastic restarts.

    torchrun lets its workers use the agent's own TCPStore (``TORCHELASTIC_USE_AGENT_STORE=True``)
    and keeps that store across restarts. Without a namespace per attempt, the restarted workers
    read the keys the killed group wrote (gloo peer addresses, the NCCL unique id), connect to dead
    peers and hang or fail at start-up (pytorch/pytorch#135712; measured here with gloo: a hang in
    ``connectFullMesh`` that the collective timeout does not bound). Each attempt therefore gets its
    own prefix, from ``TORCHELASTIC_RESTART_COUNT``, which one agent sets alike for all its workers.
    Across nodes the agents count restarts separately: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on
    the ``torchrun`` command gives every attempt a fresh store instead (see docs/distributed.md).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        return
    rank = int(os.environ["RANK"])
    restarts = int(os.environ.get(RESTART_COUNT_ENV, "0") or 0)
    if restarts and world != int(os.environ.get("LOCAL_WORLD_SIZE", world)):
        logging.getLogger("brisk").warning(
            "elastic restart %d of a multi-node job on torchrun's shared store: launch torchrun "
            "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so every attempt gets a fresh store",
            restarts,
        )
    agent_store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=False,
        timeout=timeout,
    )
    store = dist.PrefixStore(f"brisk/attempt_{restarts}", agent_store)
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world, timeout=timeout
    )


def collective_timeout() -> timedelta:
    """The timeout of every collective, from ``BRISK_DIST_TIMEOUT_S`` (seconds) or the default."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {TIMEOUT_ENV} must be a number of seconds, got '{raw}'"
        ) from None
    if seconds <= 0:
        raise ValueError(f"environment variable {TIMEOUT_ENV} must be positive, got '{raw}'")
    return timedelta(seconds=seconds)


def quiet_console() -> None:
    """Only warnings reach the terminal from ranks other than 0: N ranks would print every line N
    times.

    Their full log still goes to their own ``train_rank<N>.log`` (a file handler, left untouched).
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
            sys.stdout,
            sys.stderr,
        ):
            handler.setLevel(max(handler.level, logging.WARNING))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place and return it; unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank, so all ranks act on one decision; ``obj`` itself alone."""
    if is_distributed():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process).

    ``obj`` travels as ``torch.save`` bytes and is read back with ``weights_only=True``: pickling
    tensors straight through ``all_gather_object`` fails to unpickle CPU tensors in this torch
    version, and the bytes route only accepts the plain types a checkpoint may hold anyway.
    """
    if not is_distributed():
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    parts: list[bytes] = [b""] * dist.get_world_size()
    dist.all_gather_object(parts, buffer.getvalue())
    return [torch.load(io.BytesIO(part), weights_only=True) for part in parts]


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, so the next run in the same process can start a new one."""
    if is_distributed():
        dist.destroy_process_group()


def maybe_inject_fault(step: int, rank: int) -> None:
    """SIGKILL this process after ``step`` when ``BRISK_FAULT_AT_STEP`` asks for it (tests only).

    SIGKILL, not an exception: nothing gets to clean up, as when a node dies or the OOM killer
    strikes. ``BRISK_FAULT_SIGNAL=TERM`` sends SIGTERM instead, as a scheduler does before it kills
    a job.
    """
    fault_at = int(os.environ.get(FAULT_STEP_ENV, "0") or 0)
    if not fault_at or step != fault_at:
        return
    if rank != int(os.environ.get(FAULT_RANK_ENV, "0") or 0):
        return
    if int(os.environ.get(RESTART_COUNT_ENV, "0") or 0) > 0:
        return
    signum = signal.Signals["SIG" + os.environ.get(FAULT_SIGNAL_ENV, "KILL").upper()]
    logging.getLogger("brisk").warning(
        "%s=%d: killing rank %d after step %d with %s",
        FAULT_STEP_ENV,
        fault_at,
        rank,
        step,
        signum.name,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signum)
