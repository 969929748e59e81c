"""One mask mechanism for every pruning method: ``weight = original * mask`` through
``torch.nn.utils.parametrize``, with the mask a non-trainable buffer.

The torch.ao.pruning life cycle: :meth:`MaskSet.attach` (prepare) -> ``apply_*`` / ``set_mask``
during training (step) -> :meth:`MaskSet.bake` (squash_mask). Because the mask multiplies the
weight in every forward, a masked weight is exactly 0 whatever the optimizer does to the
``original`` tensor (Adam momentum, weight decay), and gradients of masked entries are 0.

Typical use::

    masks = MaskSet.attach(model)                 # the six encoder Linears of every layer
    masks.apply_magnitude(0.9, scope="global")    # unstructured, exact count
    ...train...                                    # masks survive optimizer steps
    masks.bake()                                   # plain weights with the zeros baked in

Extension points for other methods:

- ``apply_scores(scores, sparsity, scope)``: any criterion (movement, first-order, ...).
- ``add_scores()``: learnable straight-through score tensors for movement pruning (Sanh et al.
  2020, arXiv:2005.07683): the forward uses ``mask`` while ``dL/dscores = dL/dW' * W``; the
  caller re-derives the mask from the scores (``apply_scores`` or ``set_mask``) after each step.
- Structured (:mod:`passes._masks.structured`): ``structured_magnitude_scores`` /
  ``apply_structured`` / ``set_structured`` mask whole attention heads (Q/K/V rows and biases,
  attention-output columns) and FFN neurons (FFN-input rows and bias, FFN-output columns).

The Linears are found by role (``query`` ... ``ffn_out``, :mod:`passes.families.base`) through the
model's family, never by module path. "Sparsity" is always the fraction of zeroed Linear
*weights* (biases not counted), over the modules the MaskSet holds (by default the six encoder
Linears per layer).
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn
from torch.nn.utils import parametrize

from passes._masks.mask import SCOPES, Mask, encoder_linears, lowest_k, mask_of, n_prune, sparsity_report
from passes._masks.structured import StructuredMasks
from passes.families import family_of

__all__ = ["SCOPES", "Mask", "MaskSet", "encoder_linears", "lowest_k", "sparsity_report"]


class MaskSet(StructuredMasks):
    """Masks on a fixed set of Linear modules of one model (see the module docstring)."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Linear]):
        self.model, self.modules = model, dict(modules)
        self.target: tuple[torch.Tensor, torch.Tensor, float] | None = None  # see set_target

    @cached_property
    def roles(self) -> dict[str, tuple[int, str]]:
        """Module name -> ``(layer, role)`` of the model's role Linears (its family's)."""
        return family_of(self.model).linear_roles()

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    def attach(cls, model: nn.Module, modules: dict[str, nn.Linear] | None = None, *,
               bias: bool = False) -> "MaskSet":
        """Put an all-ones mask on ``modules`` (default :func:`encoder_linears`); with ``bias``
        also on their biases (structured pruning masks Q/K/V and FFN-input biases; attach them
        before training so state_dict keys stay the same). Already-masked modules are reused."""
        modules = encoder_linears(model) if modules is None else modules
        for module in modules.values():
            targets = ["weight"] + (["bias"] if bias and module.bias is not None else [])
            for t in targets:
                if mask_of(module, t) is None:
                    parametrize.register_parametrization(module, t, Mask(getattr(module, t)))
        return cls(model, modules)

    @classmethod
    def from_model(cls, model: nn.Module) -> "MaskSet":
        """The MaskSet already attached to ``model`` (e.g. after ``copy.deepcopy``)."""
        return cls(model, {n: m for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) and mask_of(m) is not None})

    def bake(self) -> None:
        """Remove the parametrizations, keeping ``original * mask`` as plain weights/biases:
        state_dict keys are the model's normal ones again (save_pretrained, ONNX export)."""
        with torch.no_grad():
            for module in self.modules.values():
                for t in ("weight", "bias"):
                    mask = mask_of(module, t)
                    if mask is None:
                        continue
                    value = getattr(module.parametrizations, t).original * mask.mask
                    parametrize.remove_parametrizations(module, t, leave_parametrized=False)
                    getattr(module, t).copy_(value)
                # nn.Linear's parameter order again (weight, bias): same state_dict as before
                if module._parameters.get("bias") is not None:
                    module._parameters["bias"] = module._parameters.pop("bias")
        self.modules = {}

    # -- masks ------------------------------------------------------------------------------
    def mask(self, name: str, tensor: str = "weight") -> torch.Tensor:
        """The mask buffer of module ``name`` (``tensor``: "weight" or "bias")."""
        m = mask_of(self.modules[name], tensor)
        if m is None:
            raise KeyError(f"{name}.{tensor} has no mask (attach with bias=True for biases)")
        return m.mask

    def set_mask(self, name: str, mask: torch.Tensor, tensor: str = "weight") -> None:
        """Replace the mask of ``name``.``tensor`` (bool or 0/1 values of the same shape)."""
        buf = self.mask(name, tensor)
        if tuple(mask.shape) != tuple(buf.shape):
            raise ValueError(f"mask for {name}.{tensor} has shape {tuple(mask.shape)}, "
                             f"expected {tuple(buf.shape)}")
        with torch.no_grad():
            buf.copy_(mask.to(buf.device, buf.dtype))

    def weight(self, name: str) -> torch.Tensor:
        """The masked (effective) weight of ``name``, detached."""
        return self.modules[name].weight.detach()

    def add_scores(self, init: float = 0.0) -> dict[str, nn.Parameter]:
        """Learnable straight-through scores (same shape as each weight, trainable Parameters
        named ``...parametrizations.weight.0.scores``) for movement pruning. Give them their own
        optimizer group (``train(param_groups=...)``); re-derive masks after each step."""
        out = {}
        for name, module in self.modules.items():
            m = mask_of(module)
            if m.scores is None:
                m.scores = nn.Parameter(torch.full_like(m.mask, init))
            out[name] = m.scores
        return out

    def sparsity_report(self) -> dict:
        """:func:`sparsity_report` of the masked weights (``layers`` by the family's roles)."""
        return sparsity_report(self.modules, self.roles)

    # -- unstructured -----------------------------------------------------------------------
    def apply_scores(self, scores: dict[str, torch.Tensor], sparsity: float,
                     scope: str = "global") -> None:
        """Keep the highest ``scores``; zero exactly ``round(sparsity * n)`` weights per scope.

        ``scope="global"``: one ranking over all modules; ``"layer"``: each Linear (matrix)
        separately. Pruned weights may come back (movement pruning); see apply_magnitude."""
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r}: choose one of {', '.join(SCOPES)}")
        names = list(self.modules)
        if scope == "layer":
            for name in names:
                self.set_mask(name, ~lowest_k(scores[name], n_prune(sparsity, scores[name].numel())))
            return
        flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
        pruned = lowest_k(flat, n_prune(sparsity, flat.numel()))
        start = 0
        for name in names:
            n = scores[name].numel()
            self.set_mask(name, ~pruned[start:start + n].reshape(scores[name].shape))
            start += n

    def apply_magnitude(self, sparsity: float, scope: str = "global") -> None:
        """Magnitude pruning of the currently masked weights (``scope`` as in apply_scores:
        "layer" = each Linear matrix): scores ``|W * mask|`` with already pruned entries ranked
        first, so a pruned weight never comes back (masks only shrink)."""
        scores = {}
        with torch.no_grad():
            for name in self.modules:
                keep = self.mask(name) > 0
                scores[name] = torch.where(keep, self.weight(name).abs().float(),
                                           torch.full_like(keep, -1.0, dtype=torch.float32))
        old = {n: self.mask(n).clone() for n in self.modules}
        self.apply_scores(scores, sparsity, scope)
        for name in self.modules:
            self.set_mask(name, self.mask(name) * old[name])
