"""Proximal operators and reweighting for RPP (Guo, Liu, Mungall, Lin, Wang, "Reweighted Proximal
Pruning for Large-Scale Language Representation", 2019, arXiv:1909.12486; see
/work/shared/METHODS.md section 3).

The objective is ``f(w) + gamma * sum_i alpha_i |w_i|`` (METHODS 3.2). An optimizer step on ``f``
alone gives ``u``; the proximal operator of the weighted L1 term with step ``lr`` (METHODS 3.3) is
the element-wise soft threshold

    prox(u)_i = sign(u_i) * max(|u_i| - lr * gamma * alpha_i, 0),

the exact minimiser of ``lr * gamma * alpha_i * |w_i| + (w_i - u_i)^2 / 2``. The reweighting
factors ``alpha_i = 1 / (|w_i| + eps)`` (Candes, Wakin & Boyd 2008) are constants between
reweightings (METHODS 3.4): small weights get large thresholds (at most ``lr * gamma / eps``),
large weights are barely shrunk.

Structured variant (our extension, not in the paper): group lasso over attention heads and FFN
neurons. A group's size is measured by its RMS ``r_g = ||w_g|| / sqrt(p_g)`` (``p_g`` entries), so
heads and neurons, whose norms differ by the square root of their sizes, live on the same scale as
single weights and the same ``gamma``/``eps`` apply: ``alpha_g = 1 / (r_g + eps)`` and the prox of
``lr * gamma * alpha_g * sqrt(p_g) * ||w_g||`` scales the group by ``max(0, 1 - lr*gamma*alpha_g/r_g)``.

Scale (used for ``gamma="auto"``): with alpha recomputed often, a weight under the prox alone
obeys ``d|w|/dt = -lr_t * gamma / (|w| + eps)``, so it reaches 0 once
``gamma * sum_t lr_t >= |w0|^2 / 2 + eps * |w0|``. Against it, Adam moves a weight by at most
about ``lr_t`` per step (its update is normalised), so zero is absorbing while
``gamma / eps > 1`` and weights below about ``gamma`` are pulled down faster than the gradient
can push them back.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from passes._checkpoint import Resumable
from passes.families.base import HEAD_ROLES


def soft_threshold(u: torch.Tensor, thresh) -> torch.Tensor:
    """``sign(u) * max(|u| - thresh, 0)``: the prox of ``thresh * |w|`` (element-wise)."""
    return u.sign() * (u.abs() - thresh).clamp_min(0.0)


def reweight(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Reweighting factors ``1 / (|w| + eps)`` (no gradient)."""
    return 1.0 / (w.detach().abs() + eps)


def group_scale(rms: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """Factor ``max(0, 1 - thresh / rms)`` per group (0 for a group already at zero): the prox of
    a group-norm penalty, written in RMS units."""
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    return torch.where(rms > 0, (1.0 - thresh / safe).clamp_min(0.0), torch.zeros_like(rms))


def raw(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The trainable tensor behind ``module.<name>``: the parametrization's ``original`` when the
    module carries a mask (``passes._masks``), else the plain parameter."""
    if hasattr(module, "parametrizations") and name in module.parametrizations:
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


class WeightProx(Resumable):
    """Reweighted L1 prox on single weights of ``tensors`` (modified in place); ``alphas`` and
    ``reweightings`` are what a checkpoint saves."""

    resumable = ("alphas", "reweightings")

    def __init__(self, tensors: list[torch.Tensor], eps: float):
        self.tensors, self.eps = list(tensors), eps
        self.alphas: list[torch.Tensor] = []
        self.reweightings = 0
        self.reweight()

    def reweight(self) -> None:
        """Recompute ``alpha = 1 / (|w| + eps)`` from the current (post-prox) weights."""
        self.alphas = [reweight(t, self.eps) for t in self.tensors]
        self.reweightings += 1

    @torch.no_grad()
    def step(self, lr: float, gamma: float) -> None:
        """Apply ``w <- soft_threshold(w, lr * gamma * alpha)`` to every tensor."""
        for i, (t, a) in enumerate(zip(self.tensors, self.alphas)):
            if a.device != t.device:  # the model moved (e.g. to the GPU) since the last reweighting
                a = self.alphas[i] = a.to(t.device)
            t.copy_(soft_threshold(t, lr * gamma * a))

    def values(self) -> torch.Tensor:
        """All magnitudes ``|w|`` as one flat float tensor."""
        return torch.cat([t.detach().abs().reshape(-1).float() for t in self.tensors])

    def zero_fraction(self) -> float:
        """Fraction of exact zeros over all tensors."""
        zeros = sum(int((t == 0).sum()) for t in self.tensors)
        return zeros / max(1, sum(t.numel() for t in self.tensors))


class GroupSet:
    """``n`` groups spread over several tensors: group ``g`` is the ``g``-th block of
    ``size(dim) // n`` consecutive indices along ``dim`` of every ``(tensor, dim)`` part
    (e.g. a head: rows of Q/K/V and their biases, columns of the attention output)."""

    def __init__(self, parts: list[tuple[torch.Tensor, int]], n: int):
        self.parts, self.n = parts, n
        self.sizes = sum(t.numel() // n for t, _ in parts)  # entries per group

    def sq_norms(self) -> torch.Tensor:
        out = 0
        for t, dim in self.parts:
            sq = t.detach().float().pow(2)
            if t.ndim == 2:
                sq = sq.sum(1 - dim)
            out = out + sq.reshape(self.n, -1).sum(1)
        return out

    def rms(self) -> torch.Tensor:
        return (self.sq_norms() / self.sizes).sqrt()

    @torch.no_grad()
    def scale_(self, factor: torch.Tensor) -> None:
        for t, dim in self.parts:
            f = factor.to(t.device, t.dtype).repeat_interleave(t.shape[dim] // self.n)
            t.mul_(f[:, None] if (t.ndim == 2 and dim == 0) else f)


class GroupProx(Resumable):
    """Reweighted group-lasso prox on heads and FFN neurons (our structured extension);
    ``alphas``, ``reweightings`` and ``scales`` are what a checkpoint saves."""

    resumable = ("alphas", "reweightings", "scales")

    def __init__(self, groups: list[GroupSet], eps: float):
        self.groups, self.eps = list(groups), eps
        self.scales = [1.0] * len(self.groups)  # per GroupSet multiplier of gamma
        self.alphas: list[torch.Tensor] = []
        self.reweightings = 0
        self.reweight()

    def reweight(self) -> None:
        """``alpha_g = 1 / (r_g + eps)`` from the current group RMS values."""
        self.alphas = [1.0 / (g.rms() + self.eps) for g in self.groups]
        self.reweightings += 1

    @torch.no_grad()
    def step(self, lr: float, gamma: float) -> None:
        """Scale each group by ``max(0, 1 - lr * gamma * scale * alpha_g / r_g)``."""
        for i, (g, a, c) in enumerate(zip(self.groups, self.alphas, self.scales)):
            rms = g.rms()
            if a.device != rms.device:  # the model moved (e.g. to the GPU) since the last reweighting
                a = self.alphas[i] = a.to(rms.device)
            g.scale_(group_scale(rms, lr * gamma * c * a))

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(group RMS values, entries per group) over all groups, flat."""
        rms = torch.cat([g.rms().cpu() for g in self.groups])
        sizes = torch.cat([torch.full((g.n,), float(g.sizes)) for g in self.groups])
        return rms, sizes

    def zero_fraction(self) -> float:
        """Fraction of entries that lie in all-zero groups."""
        rms, sizes = self.values()
        return float(sizes[rms == 0].sum() / sizes.sum())


def unit_groups(layers: list[dict[str, nn.Module]], num_heads: int) -> list[GroupSet]:
    """Per layer two GroupSets: heads (Q/K/V rows and biases, attention-output columns) and FFN
    neurons (FFN-input row and bias, FFN-output column). ``layers``: role -> Linear, with the
    roles of ``passes.families.base.ROLES``."""
    out = []
    for layer in layers:
        head_parts = []
        for role in HEAD_ROLES:
            head_parts.append((raw(layer[role]), 0))
            if layer[role].bias is not None:
                head_parts.append((raw(layer[role], "bias"), 0))
        head_parts.append((raw(layer["attn_out"]), 1))
        ffn_in, ffn_out = layer["ffn_in"], layer["ffn_out"]
        ffn_parts = [(raw(ffn_in), 0)] + ([(raw(ffn_in, "bias"), 0)] if ffn_in.bias is not None else [])
        ffn_parts.append((raw(ffn_out), 1))
        out += [GroupSet(head_parts, num_heads), GroupSet(ffn_parts, ffn_in.out_features)]
    return out


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor | None, q: float) -> float:
    """The smallest value ``v`` such that entries ``<= v`` carry at least ``q`` of the weight."""
    values = values.float().reshape(-1)
    if values.numel() == 0:
        return 0.0
    weights = torch.ones_like(values) if weights is None else weights.float().reshape(-1)
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    k = int(torch.searchsorted(cum, q * cum[-1]).clamp(max=values.numel() - 1))
    return float(values[order][k])


def auto_gamma(q: float, eps: float, lr_sum: float, margin: float = 1.0) -> float:
    """``gamma`` that takes a weight (or group RMS) of size ``q`` to exactly 0 under the prox
    alone over a phase whose learning rates sum to ``lr_sum`` (continuous reweighting):
    ``margin * (q^2 / 2 + eps * q) / lr_sum``. ``margin > 1`` offsets the gradient's pull back
    and the lag of reweighting only every few steps."""
    if lr_sum <= 0 or q <= 0:
        return 0.0
    return margin * (0.5 * q * q + eps * q) / lr_sum


def lr_sum(lr: float, schedule_fn, steps: int, warmup: int, total: int) -> float:
    """Sum of the learning rates of steps ``0 .. steps-1`` under ``lr * schedule_fn(t, warmup, total)``."""
    return sum(lr * schedule_fn(t, warmup, total) for t in range(steps))


def prox_steps(total: int, fraction: float) -> int:
    """Optimizer steps of the proximal phase: ``round(fraction * total)``, within [0, total]."""
    return min(total, max(0, int(math.floor(fraction * total + 0.5))))
