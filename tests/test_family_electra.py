"""ELECTRA through the passes: tiny random discriminator classifiers from configs (embeddings of
``embedding_size`` 16 projected to ``hidden_size`` 32, and one without a projection) with the MiniLM
WordPiece tokenizer.

Strip after structured masks (uneven heads and FFN, a layer with no heads, one with no FFN) equals
the masked model at two shapes, the stripped folder reloads through ``load_model``, export and ORT
fusion verify, INT8 runs, trim-positions keeps logits, fisher and a magnitude pipeline run,
``load_model`` accepts a saved folder (refused without the family line)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from compressor import registry  # noqa: E402
from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.errors import ModelError  # noqa: E402
from conftest import (INT8_LOGIT_TOL, logits, make_toy_task, mask_structured, randomize_linears,  # noqa: E402
                      strip_matches_masked)
from passes.families import family_of  # noqa: E402


def make_model(tokenizer, layers=3, embedding_size=16, seed=0):
    """A seeded tiny ElectraForSequenceClassification (eager, no dropout) with unit-scale Linear
    weights (so that every removed unit would change the output)."""
    from transformers import ElectraConfig, ElectraForSequenceClassification
    torch.manual_seed(seed)
    cfg = ElectraConfig(vocab_size=len(tokenizer), embedding_size=embedding_size, hidden_size=32,
                        num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    model = ElectraForSequenceClassification(cfg).eval()
    return randomize_linears(model, seed)


def _mask(model, seed=0):
    """Uneven heads / FFN neurons per layer (layer 1 keeps no heads, layer 2 no FFN), baked in."""
    return mask_structured(model, [[1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]], (33, 7, 0), 64, seed)


def batches(tokenizer):
    """Two shapes, with token types: three texts padded to the longest, two pairs padded to 40."""
    task = make_toy_task(n_train=8, n_eval=0, seed=4).train
    sents = [e.text for e in task]
    return [dict(tokenizer(sents[:3], padding="longest", return_tensors="pt")),
            dict(tokenizer(sents[3:5], sents[5:7], padding="max_length", max_length=40, return_tensors="pt"))]


def test_family_sizes_and_head(tokenizer):
    from compressor.models import model_layout
    from passes.families.electra import ElectraFamily
    model = make_model(tokenizer)
    fam = family_of(model)
    assert isinstance(fam, ElectraFamily) and fam.tokenizer_kind == "wordpiece" and fam.token_types
    assert fam.word_table().embedding_dim == 16 and fam.hidden_size() == 32
    assert model_layout(model)["hidden_size"] == 32 and fam.embeddings_project() is model.electra.embeddings_project
    assert family_of(make_model(tokenizer, layers=1, embedding_size=32)).embeddings_project() is None
    from compressor.models import count_parameters
    counts = count_parameters(model)  # the projection counts as embeddings, not as the head
    project = sum(p.numel() for p in model.electra.embeddings_project.parameters())
    assert counts["embeddings"] == sum(p.numel() for p in model.electra.embeddings.parameters()) + project
    assert counts["head"] == sum(p.numel() for p in model.classifier.parameters())
    assert fam.max_tokens() == 64 and fam.position_offset(model.config) == 0
    assert set(fam.linears(include=("pooler", "classifier"))) - set(fam.linear_roles()) == \
        {"classifier.dense", "classifier.out_proj"}


def test_load_model_accepts_a_saved_folder(tokenizer, tmp_path, monkeypatch):
    from compressor.models import check_family, load_model
    model = make_model(tokenizer, layers=2)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert family_of(loaded.model).model_types == ("electra",)
    batch = batches(tokenizer)[1]
    torch.testing.assert_close(logits(loaded.model, batch), logits(model, batch), rtol=0, atol=1e-6)
    monkeypatch.delitem(registry.FAMILIES, "electra")  # as before this family's line
    with pytest.raises(ModelError, match="unsupported architecture 'electra'"):
        check_family(str(tmp_path / "m"))


def test_strip_reload_export_fuse_int8_and_trim(tokenizer, tmp_path):
    from compressor.models import load_model
    from passes.export_onnx import Export
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize
    from passes.trim_positions import TrimPositions
    dense = TorchModel(make_model(tokenizer), tokenizer, {"source": "tiny-electra"})
    kept = _mask(dense.model)
    stripped, ctx = strip_matches_masked(dense, kept, batches(tokenizer), tmp_path)  # two shapes
    reloaded = load_model(str(ctx.step_dir))  # through compressor_layers -> load_stripped
    for batch in batches(tokenizer):
        torch.testing.assert_close(logits(reloaded.model, batch), logits(stripped.model, batch), rtol=1e-5, atol=1e-5)

    ctx.step_dir = tmp_path / "export"
    exported = Export()(stripped, ctx)
    assert exported.metrics["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert exported.metrics["max_abs_diff"] <= 1e-4

    ctx.step_dir = tmp_path / "fuse"
    fused = OrtFuse()(exported.artifact, ctx).metrics  # strict: attention, GELU and embeddings fused
    assert fused["attention_per_layer"] == [3, 0, 1] and fused["problems"] == []
    assert fused["fused_ops"]["EmbedLayerNormalization"] == 1 and "not_fused" not in fused

    ctx.step_dir = tmp_path / "int8"
    int8 = Quantize()(exported.artifact, ctx).metrics
    assert int8["quant_ops"].get("MatMulInteger", 0) > 0 and int8["max_abs_diff"] <= INT8_LOGIT_TOL  # logits O(1-3)

    ctx.max_length, ctx.step_dir = 32, tmp_path / "trim"
    trimmed = TrimPositions(max_positions=32)(stripped, ctx).artifact
    rows = family_of(trimmed.model).position_table().num_embeddings
    assert rows == 32 == trimmed.model.config.max_position_embeddings
    batch = dict(tokenizer(["word " * 60, "a fun film"], padding=True, truncation=True, max_length=32,
                           return_tensors="pt"))
    torch.testing.assert_close(logits(trimmed.model, batch), logits(stripped.model, batch), rtol=0, atol=0)
    ctx.step_dir = tmp_path / "export-trimmed"
    out = Export()(trimmed, ctx).metrics
    assert out["max_abs_diff"] <= 1e-4 and "2x32" in out["max_abs_diff_by_shape"]


def test_fisher_and_magnitude_pipeline(tokenizer, tmp_path):
    from compressor import Pipeline
    from passes.fisher.prune import Fisher
    task = make_toy_task(n_train=32, n_eval=16)
    dense = TorchModel(make_model(tokenizer), tokenizer, {"source": "tiny-electra"})
    res = Fisher(flops=0.5, samples=32, batch_size=16)(dense, RunContext(tmp_path / "fisher", data=task))
    assert res.metrics["encoder_flops_reduction"] >= 0.5 - 1e-9
    assert res.metrics["max_abs_diff_masked_vs_stripped"] <= 1e-5
    out = Pipeline("magnitude{granularity=structured,sparsity=0.5,schedule=oneshot,epochs=0},strip,export").run(
        TorchModel(make_model(tokenizer, seed=1), tokenizer, {}),
        RunContext(tmp_path / "pipe", data=task, max_length=32))
    assert [r.name for r in out.records] == ["magnitude", "strip", "export"]
    assert out.records[1].metrics["heads_removed"] + out.records[1].metrics["ffn_removed"] > 0
    assert out.records[2].metrics["max_abs_diff"] <= 1e-4 and out.artifact.path.is_file()
