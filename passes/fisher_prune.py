"""``fisher``: retraining-free structured pruning of a fine-tuned model (torch -> torch).

Kwon, Kim, Mahoney, Hassoun, Keutzer, Gholami, "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022, arXiv:2204.09656); the pipeline of the authors' code
(WoosukKwon/retraining-free-pruning ``main.py``) as read in METHODS-structured.md section 1.
The model stays frozen; no weight is trained. Steps (section numbers of that spec):

1. mask gradients (1.2, 1.3): head / neuron masks as hooks (:class:`passes._fisher_masks.UnitMasks`),
   one gradient of the batch-mean task loss per mini-batch of ``samples`` training examples
   drawn with replacement (true labels), diagonal empirical Fisher ``I = sum_b g_b^2``;
2. mask search (1.4): ``flops=C`` keeps a fraction C of the encoder MACs (Kwon's 1-D sweep,
   :func:`passes._structure_search.kwon_flops_search`); ``speedup=X`` keeps a predicted latency
   of dense / X on ``target`` from a measured latency table (ZipLM's idea, Kurtic et al. 2023,
   arXiv:2302.04089; :mod:`targets.latency_table`) with the knapsack solver
   :func:`passes._structure_search.search_structure` (uneven per layer, sublayers may go); then
   (ours) up to ``calibrate`` candidates are exported with random weights and timed against
   dense on the target, which sets the budget (:func:`passes._structure_search.calibrate`). The
   tuning teacher is searched the same way at C^(1/2) / X^(1/2) (``teacher=sqrt``, the authors'
   schedule) or is the dense model (``teacher=dense``);
3. mask rearrangement (1.5) within each layer, counts kept (:func:`passes._fisher_masks.rearrange`);
4. mask tuning (1.6) by layer-wise least squares (:mod:`passes._fisher_tune`), on the same
   samples batched by length (sums over tokens do not depend on the batching; less padding);
5. (ours) fold the real-valued masks into the attention-output / FFN-output columns and strip the
   pruned units (:func:`passes._fisher_masks.fold_and_strip`); the stripped model's logits are
   checked against the masked model's. The saved folder reloads with :func:`passes.strip.load_stripped`.

``seq`` (the FLOP model's and latency table's sequence length) defaults to the mean token length
of the sampled training texts (the authors use the dev set's; nothing here reads eval data
except the reported ``accuracy``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import ConfigError, check_choice, check_range
from compressor.onnx_utils import VerificationError
from compressor.pass_base import FINETUNED, Pass, PassResult, option

log = logging.getLogger(__name__)

DEFAULT_FLOPS = 0.5
TOLERANCE = 1e-4


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
                            "precision (int8: dynamically quantized, as --quantize dynamic deploys)",
                            choices=("fp32", "int8"))
    latency_runs: int = option(10, "latency table: timed rounds per model")
    calibrate: int = option(4, "speedup: measured checks of candidate structures that set the budget "
                               "(0: trust the table)")
    check_seconds: float = option(3.0, "speedup: each measured check times dense and the candidate for "
                                       "about this long (at least latency_runs rounds)")
    cache_dir: str = option("", "latency table cache folder (empty: <run folder>/latency-tables)")
    search_only: bool = option(False, "only search the structure (steps 1-2, importance from the fine-tuned "
                               "teacher): the model passes through unchanged with the structure in its info, "
                               "for a structured training method with structure=searched")

    def __post_init__(self):
        check_range("fisher.flops", self.flops, 0.0, 1.0)
        check_range("fisher.speedup", self.speedup, 0.0, 1e4)
        if self.speedup and not self.speedup > 1:
            raise ConfigError(f"fisher.speedup={self.speedup} is not allowed: give a value > 1 (or 0 for off)")
        if self.flops and self.speedup:
            raise ConfigError(f"fisher.flops={self.flops} and fisher.speedup={self.speedup}: set one constraint")
        check_choice("fisher.target", self.target, ("cpu", "cuda"))
        check_choice("fisher.teacher", self.teacher, ("sqrt", "dense"))
        check_choice("fisher.precision", self.precision, ("fp32", "int8"))
        for key, lo, hi in (("threads", 0, 4096), ("batch", 1, 65536), ("seq", 0, 4096), ("samples", 1, 10**7),
                            ("batch_size", 1, 65536), ("max_length", 8, 4096), ("ffn_step", 1, 65536),
                            ("latency_runs", 1, 10**5), ("calibrate", 0, 100), ("check_seconds", 0.0, 3600.0)):
            check_range(f"fisher.{key}", getattr(self, key), lo, hi)

    def constraint(self) -> tuple[str, float]:
        """``("flops", C)`` or ``("speedup", X)``."""
        return ("speedup", self.speedup) if self.speedup else ("flops", self.flops or DEFAULT_FLOPS)

    def run(self, artifact, ctx) -> PassResult:
        import torch

        from passes import _bert_layout as bl
        from passes import _fisher_masks as fm
        from passes._fisher_tune import tune_masks
        from passes._train import evaluate, make_loader, predict_logits, require_task
        from targets.grid import token_length_stats

        task = require_task(ctx, self.name, artifact.model)
        rng = random.Random(ctx.seed)
        examples = rng.choices(task.train, k=self.samples)  # with replacement, as the authors
        # a search for a training method may start from the pre-trained model (CAP, SparseBERT):
        # importance is a property of the fine-tuned one
        source = ctx.teacher if self.search_only and getattr(ctx, "teacher", None) is not None else artifact
        tok, seconds = source.tokenizer, {}
        loader = make_loader(tok, examples, self.max_length, self.batch_size)
        seq = self.seq or max(1, round(token_length_stats(tok, examples, self.max_length)["mean"]))
        model = copy.deepcopy(source.model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        masks = fm.UnitMasks(model)

        t0 = time.perf_counter()
        g_head, g_ffn = fm.mask_gradients(model, masks, loader)
        i_head, i_ffn = fm.fisher(g_head), fm.fisher(g_ffn)
        seconds["fisher"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        kind, value = self.constraint()
        cost, solve, budget = self._cost_model(model, seq, ctx)
        seconds["cost_model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ih, if_ = i_head.numpy(), i_ffn.numpy()
        checks, asked = [], value
        if kind == "speedup":  # more than removing everything gives: the fastest structure, and the
            floor = cost["latency"].predict([{"heads": 0, "ffn": 0}] * masks.L)  # report says it missed
            reachable = 0.98 * cost["latency"].dense_ms / floor
            if value > reachable:
                log.warning("fisher: speedup %.3g is more than the table says any structure reaches (%.3g): "
                            "searching for %.3g", value, reachable / 0.98, reachable)
                value = reachable
        if kind == "speedup" and self.calibrate:
            from passes._structure_search import calibrate
            from targets.latency_table import StructureTimer
            with StructureTimer(model.config, cost["target"], self.batch, seq, runs=self.latency_runs,
                                precision=self.precision, min_seconds=self.check_seconds) as timer:
                table = cost["latency"]
                floor = table.predict([{"heads": 0, "ffn": 0}] * masks.L)
                student, checks = calibrate(lambda b: solve(ih, if_, b), timer, value, budget(value), floor,
                                            table.dense_ms, self.calibrate)
        else:
            student = solve(ih, if_, budget(value))
        seconds["search"] = time.perf_counter() - t0
        if self.search_only:
            return self._searched(artifact, ctx, student, cost, checks, seconds,
                                  {"constraint": kind, kind: asked, "searched_for": value, "seq": seq})
        teacher = solve(ih, if_, budget(math.sqrt(value))) if self.teacher == "sqrt" else None

        t0 = time.perf_counter()
        keep_h, keep_f = torch.from_numpy(student.heads), torch.from_numpy(student.ffn)
        objective = {"before": 0.0, "after": 0.0}
        if self.rearrange:
            for layer in range(masks.L):
                for keep, g, imp in ((keep_h, g_head, i_head), (keep_f, g_ffn, i_ffn)):
                    objective["before"] += fm.pruned_objective(keep[layer], g[:, layer])
                    keep[layer] = fm.rearrange(keep[layer], g[:, layer], imp[layer])
                    objective["after"] += fm.pruned_objective(keep[layer], g[:, layer])
        seconds["rearrange"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        masks.set(keep_h.float(), keep_f.float())
        tuning = []
        if self.tune:
            ref = ((torch.from_numpy(teacher.heads).float(), torch.from_numpy(teacher.ffn).float()) if teacher
                   else (torch.ones(masks.L, masks.H), torch.ones(masks.L, masks.F)))
            by_length = sorted(examples, key=lambda e: len(tok(e.text, e.text_pair, truncation=True,
                                                             max_length=self.max_length)["input_ids"]))
            tuning = tune_masks(model, masks, make_loader(tok, by_length, self.max_length, self.batch_size), ref)
        seconds["tune"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        check = examples[:2 * self.batch_size]
        masked_logits = predict_logits(model, tok, check, self.max_length, self.batch_size)
        head, ffn = masks.head.clone(), masks.ffn.clone()
        masks.remove()
        dense_flops = bl.encoder_flops(model, seq)
        sizes = fm.fold_and_strip(model, head, ffn)
        stripped_logits = predict_logits(model, tok, check, self.max_length, self.batch_size)
        diff = float((masked_logits - stripped_logits).abs().max())
        if not diff <= TOLERANCE:
            raise VerificationError(f"fisher: stripped model differs from the masked one by {diff:.3g} "
                                    f"(max |logit difference|, allowed {TOLERANCE})")
        flops_after = bl.encoder_flops(model, seq)
        for p in model.parameters():  # trainable again: a recovery step may follow
            p.requires_grad_(True)
        out = TorchModel(model, tok, {**artifact.info, "compressor_layers": sizes,
                                      "pruning": {"method": self.name, "spec": self.to_spec(), kind: value}})
        out.save(ctx.out_dir())
        seconds["strip"] = time.perf_counter() - t0
        structure = [{"heads": s["heads"], "ffn": s["ffn"]} for s in sizes]
        metrics = {
            "constraint": kind, kind: asked, "searched_for": value, "seq": seq, "samples": self.samples, "batches": int(g_head.shape[0]),
            "heads_kept": [s["heads"] for s in sizes], "ffn_kept": [s["ffn"] for s in sizes],
            "teacher_heads_kept": teacher.structure() if teacher else "dense",
            "encoder_flops_reduction": round(1 - flops_after / dense_flops, 6),
            **self._predictions(cost, structure, checks),
            "kept_importance": student.value, "rearrange_objective": objective, "mask_tuning": tuning,
            "max_abs_diff_masked_vs_stripped": diff, "seconds": seconds,
            "prune_seconds": round(sum(seconds.values()), 2),
        }
        dev = getattr(task, "dev", None) or []
        if dev:  # retraining-free pruning can empty too much: say so on the dev split, before recovery
            from compressor.metrics import collapse, majority_accuracy
            metrics["dev_accuracy"] = evaluate(model, tok, dev, self.max_length)
            why = collapse(metrics["dev_accuracy"], majority_accuracy(dev))
            if why:
                metrics["dev_collapse"] = why
                log.warning("fisher %s=%g: the pruned model collapsed on the dev split (%s): ask for less, "
                            "or add recovery (--recover)", kind, value, why)
        if task.eval:  # reported only, never used to choose anything
            metrics["accuracy"] = evaluate(model, tok, task.eval, self.max_length)
        log.info("fisher %s=%g: heads %s, FFN %s, predicted speedup %.2f, %.1f s", kind, value,
                 metrics["heads_kept"], metrics["ffn_kept"], metrics["predicted_speedup"], metrics["prune_seconds"])
        return PassResult(out, True, metrics)

    def _searched(self, artifact, ctx, student, cost, checks, seconds, metrics) -> PassResult:
        """``search_only``: the input model, unchanged, with the structure in ``info`` (what a
        structured training method's ``structure=searched`` reads) and the search's predictions."""
        structure = student.structure()
        out = TorchModel(artifact.model, artifact.tokenizer, {**artifact.info, "searched_structure": structure,
                                                              "searched_by": self.to_spec()})
        out.save(ctx.out_dir())
        metrics.update(self._predictions(cost, structure, checks), heads_kept=[s["heads"] for s in structure],
                       ffn_kept=[s["ffn"] for s in structure], kept_importance=student.value,
                       seconds=seconds, prune_seconds=round(sum(seconds.values()), 2))
        log.info("fisher search: heads %s, FFN %s, predicted speedup %.2f", metrics["heads_kept"],
                 metrics["ffn_kept"], metrics["predicted_speedup"])
        return PassResult(out, False, metrics)

    @staticmethod
    def _predictions(cost: dict, structure: list[dict], checks: list) -> dict:
        """What the cost models say of ``structure`` (and what the checks measured)."""
        out = {"kept_mac_fraction": round(cost["flops"].predict(structure) / cost["flops"].dense, 6),
               "predicted_speedup": round(cost["model"].speedup(structure), 4),
               "predicted_flops_speedup": round(cost["flops"].speedup(structure), 4)}
        if "latency" in cost:
            out.update(structure_checks=checks, measured_check_speedup=next(
                           (c["measured_speedup"] for c in checks if c["structure"] == structure), None),
                       predicted_ms=round(cost["latency"].predict(structure), 4),
                       dense_predicted_ms=round(cost["latency"].dense_ms, 4),
                       latency_table=cost["latency"].info.get("cache_file"))
        return out

    def _cost_model(self, model, seq: int, ctx):
        """The cost models, ``solve(head_importance, ffn_importance, budget)`` and
        ``budget(constraint)``: Kwon's sweep on MACs, or the knapsack on the latency table."""
        from passes._structure_search import kwon_flops_search, search_structure
        from targets.latency_table import flop_cost_model, measure_latency_table
        flops = flop_cost_model(model.config, seq)
        if not self.speedup:
            head, neuron = flops.info["head_macs"], flops.info["neuron_macs"]
            return ({"flops": flops, "model": flops},
                    lambda ih, if_, b: kwon_flops_search(ih, if_, head, neuron, b), lambda c: c * flops.dense)
        from compressor.registry import get_target
        target = get_target(self.target)(threads=self.threads)
        cache = Path(self.cache_dir) if self.cache_dir else Path(ctx.workdir) / "latency-tables"
        table = measure_latency_table(model.config, target, self.batch, seq, cache, runs=self.latency_runs,
                                      precision=self.precision)
        return ({"flops": flops, "model": table, "latency": table, "target": target},
                lambda ih, if_, b: search_structure(ih, if_, table, b, self.ffn_step), lambda x: table.dense_ms / x)
