"""ELECTRA's layout (``model_type`` electra; discriminator checkpoints as sequence classifiers).

The encoder layers are BERT's, module for module, on transformers 4.57 and 5.x, so slicing and the
stand-ins are :class:`~passes.families.bert.BertFamily`'s. What differs:

- The embeddings (word, position, token type, LayerNorm) are ``embedding_size`` wide; when that
  is not ``hidden_size`` (electra-small: 128 -> 256) the base model's ``embeddings_project``
  Linear maps them to the encoder's width. :meth:`hidden_size` is the encoder's width, not the
  word table's.
- The classification head is ``classifier.dense`` (GELU) + ``classifier.out_proj`` (no pooler).
- WordPiece tokenizer, positions from 0, token types as BERT's.
- Hidden-size pruning (``keep_hidden``) slices the projection's output rows when there is one
  (the embeddings keep ``embedding_size``), the tables' columns otherwise; the head's
  ``classifier.dense`` loses input columns (:attr:`head_inputs`).
- ONNX Runtime's optimizer (model_type "bert") fuses the embeddings, attention, skip norms and
  GELU as for BERT; the projection stays a MatMul + Add after ``EmbedLayerNormalization``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from passes.families.bert import BertFamily


class ElectraFamily(BertFamily):
    """ELECTRA: BERT layers behind embeddings of ``embedding_size`` and an optional projection."""

    model_types: ClassVar[tuple[str, ...]] = ("electra",)
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "wordpiece"
    head_inputs: ClassVar[tuple[str, ...]] = ("classifier.dense", "classifier", "qa_outputs")

    def embeddings_project(self) -> nn.Linear | None:
        """The ``embedding_size -> hidden_size`` Linear, or None when the widths are equal."""
        project = getattr(self.base, "embeddings_project", None)
        return project if isinstance(project, nn.Linear) else None

    def embedding_modules(self) -> list[nn.Module]:
        project = self.embeddings_project()
        return super().embedding_modules() + ([project] if project is not None else [])

    def hidden_size(self) -> int:
        """The encoder's width: the projection's output when there is one."""
        project = self.embeddings_project()
        return int(project.out_features) if project is not None else super().hidden_size()

    def embedding_hidden(self) -> list:
        """With a projection its output rows (the tables stay ``embedding_size`` wide), else BERT's."""
        project = self.embeddings_project()
        return [(project, "out")] if project is not None else super().embedding_hidden()

    def residual_outputs(self) -> list[nn.Module]:
        project = self.embeddings_project()
        rest = super().residual_outputs()
        return ([project] + rest[1:]) if project is not None else rest
