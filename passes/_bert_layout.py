"""BERT-family encoder layout: find the layers, slice their Linears to kept heads / FFN neurons,
and stand in for a layer's attention or FFN once nothing of it is left.

Works on transformers 4.57 and 5.x alike: both keep the attention bookkeeping in
``attention.self.{num_attention_heads, attention_head_size, all_head_size}`` (5.x reshapes with
``-1`` heads, 4.57 with ``num_attention_heads``), and both call ``attention.self(hidden_states,
...)`` and read a 2-tuple ``(context, weights)`` back. Any model whose ``base_model.encoder.layer``
holds BERT-shaped layers (BERT, RoBERTa, ELECTRA, ...) fits.
"""

from __future__ import annotations

import torch
from torch import nn

from compressor.errors import ModelError


class NoHeads(nn.Module):
    """Stands in for the self-attention of a layer with 0 heads left.

    Returns ``(hidden_states, None)`` whatever the caller's signature (4.57 passes ``head_mask``,
    ``past_key_values``...; 5.x passes ``cache`` and ``**kwargs``). The layer's
    ``attention.output.dense`` is then a :class:`BiasOnly`, so the attention block computes
    ``LayerNorm(dense.bias + hidden_states)``: the residual path and the bias stay.
    """

    def __init__(self, head_size: int):
        super().__init__()
        self.num_attention_heads = 0
        self.attention_head_size = head_size
        self.all_head_size = 0

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


class NoFFN(nn.Module):
    """Stands in for ``intermediate`` of a layer with 0 FFN neurons: passes its input on to a
    :class:`BiasOnly` ``output.dense``, so the FFN block is ``LayerNorm(bias + attention_output)``."""

    def forward(self, hidden_states):
        return hidden_states


class BiasOnly(nn.Module):
    """A Linear with no inputs left: returns its ``bias`` broadcast to the shape of its input
    (which is always hidden-sized where it is used). Keeps the state-dict key ``....bias``."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.in_features = 0
        self.out_features = bias.shape[0]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def forward(self, x):
        return self.bias.expand_as(x)


def encoder_layers(model) -> nn.ModuleList:
    """The list of encoder layers; ModelError if the model is not BERT-shaped."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ModelError(f"model {type(model).__name__} has no base_model.encoder.layer list: "
                         "strip supports BERT-family encoders only")
    for i, layer in enumerate(layers):
        att = getattr(layer, "attention", None)
        ok = (att is not None and hasattr(att, "self") and hasattr(att, "output")
              and hasattr(layer, "intermediate") and hasattr(layer, "output")
              and hasattr(att.self, "attention_head_size"))
        if not ok:
            raise ModelError(f"layer {i} of {type(model).__name__} is not a BERT layer "
                             "(attention.self/output, intermediate, output): strip cannot slice it")
    return layers


def layer_sizes(layer) -> tuple[int, int]:
    """(heads, FFN neurons) of one layer as it is now."""
    heads = int(layer.attention.self.num_attention_heads)
    dense = getattr(layer.intermediate, "dense", None)
    return heads, (int(dense.out_features) if dense is not None else 0)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (``dim=0``, outputs, and bias entries) or columns (``dim=1``,
    inputs) ``index`` of ``linear``; same dtype, device and requires_grad."""
    w = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    has_bias = linear.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device=w.device, dtype=w.dtype)
    new.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if has_bias:
        b = linear.bias.detach()
        b = b.index_select(0, index.to(b.device)) if dim == 0 else b
        new.bias = nn.Parameter(b.clone(), requires_grad=linear.bias.requires_grad)
    return new


def _rows(heads: list[int], head_size: int) -> torch.Tensor:
    idx = [h * head_size + j for h in heads for j in range(head_size)]
    return torch.tensor(idx, dtype=torch.long)


def keep_heads(layer, heads: list[int]) -> None:
    """Keep only attention heads ``heads`` (indices into the current heads) of ``layer``."""
    sa, out = layer.attention.self, layer.attention.output
    d = int(sa.attention_head_size)
    if not heads:
        layer.attention.self = NoHeads(d)
        if not isinstance(out.dense, BiasOnly):
            out.dense = BiasOnly(out.dense.bias)
        return
    rows = _rows(sorted(heads), d)
    for name in ("query", "key", "value"):
        setattr(sa, name, slice_linear(getattr(sa, name), rows, 0))
    out.dense = slice_linear(out.dense, rows, 1)
    sa.num_attention_heads = len(heads)
    sa.attention_head_size = d
    sa.all_head_size = len(heads) * d


def keep_ffn(layer, neurons: list[int]) -> None:
    """Keep only FFN neurons ``neurons`` (indices into the current intermediate size)."""
    if isinstance(layer.intermediate, NoFFN):
        return
    if not neurons:
        layer.intermediate = NoFFN()
        layer.output.dense = BiasOnly(layer.output.dense.bias)
        return
    idx = torch.tensor(sorted(neurons), dtype=torch.long)
    layer.intermediate.dense = slice_linear(layer.intermediate.dense, idx, 0)
    layer.output.dense = slice_linear(layer.output.dense, idx, 1)


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def encoder_flops(model, seq: int) -> int:
    """Estimated forward FLOPs of the encoder for one sequence of ``seq`` tokens.

    Per layer: ``2 * seq * sum(in * out over its nn.Linear modules)`` (one multiply-add per
    weight per token) plus ``2 * 2 * seq**2 * heads * head_size`` for the attention score
    (Q K^T) and context (P V) matmuls. Softmax, LayerNorm, GELU, biases and the stand-ins'
    broadcasts are left out (they are O(seq * hidden) or O(seq^2 * heads)).
    """
    total = 0
    for layer in encoder_layers(model):
        linear = sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
        sa = layer.attention.self
        total += 2 * seq * linear + 4 * seq * seq * int(sa.num_attention_heads) * int(sa.attention_head_size)
    return total
