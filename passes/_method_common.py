"""Code the mask-based pruning methods (magnitude, sparsebert, nip, rpp) share: the checks of
their common options, distillation from the fine-tuned teacher (:class:`KDOptions`,
:func:`make_kd`) and saving the pruned model with its sparsity report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from compressor.artifact import TorchModel, atomic_write_text
from compressor.errors import ConfigError, ModelError, check_choice, check_range
from compressor.pass_base import PassResult, option

log = logging.getLogger(__name__)


def check_options(p, choice_keys: tuple[str, ...] = ("granularity", "scope")) -> None:
    """Validate the options every method has (``p`` is the pass; messages say ``<name>.<option>``):
    sparsity and the choice options ``choice_keys``, then the training options
    (``passes._options.TrainingOptions.check_training``)."""
    prefix = p.name
    check_range(f"{prefix}.sparsity", p.sparsity, 0.0, 1.0, hi_open=True)
    for key in choice_keys:
        choices = type(p).__dataclass_fields__[key].metadata["choices"]
        check_choice(f"{prefix}.{key}", getattr(p, key), choices)
    p.check_training()


@dataclass(frozen=True)
class KDOptions:
    """Distillation options of the passes that prune a fine-tuned model (a mixin of their option
    dataclasses; the loss is ``passes._distill.LogitKD``). On by default whenever a teacher
    exists (``compress run`` always has one): the pruned student learns the dense model's soft
    predictions instead of the hard labels alone (oBERT / SparseML: hardness 1, T = 2)."""

    kd: bool = option(True, "distil from the fine-tuned teacher when there is one (logit KD)")
    kd_temperature: float = option(2.0, "KD temperature T (loss scaled by T^2)")
    kd_hardness: float = option(1.0, "weight of KD against cross-entropy (1: KD only, 0: CE only)")
    kd_hidden: float = option(0.0, "weight of the hidden-state MSE to the teacher (0: off)")


SEARCHED = "searched"


@dataclass(frozen=True)
class StructureOption:
    """The ``structure`` option of the structured training methods (magnitude, NIP, CAP,
    SparseBERT; a mixin of their option dataclasses): prune to a given per-layer structure instead
    of a sparsity and scope, e.g. the one ``fisher{search_only=true}`` found on the target's
    latency table (``compress run --speedup X --method magnitude --granularity structured``)."""

    structure: str = option("", "granularity=structured: kept heads:neurons per layer ('12:3072/6:1024/...'), "
                                "or 'searched' (the structure a preceding fisher{search_only=true} step found); "
                                "the sparsity follows from it")


def parse_structure(name: str, text: str) -> tuple[list[int], list[int]]:
    """``'h:f/h:f/...'`` -> ``(heads, neurons)`` per layer; ConfigError naming ``name`` otherwise."""
    heads, neurons = [], []
    for part in text.split("/"):
        h, sep, f = part.partition(":")
        if not (sep and h.strip().isdigit() and f.strip().isdigit()):
            raise ConfigError(f"{name}={text!r} is not allowed: give kept heads:neurons per layer joined by '/', "
                              f"e.g. 12:3072/6:1024, or '{SEARCHED}'")
        heads.append(int(h))
        neurons.append(int(f))
    return heads, neurons


def check_structure(p) -> None:
    if not p.structure:
        return
    if p.granularity != "structured":
        raise ConfigError(f"{p.name}.structure={p.structure!r} needs granularity=structured "
                          f"(got {p.granularity!r})")
    if p.structure != SEARCHED:
        parse_structure(f"{p.name}.structure", p.structure)


def with_structure(p, artifact, masks):
    """``p`` itself, or, with a ``structure``, a copy whose ``sparsity`` is that structure's, with
    ``masks`` set to prune towards it (:meth:`passes._masks.MaskSet.set_target`)."""
    import dataclasses
    if not p.structure:
        return p
    if p.structure == SEARCHED:
        found = artifact.info.get("searched_structure")
        if not found:
            raise ConfigError(f"{p.name}.structure=searched needs a fisher{{search_only=true}} step before it "
                              f"(compress run --speedup X --method {p.name} --granularity structured)")
        heads, neurons = [int(s["heads"]) for s in found], [int(s["ffn"]) for s in found]
    else:
        heads, neurons = parse_structure(f"{p.name}.structure", p.structure)
    try:
        sparsity = masks.set_target(heads, neurons)
    except ValueError as exc:
        raise ConfigError(f"{p.name}.structure={p.structure!r}: {exc}") from None
    log.info("%s: pruning to heads %s, FFN %s (encoder sparsity %.4f)", p.name, heads, neurons, sparsity)
    return dataclasses.replace(p, sparsity=min(sparsity, 1 - 1e-9))


def check_kd(p) -> None:
    check_range(f"{p.name}.kd_temperature", p.kd_temperature, 0.0, 100.0, lo_open=True)
    check_range(f"{p.name}.kd_hardness", p.kd_hardness, 0.0, 1.0)
    check_range(f"{p.name}.kd_hidden", p.kd_hidden, 0.0, 1e6)


def make_kd(p, ctx, task):
    """The :class:`passes._distill.LogitKD` loss of pass ``p`` (a :class:`KDOptions`) on ``task``,
    or None when KD is off or there is no teacher (then training uses the task's cross-entropy).
    The teacher's logits on every training example are computed here, once, with its own
    tokenizer."""
    from compressor.evaluation import predict_logits
    from passes._distill import LogitKD
    if not p.kd or getattr(ctx, "teacher", None) is None or p.kd_hardness == 0:
        return None
    teacher = require_teacher(ctx, task, p.name)
    model = teacher.model.eval()
    logits = None
    if p.kd_hidden == 0:
        log.info("%s: teacher logits on %d training examples (KD T=%s, hardness %s)", p.name,
                 len(task.train), p.kd_temperature, p.kd_hardness)
        logits = predict_logits(model, teacher.tokenizer, task.train, p.max_length)
    return LogitKD(logits, p.kd_temperature, p.kd_hardness, p.kd_hidden,
                   teacher=model if p.kd_hidden > 0 else None)


def kd_info(kd) -> dict:
    """The distillation a pass trained with, for its metrics."""
    if kd is None:
        return {"loss": "cross-entropy"}
    return {"loss": "kd" if kd.hardness == 1 else "kd+ce", "kd_temperature": kd.t, "kd_hardness": kd.hardness,
            "kd_hidden": kd.hidden_weight}


def require_teacher(ctx, task, pass_name: str, hint: str = ""):
    """``ctx.teacher`` (a TorchModel) with the task's label count; ConfigError naming the pass when
    there is none (``hint``: how to do without it), ModelError when its labels differ."""
    if ctx.teacher is None:
        raise ConfigError(f"method {pass_name} needs a fine-tuned teacher: run finetune first or pass "
                          f"--teacher PATH{hint}")
    n = getattr(ctx.teacher.model.config, "num_labels", None)
    if n != task.num_labels:
        raise ModelError(f"teacher has num_labels={n} but task '{task.name}' has {task.num_labels} labels")
    return ctx.teacher


def attach_masks(p, model, include: tuple[str, ...] = ()):
    """A ``_masks.MaskSet`` on ``model``'s encoder Linears (plus ``include``), masking biases too
    for ``granularity=structured``; ConfigError when its family finds no encoder Linears."""
    from passes._masks import MaskSet, encoder_linears
    masks = MaskSet.attach(model, encoder_linears(model, include), bias=p.granularity == "structured")
    if not masks.modules:
        raise ConfigError(f"{p.name} found no encoder Linears in {type(model).__name__}")
    return masks


def reevaluate(res, model, tokenizer, task, max_length: int) -> None:
    """Pruned after the last epoch: measure the accuracy of the model as it now is."""
    from compressor.evaluation import evaluate
    if task.eval:
        res.accuracy = evaluate(model, tokenizer, task.eval, max_length)
        res.restored_epoch = None


def save_pruned(p, artifact, model, masks, ctx, include: tuple[str, ...] = ()):
    """Bake ``masks`` into ``model`` and save it and ``sparsity.json`` into ``ctx.out_dir()``.

    Returns ``(out, report, keep)``: the new TorchModel (``info["sparsity"]`` is the encoder
    Linears' zero fraction, ``info["pruning"]`` names the pass), the saved sparsity report over the
    encoder Linears plus ``include`` (see ``_masks.encoder_linears``; its ``layers`` cover the
    encoder only) and, for ``granularity=structured``, the kept ``(heads [L, H], neurons [L, F])``
    (else None)."""
    from passes._masks import encoder_linears, sparsity_report
    from passes.families import family_of
    keep = masks.structured_keep() if p.granularity == "structured" else None
    masks.bake()
    roles = family_of(model).linear_roles()
    report = sparsity_report(encoder_linears(model, include), roles)
    encoder = sparsity_report(encoder_linears(model), roles) if include else report
    info = {**artifact.info, "sparsity": encoder["overall"],
            "pruning": {"method": p.name, "spec": p.to_spec(), "granularity": p.granularity,
                        "target": p.sparsity}}
    out = TorchModel(model, artifact.tokenizer, info)
    folder = ctx.out_dir()
    out.save(folder / "model")
    atomic_write_text(folder / "sparsity.json", json.dumps(report, indent=1))
    return out, report, keep


def kept_units(keep) -> dict:
    """``heads_kept`` / ``neurons_kept`` per layer from ``save_pruned``'s ``keep`` ({} if None)."""
    if keep is None:
        return {}
    return {"heads_kept": [int(k) for k in keep[0].sum(1)],
            "neurons_kept": [int(k) for k in keep[1].sum(1)]}


def finish(p, artifact, model, masks, res, ctx, extra: dict) -> PassResult:
    """Save the pruned model (:func:`save_pruned`) and build the metrics common to NIP and RPP
    from the training result ``res`` (``extra`` is merged into them)."""
    out, report, keep = save_pruned(p, artifact, model, masks, ctx)
    metrics = {"target_sparsity": p.sparsity, "sparsity": report["overall"],
               "per_layer": dict(report["layers"]), "accuracy": res.accuracy,
               "accuracy_per_epoch": [e["accuracy"] for e in res.epochs],
               "epoch_kept": res.restored_epoch or p.epochs, "steps": res.steps,
               "train_seconds": res.seconds, **extra, **kept_units(keep)}
    log.info("%s: sparsity %.4f (target %.4f), accuracy %s", p.name, report["overall"], p.sparsity,
             res.accuracy)
    return PassResult(out, True, metrics)
