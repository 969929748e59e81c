"""``distill``: recovery training of a compressed model by distillation from the dense teacher.

After structured pruning (``strip``, ``fisher``), layer dropping or any pass that leaves the model
smaller but unadapted, ``distill`` trains every remaining weight on the task with the loss of
:class:`passes._distill.LogitKD` (logit KD from ``ctx.teacher``, hardness 1 and T = 2 by default,
optional hidden-state MSE): the oBERT / SparseML recovery recipe (Kurtic et al. 2022,
arXiv:2203.07259) and the fine-tuning stage of Kwon et al. 2022 (arXiv:2204.09656, Sec. 5, where
retraining after the post-training pruning is an option). Weights that are exactly zero stay zero
(their pattern is fixed by a mask), so an unstructured model keeps its sparsity.

Small tasks get enough optimizer steps (``min_steps``: more epochs when the data is small), and
may add the teacher's soft labels on perturbed copies of the training sentences or on extra
unlabeled text (``augment``, ``unlabeled``; TinyBERT's data augmentation, Jiao et al. 2020,
arXiv:1909.10351, Sec. 3.1, in a simpler form: word dropout, swaps and [MASK] replacement instead
of a masked-LM and GloVe). The epoch is chosen on the dev split, never on eval.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.config import MIN_STEPS
from compressor.errors import ConfigError, check_range
from compressor.pass_base import Pass, PassResult, option
from passes._method_common import KDOptions, check_kd, kd_info, make_kd
from passes._options import TrainingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distill(KDOptions, TrainingOptions, Pass):
    """Train the compressed model to match the fine-tuned teacher (see the module docstring)."""

    name: ClassVar[str] = "distill"
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH
    run_order: ClassVar[int] = 30

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--recover``: the run's epochs, or at least ``MIN_STEPS`` optimizer steps
        (``--recover-steps N``: at least N, with the run's epochs too). An embedding
        model also distils every hidden state (``kd_hidden=1``): from the same ×2-pruned MiniLM,
        dev fidelity 0.8459 against 0.8397 with the embedding loss alone at equal steps, 14% more
        time (benchmarks/recovery.py; RESULTS.md). So does a model narrowed by
        ``--hidden-width`` (compared with the teacher's states at the units it kept)."""
        if not cfg.recover:
            return None
        steps = getattr(cfg, "recover_steps", 0)
        budget = (f"epochs={cfg.epochs},min_steps={steps}" if cfg.epochs
                  else f"min_steps={steps or MIN_STEPS}")
        narrowed = getattr(cfg, "hidden_width", 0)  # --hidden-width: the teacher's kept units (CoFi's layer KD)
        hidden = ",kd_hidden=1.0" if getattr(cfg, "task_type", None) == "embeddings" or narrowed else ""
        return f"distill{{{budget},max_length={cfg.max_length}{hidden}}}"

    epochs: int = option(2, "training epochs (raised to reach min_steps on small tasks)")
    min_steps: int = option(500, "at least this many optimizer steps (0: exactly `epochs`)")
    lr: float = option(5e-5, "peak learning rate (AdamW, linear warm-up and decay)")
    augment: int = option(0, "perturbed copies of each training sentence, soft-labelled by the teacher")
    unlabeled: str = option("", "a file of extra in-domain texts, soft-labelled by the teacher")
    keep_zeros: bool = option(True, "weights that are exactly zero stay zero (sparse models)")

    def __post_init__(self):
        self.check_training()
        check_range("distill.min_steps", self.min_steps, 0, 10**7)
        check_range("distill.augment", self.augment, 0, 100)
        check_kd(self)
        if not self.kd:
            raise ConfigError("distill.kd=false leaves nothing to distil: use finetune to train on labels")

    def run(self, artifact, ctx) -> PassResult:
        from passes._train import require_task

        task = require_task(ctx, self.name, artifact.model, self.max_train)
        if ctx.teacher is None:
            raise ConfigError("pass distill needs a fine-tuned teacher: run finetune first or pass --teacher PATH")
        extra = self._extra_texts(task, artifact.tokenizer, ctx.seed)
        if extra and getattr(task, "embeddings", False):  # an embedding task's labels are the teacher's embeddings
            from compressor.embedder import labelled_by
            extra = labelled_by(ctx.teacher, extra, self.max_length)
        if extra and getattr(task, "multi_label", False):  # no label set: NaN targets, only the KD terms see them
            from compressor.metrics import MultiHot
            extra = [dataclasses.replace(e, label=MultiHot((float("nan"),) * task.num_labels)) for e in extra]
        train_task = dataclasses.replace(task, train=list(task.train) + extra) if extra else task
        kd = make_kd(self, ctx, train_task)
        model = copy.deepcopy(artifact.model)
        zeros = _freeze_zeros(model) if self.keep_zeros else None
        res, epochs = self._train(model, artifact.tokenizer, train_task, ctx, kd)
        if zeros is not None:
            zeros.bake()
        out = TorchModel(model, artifact.tokenizer, {**artifact.info, "distilled": self.to_spec()})
        out.save(ctx.out_dir() / "model")  # a stripped model's config keeps its per-layer sizes
        return PassResult(out, True, self._metrics(res, epochs, task, extra, zeros, kd))

    def _train(self, model, tokenizer, train_task, ctx, kd):
        """Train on the task (and the extra texts) with the KD loss; ``(result, epochs)``."""
        from passes._schedule import epochs_for
        from passes._train import train

        epochs = epochs_for(len(train_task.train), self.batch_size, self.epochs, self.min_steps)
        res = train(model, tokenizer, train_task, ctx, **self.train_kwargs(epochs=epochs), loss_fn=kd,
                    forward_kwargs=kd.forward_kwargs, desc=self.name)
        return res, epochs

    def _metrics(self, res, epochs, task, extra, zeros, kd) -> dict:
        return {
            "accuracy": res.accuracy, "dev_accuracy": res.best_accuracy, "epoch_kept": res.restored_epoch or epochs,
            "accuracy_per_epoch": [e["accuracy"] for e in res.epochs],
            "dev_accuracy_per_epoch": [e.get("dev_accuracy") for e in res.epochs],
            "epochs": epochs, "steps": res.steps, "train_examples": len(task.train),
            "augmented_examples": len(extra), "train_seconds": res.seconds,
            "zero_weights_kept": zeros.sparsity_report()["overall"] if zeros is not None else None,
            **kd_info(kd)}

    def _extra_texts(self, task, tokenizer, seed: int) -> list:
        """Perturbed copies of the training sentences and the user's unlabeled texts (label -1)."""
        if not (self.augment or self.unlabeled):
            return []
        if getattr(task, "regression", False) or getattr(task, "tagging", False):  # label -1: a score / no words
            kind = "regression" if getattr(task, "regression", False) else "token-classification"
            raise ConfigError(f"distill.{'augment' if self.augment else 'unlabeled'} is not available for a "
                              f"{kind} task: drop it (the teacher distils on the training texts)")
        if getattr(task, "question_answering", False):  # a perturbed question has no answer span to keep
            raise ConfigError(f"distill.{'augment' if self.augment else 'unlabeled'} is not available for a "
                              "question-answering task: drop it (the teacher distils on the training questions)")
        from passes.distill.augment import augment, read_unlabeled
        extra = augment(task.train, self.augment, seed=seed, mask_token=tokenizer.mask_token) if self.augment else []
        if self.unlabeled:
            extra += read_unlabeled(self.unlabeled, exclude=list(task.eval) + list(task.dev))
        log.info("distill: %d extra texts soft-labelled by the teacher", len(extra))
        return extra


def _freeze_zeros(model):
    """A MaskSet fixing the exact zeros of the encoder Linears (None when there are too few to
    matter: fewer than 1% of the weights)."""
    from passes._masks import MaskSet, encoder_linears
    linears = encoder_linears(model)
    total = sum(m.weight.numel() for m in linears.values())
    zero = sum(int((m.weight == 0).sum()) for m in linears.values())
    if not total or zero < 0.01 * total:
        return None
    masks = MaskSet.attach(model, linears)
    for name, module in linears.items():
        masks.set_mask(name, (masks.weight(name) != 0).to(module.weight.dtype))
    return masks
