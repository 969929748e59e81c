"""``cap``: ContrAstive Pruning. Xu, Luo, Huang, Huang, Zhang, Zhang, Wang, "From Dense to Sparse:
Contrastive Pruning for Better Pre-trained Language Model Compression" (AAAI 2022, arXiv:2112.07198).

The paper body was not available; the pieces follow the authors' code (alibaba/AliceMind
``ContrastivePruning``) as summarised in METHODS.md section 1 (numbers below are its sections):

- student = the input (pre-trained) model; teacher = ``ctx.teacher`` (fine-tuned, frozen) (1.2);
- loss ``w_ce CE + w_kd KD + sum over PrC, SnC, FiC banks (w_u L_u + w_s L_s)`` (1.5), in
  :mod:`passes._contrastive`; criteria and first-order importance in :mod:`passes._cap_prune`.
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
import time
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH
from compressor.errors import ConfigError, check_choice, check_range
from compressor.pass_base import PRETRAINED, Pass, PassResult, option
from passes._contrastive import method_state
from passes._method_common import StructureOption, check_structure, require_teacher, with_structure

log = logging.getLogger(__name__)

AUTO = -1.0
DEFAULTS = {"weight": {"w_u": 0.1, "w_s": 10.0, "kd_temperature": 2.0},      # METHODS 1.8, [A9]
            "structured": {"w_u": 0.3, "w_s": 3.0, "kd_temperature": 1.0}}  # METHODS 1.8, [A4]


@dataclass(frozen=True)
class Cap(StructureOption, Pass):
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
    batch_size: int = option(32, "training batch size")
    max_length: int = option(64, "truncate inputs to this many tokens")
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
    max_train: int = option(0, "use at most this many training examples (0 = all)")

    def __post_init__(self):
        check_range("cap.sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        for key in ("granularity", "criterion", "rep", "init"):
            choices = type(self).__dataclass_fields__[key].metadata["choices"]
            check_choice(f"cap.{key}", getattr(self, key), choices)
        for key, lo in (("epochs", 1), ("stages", 1), ("epochs_per_stage", 0), ("batch_size", 1),
                        ("update_every", 1), ("importance_batches", 0), ("max_snapshots", 1),
                        ("extra", 0), ("max_train", 0)):
            check_range(f"cap.{key}", getattr(self, key), lo, 10**9)
        check_range("cap.max_length", self.max_length, 8, 4096)
        ranges = {**dict.fromkeys(("lr", "score_lr", "tau", "soft_threshold"), (0.0, 1e3, True)),
                  **dict.fromkeys(("warmup", "weight_decay", "start"), (0.0, 1.0, False)),
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
        import torch

        from passes._contrastive import CapLoss, CapObjective, MemoryBank
        from passes._method_common import attach_masks, kept_units, save_pruned
        from passes._train import evaluate, make_loader, require_task

        task = require_task(ctx, self.name, artifact.model, self.max_train)
        hp, n, tok = self.hyper(), len(task.train), artifact.tokenizer
        teacher = (require_teacher(ctx, task, self.name, " (or set cap.w_kd=0 and cap.fic=false)")
                   if self.w_kd > 0 or (self.fic and self.fic_weight > 0) else None)  # KD or FiC
        start = require_teacher(ctx, task, self.name).model if self.init == "finetuned" else artifact.model
        model = copy.deepcopy(start)  # the input (ctx.pretrained) stays untouched
        masks = attach_masks(self, model)
        self = with_structure(self, artifact, masks)  # noqa: PLW0642 (the structure sets the sparsity)
        if self.granularity == "structured" and self.keep_one_head:
            layers, heads = masks.structured_keep()[0].shape
            if math.floor(self.sparsity * layers * heads + 1e-9) > layers * (heads - 1):
                raise ConfigError(f"cap.sparsity={self.sparsity} prunes more than {layers * (heads - 1)} of "
                                  f"{layers * heads} heads, impossible with keep_one_head=true")
        seq = make_loader(tok, task.train, self.max_length, self.batch_size)  # dataset order
        banks = {k: MemoryBank(k, self.max_snapshots if k == "snc" else 1)
                 for k in ("prc", "snc", "fic") if getattr(self, k) and getattr(self, f"{k}_weight") > 0}
        objective = CapObjective(torch.tensor([e.label for e in task.train]), banks, tau=self.tau,
                                 w_u=hp["w_u"], w_s=hp["w_s"], extra=min(self.extra, n), w_ce=self.w_ce,
                                 w_kd=self.w_kd, kd_temperature=hp["kd_temperature"],
                                 generator=torch.Generator().manual_seed(ctx.seed),
                                 bank_weight={k: getattr(self, f"{k}_weight") for k in banks},
                                 bank_tau={k: getattr(self, f"{k}_tau") for k in banks if getattr(self, f"{k}_tau") != AUTO})
        times = {"encode": 0.0, "importance": 0.0, "train": 0.0}
        with CapLoss(model, seq, n, objective, self.rep) as loss:
            if teacher is not None:
                loss.encode_teacher(teacher.model)
            if self.granularity == "weight":
                loss.snapshot("prc")  # the pre-trained model, before any training (METHODS 1.4)
            runner = self._weight if self.granularity == "weight" else self._structured
            extra = runner(model, tok, task, ctx, masks, loss, times)
        times["encode"] = loss.encode_seconds
        out, report, keep = save_pruned(self, artifact, model, masks, ctx)
        accuracy = evaluate(model, tok, ctx.data.eval, self.max_length) if ctx.data.eval else None
        metrics = {"target_sparsity": self.sparsity, "sparsity": report["overall"],
                   "per_layer": report["layers"], "accuracy": accuracy,
                   "train_seconds": sum(times.values()), "seconds": times, **hp,
                   "extra_negatives": min(self.extra, n), "train_examples": n,
                   "banks": {k: {"columns": b.columns, "encoded": b.appended, "bytes": b.nbytes}
                             for k, b in banks.items()}, **extra, **kept_units(keep)}
        log.info("cap: sparsity %.4f (target %.4f), accuracy %s", report["overall"], self.sparsity, accuracy)
        return PassResult(out, True, metrics)

    def _weight(self, model, tok, task, ctx, masks, loss, times) -> dict:
        """CAP-m / CAP-soft / magnitude (METHODS 1.7): one training run on the cubic schedule."""
        from passes._cap_prune import WeightPruner
        from passes._checkpoint import Attrs
        from passes._train import train

        pruner = WeightPruner(masks, self.criterion, self.sparsity, self.start, self.end,
                              self.update_every, self.soft_threshold, self.l1_lambda)
        state = {"step": 0, "total": math.ceil(len(task.train) / self.batch_size) * self.epochs}
        final = self.soft_threshold if self.criterion == "soft-movement" else self.sparsity

        def after_step(step: int, total: int) -> None:
            state.update(step=step, total=total)
            pruner.after_step(step, total)
            per_epoch = total // self.epochs
            if per_epoch and step % per_epoch == 0 and step < total:  # an epoch boundary
                loss.snapshot("snc")

        def loss_fn(m, batch, outputs):
            return loss(m, batch, outputs) + pruner.penalty(state["step"], state["total"])

        groups = None
        if pruner.scores:
            def groups(m):
                return pruner.param_groups(m, self.lr, self.score_lr, self.weight_decay)
        encoded_before = loss.encode_seconds
        res = train(model, tok, task, ctx, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                    warmup_ratio=self.warmup, weight_decay=self.weight_decay, max_length=self.max_length,
                    loss_fn=loss_fn, after_step=after_step, param_groups=groups,
                    keep_best=self.criterion != "soft-movement",
                    best_eligible=lambda epoch: pruner.current >= final, desc=self.name,
                    method_state=method_state(loss, state=state, pruner=Attrs(pruner, "current")))
        times["train"] += res.seconds - (loss.encode_seconds - encoded_before)  # minus snapshots
        trained = masks.sparsity_report()["overall"]  # soft movement: its own outcome
        pruner.finish()
        return {"steps": res.steps, "sparsity_trained": trained, "epoch_kept": res.restored_epoch or self.epochs,
                "accuracy_per_epoch": [e["accuracy"] for e in res.epochs]}

    def _structured(self, model, tok, task, ctx, masks, loss, times) -> dict:
        """CAP-f (METHODS 1.6): per stage importance -> bank refresh -> masks -> retrain."""
        from passes._cap_prune import first_order_importance, protect_top_head
        from passes._train import make_loader, train

        epochs = self.epochs_per_stage or max(1, self.epochs // self.stages)
        loader = make_loader(tok, task.train, self.max_length, self.batch_size, shuffle=True, seed=ctx.seed)
        stages, steps = [], 0
        for k in range(self.stages):
            target = self.sparsity * (k + 1) / self.stages
            t0 = time.perf_counter()
            heads, neurons = first_order_importance(model, loader, loss, self.importance_batches)
            times["importance"] += time.perf_counter() - t0
            loss.snapshot("prc" if k == 0 else "snc")  # the model before this stage's masks
            if self.keep_one_head:
                heads = protect_top_head(heads, masks.structured_keep()[0])
            masks.apply_structured(heads, neurons, target, scope="global", fill=k == self.stages - 1)
            res = train(model, tok, task, ctx, epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                        warmup_ratio=self.warmup, weight_decay=self.weight_decay,
                        max_length=self.max_length, loss_fn=loss, method_state=method_state(loss),
                        keep_best=False, eval_each_epoch=False, desc=f"{self.name} stage {k + 1}")
            times["train"] += res.seconds
            steps += res.steps
            stages.append({"stage": k + 1, "target": target, "sparsity": masks.sparsity_report()["overall"],
                           "accuracy": res.final_accuracy})
        return {"steps": steps, "stages": stages, "epochs_per_stage": epochs}
