"""SparseBERT's training hooks (:class:`passes.sparsebert.sparsebert.SparseBert`, METHODS.md
section 2): the cubic mask schedule (2.4) and the distillation loss (2.2), handed to
:func:`passes._train.train` as ``after_step`` and ``loss_fn``. Losses from :mod:`passes._distill`."""

from __future__ import annotations

import logging

import torch

from compressor.evaluation import logits_of, model_inputs
from passes import _distill
from passes._checkpoint import Resumable
from passes._schedule import cubic_sparsity

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


class TrainingHooks(Resumable):
    """SparseBERT's training hooks: the mask schedule (:meth:`after_step`, :meth:`prune_to`) and
    the distillation loss (:meth:`loss`) of pass ``p`` on ``masks``; ``state``, ``sums`` and
    ``n_steps`` are what a checkpoint saves (restored in place)."""

    resumable = ("state", "sums", "n_steps")

    def __init__(self, p, masks, teacher, hmap):
        self.p, self.masks, self.teacher, self.hmap = p, masks, teacher, hmap
        self.state = {"s": 0.0, "updates": 0, "heads": None, "skipped": None, "t0": 0, "every": 1, "K": 1}
        self.sums = {k: 0.0 for k in LOSS_TERMS}
        self.n_steps = [0]
        self.captures = None  # (student, teacher) ScoreCapture while training

    def prune_to(self, s: float) -> None:
        state = self.state
        if self.p.granularity == "structured":
            head_scores, neuron_scores = self.masks.structured_magnitude_scores()
            keep_h, _ = self.masks.apply_structured(head_scores, neuron_scores, s, "global",
                                                    fill=s >= self.p.sparsity)
            state["heads"] = [torch.nonzero(row).reshape(-1).tolist() for row in keep_h]
        else:
            self.masks.apply_magnitude(s, "layer")  # per matrix, as the authors
        state["s"], state["updates"] = s, state["updates"] + 1

    def after_step(self, step: int, total: int) -> None:
        p, state = self.p, self.state
        if step == 1:
            state["t0"], state["every"], state["K"] = mask_update_steps(
                total, p.start, p.end, p.updates, p.update_every)
        t = step - state["t0"]
        if t > 0 and t % state["every"] == 0 and t // state["every"] <= state["K"]:
            s = cubic_sparsity(t // state["every"], state["K"], 0.0, p.sparsity)
            if s > state["s"]:
                self.prune_to(s)

    def loss(self, student, batch, outputs):
        p, teacher, hmap = self.p, self.teacher, self.hmap
        inputs, mask = model_inputs(batch), batch["attention_mask"]
        if next(teacher.parameters()).device != mask.device:
            teacher.to(mask.device)
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True)
        z_s, z_t = logits_of(outputs, mask), logits_of(t_out, mask)  # a QA model's start/end, stacked
        terms = {"pred": _distill.soft_cross_entropy(z_s, z_t, p.temperature,
                                                     _distill.embedding_settings(student), batch["labels"]),
                 "hidden": _distill.hidden_mse(outputs.hidden_states, t_out.hidden_states, hmap),
                 "ce": outputs.loss if p.w_ce else None}
        if p.w_attn:
            s_cap, t_cap = self.captures
            terms["attn"], skipped = _distill.attention_mse(
                s_cap.scores(mask), t_cap.scores(mask), mask, hmap, self.state["heads"])
            if skipped and skipped != self.state["skipped"]:
                log.info("sparsebert: attention loss skips student layers %s (no heads left, "
                         "or head count differs from the teacher's)", skipped)
            self.state["skipped"] = skipped
        weights = {"pred": p.w_pred, "hidden": p.w_hidden, "attn": p.w_attn, "ce": p.w_ce}
        loss = z_s.new_zeros(())
        for key, term in terms.items():
            if term is not None and weights[key]:
                loss = loss + weights[key] * term
                self.sums[key] = self.sums[key] + term.detach()  # no per-step device sync
        self.n_steps[0] += 1
        return loss
