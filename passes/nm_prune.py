"""``nm-prune``: N:M semi-structured sparsity (default 2:4) on the encoder Linears (torch -> torch).

In each row of a Linear weight ``W[out, in]``, every group of ``m`` consecutive input weights
keeps its ``n`` largest-magnitude entries and zeroes the rest: the pattern NVIDIA's sparse
tensor cores (Ampere and later, TensorRT with sparsity enabled) run at up to twice the dense
math rate. Recipe of Mishra et al., "Accelerating Sparse Deep Neural Networks" (2021,
arXiv:2104.08378), Sec. 3: prune a trained dense network to 2:4 by magnitude once, then
(optionally, ``epochs`` > 0) fine-tune with the sparsity mask fixed. The mask is the shared
:class:`passes._masks.MaskSet` (pruned weights stay exactly zero during fine-tuning), baked into
plain weights at the end. A Linear whose input width is not a multiple of ``m`` (possible after
``strip``) cannot hold the pattern and is left dense (listed in ``skipped``).

ONNX Runtime's CPU and CUDA providers have no N:M kernels: the pattern pays off only on
TensorRT (or after ``quantize`` for a smaller model, not a faster one).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TORCH, TorchModel
from compressor.errors import ConfigError, check_range
from compressor.pass_base import Pass, PassResult, option
from passes._options import LIMITS, BasicTrainingOptions

log = logging.getLogger(__name__)


def nm_mask(weight, n: int = 2, m: int = 4):
    """Bool mask of ``weight [out, in]`` keeping the ``n`` largest |w| of every ``m`` consecutive
    inputs of each row (ties: the earlier position). ``in`` must be a multiple of ``m``."""
    import torch

    rows, cols = weight.shape
    if cols % m:
        raise ValueError(f"input width {cols} is not a multiple of m={m}")
    groups = weight.detach().abs().float().reshape(rows, cols // m, m)
    # stable descending order: among equal magnitudes the earlier position wins
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(rows, cols)


def follows_nm(weight, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.detach() != 0).reshape(rows, cols // m, m).sum(-1) <= n).all())


@dataclass(frozen=True)
class NMPrune(BasicTrainingOptions, Pass):
    """Prune the encoder Linears to an N:M pattern (default 2:4); see the module docstring."""

    name: ClassVar[str] = "nm-prune"
    consumes: ClassVar[str] = TORCH
    produces: ClassVar[str] = TORCH
    training_limits: ClassVar[dict] = {**LIMITS, "epochs": (0, 1000)}

    n: int = option(2, "weights kept in each group")
    m: int = option(4, "consecutive input weights per group")
    epochs: int = option(0, "fine-tuning epochs with the mask fixed (0: prune only)")
    lr: float = option(2e-5, "peak learning rate of the fine-tuning (AdamW)")

    def __post_init__(self):
        check_range("nm-prune.m", self.m, 2, 64)
        check_range("nm-prune.n", self.n, 1, self.m - 1)
        self.check_training()

    def run(self, artifact, ctx) -> PassResult:
        from compressor.evaluation import evaluate
        from passes._masks import MaskSet, encoder_linears, sparsity_report
        from passes._train import require_task, train
        from passes.families import family_of

        model = copy.deepcopy(artifact.model)  # never mutate the input (it may be the teacher)
        linears = encoder_linears(model)
        roles = family_of(model).linear_roles()
        targets = {k: v for k, v in linears.items() if v.in_features % self.m == 0 and v.in_features}
        skipped = sorted(set(linears) - set(targets))
        if not targets:
            raise ConfigError(f"nm-prune found no encoder Linear whose input width is a multiple of "
                              f"m={self.m} in {type(model).__name__}")
        if skipped:
            log.warning("nm-prune: %d Linears have an input width that is not a multiple of %d and stay "
                        "dense: %s", len(skipped), self.m, ", ".join(skipped))
        masks = MaskSet.attach(model, targets)
        for name, module in targets.items():
            masks.set_mask(name, nm_mask(module.weight, self.n, self.m))
        res, accuracy = None, None
        if self.epochs > 0:
            task = require_task(ctx, self.name, model, self.max_train)
            res = train(model, artifact.tokenizer, task, ctx, **self.train_kwargs(), desc=self.name)
            accuracy = res.accuracy
        elif ctx.data is not None and ctx.data.eval:
            accuracy = evaluate(model, artifact.tokenizer, ctx.data.eval, self.max_length)
        masks.bake()
        bad = [k for k, v in targets.items() if not follows_nm(v.weight, self.n, self.m)]
        if bad:  # cannot happen with fixed masks; a guard against a broken mask mechanism
            raise RuntimeError(f"{len(bad)} Linears lost the {self.n}:{self.m} pattern: {', '.join(bad)}")
        report = sparsity_report(targets, roles)
        encoder = sparsity_report(encoder_linears(model), roles)
        pattern = f"{self.n}:{self.m}"
        info = {**artifact.info, "sparsity": encoder["overall"],
                "pruning": {"method": self.name, "spec": self.to_spec(), "pattern": pattern}}
        out = TorchModel(model, artifact.tokenizer, info)
        out.save(ctx.out_dir() / "model")
        metrics = {
            "pattern": pattern, "pattern_ok": True, "targeted": len(targets), "skipped": skipped,
            "sparsity": report["overall"], "encoder_sparsity": encoder["overall"],
            "layer_sparsity": report["layers"], "accuracy": accuracy,
            "steps": res.steps if res else 0, "train_seconds": res.seconds if res else 0.0,
        }
        log.info("nm-prune %s: %d Linears, sparsity %.4f, accuracy %s", pattern, len(targets),
                 report["overall"], accuracy)
        return PassResult(out, True, metrics)
