"""``finetune``: dense task fine-tuning; its result is the teacher later methods distil from."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import check_range
from compressor.pass_base import Pass, PassResult, option
from passes._options import TrainingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finetune(TrainingOptions, Pass):
    """Fine-tune every weight on the task (AdamW, linear warm-up/decay, the best epoch on the dev
    split kept; without a dev split the last).

    Trains a copy of the input model, returns a frozen copy of the result (eval mode) as the
    run's teacher (``PassResult.teacher``; the pipeline makes it ``ctx.teacher``), saves the
    model to ``<step dir>/model`` and reports accuracy per epoch, the best accuracy and the
    training time.
    """

    name: ClassVar[str] = "finetune"
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    epochs: int = option(2, "training epochs (raised to reach min_steps on small tasks)")
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    min_steps: int = option(0, "at least this many optimizer steps (0: exactly `epochs`; compress run: 500)")

    def __post_init__(self):
        self.check_training()
        check_range("finetune.min_steps", self.min_steps, 0, 10**7)

    def run(self, artifact, ctx) -> PassResult:
        from passes._schedule import epochs_for
        from passes._train import require_task, train

        task = require_task(ctx, self.name, artifact.model, self.max_train)
        model = copy.deepcopy(artifact.model)  # the input (often ctx.pretrained) stays untouched
        epochs = epochs_for(len(task.train), self.batch_size, self.epochs, self.min_steps)
        res = train(model, artifact.tokenizer, task, ctx, **self.train_kwargs(epochs=epochs), desc=self.name)
        info = {**artifact.info, "finetuned": {"task": task.name, "accuracy": res.accuracy, "epochs": epochs}}
        out = TorchModel(model, artifact.tokenizer, info)
        teacher = TorchModel(copy.deepcopy(model).eval(), artifact.tokenizer, dict(info))
        out.save(ctx.out_dir() / "model")
        log.info("finetune: accuracy %s after %d steps (%.1f s)", res.accuracy, res.steps, res.seconds)
        return PassResult(out, True, {
            "accuracy": res.accuracy,
            "best_accuracy": res.best_accuracy,
            "best_epoch": res.best_epoch,
            "accuracy_per_epoch": [e["accuracy"] for e in res.epochs],
            "dev_accuracy_per_epoch": [e.get("dev_accuracy") for e in res.epochs],
            "dev_size": len(getattr(task, "dev", None) or []),
            "loss_per_epoch": [e["loss"] for e in res.epochs],
            "train_examples": len(task.train),
            "epochs": epochs, "steps": res.steps,
            "train_seconds": res.seconds,
        }, teacher=teacher)
