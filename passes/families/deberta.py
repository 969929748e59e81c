"""DeBERTa-v2/v3's layout (``model_type`` deberta-v2: deberta-v2-*, deberta-v3-*, mdeberta-v3-*).

The encoder layers are BERT's in shape, with other names, on transformers 4.57 and 5.x:
``attention.self.{query_proj,key_proj,value_proj}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``; both keep the head bookkeeping in ``attention.self.
{num_attention_heads, attention_head_size, all_head_size}`` (they reshape with ``-1`` per head
and scale by the head size ``sqrt(d * scale_factor)``, which slicing leaves as it is). What
differs:

- Disentangled attention: the scores add content->position (c2p) and position->content (p2c)
  terms, the queries / keys of the relative position embeddings (``encoder.rel_embeddings``,
  ``position_buckets`` / ``max_relative_positions`` wide). With ``share_att_key`` (v3) they come
  from ``query_proj`` / ``key_proj`` themselves, so slicing those slices them; without it from
  ``attention.self.pos_key_proj`` (c2p) / ``pos_query_proj`` (p2c), whose rows are per head:
  :meth:`slice_heads` keeps the same rows there. They are not roles (nothing else prunes them).
- A layer left with 0 heads computes ``LayerNorm(attention.output.dense.bias + x)``, one with 0
  FFN neurons ``LayerNorm(output.dense.bias + a)``: BERT's stand-ins fit DeBERTa's calls as they
  are (:class:`~passes.families.bert.NoHeads` drops ``pos_*_proj`` with the rest).
- Positions: v3 and mDeBERTa-v3 have ``position_biased_input`` false, so no absolute position
  table: ``trim-positions`` refuses them (there is nothing to trim); with a table (v2 configs
  with ``position_biased_input`` true) it trims as BERT's, and pins ``max_relative_positions``
  when that was read from ``max_position_embeddings``.
- Token types: ``type_vocab_size`` 0 in v3, so the exported graph takes ``input_ids`` and
  ``attention_mask`` only (:attr:`token_types` is read from the config).
- The classification head is ``pooler.dense`` (ContextPooler on the first token) + ``classifier``.
- Tokenizer: SentencePiece Unigram (128k pieces in v3, 250k in mDeBERTa-v3).
- ONNX Runtime's transformer optimizer has no DeBERTa model type and no fusion for disentangled
  attention (its ``Attention`` / ``MultiHeadAttention`` take one additive bias, not the gathered
  c2p / p2c terms), nor for embeddings without position table: with model_type "bert" only the
  ``SkipLayerNormalization`` and the GELU fuse. :attr:`ort_fuses_attention` and
  :attr:`ort_fuses_embeddings` are False, so ``ort-fuse`` reports them as not fused.
- Export (TorchScript exporter) verifies on 4.57 and 5.x; 4.57's ``torch.jit.script`` helpers
  are traced as they are except ``build_rpos`` (:meth:`exporting`). The softmax is a plain
  masked ``Softmax`` in both (no XSoftmax op), the log position buckets plain ONNX ops. With
  ``share_att_key`` ORT's dynamic INT8 quantizes ``query_proj`` / ``key_proj`` for the tokens
  but not their second use on the relative positions, so their fp32 weights stay in the INT8
  file beside the int8 ones (about ``2 * hidden**2 * 4`` bytes a layer).
- Hidden-size pruning (``keep_hidden``) also cuts the relative position embeddings and their
  LayerNorm (they enter through the query/key or ``pos_*_proj`` input columns), the first layer's
  convolution and ``pooler_hidden_size``; with ``embed_proj`` the tables keep ``embedding_size``.
- What the other passes approximate: fisher's MAC model (Kwon et al.) leaves out the c2p / p2c
  cost of a head (:meth:`encoder_flops` counts it), and sparsebert's attention distillation
  (``passes._distill.ScoreCapture``) compares the content-to-content scores only.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from passes.families.base import head_rows, slice_linear
from passes.families.bert import BertFamily

POSITION_PROJECTIONS = ("pos_key_proj", "pos_query_proj")
"""The per-head Linears of the relative positions when ``share_att_key`` is false."""


def _build_rpos(query_layer, key_layer, relative_pos, position_buckets: int, max_relative_positions: int):
    """transformers' ``build_rpos``, not compiled: traced, the length test is decided once (in
    self-attention query and key lengths are equal) instead of becoming an ONNX ``If``."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position
    if key_layer.size(-2) != query_layer.size(-2):
        return build_relative_position(key_layer, key_layer, bucket_size=position_buckets,
                                       max_position=max_relative_positions)
    return relative_pos


class DebertaV2Family(BertFamily):
    """DeBERTa-v2/v3: BERT-shaped layers with disentangled attention over relative positions."""

    model_types: ClassVar[tuple[str, ...]] = ("deberta-v2",)
    role_paths: ClassVar[dict[str, str]] = {
        "query": "attention.self.query_proj", "key": "attention.self.key_proj",
        "value": "attention.self.value_proj", "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
    }
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "unigram"
    ort_fuses_embeddings: ClassVar[bool] = False
    ort_fuses_attention: ClassVar[bool] = False

    @property
    def token_types(self) -> bool:
        """Whether the model has a token type table (``type_vocab_size`` > 0; 0 in v3)."""
        return int(getattr(self.model.config, "type_vocab_size", 0) or 0) > 0

    def hidden_size(self) -> int:
        """The encoder's width (the word table is ``embedding_size`` wide before ``embed_proj``)."""
        return int(self.model.config.hidden_size)

    def trim_positions(self, count: int) -> None:
        """BERT's trim; ``max_relative_positions`` < 1 means "``max_position_embeddings``", so
        the old value is written into the config first (the relative buckets stay the same)."""
        config = self.model.config
        if getattr(config, "relative_attention", False) and getattr(config, "max_relative_positions", -1) < 1:
            config.max_relative_positions = int(config.max_position_embeddings)
        super().trim_positions(count)

    @contextlib.contextmanager
    def exporting(self):
        """transformers 4.57 compiles ``build_rpos`` with ``torch.jit.script``; traced, its length
        test becomes an ONNX ``If`` per layer whose branches read values of the outer graph, and
        ORT's dynamic quantizer then writes a graph the ONNX checker refuses ("Nodes in a graph
        must be topologically sorted"). The export traces :func:`_build_rpos` instead (5.x
        compiles nothing: no change)."""
        from transformers.models.deberta_v2 import modeling_deberta_v2 as modeling
        compiled = getattr(modeling, "build_rpos", None)
        if not isinstance(compiled, torch.jit.ScriptFunction):
            yield
            return
        modeling.build_rpos = _build_rpos
        try:
            yield
        finally:
            modeling.build_rpos = compiled

    def slice_heads(self, layer: nn.Module, heads: list[int], head_size: int) -> None:
        """BERT's slicing, and the same rows of ``pos_key_proj`` / ``pos_query_proj``."""
        super().slice_heads(layer, heads, head_size)
        sa, rows = layer.attention.self, head_rows(sorted(heads), head_size)
        for name in POSITION_PROJECTIONS:
            proj = getattr(sa, name, None)
            if isinstance(proj, nn.Linear):
                setattr(sa, name, slice_linear(proj, rows, 0))

    def embedding_hidden(self) -> list:
        """``embed_proj``'s output rows when the tables are ``embedding_size`` wide (else the
        tables' columns), the embeddings' LayerNorm, and what the encoder keeps beside its layers:
        the relative position embeddings (read by the query/key or ``pos_*_proj`` columns) and
        their LayerNorm, the first layer's convolution (both sides) and its LayerNorm."""
        emb = self.embeddings()
        proj = getattr(emb, "embed_proj", None)
        out = [(proj, "out"), (emb.LayerNorm, "out")] if isinstance(proj, nn.Linear) else super().embedding_hidden()
        enc, conv = self.encoder(), getattr(self.encoder(), "conv", None)
        out += [(getattr(enc, "rel_embeddings", None), "out"), (getattr(enc, "LayerNorm", None), "out")]
        if conv is not None:
            out += [(conv.conv, "both"), (conv.LayerNorm, "out")]
        return out

    def layer_hidden(self, layer: nn.Module) -> list:
        """BERT's norms and the input columns of ``pos_key_proj`` / ``pos_query_proj``."""
        sa = layer.attention.self
        return super().layer_hidden(layer) + [(getattr(sa, name, None), "in") for name in POSITION_PROJECTIONS]

    def residual_outputs(self) -> list[nn.Module]:
        """BERT's, and the first layer's convolution block (its LayerNorm) when there is one."""
        conv = getattr(self.encoder(), "conv", None)
        return super().residual_outputs() + ([conv.LayerNorm] if conv is not None else [])

    def encoder_flops(self, seq: int) -> int:
        """Per layer: ``2 * seq`` per weight of the role Linears, ``4 * seq**2 * heads * d`` for
        Q K^T and P V, and ``2 * seq * 2k * heads * d`` for each of c2p and p2c (``2k`` relative
        position rows: ``position_buckets`` or ``max_relative_positions`` each way). The
        projections of the relative position rows (``pos_*_proj``, or query/key again with
        ``share_att_key``) depend on no input: ONNX Runtime folds them into constants when it loads
        the graph, so they are left out (PyTorch computes them on every forward)."""
        total = 0
        for layer in self.layers():
            sa = layer.attention.self
            heads, _ = self.layer_sizes(layer)
            width = heads * self.head_size(layer)
            token = sum(m.in_features * m.out_features for m in (self.linear(layer, r) for r in self.role_paths)
                        if isinstance(m, nn.Linear))
            terms = sum(t in sa.pos_att_type for t in ("c2p", "p2c")) if heads and sa.relative_attention else 0
            rows = 2 * int(sa.pos_ebd_size) if terms else 0
            total += 2 * seq * token + 4 * seq * seq * width + 2 * seq * rows * width * terms
        return total
