"""The structured hard cut of RPP: how many heads and FFN neurons go, and which (see
:mod:`passes.rpp.rpp`)."""

from __future__ import annotations

import math

import torch

from passes._masks import lowest_k


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


def structured_cut(heads, neurons, head_w: int, neuron_w: int, sparsity: float, scope: str):
    """Bool ``(heads [L, H], neurons [L, F])`` to keep from their norms (0 = zeroed by the prox),
    over all layers (``global``) or per layer, with the counts of :func:`cut_counts`."""
    keep_h, keep_f = torch.ones_like(heads, dtype=torch.bool), torch.ones_like(neurons, dtype=torch.bool)
    groups = [slice(None)] if scope == "global" else [slice(i, i + 1) for i in range(heads.shape[0])]
    for g in groups:
        hs, fs = heads[g], neurons[g]
        k_h, k_f = cut_counts(hs.numel(), fs.numel(), int((hs == 0).sum()), int((fs == 0).sum()),
                              head_w, neuron_w, sparsity)
        keep_h[g], keep_f[g] = ~lowest_k(hs, k_h), ~lowest_k(fs, k_f)
    return keep_h, keep_f
