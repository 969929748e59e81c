"""``strip``: physically remove attention heads and FFN neurons whose contribution is zero.

Structured pruning leaves whole heads / neurons zeroed inside dense Linears; ONNX Runtime only
runs faster once they are gone. This pass finds them from the weights (per layer, uneven),
slices the Linears by hand (no ``prune_heads``: transformers 5.x removed it) and fixes the
attention bookkeeping, so the stripped model computes the same function as the masked one.

What counts as removable (``W_v``/``b_v`` value rows of head h, ``W_o`` attention-output
columns of h, ``W_1``/``b_1`` FFN-input row i, ``W_2`` FFN-output column i; the roles ``value``,
``attn_out``, ``ffn_in``, ``ffn_out`` of the model's family adapter):

- head h: ``W_v`` rows are zero, or ``W_o`` columns are zero. With zero ``W_v`` rows the head's
  context is ``b_v`` for every token (softmax rows sum to 1), so ``W_o[:, h] @ b_v[h]`` is
  folded into the attention-output bias (zero when ``b_v`` is zero too). Query/key rows alone
  never make a head removable.
- FFN neuron i: ``W_1`` row is zero (its output is the constant ``act(b_1[i])``, folded into
  the output bias as ``act(b_1[i]) * W_2[:, i]``; zero for GELU when ``b_1[i] = 0``), or its
  ``W_2`` column is zero.

A layer left with 0 heads computes ``LayerNorm(W_o.bias + x)``, one with 0 neurons
``LayerNorm(W_2.bias + a)`` (the family's stand-ins, :mod:`passes.families`). The kept sizes are recorded as
``config.compressor_layers = [{"heads": h, "ffn": f}, ...]``; :func:`load_stripped` rebuilds
the model from them (and from ``config.compressor_hidden`` after ``hidden-prune``: the first
model's sizes and the kept hidden units, :meth:`passes.families.base.Family.keep_hidden`). The folds are exact in inference (no dropout, no ``head_mask``).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from compressor.artifact import TorchModel
from compressor.errors import ArtifactError, ConfigError
from compressor.pass_base import Pass, PassResult, option
from passes.families import family_of
from passes.families.base import count_params

log = logging.getLogger(__name__)

FLOPS_SEQ = 128


def find_removable(family, layer, heads: bool = True, ffn: bool = True) -> tuple[list[int], list[int]]:
    """Indices of the heads and FFN neurons of ``layer`` to keep (all others are removable)."""
    import torch
    n_heads, n_ffn = family.layer_sizes(layer)
    keep_h, keep_f = list(range(n_heads)), list(range(n_ffn))
    with torch.no_grad():
        if heads and n_heads:
            d = family.head_size(layer)
            v_zero = (family.linear(layer, "value").weight.view(n_heads, d, -1) == 0).flatten(1).all(1)
            o = family.linear(layer, "attn_out").weight
            o_zero = (o.view(o.shape[0], n_heads, d) == 0).transpose(0, 1).flatten(1).all(1)
            keep_h = [h for h in range(n_heads) if not (v_zero[h] or o_zero[h])]
        if ffn and n_ffn:
            in_zero = (family.linear(layer, "ffn_in").weight == 0).all(1)
            out_zero = (family.linear(layer, "ffn_out").weight == 0).all(0)
            keep_f = [i for i in range(n_ffn) if not (in_zero[i] or out_zero[i])]
    return keep_h, keep_f


def _fold_and_strip(family, layer, keep_h: list[int], keep_f: list[int]) -> None:
    """Fold the constant output of removed units into the following bias, then slice."""
    import torch
    n_heads, n_ffn = family.layer_sizes(layer)
    with torch.no_grad():
        if len(keep_h) < n_heads:
            value, dense = family.linear(layer, "value"), family.linear(layer, "attn_out")
            d = family.head_size(layer)
            gone = [h for h in range(n_heads) if h not in set(keep_h)]
            if value.bias is not None and dense.bias is not None:
                for h in gone:
                    dense.bias.add_(dense.weight[:, h * d:(h + 1) * d] @ value.bias[h * d:(h + 1) * d])
            family.keep_heads(layer, keep_h)
        if len(keep_f) < n_ffn:
            ffn_in, dense = family.linear(layer, "ffn_in"), family.linear(layer, "ffn_out")
            gone = torch.tensor([i for i in range(n_ffn) if i not in set(keep_f)], dtype=torch.long)
            if ffn_in.bias is not None and dense.bias is not None:
                const = family.ffn_activation(layer)(ffn_in.bias[gone])
                dense.bias.add_(dense.weight[:, gone] @ const)
            family.keep_ffn(layer, keep_f)


def apply_layer_sizes(model, sizes: list[dict]) -> None:
    """Cut a dense model to ``sizes`` (``config.compressor_layers``), keeping the first heads and
    neurons of each layer: the layout a stripped model is saved in. ArtifactError if they do not fit."""
    family = family_of(model)
    layers = family.layers()
    if not isinstance(sizes, list) or len(sizes) != len(layers):
        raise ArtifactError(f"compressor_layers has {len(sizes) if isinstance(sizes, list) else sizes!r} "
                            f"entries: the model has {len(layers)} layers")
    for i, (layer, size) in enumerate(zip(layers, sizes)):
        n_heads, n_ffn = family.layer_sizes(layer)
        h, f = (size.get("heads"), size.get("ffn")) if isinstance(size, dict) else (None, None)
        if not (isinstance(h, int) and isinstance(f, int) and 0 <= h <= n_heads and 0 <= f <= n_ffn):
            raise ArtifactError(f"compressor_layers[{i}]={size!r} is not allowed: heads in [0, {n_heads}], "
                                f"ffn in [0, {n_ffn}]")
        if h < n_heads:
            family.keep_heads(layer, list(range(h)))
        if f < n_ffn:
            family.keep_ffn(layer, list(range(f)))
    model.config.compressor_layers = [dict(s) for s in sizes]


def layer_sizes(model) -> list[dict]:
    """``[{"heads": h, "ffn": f}, ...]`` of the model as it is now."""
    family = family_of(model)
    return [dict(zip(("heads", "ffn"), family.layer_sizes(layer))) for layer in family.layers()]


def _measure(model) -> dict:
    family = family_of(model)
    return {"params": count_params(model), "encoder": count_params(family.layers()),
            "flops": family.encoder_flops(FLOPS_SEQ)}


@dataclass(frozen=True)
class Strip(Pass):
    """Remove zero-contribution attention heads and FFN neurons (torch -> torch); see the module doc."""

    name: ClassVar[str] = "strip"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"
    run_order: ClassVar[int] = 20

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """After a structured method (one with a ``granularity`` option)."""
        structured = cfg.granularity == "structured" and "granularity" in {f.name for f in fields(method)}
        return "strip" if structured else None

    heads: bool = option(True, "remove attention heads whose output is zero")
    ffn: bool = option(True, "remove FFN neurons whose output is zero")

    def __post_init__(self):
        if not (self.heads or self.ffn):
            raise ConfigError("strip with heads=False and ffn=False removes nothing: enable heads or ffn")

    def run(self, artifact, ctx) -> PassResult:
        family = family_of(artifact.model)
        sizes_before = layer_sizes(artifact.model)
        plan = [find_removable(family, layer, self.heads, self.ffn) for layer in family.layers()]
        modified = any(len(h) < s["heads"] or len(f) < s["ffn"] for (h, f), s in zip(plan, sizes_before))
        before = _measure(artifact.model)
        if modified:
            model = copy.deepcopy(artifact.model)
            family = family_of(model)
            for layer, (keep_h, keep_f) in zip(family.layers(), plan):
                _fold_and_strip(family, layer, keep_h, keep_f)
            sizes = layer_sizes(model)
            model.config.compressor_layers = sizes
            out = TorchModel(model, artifact.tokenizer, dict(artifact.info, compressor_layers=sizes))
        else:
            sizes, out = sizes_before, artifact
        after = _measure(out.model)
        metrics = {
            "heads_kept": [s["heads"] for s in sizes],
            "ffn_kept": [s["ffn"] for s in sizes],
            "heads_removed": sum(s["heads"] for s in sizes_before) - sum(s["heads"] for s in sizes),
            "ffn_removed": sum(s["ffn"] for s in sizes_before) - sum(s["ffn"] for s in sizes),
            "params_before": before["params"], "params_after": after["params"],
            "encoder_params_before": before["encoder"], "encoder_params_after": after["encoder"],
            "encoder_params_reduction": round(1 - after["encoder"] / before["encoder"], 6),
            f"encoder_flops_seq{FLOPS_SEQ}_before": before["flops"],
            f"encoder_flops_seq{FLOPS_SEQ}_after": after["flops"],
            "encoder_flops_reduction": round(1 - after["flops"] / before["flops"], 6),
        }
        log.info("strip: heads per layer %s, FFN per layer %s, encoder params %d -> %d",
                 metrics["heads_kept"], metrics["ffn_kept"], before["encoder"], after["encoder"])
        out.save(ctx.out_dir())
        return PassResult(out, modified, metrics)


def _read_state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    raise ArtifactError(f"no model.safetensors in {folder}: load_stripped reads safetensors only")


def _model_class(config):
    import transformers
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls
    return None


def load_stripped(folder, attn_implementation: str | None = None) -> TorchModel:
    """Load a model saved after :class:`Strip`: build the dense architecture from config.json,
    cut it to ``config.compressor_layers`` (the same slicing code), load the safetensors weights
    strictly, and load the tokenizer. ``attn_implementation`` ("eager"/"sdpa") overrides the
    transformers default. ArtifactError on a missing folder, sizes or weights that do not fit."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from compressor.embedder import from_config as embedder_from_config
    from compressor.embedder import is_embedder
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder} has no config.json: expected a folder saved by the strip pass")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    sizes = getattr(config, "compressor_layers", None)
    hidden = getattr(config, "compressor_hidden", None)
    if not sizes and not hidden:
        raise ArtifactError(f"config.json in {folder} has no compressor_layers: not a stripped model")
    width = _dense_width(config, hidden, folder) if hidden else None
    if attn_implementation:
        config._attn_implementation = attn_implementation
    cls = _model_class(config)
    if is_embedder(config):  # a stripped embedding model (compressor.embedder)
        model = embedder_from_config(config)
    else:
        model = cls(config) if cls else AutoModelForSequenceClassification.from_config(config)
    if sizes:
        apply_layer_sizes(model, sizes)
    if hidden:
        apply_hidden(model, width, hidden)
    state = _read_state_dict(folder)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArtifactError(f"weights in {folder} do not fit compressor_layers: "
                            f"{' '.join(s.strip() for s in first[:3])}") from None
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"no loadable tokenizer in {folder}: {exc}") from None
    info = {"source": str(folder), "compressor_layers": sizes}
    return TorchModel(model, tokenizer, {**info, "compressor_hidden": hidden} if hidden else info)


def _dense_width(config, hidden, folder) -> int:
    """Set ``config`` back to the first model's sizes (``compressor_hidden["dense"]``), so that the
    dense architecture is built, and return the saved hidden size. ArtifactError when malformed."""
    dense, kept, width = (hidden.get("dense"), hidden.get("kept"), getattr(config, "hidden_size", None)) \
        if isinstance(hidden, dict) else (None, None, None)
    if not (isinstance(dense, dict) and isinstance(kept, list) and len(kept) == width):
        raise ArtifactError(f"compressor_hidden in {folder}/config.json does not fit hidden_size={width}: "
                            "expected {\"dense\": {size: value}, \"kept\": [one index a hidden unit]}")
    for key, value in dense.items():
        setattr(config, key, value)
    del config.compressor_hidden
    return int(width)


def apply_hidden(model, width: int, hidden: dict) -> None:
    """Cut a model built at the first model's width to its first ``width`` hidden units (the layout
    a hidden-pruned model is saved in) and put its ``compressor_hidden`` record back."""
    family_of(model).keep_hidden(range(width))
    for config in {id(c): c for c in (model.config, family_of(model).base.config)}.values():
        config.compressor_hidden = hidden
