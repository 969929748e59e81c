"""The training options the training passes share, declared and checked once.

A training pass mixes :class:`TrainingOptions` (or, without warm-up and weight decay,
:class:`BasicTrainingOptions`) into its option dataclass, like ``_method_common.KDOptions``::

    @dataclass(frozen=True)
    class Nip(KDOptions, TrainingOptions, Pass):
        epochs: int = option(3, "training epochs (the whole budget)")  # a different default or help

calls :meth:`~BasicTrainingOptions.check_training` from its ``__post_init__`` (the pruning methods
through ``_method_common.check_options``; messages name the pass: ``nip.lr=...``) and trains with ``train(..., **self.train_kwargs())``. A pass changes a
default or a help text by declaring the field again (it keeps its place among the options), and a
range by setting ``training_limits``. The fields come before the pass's own ones in
``compress passes`` and in a spec written back (``Pass.to_spec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.errors import check_range
from compressor.pass_base import option

# option -> (lowest, highest) allowed value; lr must be above its lowest.
LIMITS = {"epochs": (1, 1000), "lr": (0.0, 1.0), "batch_size": (1, 65536), "max_length": (8, 4096),
          "warmup": (0.0, 1.0), "weight_decay": (0.0, 1.0), "max_train": (0, 10**9)}
_LO_OPEN = ("lr",)


@dataclass(frozen=True)
class BasicTrainingOptions:
    """Epochs, learning rate, batch size, input length and training-set cap of a pass that
    trains with ``passes._train.train`` (warm-up and weight decay at ``train``'s defaults)."""

    training_limits: ClassVar[dict] = LIMITS

    epochs: int = option(3, "training epochs")
    lr: float = option(3e-5, "peak learning rate (AdamW)")
    batch_size: int = option(32, "training batch size")
    max_length: int = option(64, "truncate inputs to this many tokens")
    max_train: int = option(0, "use at most this many training examples (0 = all)")

    def check_training(self) -> None:
        """ConfigError ``<pass>.<option>=... is out of range`` unless every training option is
        within ``training_limits``."""
        fields = type(self).__dataclass_fields__
        for key, (lo, hi) in self.training_limits.items():
            if key in fields:
                check_range(f"{self.name}.{key}", getattr(self, key), lo, hi, lo_open=key in _LO_OPEN)

    def train_kwargs(self, **overrides) -> dict:
        """The keywords of ``passes._train.train`` these options set (``overrides`` win, e.g. the
        ``epochs`` a pass computed)."""
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "max_length": self.max_length, **overrides}


@dataclass(frozen=True)
class TrainingOptions(BasicTrainingOptions):
    """:class:`BasicTrainingOptions` plus linear warm-up and AdamW weight decay."""

    warmup: float = option(0.1, "fraction of steps for linear LR warm-up")
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases/LayerNorm)")

    def train_kwargs(self, **overrides) -> dict:
        return super().train_kwargs(**{"warmup_ratio": self.warmup, "weight_decay": self.weight_decay,
                                       **overrides})
