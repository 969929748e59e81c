"""CAP's two training schedules (METHODS.md 1.6 and 1.7), run by :class:`passes.cap.cap.Cap` inside
its :class:`~passes.cap.contrastive.CapLoss`; ``p`` is the pass (its options).

- :func:`train_weight`: ``granularity=weight`` (CAP-m, CAP-soft, magnitude), one training run
  with a :class:`~passes.cap.prune.WeightPruner` updating the masks on the cubic schedule and an
  SnC snapshot at each epoch boundary.
- :func:`train_structured`: ``granularity=structured`` (CAP-f), ``stages`` cumulative steps, each
  first-order importance -> bank refresh -> masks -> retrain with a fresh optimizer and warm-up.
"""

from __future__ import annotations

import math
import time

from compressor.evaluation import make_loader
from passes._checkpoint import Resumable
from passes.cap.prune import WeightPruner, first_order_importance, protect_top_head


class WeightHooks(Resumable):
    """:func:`train_weight`'s hooks: the pruner's mask updates and an SnC snapshot at each epoch
    boundary (:meth:`after_step`), CAP's loss plus the pruner's penalty (:meth:`loss_fn`), the
    score groups (:meth:`param_groups`). A checkpoint saves the loss's generator and banks,
    ``state`` (the step the penalty is computed at) and the pruner's last target."""

    resumable = ("state", "pruner")

    def __init__(self, p, pruner: WeightPruner, loss, total: int):
        self.p, self.pruner, self.loss = p, pruner, loss
        self.state = {"step": 0, "total": total}

    def after_step(self, step: int, total: int) -> None:
        self.state.update(step=step, total=total)
        self.pruner.after_step(step, total)
        per_epoch = total // self.p.epochs
        if per_epoch and step % per_epoch == 0 and step < total:  # an epoch boundary
            self.loss.snapshot("snc")

    def loss_fn(self, m, batch, outputs):
        return self.loss(m, batch, outputs) + self.pruner.penalty(self.state["step"], self.state["total"])

    def param_groups(self, m):
        return self.pruner.param_groups(m, self.p.lr, self.p.score_lr, self.p.weight_decay)

    def state_dict(self) -> dict:
        return {**self.loss.state_dict(), **super().state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state)
        super().load_state_dict(state)


def train_weight(p, model, tok, task, ctx, masks, loss, times) -> dict:
    """CAP-m / CAP-soft / magnitude (METHODS 1.7): one training run on the cubic schedule."""
    from passes._train import train

    pruner = WeightPruner(masks, p.criterion, p.sparsity, p.start, p.end,
                          p.update_every, p.soft_threshold, p.l1_lambda)
    hooks = WeightHooks(p, pruner, loss, math.ceil(len(task.train) / p.batch_size) * p.epochs)
    final = p.soft_threshold if p.criterion == "soft-movement" else p.sparsity
    encoded_before = loss.encode_seconds
    res = train(model, tok, task, ctx, **p.train_kwargs(),
                loss_fn=hooks.loss_fn, after_step=hooks.after_step,
                param_groups=hooks.param_groups if pruner.scores else None,
                keep_best=p.criterion != "soft-movement",
                best_eligible=lambda epoch: pruner.current >= final, desc=p.name,
                method_state=hooks)
    times["train"] += res.seconds - (loss.encode_seconds - encoded_before)  # minus snapshots
    trained = masks.sparsity_report()["overall"]  # soft movement: its own outcome
    pruner.finish()
    return {"steps": res.steps, "sparsity_trained": trained, "epoch_kept": res.restored_epoch or p.epochs,
            "accuracy_per_epoch": [e["accuracy"] for e in res.epochs]}


def train_structured(p, model, tok, task, ctx, masks, loss, times) -> dict:
    """CAP-f (METHODS 1.6): per stage importance -> bank refresh -> masks -> retrain."""
    from passes._train import train

    epochs = p.epochs_per_stage or max(1, p.epochs // p.stages)
    loader = make_loader(tok, task.train, p.max_length, p.batch_size, shuffle=True, seed=ctx.seed)
    stages, steps, earlier = [], 0, []
    for k in range(p.stages):
        target = p.sparsity * (k + 1) / p.stages
        t0 = time.perf_counter()
        heads, neurons = first_order_importance(model, loader, loss, p.importance_batches)
        times["importance"] += time.perf_counter() - t0
        loss.snapshot("prc" if k == 0 else "snc")  # the model before this stage's masks
        if p.keep_one_head:
            heads = protect_top_head(heads, masks.structured_keep()[0])
        masks.apply_structured(heads, neurons, target, scope="global", fill=k == p.stages - 1)
        desc = f"{p.name} stage {k + 1}"
        # the collapse guard sees the earlier stages: a model that learned in stage 1-2 and falls to
        # the majority class in the last stage stops there (measured: the last stage emptying two layers)
        res = train(model, tok, task, ctx, **p.train_kwargs(epochs=epochs), loss_fn=loss, method_state=loss,
                    keep_best=False, eval_each_epoch=False, desc=desc, earlier_epochs=tuple(earlier))
        earlier += [{**e, "epoch": f"{e['epoch']} of {desc}"} for e in res.epochs]
        times["train"] += res.seconds
        steps += res.steps
        stages.append({"stage": k + 1, "target": target, "sparsity": masks.sparsity_report()["overall"],
                       "accuracy": res.final_accuracy})
    return {"steps": steps, "stages": stages, "epochs_per_stage": epochs}
