"""vocab-prune's model side: keep the embedding rows (and the rows of an output layer over the
vocabulary) of the kept token ids, in the order of the remapped ids, and remap the config's ids."""

from __future__ import annotations

import torch
from torch import nn

from compressor.errors import ConfigError
from passes.vocab.tokenizer import TOKEN_ID_KEYS

def _replace_param(model, old: nn.Parameter, new: nn.Parameter) -> int:
    """Point every module attribute holding ``old`` at ``new`` (tied weights, the LM head's
    bias that 4.57 and 5.x keep in two modules). Returns how many were replaced."""
    n = 0
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is old:
                module._parameters[name] = new
                n += 1
    return n


def _position_pads(model) -> list:
    """Modules (not embedding tables) whose ``padding_idx`` is the pad token's id: RoBERTa-style
    embeddings number positions after it (position ids ``padding_idx + 1 + i``) and find padding
    by it, so the pad token's id must not change."""
    return [m for m in model.modules()
            if not isinstance(m, nn.Embedding) and isinstance(getattr(m, "padding_idx", None), int)]


def pinned_ids(model) -> set[int]:
    """Ids to keep so that a padding id positions depend on keeps its value: it and all below."""
    pads = [m.padding_idx for m in _position_pads(model)]
    return set(range(max(pads) + 1)) if pads else set()


def prune_embeddings(model, keep: list[int]) -> dict:
    """Keep rows ``keep`` of the word embeddings, of an output layer over the vocabulary (tied
    or not) and its bias, in place; set ``config.vocab_size`` and remap ``config.*_token_id``."""
    idx = torch.tensor(keep, dtype=torch.long)
    remap = {old: new for new, old in enumerate(keep)}
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if max(keep) >= old_rows:
        raise ConfigError(f"tokenizer id {max(keep)} is beyond the embedding table ({old_rows} rows)")
    out = model.get_output_embeddings()
    for module in _position_pads(model):
        if remap.get(module.padding_idx) != module.padding_idx:
            raise ConfigError(f"pad token id {module.padding_idx} would change (positions depend on it): "
                              f"keep every id below it")
    with torch.no_grad():
        new_w = nn.Parameter(emb.weight[idx].clone(), requires_grad=emb.weight.requires_grad)
        pairs = [(emb.weight, new_w)]
        if out is not None and out.weight is not emb.weight and out.weight.shape[0] == old_rows:
            pairs.append((out.weight, nn.Parameter(out.weight[idx].clone())))
        bias = getattr(out, "bias", None) if out is not None else None
        if isinstance(bias, nn.Parameter) and bias.shape[0] == old_rows:
            pairs.append((bias, nn.Parameter(bias[idx].clone())))
    tied = out is not None and out.weight is emb.weight
    for old, new in pairs:
        _replace_param(model, old, new)
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = remap.get(emb.padding_idx)
    if out is not None and hasattr(out, "out_features"):
        out.out_features = len(keep)
    model.config.vocab_size = len(keep)
    for key in TOKEN_ID_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value >= 0:
            if value not in remap:
                raise ConfigError(f"config.{key}={value} is not among the kept tokens")
            setattr(model.config, key, remap[value])
    return {"rows_before": old_rows, "rows_after": len(keep), "tied_output": tied,
            "output_layer": out is not None}

