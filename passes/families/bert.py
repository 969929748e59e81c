"""BERT's layout (BERT, MiniLM, bge, e5, gte: ``model_type`` bert).

Works on transformers 4.57 and 5.x alike: both keep the attention bookkeeping in
``attention.self.{num_attention_heads, attention_head_size, all_head_size}`` (5.x reshapes with
``-1`` heads, 4.57 with ``num_attention_heads``), and both call ``attention.self(hidden_states,
...)`` and read a 2-tuple ``(context, weights)`` back.

A layer left with 0 heads computes ``LayerNorm(W_o.bias + x)`` (:class:`NoHeads` and a
:class:`~passes.families.base.BiasOnly` output projection), one with 0 FFN neurons
``LayerNorm(W_2.bias + a)`` (:class:`NoFFN`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from compressor.errors import ModelError
from passes.families.base import BiasOnly, Family


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


class BertFamily(Family):
    """``base_model.encoder.layer[i]``: ``attention.self.{query,key,value}``,
    ``attention.output.{dense,LayerNorm}``, ``intermediate.dense`` (+ activation),
    ``output.{dense,LayerNorm}``; embeddings word + position + token type + LayerNorm."""

    model_types: ClassVar[tuple[str, ...]] = ("bert",)
    role_paths: ClassVar[dict[str, str]] = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
    }
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "wordpiece"

    def layers(self) -> nn.ModuleList:
        layers = self._get(self.base, self.layers_path)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            raise ModelError(f"model {type(self.model).__name__} has no base_model.encoder.layer list: "
                             "not a BERT-family encoder")
        for i, layer in enumerate(layers):
            self.check_layer(i, layer)
        return layers

    def check_layer(self, index: int, layer: nn.Module) -> None:
        att = getattr(layer, "attention", None)
        ok = (att is not None and hasattr(att, "self") and hasattr(att, "output")
              and hasattr(layer, "intermediate") and hasattr(layer, "output")
              and hasattr(att.self, "attention_head_size"))
        if not ok:
            raise ModelError(f"layer {index} of {type(self.model).__name__} is not a BERT layer "
                             "(attention.self/output, intermediate, output): cannot slice it")

    def head_size(self, layer: nn.Module) -> int:
        return int(layer.attention.self.attention_head_size)

    def layer_sizes(self, layer: nn.Module) -> tuple[int, int]:
        heads = int(layer.attention.self.num_attention_heads)
        dense = getattr(layer.intermediate, "dense", None)
        return heads, (int(dense.out_features) if dense is not None else 0)

    def keep_heads(self, layer: nn.Module, heads: list[int]) -> None:
        sa, out = layer.attention.self, layer.attention.output
        d = int(sa.attention_head_size)
        if not heads:
            layer.attention.self = NoHeads(d)
            if not isinstance(out.dense, BiasOnly):
                out.dense = BiasOnly(out.dense.bias)
            return
        self.slice_heads(layer, heads, d)
        sa.num_attention_heads = len(heads)
        sa.attention_head_size = d
        sa.all_head_size = len(heads) * d

    def keep_ffn(self, layer: nn.Module, neurons: list[int]) -> None:
        if isinstance(layer.intermediate, NoFFN):
            return
        if not neurons:
            layer.intermediate = NoFFN()
            layer.output.dense = BiasOnly(layer.output.dense.bias)
            return
        self.slice_ffn(layer, neurons)

    def ffn_activation(self, layer: nn.Module):
        return layer.intermediate.intermediate_act_fn

    def ffn_hidden(self, layer: nn.Module) -> nn.Module:
        return layer.intermediate

    def block_norm(self, layer: nn.Module, kind: str, pre):
        return (layer.attention.output if kind == "attn" else layer.output).LayerNorm(pre)

    def layer_hidden(self, layer: nn.Module) -> list:
        """The attention block's and the FFN block's LayerNorms."""
        return [(layer.attention.output.LayerNorm, "out"), (layer.output.LayerNorm, "out")]
