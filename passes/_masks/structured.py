"""Structured masks of a :class:`passes._masks.MaskSet` (mixed into it): whole attention heads
(Q/K/V rows and biases, attention-output columns) and FFN neurons (FFN-input row and bias,
FFN-output column), found through the roles of the model's family (``passes.families``)."""

from __future__ import annotations

import math

import torch

from passes._masks.mask import SCOPES, lowest_k
from passes.families import family_of
from passes.families.base import HEAD_ROLES, ROLES


class StructuredMasks:
    """The head and neuron methods of MaskSet (which gives ``model``, ``modules``, ``roles``,
    ``target``, ``mask``, ``set_mask`` and ``weight``)."""

    def by_layer(self) -> list[dict[str, str]]:
        """Per encoder layer: role -> module name; all six role Linears must be present."""
        layers: dict[int, dict[str, str]] = {}
        for name in self.modules:
            if name in self.roles:
                layer, role = self.roles[name]
                layers.setdefault(layer, {})[role] = name
        if not layers or any(len(v) != len(ROLES) for v in layers.values()):
            raise ValueError("structured masks need all six encoder Linears of every layer")
        return [layers[i] for i in sorted(layers)]

    def unit_sizes(self) -> tuple[int, int]:
        """Weights per head and per FFN neuron (of the first layer, as every layer when dense)."""
        return self._unit_sizes(self.by_layer()[0])

    def _num_heads(self) -> int:
        return family_of(self.model).num_heads()

    def _unit_sizes(self, layer: dict[str, str]) -> tuple[int, int]:
        """Weights per head (Q/K/V rows + attention-output columns) and per FFN neuron."""
        m = {k: self.modules[v] for k, v in layer.items()}
        d = m["query"].out_features // self._num_heads()
        head = d * (m["query"].in_features + m["key"].in_features + m["value"].in_features
                    + m["attn_out"].out_features)
        return head, m["ffn_in"].in_features + m["ffn_out"].out_features

    def structured_magnitude_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 norm of each head's weights (Q/K/V rows, attention-output columns) ``[L, H]`` and
        of each FFN neuron's weights (FFN-input row, FFN-output column) ``[L, F]``."""
        heads, neurons, n_heads = [], [], self._num_heads()
        with torch.no_grad():
            for layer in self.by_layer():
                w = {k: self.weight(v).float() for k, v in layer.items()}
                rows = sum(w[k].pow(2).sum(1) for k in HEAD_ROLES)  # per Q/K/V output row
                rows = rows + w["attn_out"].pow(2).sum(0)            # + attention-output input column
                heads.append(rows.reshape(n_heads, -1).sum(1).sqrt().cpu())
                ffn = w["ffn_in"].pow(2).sum(1) + w["ffn_out"].pow(2).sum(0)
                neurons.append(ffn.sqrt().cpu())
        return torch.stack(heads), torch.stack(neurons)

    def structured_keep(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bool ``[L, H]`` heads and ``[L, F]`` neurons still kept (any unmasked weight)."""
        heads, neurons, n_heads = [], [], self._num_heads()
        for layer in self.by_layer():
            q = (self.mask(layer["query"]) != 0).any(1).cpu()
            heads.append(q.reshape(n_heads, -1).any(1))
            neurons.append((self.mask(layer["ffn_in"]) != 0).any(1).cpu())
        return torch.stack(heads), torch.stack(neurons)

    def set_structured(self, head_keep: torch.Tensor, neuron_keep: torch.Tensor) -> None:
        """Masks from bool ``[L, H]`` heads and ``[L, F]`` neurons to keep: a dropped head zeroes
        its Q/K/V rows and biases and its attention-output columns; a dropped neuron its
        FFN-input row and bias and its FFN-output column. Biases (where the Linears have them) need
        ``attach(bias=True)``."""
        for l, layer in enumerate(self.by_layer()):
            rows = head_keep[l].repeat_interleave(
                self.modules[layer["query"]].out_features // head_keep.shape[1]).float()
            for role in HEAD_ROLES:
                self.set_mask(layer[role], rows[:, None].expand_as(self.mask(layer[role])))
                if self.modules[layer[role]].bias is not None:  # ModernBERT's have none
                    self.set_mask(layer[role], rows, tensor="bias")
            ao = layer["attn_out"]
            self.set_mask(ao, rows[None, :].expand_as(self.mask(ao)))
            f, ffn_in, ffn_out = neuron_keep[l].float(), layer["ffn_in"], layer["ffn_out"]
            self.set_mask(ffn_in, f[:, None].expand_as(self.mask(ffn_in)))
            if self.modules[ffn_in].bias is not None:
                self.set_mask(ffn_in, f, tensor="bias")
            self.set_mask(ffn_out, f[None, :].expand_as(self.mask(ffn_out)))

    def set_target(self, heads: list[int], neurons: list[int]) -> float:
        """Make :meth:`apply_structured` prune towards a given structure: ``heads[l]`` heads and
        ``neurons[l]`` FFN neurons kept in layer ``l`` (e.g. a structure searched for a measured
        speedup). Returns the encoder-Linear sparsity of that structure: a method's ramp up to it
        reaches the exact counts (at a ramp sparsity ``s`` each layer has pruned the fraction
        ``s / target`` of the units it loses). ValueError on counts that do not fit the model."""
        layers = self.by_layer()
        n_heads, width = self._num_heads(), self.modules[layers[0]["ffn_in"]].out_features
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
        layers = self.by_layer()
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
