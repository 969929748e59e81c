"""The run context handed to every pass: where to write, the seed, the device and the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    """Shared state of one run.

    - ``workdir``: the run's output folder; the pipeline sets ``step_dir`` (``workdir/NN-name``)
      before each step, and a pass writes its outputs there.
    - ``data``: a :class:`compressor.data.TaskData` (train/eval examples, labels).
    - ``teacher``: the dense fine-tuned model (a TorchModel), set by ``finetune`` or ``--teacher``.
    - ``pretrained``: the model as loaded, before any pass (CAP's and SparseBERT's student start).
    - ``progress``: show progress bars (off when stderr is not a terminal or ``--quiet``).
    - ``state``: free-form values passes hand to later passes.
    - ``resume``: continue finished steps and training checkpoints of an earlier run in
      ``workdir`` (:mod:`compressor.resume`); ``checkpoint_every``: optimizer steps between
      training checkpoints (0 = none); ``num_processes``: data-parallel training processes.
    """

    workdir: Path
    seed: int = 0
    device: str = "cpu"
    data: Any = None
    teacher: Any = None
    pretrained: Any = None
    max_length: int = 128
    progress: bool = True
    step_dir: Path | None = None
    state: dict = field(default_factory=dict)
    resume: bool = False
    checkpoint_every: int = 200
    num_processes: int = 1

    def __post_init__(self):
        self.workdir = Path(self.workdir)

    def out_dir(self) -> Path:
        """The current step's output folder (created), or the workdir outside a pipeline."""
        folder = self.step_dir or self.workdir
        folder.mkdir(parents=True, exist_ok=True)
        return folder
