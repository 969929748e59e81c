"""``cap``: ContrAstive Pruning. Xu, Luo, Huang, Huang, Zhang, Zhang, Wang, "From Dense to Sparse:
Contrastive Pruning for Better Pre-trained Language Model Compression" (AAAI 2022, arXiv:2112.07198).

The paper body was not available; the pieces follow the authors' code (alibaba/AliceMind
``ContrastivePruning``) as summarised in METHODS.md section 1 (numbers below are its sections):

- student = the input (pre-trained) model; teacher = ``ctx.teacher`` (fine-tuned, frozen) (1.2);
- loss ``w_ce CE + w_kd KD + sum over PrC, SnC, FiC banks (w_u L_u + w_s L_s)`` (1.5), in
  :mod:`passes.cap.contrastive`; criteria and first-order importance in :mod:`passes.cap.prune`.
  The authors share (tau, w_u, w_s) across banks; for ablations each term can be switched off
  (``prc``/``snc``/``fic``), scaled (``<bank>_weight``, 0 = off) or given its own ``<bank>_tau``;
- ``granularity=weight`` (CAP-m / CAP-soft, 1.7): cubic schedule over training, PrC encoded
  before training, a snapshot appended to SnC at each epoch boundary;
- ``granularity=structured`` (CAP-f, 1.6): ``stages`` cumulative steps up to the target, each
  (importance -> bank refresh -> masks -> retrain with a fresh optimizer and warm-up).

Defaults that depart from the paper (measured, benchmarks/RESULTS.md): ``criterion=magnitude``,
as CAP-m collapsed to one class at every LR tried at our budgets while magnitude learned;
``rep=mean``, as all-MiniLM-L6-v2 was trained with mean pooling and its pooler is untrained.
``init=finetuned`` starts the student from the teacher instead of the pre-trained model.

Deviations (settled here): SnC keeps at most ``max_snapshots`` columns (the oldest dropped); the
teacher's logits and FiC vectors come from one no-grad pass over the train set, cached by ``idx``
(the teacher is frozen in eval mode: equal to a per-step teacher forward up to padding round-off);
banks are encoded in eval mode; weight masks are recomputed every ``update_every=10`` steps.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH
from compressor.errors import ConfigError, check_range
from compressor.evaluation import evaluate, make_loader
from compressor.pass_base import PRETRAINED, Pass, PassResult, option
from passes._method_common import (StructureOption, attach_masks, check_options, check_structure, kept_units,
                                   require_teacher, save_pruned, with_structure)
from passes._options import LIMITS, TrainingOptions
from passes.cap.banks import MemoryBank
from passes.cap.contrastive import CapLoss, CapObjective
from passes.cap.training import train_structured, train_weight

log = logging.getLogger(__name__)

AUTO = -1.0
DEFAULTS = {"weight": {"w_u": 0.1, "w_s": 10.0, "kd_temperature": 2.0},      # METHODS 1.8, [A9]
            "structured": {"w_u": 0.3, "w_s": 3.0, "kd_temperature": 1.0}}  # METHODS 1.8, [A4]


@dataclass(frozen=True)
class Cap(StructureOption, TrainingOptions, Pass):
    """Prune a pre-trained model while distilling from the fine-tuned teacher with CAP's
    contrastive terms; zeros are baked into the saved model (see the module docstring).

    ``sparsity`` is the fraction of encoder Linear weights zeroed. Structured, heads and FFN
    neurons go at the same ratio (a head and a neuron cost 4*hidden*d and 2*hidden weights, so
    that ratio is the weight fraction; neurons absorb the rounding at the last stage), ranked
    globally (uneven per layer; a layer may lose every head unless ``keep_one_head``).
    ``soft-movement`` trains with its threshold and ends with a hard global top-k of the scores
    to the exact target (``sparsity_trained`` reports what the threshold alone reached).
    """

    name: ClassVar[str] = "cap"
    is_method: ClassVar[bool] = True
    starts_from: ClassVar[str] = PRETRAINED
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH
    training_limits: ClassVar[dict] = {**LIMITS, "epochs": (1, 10**9), "batch_size": (1, 10**9), "lr": (0.0, 1e3)}

    sparsity: float = option(0.9, "fraction of encoder Linear weights to zero, in [0, 1)")
    granularity: str = option("weight", "single weights, or whole heads and FFN neurons",
                              choices=("weight", "structured"))
    criterion: str = option("magnitude", "weight granularity: magnitude, CAP-m (movement) or CAP-soft",
                            choices=("movement", "soft-movement", "magnitude"))
    epochs: int = option(3, "training epochs (structured: split over the stages, see epochs_per_stage)")
    stages: int = option(3, "structured: cumulative pruning steps up to the target")
    epochs_per_stage: int = option(0, "structured: retraining epochs per stage (0: max(1, epochs // stages))")
    lr: float = option(3e-5, "peak learning rate of the weights (AdamW)")
    score_lr: float = option(1e-2, "learning rate of the movement scores")
    warmup: float = option(0.1, "fraction of steps (per stage) for linear LR warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay (not on biases/LayerNorm/scores)")
    start: float = option(0.2, "weight: fraction of training where the cubic ramp starts")
    end: float = option(0.7, "weight: fraction of training where the cubic ramp ends")
    update_every: int = option(10, "weight: optimizer steps between mask updates (authors: 1)")
    soft_threshold: float = option(0.1, "soft-movement: final sigmoid(score) threshold")
    l1_lambda: float = option(190.0, "soft-movement: final weight of the L1 term on sigmoid(scores)")
    keep_one_head: bool = option(False, "structured: never prune a layer's best head")
    importance_batches: int = option(0, "structured: batches per importance pass (0: all)")
    prc: bool = option(True, "contrast with the pre-trained model (PrC)")
    snc: bool = option(True, "contrast with snapshots (SnC)")
    fic: bool = option(True, "contrast with the fine-tuned teacher (FiC)")
    prc_weight: float = option(1.0, "PrC: multiplier of w_u and w_s for this term")
    snc_weight: float = option(1.0, "SnC: multiplier of w_u and w_s for this term")
    fic_weight: float = option(1.0, "FiC: multiplier of w_u and w_s for this term")
    prc_tau: float = option(AUTO, "PrC temperature (-1: tau)")
    snc_tau: float = option(AUTO, "SnC temperature (-1: tau)")
    fic_tau: float = option(AUTO, "FiC temperature (-1: tau)")
    max_snapshots: int = option(4, "SnC keeps at most this many snapshots (oldest dropped)")
    rep: str = option("mean", "sentence representation", choices=("pooler", "cls", "mean"))
    init: str = option("pretrained", "student start: the pre-trained model (paper) or the fine-tuned teacher",
                       choices=("pretrained", "finetuned"))
    tau: float = option(0.1, "contrastive temperature")
    w_u: float = option(AUTO, "unsupervised contrastive weight (-1: 0.1 weight / 0.3 structured)")
    w_s: float = option(AUTO, "supervised contrastive weight (-1: 10 weight / 3 structured)")
    extra: int = option(4096, "extra negatives from each bank (split over its columns, <= train size)")
    w_ce: float = option(0.1, "cross-entropy weight")
    w_kd: float = option(0.9, "knowledge-distillation weight (0: no KD)")
    kd_temperature: float = option(AUTO, "KD temperature (-1: 2 weight / 1 structured)")

    def __post_init__(self):
        check_options(self, ("granularity", "criterion", "rep", "init"))
        for key, lo in (("stages", 1), ("epochs_per_stage", 0), ("update_every", 1), ("importance_batches", 0),
                        ("max_snapshots", 1), ("extra", 0)):
            check_range(f"cap.{key}", getattr(self, key), lo, 10**9)
        ranges = {**dict.fromkeys(("score_lr", "tau", "soft_threshold"), (0.0, 1e3, True)),
                  "start": (0.0, 1.0, False),
                  "end": (self.start, 1.0, False),
                  **dict.fromkeys(("l1_lambda", "w_ce", "w_kd", "prc_weight", "snc_weight", "fic_weight"),
                                  (0.0, 1e6, False))}
        for key, (lo, hi, lo_open) in ranges.items():
            check_range(f"cap.{key}", getattr(self, key), lo, hi, lo_open=lo_open)
        for key, hi in (("prc_tau", 1e3), ("snc_tau", 1e3), ("fic_tau", 1e3), ("w_u", 1e6), ("w_s", 1e6),
                        ("kd_temperature", 1e6)):
            if getattr(self, key) != AUTO:  # AUTO: the granularity's default (hyper)
                check_range(f"cap.{key}", getattr(self, key), 0.0, hi, lo_open=key not in ("w_u", "w_s"))
        check_structure(self)

    def hyper(self) -> dict:
        """w_u, w_s and kd_temperature with the granularity defaults filled in (METHODS 1.8)."""
        return {k: (getattr(self, k) if getattr(self, k) != AUTO else v) for k, v in DEFAULTS[self.granularity].items()}

    def run(self, artifact, ctx) -> PassResult:
        from passes._train import require_task

        task = require_task(ctx, self.name, artifact.model, self.max_train)
        hp, teacher = self.hyper(), self._teacher(ctx, task)
        start = require_teacher(ctx, task, self.name).model if self.init == "finetuned" else artifact.model
        model = copy.deepcopy(start)  # the input (ctx.pretrained) stays untouched
        masks = attach_masks(self, model)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        self._check_keep_one_head(masks)
        seq = make_loader(artifact.tokenizer, task.train, self.max_length, self.batch_size)  # dataset order
        objective = self._objective(task, hp, ctx.seed, len(seq.dataset))
        times = {"encode": 0.0, "importance": 0.0, "train": 0.0}
        with CapLoss(model, seq, len(seq.dataset), objective, self.rep) as loss:  # QA: a row per window
            extra = self._prune(model, artifact.tokenizer, task, ctx, masks, loss, teacher, times)
        times["encode"] = loss.encode_seconds
        out, report, keep = save_pruned(self, artifact, model, masks, ctx)
        accuracy = evaluate(model, artifact.tokenizer, ctx.data.eval, self.max_length) if ctx.data.eval else None
        log.info("cap: sparsity %.4f (target %.4f), accuracy %s", report["overall"], self.sparsity, accuracy)
        return PassResult(out, True, self._metrics(report, accuracy, times, hp, task, objective.banks, extra, keep))

    def _teacher(self, ctx, task):
        """The fine-tuned teacher when KD or FiC needs it, else None."""
        if self.w_kd > 0 or (self.fic and self.fic_weight > 0):
            return require_teacher(ctx, task, self.name, " (or set cap.w_kd=0 and cap.fic=false)")
        return None

    def _check_keep_one_head(self, masks) -> None:
        if self.granularity == "structured" and self.keep_one_head:
            layers, heads = masks.structured_keep()[0].shape
            if math.floor(self.sparsity * layers * heads + 1e-9) > layers * (heads - 1):
                raise ConfigError(f"cap.sparsity={self.sparsity} prunes more than {layers * (heads - 1)} of "
                                  f"{layers * heads} heads, impossible with keep_one_head=true")

    def _objective(self, task, hp: dict, seed: int, rows: int = 0):
        """CAP's loss (METHODS 1.5) over the banks that are on."""
        import torch

        banks = {k: MemoryBank(k, self.max_snapshots if k == "snc" else 1)
                 for k in ("prc", "snc", "fic") if getattr(self, k) and getattr(self, f"{k}_weight") > 0}
        # tags per word, or several labels a text: no sentence class (no supervised term)
        tagging = getattr(task, "tagging", False) or getattr(task, "multi_label", False)
        if getattr(task, "question_answering", False):  # answer spans: a row per window, no class either
            labels = torch.zeros(rows)
        else:
            labels = torch.zeros(len(task.train)) if tagging else torch.tensor([e.label for e in task.train])
        return CapObjective(labels, banks, tau=self.tau,
                            w_u=hp["w_u"], w_s=hp["w_s"], extra=min(self.extra, len(task.train)), w_ce=self.w_ce,
                            w_kd=self.w_kd, kd_temperature=hp["kd_temperature"],
                            generator=torch.Generator().manual_seed(seed),
                            bank_weight={k: getattr(self, f"{k}_weight") for k in banks},
                            bank_tau={k: getattr(self, f"{k}_tau") for k in banks if getattr(self, f"{k}_tau") != AUTO})

    def _prune(self, model, tok, task, ctx, masks, loss, teacher, times) -> dict:
        """Encode the teacher (FiC, KD logits), then prune and train at the chosen granularity."""
        if teacher is not None:
            loss.encode_teacher(teacher.model)
        if self.granularity == "weight":
            loss.snapshot("prc")  # the pre-trained model, before any training (METHODS 1.4)
            return train_weight(self, model, tok, task, ctx, masks, loss, times)
        return train_structured(self, model, tok, task, ctx, masks, loss, times)

    def _metrics(self, report, accuracy, times, hp, task, banks, extra, keep) -> dict:
        n = len(task.train)
        return {"target_sparsity": self.sparsity, "sparsity": report["overall"],
                "per_layer": report["layers"], "accuracy": accuracy,
                "train_seconds": sum(times.values()), "seconds": times, **hp,
                "extra_negatives": min(self.extra, n), "train_examples": n,
                "banks": {k: {"columns": b.columns, "encoded": b.appended, "bytes": b.nbytes}
                          for k, b in banks.items()}, **extra, **kept_units(keep)}
