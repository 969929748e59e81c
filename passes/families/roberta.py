"""RoBERTa's layout and its relatives: RoBERTa (``model_type`` roberta), XLM-R (xlm-roberta) and
CamemBERT (camembert).

Their encoder layers are BERT's, module for module, on transformers 4.57 and 5.x
(``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense``), so slicing and the stand-ins are :class:`~passes.families.bert.BertFamily`'s.
What differs:

- Positions: token ``i`` of a sequence reads position row ``padding_idx + 1 + i`` (padding tokens
  read row ``padding_idx``), so ``max_position_embeddings`` (514) is the usable length (512)
  plus ``padding_idx + 1``. :meth:`position_offset` says so: ``trim-positions`` keeps
  ``count + padding_idx + 1`` rows and sets the tokenizer's limit to ``count``; the export
  verifier and the length checks use :meth:`~passes.families.base.Family.max_tokens`.
- One token type (``type_vocab_size`` 1) and tokenizers that give no ``token_type_ids``: the
  exported graph takes ``input_ids`` and ``attention_mask`` only (as Optimum's export does).
- The classification head is ``classifier.dense`` + ``classifier.out_proj`` (no pooler): hidden
  pruning cuts the input columns of ``classifier.dense`` (:attr:`head_inputs`).
- Tokenizers: byte-level BPE (RoBERTa), SentencePiece Unigram (XLM-R, CamemBERT).
- ONNX Runtime's transformer optimizer (model_type "bert"; it has no "roberta") fuses each
  layer's ``Attention``, ``SkipLayerNormalization`` and GELU, but not the embeddings: its
  ``EmbedLayerNormalization`` kernel numbers positions from 0 and the RoBERTa position pattern
  is commented out in ``fusion_embedlayer.py`` ("TODO: Support roberta"), so
  :attr:`ort_fuses_embeddings` is False and ``ort-fuse`` reports the embeddings as not fused.
"""

from __future__ import annotations

from typing import ClassVar

from passes.families.bert import BertFamily


class RobertaFamily(BertFamily):
    """RoBERTa: BERT layers, positions after ``padding_idx``, one token type, byte-level BPE."""

    model_types: ClassVar[tuple[str, ...]] = ("roberta",)
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "bpe"
    ort_fuses_embeddings: ClassVar[bool] = False
    token_types: ClassVar[bool] = False
    head_inputs: ClassVar[tuple[str, ...]] = ("classifier.dense", "classifier", "qa_outputs")

    @classmethod
    def position_offset(cls, config) -> int:
        """``padding_idx + 1`` (``config.pad_token_id``, 1 in every released checkpoint)."""
        pad = config.get("pad_token_id") if isinstance(config, dict) else getattr(config, "pad_token_id", None)
        return (1 if pad is None else int(pad)) + 1


class XLMRobertaFamily(RobertaFamily):
    """XLM-R: RoBERTa's layout with a SentencePiece Unigram tokenizer (250k pieces)."""

    model_types: ClassVar[tuple[str, ...]] = ("xlm-roberta",)
    tokenizer_kind: ClassVar[str] = "unigram"


class CamembertFamily(RobertaFamily):
    """CamemBERT: RoBERTa's layout with a SentencePiece Unigram tokenizer."""

    model_types: ClassVar[tuple[str, ...]] = ("camembert",)
    tokenizer_kind: ClassVar[str] = "unigram"
