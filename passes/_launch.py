"""Data-parallel CPU training on several processes for ``compress run --num-processes N``.

:func:`launch` forks ``N`` workers (``torch.multiprocessing.start_processes``, start method
``fork``, as Accelerate's ``debug_launcher`` does), gives each the ``torch.distributed``
environment of one rank (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``
on 127.0.0.1, gloo on the loopback interface) and a fresh Accelerate state, and runs the same
function in each. Forking means the training hooks (closures over the pass's state) need no
pickling; the caller collects the result from what rank 0 wrote (``passes._train`` uses the
finished checkpoint). Forking is for CPU workers only: a process that has initialised CUDA
cannot fork GPU workers.

Under an external launcher (``torchrun``, ``accelerate launch --multi_gpu``) ``compressor.ranks.launched``
is true and ``passes._train.train`` runs in the current process as one rank instead.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

ERROR_FILE = "error-rank{rank}.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, n: int, port: int, threads: int, fn: Callable, folder: str) -> None:
    import json

    import torch
    from accelerate.state import AcceleratorState

    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": n, "LOCAL_WORLD_SIZE": n, "NODE_RANK": 0,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": threads,
           "GLOO_SOCKET_IFNAME": "lo", "ACCELERATE_USE_CPU": "true"}
    os.environ.update({k: str(v) for k, v in env.items()})
    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's single-process state
    torch.set_num_threads(threads)
    if rank:
        logging.disable(logging.INFO)  # rank 0 logs for all
    try:
        fn()
    except Exception as exc:
        from compressor.errors import CompressorError
        if isinstance(exc, CompressorError):  # hand the user error to the parent, by type
            Path(folder, ERROR_FILE.format(rank=rank)).write_text(
                json.dumps({"type": type(exc).__name__, "message": str(exc)}))
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(n: int, fn: Callable[[], None], folder: Path) -> None:
    """Run ``fn()`` in ``n`` forked ranks and wait for all of them. ``folder`` (exists) receives
    a user error a rank raised, which is raised again here with its type; any other failure of a
    rank raises RuntimeError with its first line."""
    import torch.multiprocessing as mp

    from compressor import errors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    log.info("training on %d CPU processes (gloo, %d thread(s) each)", n, threads)
    try:
        mp.start_processes(_worker, args=(n, _free_port(), threads, fn, str(folder)), nprocs=n,
                           start_method="fork")
    except Exception as exc:
        import json
        for rank in range(n):
            path = folder / ERROR_FILE.format(rank=rank)
            if path.is_file():
                err = json.loads(path.read_text())
                path.unlink()
                cls = getattr(errors, err["type"], None)
                if not (isinstance(cls, type) and issubclass(cls, errors.CompressorError)):
                    cls = errors.CompressorError
                raise cls(err["message"]) from None
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise RuntimeError(f"training on {n} processes failed: {lines[-1] if lines else type(exc).__name__}") from exc
