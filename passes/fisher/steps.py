"""The steps of a ``fisher`` run (:class:`passes.fisher.prune.Fisher`), in the order it runs them.

Each step takes the pass's options (``opts``, the :class:`~passes.fisher.prune.Fisher`) and the
run's shared :class:`Work`; the seconds each took go into ``Work.seconds``. Step numbers are
those of :mod:`passes.fisher.prune`'s module doc.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from compressor.artifact import TorchModel
from compressor.onnx_utils import VerificationError

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |logit difference| of the stripped model from the masked one


@dataclass
class Work:
    """What the stages of one run share: the sampled examples, the frozen working copy, its masks
    (:class:`passes.fisher.masks.UnitMasks`) and the seconds each stage took."""

    examples: list
    tok: object
    loader: object
    seq: int
    model: object
    masks: object
    seconds: dict = field(default_factory=dict)


@dataclass
class Found:
    """The searched structure: the constraint as asked and as searched for (``value``), the cost
    models, ``pick(budget)`` (the search on this run's importances), ``budget(constraint)``, the
    student and the measured checks."""

    kind: str
    asked: float
    value: float
    cost: dict
    pick: Callable
    budget: Callable
    student: object
    checks: list


@contextmanager
def timed(seconds: dict, stage: str):
    """Record in ``seconds[stage]`` how long the block took."""
    t0 = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t0


def sample(opts, artifact, ctx, task) -> Work:
    """Step 0: ``samples`` training examples drawn with replacement (as the authors), their loader and
    mean length, and a frozen copy of the model with unit masks."""
    from compressor.evaluation import make_loader
    from compressor.profiling import token_length_stats
    from passes.fisher.masks import UnitMasks
    examples = random.Random(ctx.seed).choices(task.train, k=opts.samples)
    # a search for a training method may start from the pre-trained model (CAP, SparseBERT):
    # importance is a property of the fine-tuned one
    source = ctx.teacher if opts.search_only and getattr(ctx, "teacher", None) is not None else artifact
    tok = source.tokenizer
    loader = make_loader(tok, examples, opts.max_length, opts.batch_size)
    seq = opts.seq or max(1, round(token_length_stats(tok, examples, opts.max_length)["mean"]))
    model = _frozen(source.model)
    return Work(examples, tok, loader, seq, model, UnitMasks(model))


def fresh(w: Work, source) -> Work:
    """``w``'s examples, loader and length with a new frozen copy of ``source`` (the model
    :func:`sample` copied) and its masks: another search on the same importances."""
    from passes.fisher.masks import UnitMasks
    model = _frozen(source)
    return Work(w.examples, w.tok, w.loader, w.seq, model, UnitMasks(model))


def _frozen(model):
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def mask_importance(w: Work):
    """Step 1: mask gradients per mini-batch ``(G_head, G_ffn)`` and their Fisher ``(I_head, I_ffn)``."""
    from passes.fisher import masks as fm
    with timed(w.seconds, "fisher"):
        g_head, g_ffn = fm.mask_gradients(w.model, w.masks, w.loader)
        fisher = fm.fisher(g_head), fm.fisher(g_ffn)
    return (g_head, g_ffn), fisher


def search(opts, w: Work, importance, ctx) -> Found:
    """Step 2: the cost models, then the student's structure under the constraint (a speedup
    beyond what the table says any structure reaches is lowered to that; measured checks set
    the budget when ``calibrate``)."""
    with timed(w.seconds, "cost_model"):
        kind, value = opts.constraint()
        cost, solve, budget = cost_models(opts, w.model, w.seq, ctx)
    with timed(w.seconds, "search"):
        ih, if_ = importance[0].numpy(), importance[1].numpy()
        pick = lambda b: solve(ih, if_, b)  # noqa: E731
        checks, asked = [], value
        if kind == "speedup":
            value = reachable(cost["latency"], value, w.masks.L)
        if kind == "speedup" and opts.calibrate:
            student, checks = calibrated(opts, w, cost, pick, budget, value)
        else:
            student = pick(budget(value))
    return Found(kind, asked, value, cost, pick, budget, student, checks)


def reachable(table, value: float, layers: int) -> float:
    """``value``, or less when more than removing everything gives (the fastest structure, and
    the report says it missed)."""
    floor = table.predict([{"heads": 0, "ffn": 0}] * layers)
    most = 0.98 * table.dense_ms / floor
    if value > most:
        log.warning("fisher: speedup %.3g is more than the table says any structure reaches (%.3g): "
                    "searching for %.3g", value, most / 0.98, most)
        value = most
    return value


def calibrated(opts, w: Work, cost: dict, pick, budget, value: float):
    """The student whose measured speedup sets the budget, and the checks (:func:`passes.fisher.search.calibrate`)."""
    from passes.fisher.latency_table import StructureTimer
    from passes.fisher.search import calibrate
    with StructureTimer(w.model.config, cost["target"], opts.batch, w.seq, runs=opts.latency_runs,
                        precision=opts.precision, min_seconds=opts.check_seconds, hidden=cost["hidden"]) as timer:
        table = cost["latency"]
        floor = table.predict([{"heads": 0, "ffn": 0}] * w.masks.L)
        return calibrate(pick, timer, value, budget(value), floor, table.dense_ms, opts.calibrate)


def rearrange(opts, w: Work, student, grads, importance):
    """Step 3: the kept units ``(heads, ffn)`` after rearrangement within each layer, and the
    objective it lowered."""
    import torch

    from passes.fisher import masks as fm
    with timed(w.seconds, "rearrange"):
        keep = torch.from_numpy(student.heads), torch.from_numpy(student.ffn)
        objective = {"before": 0.0, "after": 0.0}
        if opts.rearrange:
            for layer in range(w.masks.L):
                for kept, g, imp in zip(keep, grads, importance):
                    objective["before"] += fm.pruned_objective(kept[layer], g[:, layer])
                    kept[layer] = fm.rearrange(kept[layer], g[:, layer], imp[layer])
                    objective["after"] += fm.pruned_objective(kept[layer], g[:, layer])
    return keep, objective


def tune(opts, w: Work, keep, teacher) -> list:
    """Step 4: set the student's masks and tune them against the teacher's (or the dense
    model), on the samples batched by length."""
    import torch

    from compressor.evaluation import make_loader
    from passes.fisher.tune import tune_masks
    with timed(w.seconds, "tune"):
        w.masks.set(keep[0].float(), keep[1].float())
        tuning = []
        if opts.tune:
            ref = ((torch.from_numpy(teacher.heads).float(), torch.from_numpy(teacher.ffn).float()) if teacher
                   else (torch.ones(w.masks.L, w.masks.H), torch.ones(w.masks.L, w.masks.F)))
            by_length = sorted(w.examples, key=lambda e: len(w.tok(e.text, e.text_pair, truncation=True,
                                                                   max_length=opts.max_length)["input_ids"]))
            tuning = tune_masks(w.model, w.masks, make_loader(w.tok, by_length, opts.max_length,
                                                              opts.batch_size), ref)
    return tuning


def strip(opts, artifact, ctx, w: Work, found: Found, save: bool = True):
    """Step 5: fold the masks and strip the pruned units, check the stripped model's logits
    against the masked one's, save it unless not ``save`` (trainable again: a recovery step may follow)."""
    from compressor.evaluation import predict_logits
    from passes.fisher import masks as fm
    with timed(w.seconds, "strip"):
        check = w.examples[:2 * opts.batch_size]
        masked_logits = predict_logits(w.model, w.tok, check, opts.max_length, opts.batch_size)
        head, ffn = w.masks.head.clone(), w.masks.ffn.clone()
        w.masks.remove()
        dense_flops = w.masks.family.encoder_flops(w.seq)
        sizes = fm.fold_and_strip(w.model, head, ffn)
        stripped_logits = predict_logits(w.model, w.tok, check, opts.max_length, opts.batch_size)
        diff = float((masked_logits - stripped_logits).abs().max())
        if not diff <= TOLERANCE:
            raise VerificationError(f"fisher: stripped model differs from the masked one by {diff:.3g} "
                                    f"(max |logit difference|, allowed {TOLERANCE})")
        flops_after = w.masks.family.encoder_flops(w.seq)
        for p in w.model.parameters():
            p.requires_grad_(True)
        out = TorchModel(w.model, w.tok, {**artifact.info, "compressor_layers": sizes, "pruning": {
            "method": opts.name, "spec": opts.to_spec(), found.kind: found.value}})
        if save:
            out.save(ctx.out_dir())
    return out, sizes, {"flops_reduction": round(1 - flops_after / dense_flops, 6), "diff": diff}


def cost_models(opts, model, seq: int, ctx):
    """The cost models, ``solve(head_importance, ffn_importance, budget)`` and
    ``budget(constraint)``: Kwon's sweep on MACs, or the knapsack on the latency table."""
    from passes.fisher.cost import flop_cost_model
    from passes.fisher.latency_table import measure_latency_table
    from passes.fisher.search import kwon_flops_search, search_structure
    flops = flop_cost_model(model.config, seq)
    if not opts.speedup:
        head, neuron = flops.info["head_macs"], flops.info["neuron_macs"]
        return ({"flops": flops, "model": flops},
                lambda ih, if_, b: kwon_flops_search(ih, if_, head, neuron, b), lambda c: c * flops.dense)
    from compressor.registry import get_target
    target = get_target(opts.target)(threads=opts.threads)
    cache = Path(opts.cache_dir) if opts.cache_dir else ctx.shared_dir("latency-tables")
    hidden = 0
    if opts.hidden:  # the width hidden-prune will keep, as it rounds it
        from passes.hidden_prune import target_width
        hidden = target_width(int(model.config.hidden_size), opts.hidden)
        hidden = 0 if hidden == int(model.config.hidden_size) else hidden
    table = measure_latency_table(model.config, target, opts.batch, seq, cache, runs=opts.latency_runs,
                                  precision=opts.precision, hidden=hidden)
    return ({"flops": flops, "model": table, "latency": table, "target": target, "hidden": hidden},
            lambda ih, if_, b: search_structure(ih, if_, table, b, opts.ffn_step), lambda x: table.dense_ms / x)
