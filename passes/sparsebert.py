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
  counts differ (TinyBERT). Losses live in :mod:`passes._distill`.
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

log = logging.getLogger(__name__)

LOSS_TERMS = ("pred", "hidden", "attn", "ce")


def mask_update_steps(total: int, start: float, end: float, updates: int,
                      update_every: int = 0) -> tuple[int, int, int]:
    """``(t0, F, K)``: the ramp starts after step ``t0 = round(start * total)``; mask update
    ``k = 1..K`` happens at step ``t0 + k * F``. ``F = update_every`` or ``round(ramp / updates)``
    (the authors: ``round(steps / 100)``), ``K = ramp // F`` (at least 1)."""
    t0, t1 = int(round(start * total)), int(round(end * total))
    ramp = max(1, t1 - t0)
    every = update_every or max(1, int(round(ramp / updates)))
    return t0, every, max(1, ramp // every)


@dataclass(frozen=True)
class SparseBert(StructureOption, Pass):
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
    weight_decay: float = option(0.01, "weight decay (not on biases/LayerNorm)")
    batch_size: int = option(32, "training batch size")
    max_length: int = option(64, "truncate inputs to this many tokens")
    max_train: int = option(0, "use at most this many training examples (0 = all)")
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

    def run(self, artifact, ctx) -> PassResult:
        import torch

        from passes import _distill
        from passes._bert_layout import encoder_layers
        from passes._checkpoint import MethodState
        from passes._schedule import cubic_sparsity
        from passes._train import model_inputs, require_task, train

        if ctx.teacher is None:
            raise ConfigError(f"method {self.name} needs a fine-tuned teacher: run finetune first "
                              "or pass --teacher PATH")
        structured = self.granularity == "structured"
        start = ctx.teacher.model if self.init == "finetuned" else artifact.model
        model = copy.deepcopy(start)  # the student starts from the artifact (or teacher), untouched
        teacher = ctx.teacher.model.eval()
        task = require_task(ctx, self.name, model, self.max_train)
        _check_pair(model, teacher, task.num_labels)
        masks = attach_masks(self, model)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        hmap = _distill.layer_map(len(encoder_layers(model)), len(encoder_layers(teacher)))
        state = {"s": 0.0, "updates": 0, "heads": None, "skipped": None, "t0": 0, "every": 1, "K": 1}
        sums = {k: 0.0 for k in LOSS_TERMS}
        n_steps = [0]

        def prune_to(s: float) -> None:
            if structured:
                head_scores, neuron_scores = masks.structured_magnitude_scores()
                keep_h, _ = masks.apply_structured(head_scores, neuron_scores, s, "global",
                                                   fill=s >= self.sparsity)
                state["heads"] = [torch.nonzero(row).reshape(-1).tolist() for row in keep_h]
            else:
                masks.apply_magnitude(s, "layer")  # per matrix, as the authors
            state["s"], state["updates"] = s, state["updates"] + 1

        def after_step(step: int, total: int) -> None:
            if step == 1:
                state["t0"], state["every"], state["K"] = mask_update_steps(
                    total, self.start, self.end, self.updates, self.update_every)
            t = step - state["t0"]
            if t > 0 and t % state["every"] == 0 and t // state["every"] <= state["K"]:
                s = cubic_sparsity(t // state["every"], state["K"], 0.0, self.sparsity)
                if s > state["s"]:
                    prune_to(s)

        def loss_fn(student, batch, outputs):
            inputs, mask = model_inputs(batch), batch["attention_mask"]
            if next(teacher.parameters()).device != mask.device:
                teacher.to(mask.device)
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=True)
            terms = {"pred": _distill.soft_cross_entropy(outputs.logits, t_out.logits, self.temperature),
                     "hidden": _distill.hidden_mse(outputs.hidden_states, t_out.hidden_states, hmap),
                     "ce": outputs.loss if self.w_ce else None}
            if self.w_attn:
                terms["attn"], skipped = _distill.attention_mse(
                    s_cap.scores(mask), t_cap.scores(mask), mask, hmap, state["heads"])
                if skipped and skipped != state["skipped"]:
                    log.info("sparsebert: attention loss skips student layers %s (no heads left, "
                             "or head count differs from the teacher's)", skipped)
                state["skipped"] = skipped
            weights = {"pred": self.w_pred, "hidden": self.w_hidden, "attn": self.w_attn, "ce": self.w_ce}
            loss = outputs.logits.new_zeros(())
            for key, term in terms.items():
                if term is not None and weights[key]:
                    loss = loss + weights[key] * term
                    sums[key] = sums[key] + term.detach()  # no per-step device sync
            n_steps[0] += 1
            return loss

        with _distill.ScoreCapture(model) as s_cap, _distill.ScoreCapture(teacher) as t_cap:
            res = train(model, artifact.tokenizer, task, ctx, epochs=self.epochs, lr=self.lr,
                        batch_size=self.batch_size, max_length=self.max_length,
                        warmup_ratio=0.0 if self.constant_lr else self.warmup,
                        lr_schedule="constant" if self.constant_lr else "linear",
                        weight_decay=self.weight_decay, loss_fn=loss_fn, after_step=after_step,
                        forward_kwargs={"output_hidden_states": True}, keep_best=False,
                        desc=self.name, method_state=MethodState(state=state, sums=sums, n_steps=n_steps))
        accuracy = res.accuracy
        if state["s"] < self.sparsity:  # the ramp ended before its last update (end < 1 rounding)
            prune_to(self.sparsity)
            if task.eval:
                from passes._train import evaluate
                accuracy = evaluate(model, artifact.tokenizer, task.eval, self.max_length)
        return self._finish(artifact, ctx, model, masks, res, accuracy, state, sums, n_steps[0], hmap)

    def _finish(self, artifact, ctx, model, masks, res, accuracy, state, sums, n_steps,
                hmap) -> PassResult:
        """Bake the zeros in, save the model and the sparsity report, collect the metrics."""
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
            "loss_terms_mean": {k: float(v) / max(1, n_steps) for k, v in sums.items()},
            "mask_updates": state["updates"],
            "update_every": state["every"],
            "layer_map": hmap,
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
