"""``rpp``: Reweighted Proximal Pruning.

Guo, Liu, Mungall, Lin, Wang, "Reweighted Proximal Pruning for Large-Scale Language
Representation" (2019, arXiv:1909.12486); /work/shared/METHODS.md section 3. The paper body and
any code could not be read, so the pieces below are the standard closed forms of what its
abstract and summaries state (iteratively reweighted L1 + a proximal step decoupled from
back-propagation), with our choices recorded:

- Objective (METHODS 3.2): ``f(w) + gamma * sum_i alpha_i |w_i|`` over the weights of the six
  encoder Linears per layer (embeddings, pooler, classifier and biases are not penalised).
- One step (3.3): AdamW on ``f`` alone (decoupled weight decay, the shared ``_train`` loop), then
  the prox ``w_i <- sign(u_i) max(|u_i| - lr_t gamma alpha_i, 0)`` with ``lr_t`` the LR the step
  used (threshold scaled by the LR, not by Adam's preconditioner): ``passes.rpp.proximal``.
- Reweighting (3.4): ``alpha_i = 1 / (|w_i| + eps)`` from the input weights, then recomputed from
  the post-prox weights every ``reweight_every`` steps (constants in between). The fraction of
  exact zeros is logged over the phase.
- Final pruning (3.4): after the first ``prox_fraction`` of the budget (or as soon as the exact
  zeros reach the target: more prox would only overshoot), keep the top ``1 - s`` magnitudes (or
  fewer: zeros stay pruned), fix the mask (``passes._masks``) and fine-tune for the rest of the
  budget. One AdamW/LR schedule spans both phases. The kept epoch is the best one after the cut.
- ``gamma=0`` (default) is ``auto``: ``gamma = margin * (q^2/2 + eps q) / sum(lr_t)`` over the
  proximal phase, with ``q`` the target-sparsity quantile of ``|w|``; under the prox alone (with
  frequent reweighting) that takes every weight up to ``q`` to exactly zero by the end of the phase
  (``proximal.auto_gamma``), so the regulariser's strength follows the budget and the model's
  weight scale instead of one number tuned for one setting. The gradient pulls back, so
  ``margin=1`` stops a little short of the target and the cut tops up (measured: 0.65 exact zeros
  for a 0.7 target on fine-tuned MiniLM, 0.73 for 0.8 on the tiny test model).

Adaptation: the paper runs RPP on the pre-training objective (MLM + NSP) and then fine-tunes with
the pattern fixed; here it runs on the task loss, starting from the fine-tuned model (the artifact
handed to this pass).

``granularity=structured`` is our extension: a reweighted group-lasso prox on whole heads and FFN
neurons (group RMS, see ``proximal``); auto gamma is calibrated separately for heads and for
neurons (each on its own RMS quantile), and the cut drops whole units by norm with the shared
rule (``floor(s * heads)`` heads, neurons fill the rest) except that units the prox zeroed always
go (:func:`passes.rpp.cut.cut_counts`). Group RMS values are bunched, so groups die late and
together: the prox's share of the zeros is smaller than for single weights.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from compressor.artifact import TORCH
from compressor.errors import check_range
from compressor.pass_base import FINETUNED, Pass, PassResult, option
from passes._checkpoint import Resumable
from passes._method_common import (KDOptions, attach_masks, check_kd, check_options, finish,
                                   kd_info, make_kd, reevaluate)
from passes._options import TrainingOptions
from passes._schedule import LR_SCHEDULES
from passes.rpp.cut import structured_cut
from passes.rpp.proximal import (GroupProx, WeightProx, auto_gamma, lr_sum, prox_steps, raw, unit_groups,
                                 weighted_quantile)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rpp(KDOptions, TrainingOptions, Pass):
    """Reweighted proximal L1 (or group) pruning of the fine-tuned model, then a hard cut to the
    exact target and fixed-mask fine-tuning (see the module docstring). Zeros are baked in."""

    name: ClassVar[str] = "rpp"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = FINETUNED
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    sparsity: float = option(0.9, "fraction of encoder Linear weights to zero, in [0, 1)")
    gamma: float = option(0.0, "weight of the reweighted L1 term (0 = auto from the budget)")
    margin: float = option(1.0, "auto gamma: multiple of the prox-only strength that reaches the target")
    eps: float = option(1e-3, "reweighting alpha = 1/(|w| + eps); max threshold lr*gamma/eps")
    reweight_every: int = option(10, "optimizer steps between reweightings")
    prox_fraction: float = option(0.6, "share of the training budget for the proximal phase")
    granularity: str = option("weight", "single weights or whole heads/FFN neurons (group prox)",
                              choices=("weight", "structured"))
    scope: str = option("layer", "layer: every Linear (structured: every layer) keeps its share; "
                        "global: one ranking across all Linears (uneven; starves small-RMS matrices)",
                        choices=("global", "layer"))
    epochs: int = option(3, "training epochs (proximal phase + fixed-mask fine-tuning)")

    def __post_init__(self):
        check_options(self)
        check_kd(self)
        check_range("rpp.gamma", self.gamma, 0.0, 1e6)
        check_range("rpp.margin", self.margin, 0.0, 1e6, lo_open=True)
        check_range("rpp.eps", self.eps, 0.0, 1.0, lo_open=True)
        check_range("rpp.reweight_every", self.reweight_every, 1, 10**9)
        check_range("rpp.prox_fraction", self.prox_fraction, 0.0, 1.0)

    def make_prox(self, masks):
        """The proximal operator on ``masks``' modules: WeightProx or GroupProx (structured)."""
        from passes.families import family_of
        if self.granularity == "weight":
            return WeightProx([raw(m) for m in masks.modules.values()], self.eps)
        layers = [{role: masks.modules[name] for role, name in layer.items()} for layer in masks.by_layer()]
        return GroupProx(unit_groups(layers, family_of(masks.model).num_heads()), self.eps)

    def quantiles(self, prox) -> list[float]:
        """The target-sparsity quantile of ``|w|``; structured: of head RMS and of neuron RMS."""
        if self.granularity == "weight":
            return [weighted_quantile(prox.values(), None, self.sparsity)]
        return [weighted_quantile(torch.cat([g.rms() for g in prox.groups[k::2]]), None, self.sparsity)
                for k in (0, 1)]

    def hard_cut(self, masks) -> None:
        """Keep the top ``1 - sparsity`` magnitudes (heads/neurons by norm), minus exact zeros."""
        if self.granularity == "weight":
            masks.apply_magnitude(self.sparsity, self.scope)
            for name, module in masks.modules.items():
                masks.set_mask(name, masks.mask(name) * (raw(module) != 0))
            return
        heads, neurons = masks.structured_magnitude_scores()
        masks.set_structured(*structured_cut(heads, neurons, *masks.unit_sizes(), self.sparsity, self.scope))

    def run(self, artifact, ctx) -> PassResult:
        from passes._train import require_task

        model = copy.deepcopy(artifact.model)  # the input is the teacher: never mutate it
        task = require_task(ctx, self.name, model, self.max_train)
        masks = attach_masks(self, model)
        phase = ProxPhase(self, masks, self.make_prox(masks))
        if self.prox_fraction == 0.0:
            phase.cut(0)
        kd = make_kd(self, ctx, task)
        res = self.fine_tune(model, artifact.tokenizer, task, ctx, kd, phase)
        if phase.st["cut"] is None:  # no training step ran the cut (cannot happen with epochs >= 1)
            phase.cut(res.steps)
            reevaluate(res, model, artifact.tokenizer, task, self.max_length)
        return finish(self, artifact, model, masks, res, ctx, phase.metrics(kd))

    def fine_tune(self, model, tokenizer, task, ctx, kd, phase):
        """One training run over both phases, the prox and the cut in its ``after_step`` hook; the
        kept epoch is the best one after the cut."""
        from passes._train import train
        return train(model, tokenizer, task, ctx, **self.train_kwargs(),
                     loss_fn=kd, forward_kwargs=kd.forward_kwargs if kd else None,
                     after_step=phase.after_step, best_eligible=lambda e: phase.st["cut"] is not None,
                     desc=self.name, method_state=phase)


class ProxPhase(Resumable):
    """The proximal phase of one run and the cut that ends it. :meth:`after_step` is the
    training loop's hook; ``st`` and the prox's reweighting state are what the step journal saves."""

    resumable = ("st", "prox")

    def __init__(self, p: Rpp, masks, prox):
        self.p, self.masks, self.prox = p, masks, prox
        self.structured = p.granularity == "structured"
        self.qs = p.quantiles(prox)
        self.schedule = LR_SCHEDULES["linear"]  # the _train default
        self.st = {"n": None, "gamma": p.gamma, "cut": None, "history": [], "at_cut": {}}

    def after_step(self, step: int, total: int) -> None:
        st = self.st
        if st["n"] is None:  # first step: the budget is known now
            self.plan(total)
        if st["cut"] is not None:
            return
        if step <= st["n"] and self.prox_step(step, total):
            return self.cut(step)
        if step >= st["n"]:
            self.cut(step)

    def plan(self, total: int) -> None:
        """The phase's steps, warm-up and log interval from the budget; auto gamma from them."""
        p, st = self.p, self.st
        st["n"], st["total"] = prox_steps(total, p.prox_fraction), total
        st["warmup"] = int(round(p.warmup * total))
        st["log_every"] = max(1, st["n"] // 20)
        if p.gamma == 0.0:
            total_lr = lr_sum(p.lr, self.schedule, st["n"], st["warmup"], total)
            gammas = [auto_gamma(q, p.eps, total_lr, p.margin) for q in self.qs]
            st["gamma"] = gammas[-1]
            if self.structured and gammas[-1] > 0:  # heads calibrated on their own quantile
                self.prox.scales = [gammas[0] / gammas[-1], 1.0] * (len(self.prox.groups) // 2)

    def prox_step(self, step: int, total: int) -> bool:
        """The prox after optimizer step ``step`` (reweighting every ``reweight_every``); True
        once the exact zeros reach the target (more prox would only overshoot)."""
        p, st = self.p, self.st
        self.prox.step(p.lr * self.schedule(step - 1, st["warmup"], total), st["gamma"])
        if step % p.reweight_every == 0:
            self.prox.reweight()
        zeros = self.masks.sparsity_report()["overall"]
        done = zeros >= p.sparsity
        if step % st["log_every"] == 0 or step == st["n"] or done:
            st["history"].append([step, zeros])
        return done

    def cut(self, step: int) -> None:
        """End the phase: record the prox's zeros, then the pass's hard cut fixes the mask."""
        st = self.st
        st["at_cut"] = self.zero_counts()
        self.p.hard_cut(self.masks)
        st["cut"] = step
        st["cut_sparsity"] = self.masks.sparsity_report()["overall"]
        log.info("rpp: prox zeros %.4f at step %d; cut to %.4f", st["at_cut"]["weights"], step,
                 st["cut_sparsity"])

    def zero_counts(self) -> dict:
        """Exact zeros the prox produced: fraction of weights; all-zero heads/neurons (structured)."""
        out = {"weights": self.masks.sparsity_report()["overall"]}
        if hasattr(self.prox, "groups"):
            heads, neurons = self.masks.structured_magnitude_scores()
            out["heads"], out["neurons"] = int((heads == 0).sum()), int((neurons == 0).sum())
        return out

    def metrics(self, kd) -> dict:
        """What the phase adds to the pass's metrics."""
        p, st, prox = self.p, self.st, self.prox
        extra = {"gamma": st["gamma"], "gamma_auto": p.gamma == 0.0, "quantile": self.qs[-1],
                 "eps": p.eps, "reweight_every": p.reweight_every,
                 "reweightings": prox.reweightings, "prox_steps": st["n"] or 0, "cut_step": st["cut"],
                 "prox_zero_fraction": st["at_cut"]["weights"], "prox_zero_history": st["history"],
                 "cut_sparsity": st["cut_sparsity"],
                 "objective": "task loss or KD (paper: pre-training)", **kd_info(kd)}
        if self.structured:
            extra["prox_zero_heads"] = st["at_cut"]["heads"]
            extra["prox_zero_neurons"] = st["at_cut"]["neurons"]
            extra["gamma_heads"] = st["gamma"] * prox.scales[0]
        return extra
