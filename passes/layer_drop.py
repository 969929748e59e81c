"""``layer-drop``: keep ``keep`` of the L encoder layers of a BERT-family model (torch -> torch).

The smaller dense model a user would pick instead of a pruned one: a shallower copy of the
same model, initialised from the kept layers and then recovered by distillation (a separate
step; this pass only cuts). The kept layers are renumbered 0..keep-1, ``config.num_hidden_layers``
becomes ``keep`` and, for a model already cut by ``strip``, ``config.compressor_layers`` keeps
the entries of the kept layers, so the saved folder reloads with
:func:`compressor.models.load_model`.

Which layers (``which``):

- ``even``: evenly spaced from the first to the last layer, ``round(i * (L - 1) / (keep - 1))``
  for i = 0..keep-1 (half-up; ``[0]`` for keep=1). For 12 -> 6 this is DistilBERT's
  initialisation, layers 0, 2, 4, 7, 9, 11 (Sanh et al., "DistilBERT, a distilled version of
  BERT: smaller, faster, cheaper and lighter", 2019, arXiv:1910.01108, Sec. 3 "Student
  initialization": "taking one layer out of two"; the indices are those of its
  ``extract_distilbert.py``); for 6 -> 3 it is 0, 3, 5 and 6 -> 2 is 0, 5.
- ``first`` / ``last``: the bottom or top ``keep`` layers. Sajjad et al., "On the Effect of
  Dropping Layers of Pre-trained Transformer Models", 2020, arXiv:2004.03844, compare these
  strategies and find that dropping the top layers (keeping the ``first``) holds up best
  after fine-tuning.
- a comma list of 0-based indices, e.g. ``0,2,5`` (sorted, distinct; ``keep`` 0 or its length).

``keep=0`` means half of the layers, rounded up. The model's forward is unchanged apart from
the layers it no longer runs; with every layer kept the output is the input model's.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import TorchModel
from compressor.errors import ConfigError, ModelError, check_range
from compressor.pass_base import Pass, PassResult, option
from passes.families import family_of
from passes.families.base import count_params

log = logging.getLogger(__name__)

FLOPS_SEQ = 128
SCHEMES = ("even", "first", "last")


def parse_which(which: str) -> list[int] | None:
    """The explicit layer list of ``which`` (None for a scheme name); ConfigError if malformed."""
    text = str(which).strip().lower()
    if text in SCHEMES:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"layer-drop which={which!r} is not allowed: choose one of "
                          f"{', '.join(SCHEMES)} or a comma list of 0-based layer indices, e.g. 0,2,5")
    idx = [int(p) for p in parts]
    if len(set(idx)) != len(idx):
        raise ConfigError(f"layer-drop which={which!r} lists a layer twice: give distinct indices")
    return sorted(idx)


def layers_to_keep(n_layers: int, keep: int, which: str = "even") -> list[int]:
    """Sorted 0-based indices of the layers to keep out of ``n_layers`` (see the module doc)."""
    explicit = parse_which(which)
    if explicit is not None:
        if keep not in (0, len(explicit)):
            raise ConfigError(f"layer-drop keep={keep} with which={which!r} ({len(explicit)} layers): "
                              "give keep=0 or the number of listed layers")
        if explicit[-1] >= n_layers:
            raise ModelError(f"layer-drop which={which!r}: layer {explicit[-1]} does not exist, the model "
                             f"has {n_layers} layers (0..{n_layers - 1})")
        return explicit
    keep = keep or (n_layers + 1) // 2
    if not 1 <= keep <= n_layers:
        raise ModelError(f"layer-drop keep={keep} is out of range for a model with {n_layers} layers: "
                         f"allowed [1, {n_layers}] (0 = half)")
    scheme = str(which).strip().lower()
    if scheme == "first":
        return list(range(keep))
    if scheme == "last":
        return list(range(n_layers - keep, n_layers))
    if keep == 1:
        return [0]
    return [int(i * (n_layers - 1) / (keep - 1) + 0.5) for i in range(keep)]


def drop_layers(model, kept: list[int]):
    """A deep copy of ``model`` with only encoder layers ``kept`` (renumbered), its config
    updated (``num_hidden_layers``, ``compressor_layers`` when present)."""
    model = copy.deepcopy(model)
    family = family_of(model)
    layers = family.layers()
    family.set_layers([layers[i] for i in kept])
    for new_idx, layer in enumerate(family.layers()):
        for module in layer.modules():  # the KV-cache index some attention classes keep
            if getattr(module, "layer_idx", None) is not None:
                module.layer_idx = new_idx
    for config in {id(c): c for c in (model.config, family.base.config)}.values():
        config.num_hidden_layers = len(kept)
        sizes = getattr(config, "compressor_layers", None)
        if sizes:
            config.compressor_layers = [dict(sizes[i]) for i in kept]
    return model


@dataclass(frozen=True)
class LayerDrop(Pass):
    """Keep ``keep`` of the encoder layers (torch -> torch); see the module doc."""

    name: ClassVar[str] = "layer-drop"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"

    keep: int = option(0, "encoder layers to keep (0 = half, rounded up)")
    which: str = option("even", "which layers: even (evenly spaced, first and last kept, like DistilBERT), "
                                "first, last, or a comma list of 0-based indices such as 0,2,5")

    def __post_init__(self):
        check_range("keep", self.keep, 0, 1000)
        parse_which(self.which)

    def run(self, artifact, ctx) -> PassResult:
        n_layers = len(family_of(artifact.model).layers())
        kept = layers_to_keep(n_layers, self.keep, self.which)
        params_before = count_params(artifact.model)
        flops_before = family_of(artifact.model).encoder_flops(FLOPS_SEQ)
        modified = kept != list(range(n_layers))
        if modified:
            model = drop_layers(artifact.model, kept)
            info = dict(artifact.info, layers_kept=kept, layers_before=n_layers)
            if getattr(model.config, "compressor_layers", None):
                info["compressor_layers"] = model.config.compressor_layers
            out = TorchModel(model, artifact.tokenizer, info)
        else:
            out = artifact
        params_after = count_params(out.model)
        flops_after = family_of(out.model).encoder_flops(FLOPS_SEQ)
        metrics = {
            "layers_before": n_layers, "layers_after": len(kept), "layers_kept": kept,
            "params_before": params_before, "params_after": params_after,
            "params_reduction": round(1 - params_after / params_before, 6),
            f"encoder_flops_seq{FLOPS_SEQ}_before": flops_before,
            f"encoder_flops_seq{FLOPS_SEQ}_after": flops_after,
            "encoder_flops_reduction": round(1 - flops_after / flops_before, 6),
        }
        log.info("layer-drop: kept layers %s of %d, params %d -> %d", kept, n_layers,
                 params_before, params_after)
        out.save(ctx.out_dir())
        return PassResult(out, modified, metrics)
