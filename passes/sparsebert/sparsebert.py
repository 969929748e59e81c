"""``sparsebert``: knowledge-aware pruning -- prune the pre-trained encoder while distilling it
from the fine-tuned teacher on the task data.

Xu, Yen, Zhao, Xiao, "Rethinking Network Pruning -- under the Pre-train and Fine-tune
Paradigm", NAACL 2021, arXiv:2104.08682 (see /work/shared/METHODS.md section 2). Settled from
the authors' code (dongkuanx27/SparseBERT, ``main_functions/task_distill_prune_simultaneously.py``
at its latest version and ``transformer/modeling_pruning.py``):

- Student = the input artifact (the pre-trained model with a new classifier), teacher =
  ``ctx.teacher`` (fine-tuned, frozen) (2.1). The authors leave the teacher's dropout on (it is
  never put in eval mode); we run it in eval mode, deterministic targets.
- Loss (2.2), all terms from the first step: ``w_attn * sum_l MSE(A_s^l, A_t^l)`` on pre-softmax
  scores with padded keys zeroed + ``w_hidden * sum_{j=0..L} MSE(H_s^j, H_t^j)`` (embedding output
  included, no projection) + ``w_pred * soft CE(z_s/T, z_t/T)`` (mean over batch and classes, no
  T^2) + optional ``w_ce * CE(z_s, y)`` (0 as the authors). Uniform layer mapping when the layer
  counts differ (TinyBERT). Losses live in :mod:`passes._distill`, the training hooks that
  apply them and the mask schedule in :mod:`passes.sparsebert.training`.
- Pruning (2.4): magnitude per matrix on the six encoder Linears, recomputed on the masked
  weights (pruned weights never return), cubic schedule from 0 to the target over the whole run:
  ``F = round(steps / 100)``, ``K = steps // F``, update ``k`` at step ``k * F`` sets
  ``s = s_f (1 - (1 - k/K)^3)``. Masks are parametrizations (``passes._masks``), so masked weights
  are 0 in every forward, as the authors' re-zeroing after every optimizer step. Pruning runs in
  parallel with distillation, never prune-then-fine-tune.
- Optimisation (2.5): lr 3e-5 constant (``constant_lr``), weight decay 0.01, batch 32. We use
  AdamW with bias correction and global grad-norm clipping (the authors: BertAdam without bias
  correction, per-parameter clipping). The final model is the last step's (no best-epoch pick).

Our deviations besides those: the update at ``k = K`` is allowed on the last step, so the target
is reached exactly (the authors' strict ``t < steps`` can stop one update short); HF's
classification head (pooler -> dropout -> classifier) instead of TinyBERT's
``classifier(ReLU(pooler))``; no TinyBERT data augmentation (2.3). ``granularity=structured``
(not in the paper) prunes whole heads and FFN neurons, ranked globally by L2 norm, on the same
schedule and with the same distillation; the attention term then compares only kept heads.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH
from compressor.errors import ConfigError, check_range
from compressor.pass_base import PRETRAINED, Pass, PassResult, option
from passes._method_common import (StructureOption, attach_masks, check_options, check_structure, save_pruned,
                                   with_structure)
from passes._options import TrainingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparseBert(StructureOption, TrainingOptions, Pass):
    """Prune the pre-trained student to ``sparsity`` while distilling it from ``ctx.teacher``.

    ``granularity=weight`` (the paper): per-matrix magnitude on single weights.
    ``structured``: whole attention heads and FFN neurons (global ranking, uneven per layer).
    The schedule spreads ``updates`` mask updates over the ``[start, end]`` window of training
    (or one every ``update_every`` steps). Zeros are baked into the saved model.
    """

    name: ClassVar[str] = "sparsebert"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = PRETRAINED
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    sparsity: float = option(0.95, "fraction of encoder Linear weights to zero (paper: 0.95, x20)")
    granularity: str = option("weight", "single weights (per matrix) or whole heads/FFN neurons",
                              choices=("weight", "structured"))
    epochs: int = option(3, "training epochs (pruning runs over all of them)")
    lr: float = option(3e-5, "learning rate (AdamW)")
    constant_lr: bool = option(True, "constant LR without warm-up (authors); false: linear warm-up/decay")
    warmup: float = option(0.1, "warm-up fraction of steps when constant_lr=false")
    init: str = option("pretrained", "student start: the pre-trained model (paper) or the fine-tuned teacher",
                       choices=("pretrained", "finetuned"))
    start: float = option(0.0, "fraction of training where the cubic ramp starts (authors: 0)")
    end: float = option(1.0, "fraction of training where it reaches the target (authors: 1)")
    updates: int = option(100, "mask updates over the ramp (authors: 100)")
    update_every: int = option(0, "optimizer steps between mask updates (0: from `updates`)")
    temperature: float = option(1.0, "softmax temperature of the prediction loss")
    w_pred: float = option(1.0, "weight of the soft-label prediction loss")
    w_hidden: float = option(1.0, "weight of the hidden-state MSE (embeddings + every layer)")
    w_attn: float = option(1.0, "weight of the pre-softmax attention-score MSE")
    w_ce: float = option(0.0, "weight of the hard-label cross-entropy (authors: 0)")

    def __post_init__(self):
        check_options(self, ("granularity", "init"))
        check_structure(self)
        check_range("sparsebert.start", self.start, 0.0, 1.0)
        check_range("sparsebert.end", self.end, self.start, 1.0)
        check_range("sparsebert.updates", self.updates, 1, 10**9)
        check_range("sparsebert.update_every", self.update_every, 0, 10**9)
        check_range("sparsebert.temperature", self.temperature, 0.0, 1000.0, lo_open=True)
        for key in ("w_pred", "w_hidden", "w_attn", "w_ce"):
            check_range(f"sparsebert.{key}", getattr(self, key), 0.0, 1e6)
        if not any((self.w_pred, self.w_hidden, self.w_attn, self.w_ce)):
            raise ConfigError("sparsebert weights w_pred, w_hidden, w_attn, w_ce are all 0: "
                              "give at least one a positive value")

    def train_kwargs(self, **overrides) -> dict:
        """``constant_lr``: the constant LR schedule without warm-up instead of the linear one."""
        return super().train_kwargs(**{"warmup_ratio": 0.0 if self.constant_lr else self.warmup,
                                       "lr_schedule": "constant" if self.constant_lr else "linear", **overrides})

    def run(self, artifact, ctx) -> PassResult:
        from passes._distill import layer_map
        from passes._train import require_task
        from passes.families import family_of
        from passes.sparsebert.training import TrainingHooks

        if ctx.teacher is None:
            raise ConfigError(f"method {self.name} needs a fine-tuned teacher: run finetune first "
                              "or pass --teacher PATH")
        start = ctx.teacher.model if self.init == "finetuned" else artifact.model
        model = copy.deepcopy(start)  # the student starts from the artifact (or teacher), untouched
        teacher = ctx.teacher.model.eval()
        task = require_task(ctx, self.name, model, self.max_train)
        _check_pair(model, teacher, task.num_labels)
        masks = attach_masks(self, model)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        hmap = layer_map(len(family_of(model).layers()), len(family_of(teacher).layers()))
        hooks = TrainingHooks(self, masks, teacher, hmap)
        res = self._train(model, artifact.tokenizer, task, ctx, hooks)
        accuracy = self._reach_target(model, artifact.tokenizer, task, hooks, res.accuracy)
        return self._finish(artifact, ctx, model, masks, res, accuracy, hooks)

    def _train(self, model, tokenizer, task, ctx, hooks):
        """Distil and prune together: one training run, the attention scores of both models captured."""
        from passes._distill import ScoreCapture
        from passes._train import train

        with ScoreCapture(model) as s_cap, ScoreCapture(hooks.teacher) as t_cap:
            hooks.captures = (s_cap, t_cap)
            return train(model, tokenizer, task, ctx, **self.train_kwargs(),
                         loss_fn=hooks.loss, after_step=hooks.after_step,
                         forward_kwargs={"output_hidden_states": True}, keep_best=False, desc=self.name,
                         method_state=hooks)

    def _reach_target(self, model, tokenizer, task, hooks, accuracy):
        """The last mask update when the ramp ended before it (end < 1 rounding), then re-evaluate."""
        if hooks.state["s"] < self.sparsity:
            hooks.prune_to(self.sparsity)
            if task.eval:
                from compressor.evaluation import evaluate
                accuracy = evaluate(model, tokenizer, task.eval, self.max_length)
        return accuracy

    def _finish(self, artifact, ctx, model, masks, res, accuracy, hooks) -> PassResult:
        """Bake the zeros in, save the model and the sparsity report, collect the metrics."""
        state, n_steps = hooks.state, hooks.n_steps[0]
        out, report, keep = save_pruned(self, artifact, model, masks, ctx)
        per_layer = dict(report["layers"])
        if keep is not None:
            per_layer = {str(l): {"sparsity": report["layers"][str(l)], "heads": int(keep[0][l].sum()),
                                  "neurons": int(keep[1][l].sum())} for l in range(keep[0].shape[0])}
        metrics = {
            "target_sparsity": self.sparsity,
            "sparsity": report["overall"],
            "per_layer": per_layer,
            "accuracy": accuracy,
            "accuracy_per_epoch": [e["accuracy"] for e in res.epochs],
            "loss_per_epoch": [e["loss"] for e in res.epochs],
            "loss_terms_mean": {k: float(v) / max(1, n_steps) for k, v in hooks.sums.items()},
            "mask_updates": state["updates"],
            "update_every": state["every"],
            "layer_map": hooks.hmap,
            "attention_layers_skipped": state["skipped"] or [],
            "steps": res.steps,
            "train_seconds": res.seconds,
        }
        log.info("sparsebert: sparsity %.4f (target %.4f) after %d mask updates, accuracy %s",
                 report["overall"], self.sparsity, state["updates"], accuracy)
        return PassResult(out, True, metrics)


def _check_pair(student, teacher, num_labels: int) -> None:
    """The teacher must match the student's hidden size (no projection) and the task's labels."""
    s_cfg, t_cfg = student.config, teacher.config
    if s_cfg.hidden_size != t_cfg.hidden_size:
        raise ConfigError(f"sparsebert teacher hidden size {t_cfg.hidden_size} differs from the "
                          f"student's {s_cfg.hidden_size}: both must match (no projection layer)")
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise ConfigError(f"sparsebert teacher vocab size {t_cfg.vocab_size} differs from the "
                          f"student's {s_cfg.vocab_size}: both must share one tokenizer")
    if t_cfg.num_labels != num_labels:
        raise ConfigError(f"sparsebert teacher has num_labels={t_cfg.num_labels} but the task has "
                          f"{num_labels} labels: fine-tune the teacher on this task")
