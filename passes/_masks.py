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
- Structured: ``structured_magnitude_scores`` / ``apply_structured`` / ``set_structured`` mask
  whole attention heads (Q/K/V rows and biases, attention-output columns) and FFN neurons
  (intermediate rows and bias, output columns).

"Sparsity" is always the fraction of zeroed Linear *weights* (biases not counted), over the
modules the MaskSet holds (by default the six encoder Linears per layer).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn.utils import parametrize

ENCODER_KINDS = ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense")
"""The six encoder Linears of a BERT-layout layer, by their name inside ``encoder.layer.N``."""

_ENCODER_RE = re.compile(r"^(?:.*\.)?encoder\.layer\.(\d+)\.(" +
                         "|".join(re.escape(k) for k in ENCODER_KINDS) + r")$")
SCOPES = ("global", "layer")


def parse_linear_name(name: str) -> tuple[int, str] | None:
    """``(layer index, kind)`` of an encoder Linear name, or None for any other module."""
    m = _ENCODER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def encoder_linears(model: nn.Module, include: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
    """The six encoder Linears per layer of a BERT-layout model, by module name, in model order.

    Embeddings, LayerNorm, pooler and classifier are left out unless ``include`` names
    ``"pooler"`` (``*.pooler.dense``) and/or ``"classifier"`` (Linears in ``classifier*``).
    """
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        top = name.split(".")[0]
        if (parse_linear_name(name) or ("pooler" in include and name.endswith("pooler.dense"))
                or ("classifier" in include and top == "classifier")):
            out[name] = module
    return out


def sparsity_report(modules: dict[str, nn.Module]) -> dict:
    """Zero fractions of the given Linears' weights: ``{"modules": {name: f}, "layers":
    {"0": f, ...}, "overall": f, "zeros": n, "total": n}``. ``layers`` covers encoder
    Linears only; ``overall`` covers every given module (works before and after bake)."""
    mods, layers, zeros, total = {}, {}, 0, 0
    with torch.no_grad():
        for name, module in modules.items():
            w = module.weight
            z, n = int((w == 0).sum()), w.numel()
            mods[name] = z / n
            zeros, total = zeros + z, total + n
            parsed = parse_linear_name(name)
            if parsed is not None:
                lz, ln = layers.get(str(parsed[0]), (0, 0))
                layers[str(parsed[0])] = (lz + z, ln + n)
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


def _mask_of(module: nn.Module, tensor: str = "weight") -> Mask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    found = [p for p in getattr(module.parametrizations, tensor) if isinstance(p, Mask)]
    return found[0] if found else None


def _n_prune(sparsity: float, n: int) -> int:
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


class MaskSet:
    """Masks on a fixed set of Linear modules of one model (see the module docstring)."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Linear]):
        self.model, self.modules = model, dict(modules)
        self.target: tuple[torch.Tensor, torch.Tensor, float] | None = None  # see set_target

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    def attach(cls, model: nn.Module, modules: dict[str, nn.Linear] | None = None, *,
               bias: bool = False) -> "MaskSet":
        """Put an all-ones mask on ``modules`` (default :func:`encoder_linears`); with ``bias``
        also on their biases (structured pruning masks Q/K/V and intermediate biases; attach them
        before training so state_dict keys stay the same). Already-masked modules are reused."""
        modules = encoder_linears(model) if modules is None else modules
        for module in modules.values():
            targets = ["weight"] + (["bias"] if bias and module.bias is not None else [])
            for t in targets:
                if _mask_of(module, t) is None:
                    parametrize.register_parametrization(module, t, Mask(getattr(module, t)))
        return cls(model, modules)

    @classmethod
    def from_model(cls, model: nn.Module) -> "MaskSet":
        """The MaskSet already attached to ``model`` (e.g. after ``copy.deepcopy``)."""
        return cls(model, {n: m for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) and _mask_of(m) is not None})

    def bake(self) -> None:
        """Remove the parametrizations, keeping ``original * mask`` as plain weights/biases:
        state_dict keys are the model's normal ones again (save_pretrained, ONNX export)."""
        with torch.no_grad():
            for module in self.modules.values():
                for t in ("weight", "bias"):
                    mask = _mask_of(module, t)
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
        m = _mask_of(self.modules[name], tensor)
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
            m = _mask_of(module)
            if m.scores is None:
                m.scores = nn.Parameter(torch.full_like(m.mask, init))
            out[name] = m.scores
        return out

    def sparsity_report(self) -> dict:
        """:func:`sparsity_report` of the masked weights."""
        return sparsity_report(self.modules)

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
                self.set_mask(name, ~lowest_k(scores[name], _n_prune(sparsity, scores[name].numel())))
            return
        flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
        pruned = lowest_k(flat, _n_prune(sparsity, flat.numel()))
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

    # -- structured -------------------------------------------------------------------------
    def _layers(self) -> list[dict[str, str]]:
        """Per encoder layer: kind -> module name; all six Linears must be present."""
        layers: dict[int, dict[str, str]] = {}
        for name in self.modules:
            parsed = parse_linear_name(name)
            if parsed is not None:
                layers.setdefault(parsed[0], {})[parsed[1]] = name
        if not layers or any(len(v) != len(ENCODER_KINDS) for v in layers.values()):
            raise ValueError("structured masks need all six encoder Linears of every layer")
        return [layers[i] for i in sorted(layers)]

    def _num_heads(self) -> int:
        cfg = getattr(self.model, "config", None)
        if cfg is None or not getattr(cfg, "num_attention_heads", None):
            raise ValueError("structured masks need model.config.num_attention_heads")
        return int(cfg.num_attention_heads)

    def _unit_sizes(self, layer: dict[str, str]) -> tuple[int, int]:
        """Weights per head (Q/K/V rows + attention-output columns) and per FFN neuron."""
        m = {k: self.modules[v] for k, v in layer.items()}
        d = m["attention.self.query"].out_features // self._num_heads()
        head = d * (m["attention.self.query"].in_features + m["attention.self.key"].in_features
                    + m["attention.self.value"].in_features + m["attention.output.dense"].out_features)
        return head, m["intermediate.dense"].in_features + m["output.dense"].out_features

    def structured_magnitude_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 norm of each head's weights (Q/K/V rows, attention-output columns) ``[L, H]`` and
        of each FFN neuron's weights (intermediate row, output column) ``[L, F]``."""
        heads, neurons, n_heads = [], [], self._num_heads()
        with torch.no_grad():
            for layer in self._layers():
                w = {k: self.weight(v).float() for k, v in layer.items()}
                rows = sum(w[k].pow(2).sum(1) for k in ENCODER_KINDS[:3])  # per Q/K/V output row
                rows = rows + w["attention.output.dense"].pow(2).sum(0)      # + AO input column
                heads.append(rows.reshape(n_heads, -1).sum(1).sqrt().cpu())
                ffn = w["intermediate.dense"].pow(2).sum(1) + w["output.dense"].pow(2).sum(0)
                neurons.append(ffn.sqrt().cpu())
        return torch.stack(heads), torch.stack(neurons)

    def structured_keep(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool ``[L, H]`` heads and ``[L, F]`` neurons still kept (any unmasked weight)."""
        heads, neurons, n_heads = [], [], self._num_heads()
        for layer in self._layers():
            q = (self.mask(layer["attention.self.query"]) != 0).any(1).cpu()
            heads.append(q.reshape(n_heads, -1).any(1))
            neurons.append((self.mask(layer["intermediate.dense"]) != 0).any(1).cpu())
        return torch.stack(heads), torch.stack(neurons)

    def set_structured(self, head_keep: torch.Tensor, neuron_keep: torch.Tensor) -> None:
        """Masks from bool ``[L, H]`` heads and ``[L, F]`` neurons to keep: a dropped head zeroes
        its Q/K/V rows and biases and its attention-output columns; a dropped neuron its
        intermediate row and bias and its output column. Biases need ``attach(bias=True)``."""
        for l, layer in enumerate(self._layers()):
            rows = head_keep[l].repeat_interleave(
                self.modules[layer["attention.self.query"]].out_features // head_keep.shape[1]).float()
            for kind in ENCODER_KINDS[:3]:
                self.set_mask(layer[kind], rows[:, None].expand_as(self.mask(layer[kind])))
                self.set_mask(layer[kind], rows, tensor="bias")
            ao = layer["attention.output.dense"]
            self.set_mask(ao, rows[None, :].expand_as(self.mask(ao)))
            f, inter = neuron_keep[l].float(), layer["intermediate.dense"]
            self.set_mask(inter, f[:, None].expand_as(self.mask(inter)))
            self.set_mask(inter, f, tensor="bias")
            self.set_mask(layer["output.dense"], f[None, :].expand_as(self.mask(layer["output.dense"])))

    def set_target(self, heads: list[int], neurons: list[int]) -> float:
        """Make :meth:`apply_structured` prune towards a given structure: ``heads[l]`` heads and
        ``neurons[l]`` FFN neurons kept in layer ``l`` (e.g. a structure searched for a measured
        speedup). Returns the encoder-Linear sparsity of that structure: a method's ramp up to it
        reaches the exact counts (at a ramp sparsity ``s`` each layer has pruned the fraction
        ``s / target`` of the units it loses). ValueError on counts that do not fit the model."""
        layers = self._layers()
        n_heads, width = self._num_heads(), self.modules[layers[0]["intermediate.dense"]].out_features
        if len(heads) != len(layers) or len(neurons) != len(layers):
            raise ValueError(f"structure has {len(heads)} layers, the model {len(layers)}")
        for l, (h, f) in enumerate(zip(heads, neurons)):
            if not (0 <= h <= n_heads and 0 <= f <= width):
                raise ValueError(f"structure layer {l}: {h} heads and {f} neurons do not fit {n_heads} heads "
                                 f"and {width} neurons")
        head_w, neuron_w = self._unit_sizes(layers[0])
        total = len(layers) * (n_heads * head_w + width * neuron_w)
        kept = sum(h * head_w + f * neuron_w for h, f in zip(heads, neurons))
        self.target = (torch.tensor(heads), torch.tensor(neurons), 1.0 - kept / total)
        return self.target[2]

    def _apply_target(self, head_scores, neuron_scores, sparsity: float):
        """:meth:`apply_structured` towards :attr:`target`: per layer, the lowest-scoring units up to
        the share ``sparsity / target sparsity`` of the units the layer loses (all at >= 1)."""
        heads, neurons, final = self.target
        share = 1.0 if final <= 0 else min(1.0, sparsity / final)
        old_h, old_f = self.structured_keep()
        keep_h, keep_f = torch.ones_like(old_h), torch.ones_like(old_f)
        for l in range(old_h.shape[0]):
            hs, fs = head_scores[l].float().clone(), neuron_scores[l].float().clone()
            hs[~old_h[l]], fs[~old_f[l]] = -math.inf, -math.inf
            gone_h, gone_f = hs.numel() - int(heads[l]), fs.numel() - int(neurons[l])
            k_h = max(int((~old_h[l]).sum()), gone_h if share >= 1 else int(math.floor(share * gone_h + 1e-9)))
            k_f = max(int((~old_f[l]).sum()), gone_f if share >= 1 else int(math.floor(share * gone_f + 0.5)))
            keep_h[l], keep_f[l] = ~lowest_k(hs, min(k_h, gone_h)), ~lowest_k(fs, min(k_f, gone_f))
        self.set_structured(keep_h, keep_f)
        return keep_h, keep_f

    def apply_structured(self, head_scores: torch.Tensor, neuron_scores: torch.Tensor,
                         sparsity: float, scope: str = "global", fill: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the lowest-scoring heads and FFN neurons so that ``sparsity`` of the encoder
        Linear weights are removed; returns the kept ``(heads [L, H], neurons [L, F])``.

        Heads and neurons are pruned at the same ratio (``floor(sparsity * heads)`` heads);
        with ``fill`` the neuron count absorbs the head rounding, so the target is met to within
        one neuron; without it ``round(sparsity * neurons)`` (use during a gradual ramp so counts
        stay monotone, and ``fill=True`` at the final sparsity). ``scope="global"`` ranks across
        layers (uneven per layer; a layer may lose every head or neuron), ``"layer"`` prunes the
        same amount in every layer. Units already dropped stay dropped. With a :attr:`target`
        structure (:meth:`set_target`) its per-layer counts replace the scope.
        """
        if self.target is not None:
            return self._apply_target(head_scores, neuron_scores, sparsity)
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r}: choose one of {', '.join(SCOPES)}")
        layers = self._layers()
        head_w, neuron_w = self._unit_sizes(layers[0])
        old_h, old_f = self.structured_keep()
        keep_h, keep_f = torch.ones_like(old_h), torch.ones_like(old_f)
        groups = [slice(None)] if scope == "global" else [slice(i, i + 1) for i in range(len(layers))]
        for g in groups:
            hs, fs = head_scores[g].float().clone(), neuron_scores[g].float().clone()
            hs[~old_h[g]], fs[~old_f[g]] = -math.inf, -math.inf
            total = hs.numel() * head_w + fs.numel() * neuron_w
            k_h = max(int((~old_h[g]).sum()), int(math.floor(sparsity * hs.numel() + 1e-9)))
            k_h = min(k_h, hs.numel())
            k_f = (sparsity * total - k_h * head_w) / neuron_w if fill else sparsity * fs.numel()
            k_f = min(fs.numel(), max(int((~old_f[g]).sum()), int(math.floor(k_f + 0.5))))
            keep_h[g] = ~lowest_k(hs, k_h)
            keep_f[g] = ~lowest_k(fs, k_f)
        self.set_structured(keep_h, keep_f)
        return keep_h, keep_f
