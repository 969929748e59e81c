"""The run context handed to every pass: where to write, the seed, the device and the data, and
the small hook through which training talks to the step it runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
"""The folder of a step's training checkpoints: ``<step dir>/checkpoints/train-<i>``."""


@dataclass
class StepTraining:
    """What a training loop needs from the pipeline step it runs in, and what it tells it.

    The pipeline's step journal (:mod:`compressor.resume`) starts a fresh one before each step and
    takes its log when the step finishes; the training loop (``passes._train``) only asks it for
    the next checkpoint folder and notes what each call did. Neither side sees the other's code.
    """

    step_dir: Path
    calls: int = 0
    log: list[dict] = field(default_factory=list)

    @property
    def checkpoints(self) -> Path:
        """The step's checkpoint folder (all training calls of the step)."""
        return self.step_dir / CHECKPOINTS

    def next_checkpoint_dir(self) -> Path:
        """The folder of the next training call of this step: ``checkpoints/train-<i>``, counted
        on every call, so stage i of a pass that trains in stages keeps its folder on resume."""
        self.calls += 1
        return self.checkpoints / f"train-{self.calls}"

    def note(self, info: dict) -> None:
        """Record what one training call did (world size, steps, resumed step)."""
        self.log.append(dict(info))

    def take_log(self) -> list[dict]:
        """The notes so far, emptied."""
        out, self.log = self.log, []
        return out


@dataclass
class RunContext:
    """Shared state of one run.

    - ``workdir``: the run's output folder; the pipeline sets ``step_dir`` (``workdir/NN-name``)
      before each step, and a pass writes its outputs there.
    - ``data``: a :class:`compressor.data.TaskData` (train/eval examples, labels).
    - ``teacher``: the dense fine-tuned model (a TorchModel): ``--teacher``, or the teacher a step
      returned (``PassResult.teacher``, ``finetune``'s), set by the pipeline.
    - ``pretrained``: the model as loaded, before any pass (CAP's and SparseBERT's student start).
    - ``progress``: show progress bars (off when stderr is not a terminal or ``--quiet``).
    - ``state``: free-form values passes hand to later passes.
    - ``resume``: continue finished steps and training checkpoints of an earlier run in
      ``workdir`` (:mod:`compressor.resume`); ``checkpoint_every``: optimizer steps between
      training checkpoints (0 = none); ``num_processes``: data-parallel training processes.
    - ``leader_workdir``: on a follower rank under ``torchrun``/``accelerate launch``, rank 0's
      output folder (whose step outputs and checkpoints this rank reads; :mod:`compressor.ranks`).
    - ``run_dir``: the run's own folder while ``workdir`` is a sub-run's (a ``--max-drop``
      candidate, :mod:`compressor.budget`); shared caches live there (:meth:`shared_dir`).
    - ``training``: the :class:`StepTraining` hook of the current step (None outside a step).
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
    leader_workdir: Path | None = None
    run_dir: Path | None = None
    _training: StepTraining | None = field(default=None, repr=False, compare=False)
    allow_collapse: bool = False  # a training pass whose dev metric collapses trains on (passes._train)

    def __post_init__(self):
        self.workdir = Path(self.workdir)

    def shared_dir(self, name: str) -> Path:
        """A folder the whole run shares (e.g. ``latency-tables``): under ``run_dir`` if set, else
        under ``workdir``."""
        return Path(self.run_dir or self.workdir) / name

    def out_dir(self) -> Path:
        """The current step's output folder (created), or the workdir outside a pipeline."""
        folder = self.step_dir or self.workdir
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def training(self) -> StepTraining | None:
        """The training hook of the current step: one per ``step_dir`` (a new one whenever the
        step folder changes), None outside a step."""
        if self.step_dir is None:
            return None
        step = Path(self.step_dir)
        if self.leader_workdir is not None:  # a follower rank resumes from the leader's checkpoints
            step = Path(self.leader_workdir) / step.name
        if self._training is None or self._training.step_dir != step:
            self._training = StepTraining(step)
        return self._training

    def start_step_training(self) -> StepTraining | None:
        """A fresh hook for the current step (its calls counted from 1 again)."""
        self._training = None
        return self.training
