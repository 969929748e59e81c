"""``magnitude``: one-shot or gradual magnitude pruning with fine-tuning while pruning.

Gradual pruning follows Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
pruning for model compression" (2017, arXiv:1710.01878): the sparsity rises along the cubic
schedule of their eq. (1) (``_schedule.cubic_sparsity``) from 0 at the ``start`` fraction of
training to the target at ``end``, the mask is recomputed from the weight magnitudes every
``update_every`` optimizer steps (their Delta t), pruned weights never come back, and training
continues at the final sparsity so the network recovers (Sec. 3).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH
from compressor.errors import ConfigError, check_range
from compressor.pass_base import FINETUNED, Pass, PassResult, option
from passes._checkpoint import Resumable
from passes._method_common import (KDOptions, StructureOption, attach_masks, check_kd, check_options,
                                   check_structure, kd_info, with_structure,
                                   kept_units, make_kd, save_pruned)
from passes._options import LIMITS, TrainingOptions
from passes._schedule import cubic_sparsity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Magnitude(KDOptions, StructureOption, TrainingOptions, Pass):
    """Zero the smallest weights of the encoder Linears (six per layer) to a target sparsity.

    ``granularity=weight`` prunes single weights (``scope=layer``, the default: each Linear
    separately, as Sanh et al.'s and SparseML's magnitude baselines; ``global``: one ranking over
    all Linears, which in MiniLM leaves the FFN-output matrices 1.6-4.4% of their weights at 90%
    because query/key weights have ~2x their RMS); ``structured`` prunes whole attention heads
    and FFN neurons ranked by the L2 norm of their weights, so that ``sparsity`` of the encoder
    Linear weights is removed (``global``: uneven per layer; ``layer``: the same per layer).
    ``epochs=0`` with ``schedule=oneshot`` only prunes. Zeros are baked into the saved model.
    """

    name: ClassVar[str] = "magnitude"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = FINETUNED
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH
    training_limits: ClassVar[dict] = {**LIMITS, "epochs": (0, 1000)}

    sparsity: float = option(0.9, "fraction of encoder Linear weights to zero, in [0, 1)")
    schedule: str = option("cubic", "gradual cubic ramp or one-shot before training",
                           choices=("cubic", "oneshot"))
    scope: str = option("layer", "layer: every Linear (structured: every layer) keeps its share; "
                        "global: one ranking across all Linears (uneven; starves small-RMS matrices)",
                        choices=("global", "layer"))
    granularity: str = option("weight", "single weights or whole heads/FFN neurons",
                              choices=("weight", "structured"))
    epochs: int = option(2, "training epochs while/after pruning (0: prune only, oneshot)")
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    start: float = option(0.0, "fraction of training where the cubic ramp starts")
    end: float = option(0.7, "fraction of training where the cubic ramp reaches the target")
    update_every: int = option(10, "optimizer steps between mask updates during the ramp")
    include: str = option("encoder", "which Linears to prune", choices=("encoder", "encoder+classifier"))

    def __post_init__(self):
        check_options(self, ("schedule", "scope", "granularity", "include"))
        check_kd(self)
        check_structure(self)
        check_range("magnitude.start", self.start, 0.0, 1.0)
        check_range("magnitude.end", self.end, self.start, 1.0)
        check_range("magnitude.update_every", self.update_every, 1, 10**9)
        if self.schedule == "cubic" and self.epochs == 0:
            raise ConfigError("magnitude.schedule='cubic' needs epochs >= 1: use schedule=oneshot "
                              "to prune without training")
        if self.granularity == "structured" and self.include != "encoder":
            raise ConfigError(f"magnitude.include={self.include!r} is not allowed with "
                              "granularity=structured: choose include=encoder")

    def run(self, artifact, ctx) -> PassResult:
        from compressor.evaluation import evaluate
        from passes._train import require_task, train

        model = copy.deepcopy(artifact.model)  # never mutate the input (it may be the teacher)
        include = ("classifier",) if self.include == "encoder+classifier" else ()
        masks = attach_masks(self, model, include)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        ramp = Ramp(self, masks)
        if self.schedule == "oneshot":
            ramp.prune_to(self.sparsity)
        res, accuracy, task, kd = None, None, None, None
        if self.epochs > 0:
            task = require_task(ctx, self.name, model, self.max_train)
            kd = make_kd(self, ctx, task)
            res = train(model, artifact.tokenizer, task, ctx, **self.train_kwargs(),
                        loss_fn=kd, forward_kwargs=kd.forward_kwargs if kd else None,
                        after_step=ramp.after_step if self.schedule == "cubic" else None,
                        best_eligible=lambda epoch: ramp.state["s"] >= self.sparsity, desc=self.name,
                        method_state=ramp)
            accuracy = res.accuracy
        if ramp.state["s"] < self.sparsity:  # not reached during training (cannot happen with end <= 1)
            ramp.prune_to(self.sparsity)
        if res is None and ctx.data is not None and ctx.data.eval:
            accuracy = evaluate(model, artifact.tokenizer, ctx.data.eval, self.max_length)

        out, report, keep = save_pruned(self, artifact, model, masks, ctx, include)
        sparsity = out.info["sparsity"]  # of the encoder Linears; report["overall"] adds `include`
        metrics = {
            "target_sparsity": self.sparsity,
            "sparsity": sparsity,
            "layer_sparsity": report["layers"],  # encoder layers only, as sparsity_report
            "accuracy": accuracy,
            "accuracy_per_epoch": [e["accuracy"] for e in res.epochs] if res else [],
            "epoch_kept": (res.restored_epoch or self.epochs) if res else None,
            "mask_updates": ramp.state["updates"],
            "steps": res.steps if res else 0,
            "train_seconds": res.seconds if res else 0.0,
            **(kd_info(kd) if res else {}),
        }
        if include:
            metrics["pruned_sparsity"] = report["overall"]
        metrics.update(kept_units(keep))
        log.info("magnitude: sparsity %.4f (target %.4f), accuracy %s", sparsity, self.sparsity, accuracy)
        return PassResult(out, self.sparsity > 0 or res is not None, metrics)


class Ramp(Resumable):
    """Magnitude pruning of ``masks`` for pass ``p``: :meth:`prune_to` a sparsity, and the cubic
    ramp's mask updates as the training loop's :meth:`after_step`. ``state`` (the sparsity
    reached, the updates made) is what a checkpoint saves."""

    resumable = ("state",)

    def __init__(self, p: Magnitude, masks):
        self.p, self.masks = p, masks
        self.state = {"s": 0.0, "updates": 0}

    def prune_to(self, s: float) -> None:
        p, masks = self.p, self.masks
        if p.granularity == "structured":
            heads, neurons = masks.structured_magnitude_scores()
            masks.apply_structured(heads, neurons, s, p.scope, fill=s >= p.sparsity)
        else:
            masks.apply_magnitude(s, p.scope)
        self.state["s"], self.state["updates"] = s, self.state["updates"] + 1

    def after_step(self, step: int, total: int) -> None:
        p = self.p
        s = cubic_sparsity(step, total, 0.0, p.sparsity, p.start, p.end)
        if s > self.state["s"] and (step % p.update_every == 0 or s >= p.sparsity):
            self.prune_to(s)
