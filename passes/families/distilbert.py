"""DistilBERT's layout (``model_type`` distilbert: distilbert-base-uncased and its fine-tunes).

``base_model.transformer.layer[i]``: ``attention.{q_lin,k_lin,v_lin,out_lin}`` (the output
projection lives inside the attention module), ``sa_layer_norm``, ``ffn.{lin1,lin2}`` (+
``ffn.activation``), ``output_layer_norm``; embeddings word + position + LayerNorm (no token
types); the task head is ``pre_classifier`` (a pooler-like Linear on [CLS], then ReLU) and
``classifier``.

Works on transformers 4.57 and 5.x alike:

- 4.57's attention (eager ``MultiHeadSelfAttention`` and its sdpa / flash subclasses) reshapes with
  ``dim_per_head = self.dim // self.n_heads`` and ``self.n_heads``; 5.x's
  ``DistilBertSelfAttention`` with ``-1`` heads of ``self.attention_head_size``. Slicing sets all
  three (``n_heads``, ``dim = n_heads * d``, ``attention_head_size = d``).
- 4.57's block calls ``self.attention(query=x, key=x, value=x, mask=..., head_mask=...,
  output_attentions=...)`` and reads ``[0]`` (or unpacks two with ``output_attentions``); 5.x
  calls ``self.attention(hidden_states, attention_mask=..., **kwargs)`` and unpacks two. The
  0-head stand-in (:class:`NoHeads`) takes either and returns the 2-tuple ``(out_lin.bias
  broadcast, None)``.

A layer left with 0 heads computes ``sa_layer_norm(out_lin.bias + x)`` (:class:`NoHeads` with a
:class:`~passes.families.base.BiasOnly` ``out_lin``: the state-dict key
``attention.out_lin.bias`` stays), one with 0 FFN neurons ``output_layer_norm(lin2.bias + a)``
(:class:`NoFFN`, key ``ffn.lin2.bias``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from compressor.errors import ModelError
from passes.families.base import BiasOnly, Family


class NoHeads(nn.Module):
    """Stands in for the attention of a DistilBERT layer with 0 heads left: returns
    ``(out_lin.bias broadcast to the input, None)`` whatever the caller's signature (4.57 passes
    ``query=x, key=x, value=x, mask=...`` by keyword, 5.x ``hidden_states`` positionally)."""

    def __init__(self, bias: torch.Tensor, head_size: int):
        super().__init__()
        self.n_heads = 0
        self.dim = 0
        self.attention_head_size = head_size
        self.out_lin = BiasOnly(bias)

    def forward(self, *args, **kwargs):
        x = args[0] if args else next(kwargs[k] for k in ("query", "hidden_states") if k in kwargs)
        return self.out_lin(x), None


class NoFFN(nn.Module):
    """Stands in for the ``ffn`` of a DistilBERT layer with 0 neurons left: ``lin2.bias`` broadcast
    to the input, through the FFN's dropout (as the masked FFN's output bias would be)."""

    def __init__(self, bias: torch.Tensor, dropout: nn.Module | None = None):
        super().__init__()
        self.lin2 = BiasOnly(bias)
        self.dropout = dropout if dropout is not None else nn.Identity()

    def forward(self, input):
        return self.dropout(self.lin2(input))


def _empty_hidden(x):
    """The activated hidden units of an FFN with no neurons: ``[..., 0]``."""
    return x.new_zeros(*x.shape[:-1], 0)


class DistilBertFamily(Family):
    """``base_model.transformer.layer[i]``: ``attention.{q_lin,k_lin,v_lin,out_lin}``,
    ``sa_layer_norm``, ``ffn.{lin1,lin2}`` (+ activation), ``output_layer_norm``."""

    model_types: ClassVar[tuple[str, ...]] = ("distilbert",)
    layers_path: ClassVar[str] = "transformer.layer"
    encoder_path: ClassVar[str] = "transformer"
    embeddings_path: ClassVar[str] = "embeddings"
    role_paths: ClassVar[dict[str, str]] = {
        "query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
        "attn_out": "attention.out_lin", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2",
    }
    # ORT's transformer optimizer has no "distilbert" model type; its BERT fusions carry
    # DistilBERT's patterns (the masked_fill mask, embeddings without token types).
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "wordpiece"
    token_types: ClassVar[bool] = False  # no token type embeddings (an embedder's graph has no such input)

    def check_layer(self, index: int, layer: nn.Module) -> None:
        att = getattr(layer, "attention", None)
        ok = (att is not None and hasattr(att, "out_lin") and hasattr(att, "attention_head_size")
              and hasattr(att, "n_heads") and hasattr(layer, "ffn") and hasattr(layer.ffn, "lin2")
              and hasattr(layer, "sa_layer_norm") and hasattr(layer, "output_layer_norm"))
        if not ok:
            raise ModelError(f"layer {index} of {type(self.model).__name__} is not a DistilBERT layer "
                             "(attention.{q,k,v,out}_lin, sa_layer_norm, ffn.lin1/lin2, output_layer_norm): "
                             "cannot slice it")

    def is_pooler(self, name: str) -> bool:
        return name == "pre_classifier"

    def head_size(self, layer: nn.Module) -> int:
        return int(layer.attention.attention_head_size)

    def layer_sizes(self, layer: nn.Module) -> tuple[int, int]:
        lin1 = getattr(layer.ffn, "lin1", None)
        return int(layer.attention.n_heads), (int(lin1.out_features) if lin1 is not None else 0)

    def keep_heads(self, layer: nn.Module, heads: list[int]) -> None:
        att = layer.attention
        d = int(att.attention_head_size)
        if not heads:
            if not isinstance(att, NoHeads):
                layer.attention = NoHeads(att.out_lin.bias, d)
            return
        self.slice_heads(layer, heads, d)
        att.n_heads = len(heads)
        att.dim = len(heads) * d  # 4.57: dim_per_head = dim // n_heads
        att.attention_head_size = d

    def keep_ffn(self, layer: nn.Module, neurons: list[int]) -> None:
        ffn = layer.ffn
        if isinstance(ffn, NoFFN):
            return
        if not neurons:
            layer.ffn = NoFFN(ffn.lin2.bias, getattr(ffn, "dropout", None))
            return
        self.slice_ffn(layer, neurons)

    def ffn_activation(self, layer: nn.Module):
        return layer.ffn.activation

    def ffn_hidden(self, layer: nn.Module):
        ffn = layer.ffn
        if isinstance(ffn, NoFFN):
            return _empty_hidden
        return lambda x: ffn.activation(ffn.lin1(x))

    def block_norm(self, layer: nn.Module, kind: str, pre):
        return (layer.sa_layer_norm if kind == "attn" else layer.output_layer_norm)(pre)

    def layer_hidden(self, layer: nn.Module) -> list:
        """``sa_layer_norm`` and ``output_layer_norm``; ``pre_classifier`` is the pooler."""
        return [(layer.sa_layer_norm, "out"), (layer.output_layer_norm, "out")]
