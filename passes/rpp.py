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
  used (threshold scaled by the LR, not by Adam's preconditioner): ``passes._proximal``.
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
  (``_proximal.auto_gamma``), so the regulariser's strength follows the budget and the model's
  weight scale instead of one number tuned for one setting. The gradient pulls back, so
  ``margin=1`` stops a little short of the target and the cut tops up (measured: 0.65 exact zeros
  for a 0.7 target on fine-tuned MiniLM, 0.73 for 0.8 on the tiny test model).

Adaptation: the paper runs RPP on the pre-training objective (MLM + NSP) and then fine-tunes with
the pattern fixed; here it runs on the task loss, starting from the fine-tuned model (the artifact
handed to this pass).

``granularity=structured`` is our extension: a reweighted group-lasso prox on whole heads and FFN
neurons (group RMS, see ``_proximal``); auto gamma is calibrated separately for heads and for
neurons (each on its own RMS quantile), and the cut drops whole units by norm with the shared
rule (``floor(s * heads)`` heads, neurons fill the rest) except that units the prox zeroed always
go (:func:`cut_counts`). Group RMS values are bunched, so groups die late and together: the
prox's share of the zeros is smaller than for single weights.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from compressor.artifact import TORCH
from compressor.errors import check_range
from compressor.pass_base import FINETUNED, Pass, PassResult, option
from passes._method_common import (KDOptions, attach_masks, check_kd, check_options, finish,
                                   kd_info, make_kd, reevaluate)

log = logging.getLogger(__name__)


def cut_counts(n_h: int, n_f: int, dead_h: int, dead_f: int, head_w: int, neuron_w: int,
               sparsity: float) -> tuple[int, int]:
    """Heads and neurons to drop so ``sparsity`` of ``n_h * head_w + n_f * neuron_w`` weights go:
    the shared rule (``floor(s * n_h)`` heads, neurons fill the rest, as
    ``MaskSet.apply_structured``) except that units the prox already zeroed always go, and when
    they exceed one kind's quota the other kind gives way (dead units alone may overshoot)."""
    target = sparsity * (n_h * head_w + n_f * neuron_w)
    room = int(math.floor((target - dead_f * neuron_w) / head_w + 1e-9))
    k_h = max(dead_h, min(int(math.floor(sparsity * n_h + 1e-9)), room))
    k_f = min(n_f, max(dead_f, int(math.floor((target - k_h * head_w) / neuron_w + 0.5))))
    return min(k_h, n_h), k_f


def unit_sizes(masks) -> tuple[int, int]:
    """Weights per attention head and per FFN neuron (first encoder layer's Linears)."""
    from passes._masks import parse_linear_name
    m: dict = {}
    for name, module in masks.modules.items():
        m.setdefault(parse_linear_name(name)[1], module)
    d = m["attention.self.query"].out_features // int(masks.model.config.num_attention_heads)
    head = d * (sum(m[f"attention.self.{k}"].in_features for k in ("query", "key", "value"))
                + m["attention.output.dense"].out_features)
    return head, m["intermediate.dense"].in_features + m["output.dense"].out_features


def structured_cut(heads, neurons, head_w: int, neuron_w: int, sparsity: float, scope: str):
    """Bool ``(heads [L, H], neurons [L, F])`` to keep from their norms (0 = zeroed by the prox),
    over all layers (``global``) or per layer, with the counts of :func:`cut_counts`."""
    from passes._masks import lowest_k
    keep_h, keep_f = torch.ones_like(heads, dtype=torch.bool), torch.ones_like(neurons, dtype=torch.bool)
    groups = [slice(None)] if scope == "global" else [slice(i, i + 1) for i in range(heads.shape[0])]
    for g in groups:
        hs, fs = heads[g], neurons[g]
        k_h, k_f = cut_counts(hs.numel(), fs.numel(), int((hs == 0).sum()), int((fs == 0).sum()),
                              head_w, neuron_w, sparsity)
        keep_h[g], keep_f[g] = ~lowest_k(hs, k_h), ~lowest_k(fs, k_f)
    return keep_h, keep_f


@dataclass(frozen=True)
class Rpp(KDOptions, Pass):
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
    lr: float = option(3e-5, "peak learning rate (AdamW)")
    batch_size: int = option(32, "training batch size")
    max_length: int = option(64, "truncate inputs to this many tokens")
    warmup: float = option(0.1, "fraction of steps for linear LR warm-up")
    weight_decay: float = option(0.01, "AdamW decoupled weight decay (not on biases/LayerNorm)")
    max_train: int = option(0, "use at most this many training examples (0 = all)")

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
        from passes._masks import parse_linear_name
        from passes._proximal import GroupProx, WeightProx, bert_groups, raw
        if self.granularity == "weight":
            return WeightProx([raw(m) for m in masks.modules.values()], self.eps)
        layers: dict[int, dict] = {}
        for name, module in masks.modules.items():
            layer, kind = parse_linear_name(name)
            layers.setdefault(layer, {})[kind] = module
        heads = int(masks.model.config.num_attention_heads)
        return GroupProx(bert_groups([layers[i] for i in sorted(layers)], heads), self.eps)

    def quantiles(self, prox) -> list[float]:
        """The target-sparsity quantile of ``|w|``; structured: of head RMS and of neuron RMS."""
        from passes._proximal import weighted_quantile
        if self.granularity == "weight":
            return [weighted_quantile(prox.values(), None, self.sparsity)]
        return [weighted_quantile(torch.cat([g.rms() for g in prox.groups[k::2]]), None, self.sparsity)
                for k in (0, 1)]

    def hard_cut(self, masks) -> None:
        """Keep the top ``1 - sparsity`` magnitudes (heads/neurons by norm), minus exact zeros."""
        from passes._proximal import raw
        if self.granularity == "weight":
            masks.apply_magnitude(self.sparsity, self.scope)
            for name, module in masks.modules.items():
                masks.set_mask(name, masks.mask(name) * (raw(module) != 0))
            return
        heads, neurons = masks.structured_magnitude_scores()
        masks.set_structured(*structured_cut(heads, neurons, *unit_sizes(masks), self.sparsity, self.scope))

    def run(self, artifact, ctx) -> PassResult:
        from passes._checkpoint import Attrs, MethodState
        from passes._proximal import auto_gamma, lr_sum, prox_steps
        from passes._schedule import LR_SCHEDULES
        from passes._train import require_task, train

        structured = self.granularity == "structured"
        model = copy.deepcopy(artifact.model)  # the input is the teacher: never mutate it
        task = require_task(ctx, self.name, model, self.max_train)
        masks = attach_masks(self, model)
        prox = self.make_prox(masks)
        qs = self.quantiles(prox)
        schedule = LR_SCHEDULES["linear"]  # the _train default
        st = {"n": None, "gamma": self.gamma, "cut": None, "history": [], "at_cut": {}}

        def cut(step: int) -> None:
            st["at_cut"] = self.zero_counts(masks, prox)
            self.hard_cut(masks)
            st["cut"] = step
            st["cut_sparsity"] = masks.sparsity_report()["overall"]
            log.info("rpp: prox zeros %.4f at step %d; cut to %.4f", st["at_cut"]["weights"], step,
                     st["cut_sparsity"])

        def after_step(step: int, total: int) -> None:
            if st["n"] is None:  # first step: the budget is known now
                st["n"], st["total"] = prox_steps(total, self.prox_fraction), total
                st["warmup"] = int(round(self.warmup * total))
                st["log_every"] = max(1, st["n"] // 20)
                if self.gamma == 0.0:
                    total_lr = lr_sum(self.lr, schedule, st["n"], st["warmup"], total)
                    gammas = [auto_gamma(q, self.eps, total_lr, self.margin) for q in qs]
                    st["gamma"] = gammas[-1]
                    if structured and gammas[-1] > 0:  # heads calibrated on their own quantile
                        prox.scales = [gammas[0] / gammas[-1], 1.0] * (len(prox.groups) // 2)
            if st["cut"] is not None:
                return
            if step <= st["n"]:
                prox.step(self.lr * schedule(step - 1, st["warmup"], total), st["gamma"])
                if step % self.reweight_every == 0:
                    prox.reweight()
                zeros = masks.sparsity_report()["overall"]
                done = zeros >= self.sparsity  # target reached early: more prox only overshoots
                if step % st["log_every"] == 0 or step == st["n"] or done:
                    st["history"].append([step, zeros])
                if done:
                    return cut(step)
            if step >= st["n"]:
                cut(step)

        if self.prox_fraction == 0.0:
            cut(0)
        kd = make_kd(self, ctx, task)
        res = train(model, artifact.tokenizer, task, ctx, epochs=self.epochs, lr=self.lr,
                    loss_fn=kd, forward_kwargs=kd.forward_kwargs if kd else None,
                    batch_size=self.batch_size, warmup_ratio=self.warmup,
                    weight_decay=self.weight_decay, max_length=self.max_length,
                    after_step=after_step, best_eligible=lambda e: st["cut"] is not None,
                    desc=self.name, method_state=MethodState(st=st, prox=Attrs(
                        prox, "alphas", "reweightings", *(["scales"] if structured else []))))
        if st["cut"] is None:  # no training step ran the cut (cannot happen with epochs >= 1)
            cut(res.steps)
            reevaluate(res, model, artifact.tokenizer, task, self.max_length)
        extra = {"gamma": st["gamma"], "gamma_auto": self.gamma == 0.0, "quantile": qs[-1],
                 "eps": self.eps, "reweight_every": self.reweight_every,
                 "reweightings": prox.reweightings, "prox_steps": st["n"] or 0, "cut_step": st["cut"],
                 "prox_zero_fraction": st["at_cut"]["weights"], "prox_zero_history": st["history"],
                 "cut_sparsity": st["cut_sparsity"],
                 "objective": "task loss or KD (paper: pre-training)", **kd_info(kd)}
        if structured:
            extra["prox_zero_heads"] = st["at_cut"]["heads"]
            extra["prox_zero_neurons"] = st["at_cut"]["neurons"]
            extra["gamma_heads"] = st["gamma"] * prox.scales[0]
        return finish(self, artifact, model, masks, res, ctx, extra)

    @staticmethod
    def zero_counts(masks, prox) -> dict:
        """Exact zeros the prox produced: fraction of weights; all-zero heads/neurons (structured)."""
        out = {"weights": masks.sparsity_report()["overall"]}
        if hasattr(prox, "groups"):
            heads, neurons = masks.structured_magnitude_scores()
            out["heads"], out["neurons"] = int((heads == 0).sum()), int((neurons == 0).sum())
        return out
