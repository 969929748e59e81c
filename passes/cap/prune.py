"""CAP's pruning criteria on top of the shared masks (:mod:`passes._masks`).

Xu et al., "From Dense to Sparse: Contrastive Pruning for Better Pre-trained Language Model
Compression" (AAAI 2022, arXiv:2112.07198); details from the authors' code (alibaba/AliceMind
``ContrastivePruning``), summarised in METHODS.md 1.6 (CAP-f) and 1.7 (CAP-m / CAP-soft):

- :class:`UnitGates` and :func:`first_order_importance`: CAP-f's first-order importance of
  attention heads and FFN neurons, ``sum over batches |dL/dg|`` for a gate ``g = 1`` on each
  unit's output (``StructuredPruning/prune/prune_utils.py``), L2-normalised per layer.
- :func:`protect_top_head`: the authors' ">= 1 head per layer" rule (optional here).
- :class:`WeightPruner`: per-step mask updates for ``granularity=weight``: magnitude, movement
  (top-k of learned scores per matrix) and soft movement (threshold on ``sigmoid(scores)`` plus
  an L1 penalty), on the cubic schedule.
"""

from __future__ import annotations

import logging
import math

import torch

from passes._checkpoint import Resumable
from passes._schedule import cubic_sparsity
from passes.families import family_of

log = logging.getLogger(__name__)

CRITERIA = ("movement", "soft-movement", "magnitude")
SOFT_MIN_KEEP = 0.005  # soft movement keeps at least 0.5% of each matrix (authors' code)


class UnitGates:
    """Context manager: differentiable gates (ones, ``requires_grad``) on every head's context
    output ``[L, H]`` and every FFN neuron's activated output ``[L, F]``, applied with forward
    pre-hooks on the inputs of the family's ``attn_out`` (per head slice) and ``ffn_out`` (per
    neuron) Linears (:mod:`passes.families`): the heads' context and the FFN's hidden units.

    A gate on a head's context ``P V`` has the same gradient as HF's ``head_mask`` on the
    attention probabilities (the context is linear in P); it does not depend on the head_mask
    argument, which changed across transformers versions.
    """

    def __init__(self, model):
        self.family = family_of(model)
        self.layers = self.family.layers()
        n_heads, ffn = self.family.layer_sizes(self.layers[0])
        self.head_size = self.family.head_size(self.layers[0])
        dev = next(model.parameters()).device
        self.heads = torch.ones(len(self.layers), n_heads, device=dev, requires_grad=True)
        self.neurons = torch.ones(len(self.layers), ffn, device=dev, requires_grad=True)
        self._handles = []

    def __enter__(self) -> "UnitGates":
        for i, layer in enumerate(self.layers):
            self._handles.append(self.family.linear(layer, "attn_out").register_forward_pre_hook(self._head_hook(i)))
            self._handles.append(self.family.linear(layer, "ffn_out").register_forward_pre_hook(self._ffn_hook(i)))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def _head_hook(self, i):
        def hook(module, args):
            gate = self.heads[i].repeat_interleave(self.head_size)
            return (args[0] * gate,) + tuple(args[1:])
        return hook

    def _ffn_hook(self, i):
        def hook(module, args):
            return (args[0] * self.neurons[i],) + tuple(args[1:])
        return hook


def first_order_importance(model, loader, loss_of_batch, max_batches: int = 0,
                           normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CAP-f importance (METHODS 1.6): ``|dL/dg|`` summed over the batches of ``loader`` (all,
    or the first ``max_batches``), the model in eval mode, ``L = loss_of_batch(model, batch)``
    (CAP's full training loss). With ``normalize`` each layer's head scores and FFN scores are
    divided by their L2 norm (``normalize_pruning_by_layer``). Returns CPU ``[L, H]``, ``[L, F]``.

    Weight gradients are not computed (only the gates need them). Cost: one forward and one
    activation-only backward per batch.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with UnitGates(model) as gates:
            head = torch.zeros_like(gates.heads, requires_grad=False)
            neuron = torch.zeros_like(gates.neurons, requires_grad=False)
            for n, batch in enumerate(loader):
                if max_batches and n >= max_batches:
                    break
                loss = loss_of_batch(model, batch)
                h_grad, f_grad = torch.autograd.grad(loss, [gates.heads, gates.neurons], allow_unused=True)
                if h_grad is not None:
                    head += h_grad.abs()
                if f_grad is not None:
                    neuron += f_grad.abs()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    head, neuron = head.detach().cpu(), neuron.detach().cpu()
    if normalize:
        head = head / (head.norm(dim=1, keepdim=True) + 1e-20)
        neuron = neuron / (neuron.norm(dim=1, keepdim=True) + 1e-20)
    return head, neuron


def protect_top_head(head_scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Scores with the best still-kept head of every layer set to +inf, so a global ranking never
    prunes it (the authors' ``at_least_x_heads_per_layer=1``)."""
    scores = head_scores.clone().float()
    masked = torch.where(kept, scores, torch.full_like(scores, -math.inf))
    for layer in range(scores.shape[0]):
        if kept[layer].any():
            scores[layer, int(masked[layer].argmax())] = math.inf
    return scores


class WeightPruner(Resumable):
    """Mask updates of ``granularity=weight`` on a :class:`passes._masks.MaskSet`.

    - ``magnitude``: ``apply_magnitude(s(t), scope="layer")`` (per matrix; masks only shrink).
    - ``movement`` (CAP-m, Sanh et al. 2020 arXiv:2005.07683): straight-through scores S
      (``MaskSet.add_scores(0)``), mask = top ``1 - s(t)`` of S per matrix, recomputed every
      ``update_every`` steps (weights may come back).
    - ``soft-movement`` (CAP-soft): mask = ``sigmoid(S) > thr(t)`` (at least 0.5% of each matrix
      kept), ``thr(t)`` cubic from 0 to ``soft_threshold``; the loss adds
      ``lambda(t) * mean_matrices(mean(sigmoid(S)))`` with ``lambda(t) = l1_lambda * thr(t) /
      soft_threshold``. Its sparsity is an outcome, so :meth:`finish` ends with a hard global top-k
      of S to the exact target.

    ``s(t)`` / ``thr(t)``: :func:`passes._schedule.cubic_sparsity` between the ``start`` and ``end``
    fractions of training (the authors' initial/final warm-up). A checkpoint saves ``current``.
    """

    resumable = ("current",)

    def __init__(self, masks, criterion: str, sparsity: float, start: float, end: float,
                 update_every: int = 1, soft_threshold: float = 0.1, l1_lambda: float = 190.0):
        self.masks, self.criterion, self.sparsity = masks, criterion, float(sparsity)
        self.start, self.end, self.update_every = start, end, max(1, int(update_every))
        self.soft_threshold, self.l1_lambda = soft_threshold, l1_lambda
        self.scores = masks.add_scores(0.0) if criterion != "magnitude" else {}
        self.current = 0.0  # sparsity target (or threshold) last applied

    def scheduled(self, step: int, total: int) -> float:
        """``s(t)`` (magnitude/movement) or ``thr(t)`` (soft movement) at optimizer step ``step``."""
        final = self.soft_threshold if self.criterion == "soft-movement" else self.sparsity
        return cubic_sparsity(step, total, 0.0, final, self.start, self.end)

    def param_groups(self, model, lr: float, score_lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: scores at ``score_lr`` without decay; matrices with decay; the rest without."""
        score_ids = {id(p) for p in self.scores.values()}
        groups = [{"params": list(self.scores.values()), "lr": score_lr, "weight_decay": 0.0}]
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in score_ids:
                (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
        groups += [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def after_step(self, step: int, total: int) -> None:
        """Update the masks after optimizer step ``step`` of ``total``."""
        v = self.scheduled(step, total)
        final = self.soft_threshold if self.criterion == "soft-movement" else self.sparsity
        reached = v >= final and self.current < final  # apply the final value without delay
        if self.criterion == "magnitude":
            if v > self.current and (step % self.update_every == 0 or reached):
                self.masks.apply_magnitude(v, scope="layer")
                self.current = v
            return
        if step % self.update_every and not reached:
            return
        if self.criterion == "movement":
            self.masks.apply_scores(self.scores, v, scope="layer")
        else:
            self._soft_masks(v)
        self.current = v

    def _soft_masks(self, threshold: float) -> None:
        with torch.no_grad():
            for name, s in self.scores.items():
                prob = torch.sigmoid(s.detach())
                keep = prob > threshold
                need = max(1, math.ceil(SOFT_MIN_KEEP * prob.numel()))
                if int(keep.sum()) < need:
                    top = prob.reshape(-1).topk(need).indices
                    keep = torch.zeros(prob.numel(), dtype=torch.bool, device=prob.device)
                    keep[top] = True
                    keep = keep.reshape(prob.shape)
                self.masks.set_mask(name, keep)

    def penalty(self, step: int, total: int):
        """The soft-movement L1 term at ``step`` (0 for the other criteria)."""
        if self.criterion != "soft-movement" or not self.scores or not self.l1_lambda:
            return 0.0
        lam = self.l1_lambda * self.scheduled(step, total) / self.soft_threshold
        if not lam:
            return 0.0
        reg = sum(torch.sigmoid(s).mean() for s in self.scores.values()) / len(self.scores)
        return lam * reg

    def finish(self) -> None:
        """Masks at exactly the target sparsity (hard top-k; global for soft movement)."""
        if self.criterion == "magnitude":
            self.masks.apply_magnitude(self.sparsity, scope="layer")
        elif self.criterion == "movement":
            self.masks.apply_scores(self.scores, self.sparsity, scope="layer")
        else:
            self.masks.apply_scores(self.scores, self.sparsity, scope="global")
        self.current = self.sparsity
