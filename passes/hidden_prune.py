"""``hidden-prune``: remove hidden units (the width of the residual stream) by their Fisher
importance (torch -> torch).

Heads, FFN neurons and layers leave a model whose every remaining matrix still has the hidden size
on one side; this pass narrows that side. CoFi prunes the hidden dimension with one mask shared by
all layers (Xia, Zhong, Chen, "Structured Pruning Learns Compact and Accurate Models", ACL 2022,
arXiv:2204.00408, Sec. 3.1, the hidden mask ``z_hidn``) and ZipLM removes it as one more structure
(Kurtic, Frantar, Alistarh, "ZipLM: Inference-Aware Structured Pruning of Language Models",
NeurIPS 2023, arXiv:2302.04089). Here, post-training and in one shot, as ``fisher`` does for
heads and neurons (Kwon et al. 2022, arXiv:2204.09656, Sec. 1.3 of METHODS-structured.md):

1. a mask ``m`` of ones, one entry a hidden unit, multiplies the hidden stream wherever it is
   produced (:class:`passes.fisher.masks.HiddenMask`); one gradient of the batch-mean task loss
   (:func:`passes.fisher.masks.task_loss`, the loss ``fisher`` uses) per mini-batch of ``samples``
   training examples drawn with replacement; importance ``I_j = sum_b (dL_b / dm_j)^2``;
2. the ``width`` most important units stay (:meth:`passes.families.base.Family.keep_hidden`:
   embeddings, every layer's Linears and LayerNorms, the pooler and the head's input); every
   LayerNorm then normalizes over the kept units only, so the output moves: recover it with
   ``distill`` (its ``kd_hidden`` compares the student with the teacher's kept units).

``width`` (or ``keep``, a fraction of the hidden size) is rounded to a multiple of 16, between 64 and
the hidden size; ``searched=true`` takes the width ``fisher{speedup=X,hidden_widths=auto}`` chose
(``--hidden-width auto``, :mod:`passes.fisher.widths`). Runs after ``fisher`` (stripped, uneven models) or ``finetune``; the saved folder
reloads with :func:`passes.strip.load_stripped` (``config.compressor_hidden``). Not for embedding
models: their vectors are hidden-sized, and narrower ones would not compare with the teacher's.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import ConfigError, check_range
from compressor.pass_base import Pass, PassResult, option
from passes.families import family_of
from passes.families.base import count_params
from passes.strip import layer_sizes

log = logging.getLogger(__name__)

STEP, LOWEST = 16, 64
FLOPS_SEQ = 128


def target_width(hidden: int, width: int = 0, keep: float = 0.0) -> int:
    """The hidden units to keep: ``width``, or ``keep * hidden``, rounded to a multiple of 16;
    ConfigError naming the value and the allowed range unless it is in [64, hidden]."""
    if hidden < LOWEST:
        raise ConfigError(f"hidden-prune: the model's hidden size {hidden} is below {LOWEST}: nothing to prune")
    asked = f"width={width}" if width else f"keep={keep:g} (x {hidden} = {keep * hidden:g})"
    n = STEP * int((width if width else keep * hidden) / STEP + 0.5)
    if not LOWEST <= n <= hidden:
        raise ConfigError(f"hidden-prune {asked} is out of range: allowed [{LOWEST}, {hidden}] hidden units, "
                          f"rounded to a multiple of {STEP}" + ("" if width else f" (keep in [{LOWEST / hidden:.3g}, 1])"))
    return n


def hidden_importance(model, tokenizer, examples, max_length: int, batch_size: int):
    """Diagonal Fisher ``[D]`` of the hidden mask on ``examples`` (the model's weights are left as
    they are; a frozen copy takes the gradients)."""
    from compressor.evaluation import make_loader
    from passes.fisher.masks import HiddenMask, fisher, hidden_gradients
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    mask = HiddenMask(work)
    try:
        grads = hidden_gradients(work, mask, make_loader(tokenizer, examples, max_length, batch_size))
    finally:
        mask.remove()
    return fisher(grads)


def narrowed(model, tokenizer, train, seed: int, width: int, samples: int, max_length: int, batch_size: int):
    """A copy of ``model`` keeping its ``width`` hidden units of highest Fisher importance on
    ``samples`` examples drawn from ``train`` with replacement (seeded), the importance ``[D]`` and
    the kept units (what ``hidden-prune`` does, and what ``fisher{hidden_widths=...}`` scores)."""
    examples = random.Random(seed).choices(train, k=samples)
    importance = hidden_importance(model, tokenizer, examples, max_length, batch_size)
    order = sorted(range(len(importance)), key=lambda j: (-float(importance[j]), j))
    kept = sorted(order[:width])
    out = copy.deepcopy(model)
    family_of(out).keep_hidden(kept)
    out.config.compressor_layers = layer_sizes(out)  # the saved layout load_stripped rebuilds
    return out, importance, kept


@dataclass(frozen=True)
class HiddenPrune(Pass):
    """Keep the ``width`` hidden units of highest Fisher importance (see the module doc)."""

    name: ClassVar[str] = "hidden-prune"
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH
    run_order: ClassVar[int] = 25  # after strip, before distill

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--hidden-width N`` (``auto``: the width the ``fisher`` search chose)."""
        width = getattr(cfg, "hidden_width", 0)
        size = "searched=true" if width == "auto" else f"width={width}"
        return f"hidden-prune{{{size},max_length={cfg.max_length}}}" if width else None

    width: int = option(0, f"hidden units to keep (a multiple of {STEP}, >= {LOWEST}; 0: use keep)")
    keep: float = option(0.0, "fraction of the hidden size to keep, in (0, 1] (when width is 0)")
    searched: bool = option(False, "keep the width the fisher step before chose (fisher{hidden_widths=...}; "
                                   "width and keep stay 0)")
    samples: int = option(256, "training examples for the Fisher (drawn with replacement)")
    batch_size: int = option(32, "examples per mini-batch (one gradient per mini-batch)")
    max_length: int = option(128, "truncate inputs to this many tokens")

    def __post_init__(self):
        if bool(self.width) + bool(self.keep) + bool(self.searched) != 1:
            raise ConfigError(f"hidden-prune needs one of width (hidden units, >= {LOWEST}), keep (a fraction in "
                              f"(0, 1]) or searched=true: got width={self.width}, keep={self.keep:g}, "
                              f"searched={str(self.searched).lower()}")
        if self.width and not self.width >= LOWEST - STEP // 2:
            raise ConfigError(f"hidden-prune width={self.width} is out of range: allowed [{LOWEST}, hidden size], "
                              f"rounded to a multiple of {STEP}")
        check_range("hidden-prune.width", self.width, 0, 1 << 20)
        check_range("hidden-prune.keep", self.keep, 0.0, 1.0)
        for key, lo, hi in (("samples", 1, 10**7), ("batch_size", 1, 65536), ("max_length", 8, 4096)):
            check_range(f"hidden-prune.{key}", getattr(self, key), lo, hi)

    def run(self, artifact, ctx) -> PassResult:
        import torch

        from compressor.embedder import is_embedder
        from passes._train import require_task
        if is_embedder(artifact.model):
            raise ConfigError("hidden-prune narrows an embedding model's vectors (their size is the hidden size): "
                              "they would no longer compare with the teacher's or an existing index; use fisher "
                              "or layer-drop for embedding models")
        task = require_task(ctx, self.name, artifact.model)
        family = family_of(artifact.model)
        hidden = family.hidden_size()
        width = target_width(hidden, self._searched_width(artifact) if self.searched else self.width, self.keep)
        t0 = time.perf_counter()
        model, importance, kept = narrowed(artifact.model, artifact.tokenizer, task.train, ctx.seed, width,
                                           self.samples, self.max_length, self.batch_size)
        seconds = time.perf_counter() - t0
        record = model.config.compressor_hidden
        out = TorchModel(model, artifact.tokenizer, {**artifact.info, "compressor_hidden": record})
        total = float(importance.sum())
        metrics = {
            "hidden_before": hidden, "hidden_after": width, "hidden_kept": kept,
            "hidden_kept_of_first_model": record["kept"],
            "kept_importance_share": round(float(importance[kept].sum()) / total, 6) if total > 0 else None,
            "params_before": count_params(artifact.model), "params_after": count_params(model),
            f"encoder_flops_seq{FLOPS_SEQ}_before": family.encoder_flops(FLOPS_SEQ),
            f"encoder_flops_seq{FLOPS_SEQ}_after": family_of(model).encoder_flops(FLOPS_SEQ),
            "samples": self.samples, "prune_seconds": round(seconds, 2),
        }
        metrics["encoder_flops_reduction"] = round(1 - metrics[f"encoder_flops_seq{FLOPS_SEQ}_after"]
                                                   / metrics[f"encoder_flops_seq{FLOPS_SEQ}_before"], 6)
        with torch.no_grad():
            self._evaluate(model, artifact.tokenizer, task, metrics)
        log.info("hidden-prune: hidden %d -> %d, params %d -> %d, %.1f s", hidden, width,
                 metrics["params_before"], metrics["params_after"], seconds)
        out.save(ctx.out_dir())
        return PassResult(out, width < hidden, metrics)

    @staticmethod
    def _searched_width(artifact) -> int:
        """The width ``fisher{hidden_widths=...}`` chose (in its output's info, so a resumed run has it)."""
        width = artifact.info.get("searched_hidden")
        if not width:
            raise ConfigError("hidden-prune searched=true needs a fisher{speedup=X,hidden_widths=auto} step "
                              "before it (the width it chose); or give width=N")
        return int(width)

    def _evaluate(self, model, tokenizer, task, metrics: dict) -> None:
        """Dev and eval accuracy before recovery (reported only, never used to choose)."""
        from compressor.evaluation import evaluate
        if getattr(task, "dev", None):
            metrics["dev_accuracy"] = evaluate(model, tokenizer, task.dev, self.max_length)
        if task.eval:
            metrics["accuracy"] = evaluate(model, tokenizer, task.eval, self.max_length)
