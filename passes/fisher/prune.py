"""``fisher``: retraining-free structured pruning of a fine-tuned model (torch -> torch).

Kwon, Kim, Mahoney, Hassoun, Keutzer, Gholami, "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022, arXiv:2204.09656); the pipeline of the authors' code
(WoosukKwon/retraining-free-pruning ``main.py``) as read in METHODS-structured.md section 1.
The model stays frozen; no weight is trained. Steps (section numbers of that spec; each is a
function of :mod:`passes.fisher.steps`, and :meth:`Fisher.run` calls them in this order):

1. mask gradients (1.2, 1.3): head / neuron masks as hooks (:class:`passes.fisher.masks.UnitMasks`),
   one gradient of the batch-mean task loss per mini-batch of ``samples`` training examples
   drawn with replacement (true labels), diagonal empirical Fisher ``I = sum_b g_b^2``;
2. mask search (1.4): ``flops=C`` keeps a fraction C of the encoder MACs (Kwon's 1-D sweep,
   :func:`passes.fisher.search.kwon_flops_search`); ``speedup=X`` keeps a predicted latency
   of dense / X on ``target`` from a measured latency table (ZipLM's idea, Kurtic et al. 2023,
   arXiv:2302.04089; :mod:`passes.fisher.latency_table`) with the knapsack solver
   :func:`passes.fisher.search.search_structure` (uneven per layer, sublayers may go); then
   (ours) up to ``calibrate`` candidates are exported with random weights and timed against
   dense on the target, which sets the budget (:func:`passes.fisher.search.calibrate`). The
   tuning teacher is searched the same way at C^(1/2) / X^(1/2) (``teacher=sqrt``, the authors'
   schedule) or is the dense model (``teacher=dense``);
3. mask rearrangement (1.5) within each layer, counts kept (:func:`passes.fisher.masks.rearrange`);
4. mask tuning (1.6) by layer-wise least squares (:mod:`passes.fisher.tune`), on the same
   samples batched by length (sums over tokens do not depend on the batching; less padding);
5. (ours) fold the real-valued masks into the ``attn_out`` / ``ffn_out`` columns and strip the
   pruned units (:func:`passes.fisher.masks.fold_and_strip`); the stripped model's logits are
   checked against the masked model's. The saved folder reloads with :func:`passes.strip.load_stripped`.

``seq`` (the FLOP model's and latency table's sequence length) defaults to the mean token length
of the sampled training texts (the authors use the dev set's; nothing here reads eval data
except the reported ``accuracy``).

``hidden_widths`` (ours, with ``speedup``): steps 2-5 run once per hidden width and the width whose
result, narrowed as ``hidden-prune`` narrows, scores best on dev is kept (:mod:`passes.fisher.widths`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import ConfigError, check_choice, check_range
from compressor.pass_base import FINETUNED, Pass, PassResult, option
from passes.fisher import steps
from passes.fisher.cost import predictions
from passes.fisher.steps import Found, Work

log = logging.getLogger(__name__)

DEFAULT_FLOPS = 0.5


@dataclass(frozen=True)
class Fisher(Pass):
    """Kwon et al.'s retraining-free pruning under a FLOPs or a measured-latency constraint."""

    name: ClassVar[str] = "fisher"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = FINETUNED
    searches_speedup: ClassVar[bool] = True  # --speedup X is its constraint
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH

    flops: float = option(0.0, "kept fraction of encoder MACs, in (0, 1] (0: 0.5 unless speedup is set)")
    speedup: float = option(0.0, "speedup over dense on target: latency-table search, budget set by measured "
                                 "checks (> 1; 0: off)")
    target: str = option("cpu", "target the latency table is measured on (speedup only)", choices=("cpu", "cuda"))
    threads: int = option(0, "intra-op threads of the target (0: ONNX Runtime default)")
    batch: int = option(1, "batch size of the latency table")
    seq: int = option(0, "sequence length of the cost model (0: mean length of the sampled train texts)")
    samples: int = option(2048, "training examples for the Fisher and mask tuning (drawn with replacement)")
    batch_size: int = option(32, "examples per mini-batch (one gradient per mini-batch)")
    max_length: int = option(128, "truncate inputs to this many tokens")
    rearrange: bool = option(True, "mask rearrangement within each layer (section 1.5)")
    tune: bool = option(True, "mask tuning by layer-wise least squares")
    teacher: str = option("sqrt", "mask-tuning reference: search at the square root of the constraint, "
                                  "or the dense model", choices=("sqrt", "dense"))
    ffn_step: int = option(16, "speedup search: FFN widths are multiples of this (and the full width)")
    precision: str = option("fp32", "speedup: time the latency table and checks in the deployment's "
                            "precision (int8: dynamically quantized, as --quantize dynamic deploys; int8f: "
                            "ORT-fused then quantized, as --quantize fused deploys)",
                            choices=("fp32", "int8", "int8f"))
    latency_runs: int = option(10, "latency table: timed rounds per model")
    calibrate: int = option(4, "speedup: measured checks of candidate structures that set the budget "
                               "(0: trust the table)")
    check_seconds: float = option(3.0, "speedup: each measured check times dense and the candidate for "
                                       "about this long (at least latency_runs rounds)")
    cache_dir: str = option("", "latency table cache folder (empty: <run folder>/latency-tables)")
    search_only: bool = option(False, "only search the structure (steps 1-2, importance from the fine-tuned "
                               "teacher): the model passes through unchanged with the structure in its info, "
                               "for a structured training method with structure=searched")
    hidden: int = option(0, "speedup: hidden-prune{width=N} follows: time the table and checks at N hidden units "
                            "(rounded as hidden-prune rounds) against the full-width dense model (0: full width)")
    hidden_widths: str = option("", "speedup: search at each of these hidden widths and keep the one whose "
                                    "retraining-free model (hidden units removed as hidden-prune does) scores best "
                                    "on dev, for hidden-prune{searched=true}: 'auto' (the full width, 5/6 and 2/3 "
                                    "of it) or widths joined by '/', e.g. 384/320/256 (empty: off)")

    def __post_init__(self):
        check_range("fisher.flops", self.flops, 0.0, 1.0)
        if self.hidden_widths:
            from passes.fisher.widths import check_widths
            check_widths(self)
        check_range("fisher.speedup", self.speedup, 0.0, 1e4)
        if self.speedup and not self.speedup > 1:
            raise ConfigError(f"fisher.speedup={self.speedup} is not allowed: give a value > 1 (or 0 for off)")
        if self.flops and self.speedup:
            raise ConfigError(f"fisher.flops={self.flops} and fisher.speedup={self.speedup}: set one constraint")
        check_choice("fisher.target", self.target, ("cpu", "cuda"))
        check_choice("fisher.teacher", self.teacher, ("sqrt", "dense"))
        check_choice("fisher.precision", self.precision, ("fp32", "int8", "int8f"))
        check_range("fisher.hidden", self.hidden, 0, 1 << 20)
        for key, lo, hi in (("threads", 0, 4096), ("batch", 1, 65536), ("seq", 0, 4096), ("samples", 1, 10**7),
                            ("batch_size", 1, 65536), ("max_length", 8, 4096), ("ffn_step", 1, 65536),
                            ("latency_runs", 1, 10**5), ("calibrate", 0, 100), ("check_seconds", 0.0, 3600.0)):
            check_range(f"fisher.{key}", getattr(self, key), lo, hi)

    def constraint(self) -> tuple[str, float]:
        """``("flops", C)`` or ``("speedup", X)``."""
        return ("speedup", self.speedup) if self.speedup else ("flops", self.flops or DEFAULT_FLOPS)

    def run(self, artifact, ctx) -> PassResult:
        from passes._train import require_task
        task = require_task(ctx, self.name, artifact.model)
        if self.hidden_widths:  # one search per hidden width, the best on dev kept
            from passes.fisher.widths import choose_width
            return choose_width(self, artifact, ctx, task)
        w = steps.sample(self, artifact, ctx, task)
        grads, importance = steps.mask_importance(w)
        found = steps.search(self, w, importance, ctx)
        if self.search_only:
            return self._searched(artifact, ctx, w, found)
        out, metrics = self.prune(artifact, ctx, w, found, grads, importance)
        self._evaluate(task, w.model, w.tok, found, metrics)
        return PassResult(out, True, metrics)

    def prune(self, artifact, ctx, w: Work, found: Found, grads, importance, save: bool = True):
        """Steps 3-5 for the searched structure ``found``: the stripped model (saved unless not
        ``save``) and its metrics, accuracy aside."""
        teacher = found.pick(found.budget(math.sqrt(found.value))) if self.teacher == "sqrt" else None
        keep, objective = steps.rearrange(self, w, found.student, grads, importance)
        tuning = steps.tune(self, w, keep, teacher)
        out, sizes, checked = steps.strip(self, artifact, ctx, w, found, save)
        return out, self._report(w, found, teacher, sizes, int(grads[0].shape[0]), objective, tuning, checked)

    def _report(self, w: Work, found: Found, teacher, sizes, batches, objective, tuning, checked) -> dict:
        """The metrics of a pruning run (accuracy is :meth:`_evaluate`'s)."""
        structure = [{"heads": s["heads"], "ffn": s["ffn"]} for s in sizes]
        metrics = {
            **self._asked(w, found), "samples": self.samples, "batches": batches,
            "heads_kept": [s["heads"] for s in sizes], "ffn_kept": [s["ffn"] for s in sizes],
            "teacher_heads_kept": teacher.structure() if teacher else "dense",
            "encoder_flops_reduction": checked["flops_reduction"],
            **predictions(found.cost, structure, found.checks),
            "kept_importance": found.student.value, "rearrange_objective": objective, "mask_tuning": tuning,
            "max_abs_diff_masked_vs_stripped": checked["diff"], **self._timing(w),
        }
        log.info("fisher %s=%g: heads %s, FFN %s, predicted speedup %.2f, %.1f s", found.kind, found.value,
                 metrics["heads_kept"], metrics["ffn_kept"], metrics["predicted_speedup"], metrics["prune_seconds"])
        return metrics

    def _evaluate(self, task, model, tok, found: Found, metrics: dict) -> None:
        """Add ``model``'s dev accuracy (retraining-free pruning can empty too much: say so, before
        recovery) and eval accuracy (reported only, never used to choose anything)."""
        from compressor.evaluation import evaluate
        dev = getattr(task, "dev", None) or []
        if dev:
            from compressor.metrics import collapse, majority_accuracy
            metrics["dev_accuracy"] = evaluate(model, tok, dev, self.max_length, threshold="dev")
            why = collapse(metrics["dev_accuracy"], majority_accuracy(dev))
            if why:
                metrics["dev_collapse"] = why
                log.warning("fisher %s=%g: the pruned model collapsed on the dev split (%s): ask for less, "
                            "or add recovery (--recover)", found.kind, found.value, why)
        if task.eval:
            metrics["accuracy"] = evaluate(model, tok, task.eval, self.max_length)

    def _searched(self, artifact, ctx, w: Work, found: Found) -> PassResult:
        """``search_only``: the input model, unchanged, with the structure in ``info`` (what a
        structured training method's ``structure=searched`` reads) and the search's predictions."""
        structure = found.student.structure()
        out = TorchModel(artifact.model, artifact.tokenizer, {**artifact.info, "searched_structure": structure,
                                                              "searched_by": self.to_spec()})
        out.save(ctx.out_dir())
        metrics = self._asked(w, found)
        metrics.update(predictions(found.cost, structure, found.checks), heads_kept=[s["heads"] for s in structure],
                       ffn_kept=[s["ffn"] for s in structure], kept_importance=found.student.value,
                       **self._timing(w))
        log.info("fisher search: heads %s, FFN %s, predicted speedup %.2f", metrics["heads_kept"],
                 metrics["ffn_kept"], metrics["predicted_speedup"])
        return PassResult(out, False, metrics)

    @staticmethod
    def _asked(w: Work, found: Found) -> dict:
        return {"constraint": found.kind, found.kind: found.asked, "searched_for": found.value, "seq": w.seq}

    @staticmethod
    def _timing(w: Work) -> dict:
        return {"seconds": w.seconds, "prune_seconds": round(sum(w.seconds.values()), 2)}
