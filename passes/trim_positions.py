"""``trim-positions``: keep only the position embeddings the deployment uses (torch -> torch).

BERT-family models carry ``max_position_embeddings`` (512) learned position vectors; a deployment
that truncates inputs at ``max_length`` (128 by default in this project) never reads the rest.
The pass slices the family's absolute position table to its first ``max_positions`` rows, the
``position_ids`` / ``token_type_ids`` buffers to as many columns, and sets
``config.max_position_embeddings`` and the tokenizer's ``model_max_length`` (so ``tokenizer(...,
truncation=True)`` without ``max_length`` truncates there). Outputs for inputs of up to
``max_positions`` tokens are unchanged (the first rows are the same vectors). A family whose
positions start later (RoBERTa-likes: after ``padding_idx``, ``Family.position_offset``) keeps
that many rows more: ``max_position_embeddings`` becomes ``max_positions + padding_idx + 1`` while
the tokenizer's limit is ``max_positions``.

Longer inputs: PyTorch fails on the position lookup and ONNX Runtime on the broadcast of the
sliced position table (never a silently wrong result), both with messages that do not say why.
So the limit is checked where inputs are made: the tokenizer truncates at ``model_max_length``;
the pass refuses ``max_positions`` below the run's ``ctx.max_length`` (the length every later
step encodes and the export verifier uses); and :func:`check_input_length` gives the one-line
error for anything that feeds fixed shapes (profiling sequence lengths, user inputs).
This module imports torch only inside functions, so the CLI and targets can use the check.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import TorchModel
from compressor.errors import ConfigError, DataError, ModelError, check_range
from compressor.pass_base import Pass, PassResult, option
from compressor.registry import max_tokens
from passes.families import family_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrimPositions(Pass):
    """Slice the position embeddings to ``max_positions`` rows."""

    name: ClassVar[str] = "trim-positions"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"
    run_order: ClassVar[int] = 50

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--max-positions N``."""
        return f"trim-positions{{max_positions={cfg.max_positions}}}" if cfg.max_positions else None

    max_positions: int = option(128, "position embeddings to keep: the longest input, in tokens, "
                                "the deployment feeds (its max_length)")

    def __post_init__(self):
        check_range("trim-positions.max_positions", self.max_positions, 2, 1_000_000)

    def run(self, artifact, ctx) -> PassResult:
        pos = _positions(artifact.model)
        offset = family_of(artifact.model).position_offset(artifact.model.config)  # RoBERTa: padding_idx + 1
        kind = getattr(artifact.model.config, "position_embedding_type", "absolute") or "absolute"
        if kind != "absolute":
            raise ConfigError(f"trim-positions needs absolute position embeddings: the model has "
                              f"position_embedding_type={kind!r}")
        old = pos.num_embeddings - offset  # tokens the table takes
        m = self.max_positions
        if m > old:
            raise ConfigError(f"trim-positions.max_positions={m} is more than the model's {old} "
                              f"position embeddings: allowed [2, {old}]")
        run_length = getattr(ctx, "max_length", None)
        if run_length is not None and run_length > m:
            raise ConfigError(f"trim-positions.max_positions={m} is below the run's max_length="
                              f"{run_length}: inputs of up to {run_length} tokens would not fit "
                              f"(use max_positions >= {run_length} or a smaller max_length)")
        metrics = {"positions_before": old, "positions_after": m}
        if m == old:
            return PassResult(artifact, False, {**metrics, "position_params_removed": 0})
        model = copy.deepcopy(artifact.model)
        family_of(model).trim_positions(m)
        model.config.max_position_embeddings = m + offset
        tokenizer = copy.deepcopy(artifact.tokenizer)
        tokenizer.model_max_length = m
        tokenizer.init_kwargs["model_max_length"] = m
        out = TorchModel(model, tokenizer, {**artifact.info, "max_positions": m})
        out.save(ctx.out_dir() / "model")
        metrics["position_params_removed"] = (old - m) * pos.embedding_dim
        log.info("trim-positions: %d -> %d position embeddings", old, m)
        return PassResult(out, True, metrics)


def _positions(model):
    """The model's absolute position table; ModelError when its family has none."""
    pos = family_of(model).position_table()
    if pos is None:
        raise ModelError(f"trim-positions: {type(model).__name__} has no absolute position embeddings "
                         "table to trim")
    return pos


def max_positions(folder) -> int | None:
    """The longest input, in tokens, of a model or ONNX folder: its config.json's
    ``max_position_embeddings`` less its family's position offset (RoBERTa-likes: 514 -> 512);
    None if unreadable."""
    try:
        return max_tokens(json.loads((Path(folder) / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def check_input_length(folder, length: int, what: str = "input") -> None:
    """DataError (one line) when ``length`` tokens exceed the position embeddings of the model
    in ``folder``; nothing when the config does not say."""
    limit = max_positions(folder)
    if limit is not None and length > limit:
        raise DataError(f"{what} of {length} tokens is longer than the model's {limit} position "
                        f"embeddings ({folder}): truncate inputs to at most {limit} tokens")
