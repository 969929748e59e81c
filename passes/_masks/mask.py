"""The pieces of :mod:`passes._masks`: the mask parametrization, the Linears a MaskSet holds by
default, the exact lowest-``k`` selection and the sparsity report."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from passes.families import family_of

SCOPES = ("global", "layer")


def encoder_linears(model: nn.Module, include: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """The role Linears of every encoder layer (six per layer: Q, K, V, attention output, FFN
    input and output) by module name, in model order, as the model's family lays them out
    (:meth:`passes.families.base.Family.linears`).

    Embeddings, norms, pooler and classifier are left out unless ``include`` names ``"pooler"``
    and/or ``"classifier"`` (the task head's Linears).
    """
    return family_of(model).linears(include)


def sparsity_report(modules: dict[str, nn.Module], roles: dict[str, tuple[int, str]] | None = None) -> dict:
    """Zero fractions of the given Linears' weights: ``{"modules": {name: f}, "layers":
    {"0": f, ...}, "overall": f, "zeros": n, "total": n}``. ``layers`` covers the encoder
    Linears that ``roles`` names (module name -> ``(layer, role)``, the family's
    ``linear_roles()``; none without it); ``overall`` covers every given module (works before
    and after bake)."""
    roles = roles or {}
    mods, layers, zeros, total = {}, {}, 0, 0
    with torch.no_grad():
        for name, module in modules.items():
            w = module.weight
            z, n = int((w == 0).sum()), w.numel()
            mods[name] = z / n
            zeros, total = zeros + z, total + n
            if name in roles:
                layer = str(roles[name][0])
                lz, ln = layers.get(layer, (0, 0))
                layers[layer] = (lz + z, ln + n)
    return {"modules": mods, "layers": {k: z / n for k, (z, n) in layers.items()},
            "overall": zeros / total if total else 0.0, "zeros": zeros, "total": total}


class Mask(nn.Module):
    """Parametrization ``x * mask`` (a buffer). With ``scores`` set (see
    :meth:`MaskSet.add_scores`) the mask becomes straight-through: value ``mask``, gradient
    flowing to ``scores`` as if ``mask`` were ``scores``."""

    def __init__(self, like: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(like, requires_grad=False))
        self.register_parameter("scores", None)

    def forward(self, x):
        m = self.mask
        if self.scores is not None:
            m = m + (self.scores - self.scores.detach())  # adds an exact 0 in value
        return x * m


def mask_of(module: nn.Module, tensor: str = "weight") -> Mask | None:
    """The :class:`Mask` on ``module.<tensor>``, or None."""
    if not parametrize.is_parametrized(module, tensor):
        return None
    found = [p for p in getattr(module.parametrizations, tensor) if isinstance(p, Mask)]
    return found[0] if found else None


def n_prune(sparsity: float, n: int) -> int:
    """``round(sparsity * n)`` within ``[0, n]``."""
    return min(n, max(0, int(math.floor(sparsity * n + 0.5))))


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor (shape of ``scores``) marking exactly ``k`` lowest entries (ties by position)."""
    flat = scores.detach().reshape(-1).float()
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k >= flat.numel():
        out[:] = True
    elif k > 0:
        thr = torch.kthvalue(flat, k).values
        out = flat < thr
        need = k - int(out.sum())
        if need > 0:
            out[torch.nonzero(flat == thr).reshape(-1)[:need]] = True
    return out.reshape(scores.shape)
