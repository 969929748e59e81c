"""``nip``: the NIP baseline of RPP -- iterative magnitude pruning with fine-tuning between the
increments, no regulariser.

Guo, Liu, Mungall, Lin, Wang, "Reweighted Proximal Pruning for Large-Scale Language
Representation" (2019, arXiv:1909.12486) compare RPP against "NIP" (new iterative pruning):
progressive pruning with retraining and no L1/L2 regulariser (/work/shared/METHODS.md 3.5). The
paper body could not be read, so the details are ours: magnitude criterion (``passes._masks``,
pruned weights never come back), ``steps`` increments of rising sparsity, equal
(``s * k / steps``) or cubic (Zhu & Gupta 2017, ``_schedule.cubic_sparsity``) in ``k``. The
``[start, end]`` window of the training budget is cut into ``steps`` equal shares; increment ``k``
is applied at the start of share ``k`` and followed by fine-tuning with the mask fixed, and the
budget after ``end`` fine-tunes at the target. Like RPP here (and unlike the paper, which prunes
during pre-training) it runs on the task: its input is the fine-tuned model.
``granularity=structured`` (our extension) drops whole heads and FFN neurons ranked by weight norm.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH
from compressor.errors import check_choice, check_range
from compressor.pass_base import FINETUNED, Pass, PassResult, option
from passes._checkpoint import Resumable
from passes._method_common import (KDOptions, StructureOption, attach_masks, check_kd, check_options,
                                   check_structure, finish, kd_info, make_kd, reevaluate, with_structure)
from passes._options import TrainingOptions

log = logging.getLogger(__name__)


def increment_sparsities(target: float, steps: int, schedule: str) -> list[float]:
    """Sparsity after each of ``steps`` increments: ``target * k / steps`` ("equal") or the cubic
    ramp ``target * (1 - (1 - k / steps)^3)`` ("cubic"); monotone, the last one is ``target``."""
    from passes._schedule import cubic_sparsity
    if schedule == "equal":
        return [target * k / steps for k in range(1, steps + 1)]
    return [cubic_sparsity(k, steps, 0.0, target) for k in range(1, steps + 1)]


def restart_fractions(steps: int, start: float, end: float) -> tuple[float, ...]:
    """Where the LR schedule starts over with ``lr_restarts``: each increment (the start of each
    share of the ``[start, end]`` window) and ``end`` (the fine-tuning at the target), as fractions
    of training; 0 and 1 are left out (training starts and ends there anyway)."""
    points = [start + k * (end - start) / steps for k in range(steps)] + [end]
    return tuple(f for f in dict.fromkeys(points) if 0 < f < 1)


def increment_steps(total: int, steps: int, start: float, end: float) -> list[int]:
    """Optimizer step after which increment ``k = 0..steps-1`` is applied (0: before training):
    the start of share ``k`` of the ``[start, end]`` window of ``total`` steps."""
    t0, t1 = start * total, end * total
    return [int(math.floor(t0 + k * (t1 - t0) / steps + 0.5)) for k in range(steps)]


@dataclass(frozen=True)
class Nip(KDOptions, StructureOption, TrainingOptions, Pass):
    """Prune the fine-tuned model to ``sparsity`` in ``steps`` magnitude increments, fine-tuning
    with the mask fixed after each (see the module docstring). Zeros are baked in at the end."""

    name: ClassVar[str] = "nip"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = FINETUNED
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    sparsity: float = option(0.9, "fraction of encoder Linear weights to zero, in [0, 1)")
    steps: int = option(4, "pruning increments up to the target")
    schedule: str = option("cubic", "sparsity of increment k: cubic ramp or equal steps",
                           choices=("cubic", "equal"))
    granularity: str = option("weight", "single weights or whole heads/FFN neurons",
                              choices=("weight", "structured"))
    scope: str = option("layer", "layer: every Linear (structured: every layer) keeps its share; "
                        "global: one ranking across all Linears (uneven; starves small-RMS matrices)",
                        choices=("global", "layer"))
    start: float = option(0.0, "fraction of training where the first increment is applied")
    end: float = option(1.0, "fraction of training split into `steps` shares (after it: fine-tune)")
    epochs: int = option(3, "training epochs (the whole budget)")
    lr_restarts: bool = option(False, "re-warm the LR at each increment and at `end`, decaying within each "
                                      "share (oBERT's schedule around pruning steps)")

    def __post_init__(self):
        check_options(self)
        check_kd(self)
        check_structure(self)
        check_range("nip.steps", self.steps, 1, 1000)
        check_choice("nip.schedule", self.schedule, ("cubic", "equal"))
        check_range("nip.start", self.start, 0.0, 1.0, hi_open=True)
        check_range("nip.end", self.end, self.start, 1.0, lo_open=True)

    def run(self, artifact, ctx) -> PassResult:
        from passes._train import require_task, train

        model = copy.deepcopy(artifact.model)  # the input is the teacher: never mutate it
        task = require_task(ctx, self.name, model, self.max_train)
        masks = attach_masks(self, model)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        inc = Increments(self, masks)
        if self.start == 0.0:  # increment 0 before the first step
            inc.prune(0, 0)
            inc.state["k"] = 1
        kd = make_kd(self, ctx, task)
        res = train(model, artifact.tokenizer, task, ctx, **self.train_kwargs(),
                    loss_fn=kd, forward_kwargs=kd.forward_kwargs if kd else None,
                    after_step=inc.after_step, best_eligible=lambda e: inc.state["k"] >= self.steps,
                    lr_restarts=restart_fractions(self.steps, self.start, self.end) if self.lr_restarts else (),
                    desc=self.name, method_state=inc)
        if inc.state["k"] < self.steps:  # defensive: every increment falls within training
            for k in range(inc.state["k"], self.steps):
                inc.prune(k, res.steps)
            reevaluate(res, model, artifact.tokenizer, task, self.max_length)
        return finish(self, artifact, model, masks, res, ctx,
                      {"increments": inc.history, "schedule": self.schedule, **kd_info(kd)})


class Increments(Resumable):
    """NIP's pruning increments on ``masks`` for pass ``p``: :meth:`prune` applies increment ``k``,
    :meth:`after_step` (the training loop's hook) every increment whose step has come. ``state``
    (the increments' steps, the next one) and ``history`` are what a checkpoint saves."""

    resumable = ("state", "history")

    def __init__(self, p: Nip, masks):
        self.p, self.masks = p, masks
        self.targets = increment_sparsities(p.sparsity, p.steps, p.schedule)
        self.state = {"at": None, "k": 0}
        self.history: list[dict] = []

    def prune(self, k: int, step: int) -> None:
        p, masks = self.p, self.masks
        s, last = self.targets[k], k == len(self.targets) - 1
        if p.granularity == "structured":
            heads, neurons = masks.structured_magnitude_scores()
            masks.apply_structured(heads, neurons, s, p.scope, fill=last)
        else:
            masks.apply_magnitude(s, p.scope)
        self.history.append({"step": step, "target": s, "sparsity": masks.sparsity_report()["overall"]})

    def after_step(self, step: int, total: int) -> None:
        p, state = self.p, self.state
        if state["at"] is None:
            state["at"] = increment_steps(total, p.steps, p.start, p.end)
        while state["k"] < p.steps and step >= state["at"][state["k"]]:
            self.prune(state["k"], step)
            state["k"] += 1
