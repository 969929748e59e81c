"""``compress run`` as the ranks of ``torchrun`` / ``accelerate launch``.

Under a launcher every rank runs the same command. Rank 0 (the leader) runs the job as one
process would and alone writes the output folder: steps, checkpoints, the deployment, the
profile and the report. Every other rank (a follower) takes part in the training passes
(data-parallel: Accelerate splits each batch between the ranks) and writes its own step outputs
to a scratch folder that is removed at the end. After each pipeline step the follower waits for
the leader and continues from the leader's saved output, so every decision a pass makes (the
fisher structure, a mask, a pruned vocabulary) is the leader's, and on ``--resume`` it skips
exactly the steps the leader skips. Training checkpoints are read from the leader's folder too.
The output folder must therefore be on a filesystem every rank sees (one machine, or a shared
filesystem across nodes).

The process group is started once (:func:`start`, Accelerate's ``PartialState``: gloo on CPU,
NCCL on GPUs) before the first step; the training loop's Accelerator joins it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Processes in the launch (``WORLD_SIZE``; 1 outside a launcher)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's rank (``RANK``; 0 outside a launcher)."""
    return _env_int("RANK", 0)


def launched() -> bool:
    """Whether this process is one rank of several (``torchrun``, ``accelerate launch``)."""
    return world_size() > 1


def is_follower() -> bool:
    """A rank other than 0 under a launcher."""
    return launched() and rank() != 0


def device() -> str:
    """The training device of a rank: ``cuda`` when the launcher gives GPUs (and Accelerate was not
    told to use the CPU), else ``cpu``."""
    import torch
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def start(on: str) -> None:
    """Join the launch's process group (a no-op outside a launcher or when already joined)."""
    if not launched():
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return
    from accelerate import PartialState
    state = PartialState(cpu=on == "cpu")
    log.info("rank %d of %d (%s, %s)", rank(), world_size(), state.distributed_type, state.device)


def agree(value):
    """The leader's ``value`` on every rank (``value`` itself outside a launcher)."""
    if not launched():
        return value
    import torch.distributed as dist
    start(device())
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a launcher)."""
    if launched():
        import torch.distributed as dist
        start(device())
        dist.barrier()


__all__ = ["world_size", "rank", "launched", "is_follower", "device", "start", "agree", "barrier"]
