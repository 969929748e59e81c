"""``finetune``: dense task fine-tuning; its result is the teacher later methods distil from."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import check_range
from compressor.pass_base import Pass, PassResult, option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finetune(Pass):
    """Fine-tune every weight on the task (AdamW, linear warm-up/decay, the best epoch on the dev
    split kept; without a dev split the last).

    Trains a copy of the input model, sets ``ctx.teacher`` to a frozen copy of the result (eval
    mode), saves the model to ``<step dir>/model`` and reports accuracy per epoch, the best
    accuracy and the training time.
    """

    name: ClassVar[str] = "finetune"
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    epochs: int = option(2, "training epochs (raised to reach min_steps on small tasks)")
    min_steps: int = option(0, "at least this many optimizer steps (0: exactly `epochs`; compress run: 500)")
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    batch_size: int = option(32, "training batch size")
    warmup: float = option(0.1, "fraction of steps for linear LR warm-up")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases/LayerNorm)")
    max_length: int = option(64, "truncate inputs to this many tokens")
    max_train: int = option(0, "use at most this many training examples (0 = all)")

    def __post_init__(self):
        check_range("finetune.epochs", self.epochs, 1, 1000)
        check_range("finetune.min_steps", self.min_steps, 0, 10**7)
        check_range("finetune.lr", self.lr, 0.0, 1.0, lo_open=True)
        check_range("finetune.batch_size", self.batch_size, 1, 65536)
        check_range("finetune.warmup", self.warmup, 0.0, 1.0)
        check_range("finetune.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("finetune.max_length", self.max_length, 8, 4096)
        check_range("finetune.max_train", self.max_train, 0, 10**9)

    def run(self, artifact, ctx) -> PassResult:
        from passes._schedule import epochs_for
        from passes._train import require_task, train

        task = require_task(ctx, self.name, artifact.model, self.max_train)
        model = copy.deepcopy(artifact.model)  # the input (often ctx.pretrained) stays untouched
        epochs = epochs_for(len(task.train), self.batch_size, self.epochs, self.min_steps)
        res = train(model, artifact.tokenizer, task, ctx, epochs=epochs, lr=self.lr,
                    batch_size=self.batch_size, warmup_ratio=self.warmup,
                    weight_decay=self.weight_decay, max_length=self.max_length, desc=self.name)
        info = {**artifact.info, "finetuned": {"task": task.name, "accuracy": res.accuracy, "epochs": epochs}}
        out = TorchModel(model, artifact.tokenizer, info)
        ctx.teacher = TorchModel(copy.deepcopy(model).eval(), artifact.tokenizer, dict(info))
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
        })
