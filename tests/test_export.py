"""passes.export_onnx.Export: folder layout, dynamic axes, verification, Optimum loading."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_model, minilm_dir

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError, StepFailed
from compressor.onnx_utils import VerificationError, make_session, random_feeds
from passes.export_onnx import Export

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _torch_logits(model, feeds):
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


def _ctx(tmp_path, data=None):
    ctx = RunContext(workdir=tmp_path, data=data)
    ctx.step_dir = tmp_path / "01-export"
    return ctx


def test_export_folder_and_metrics(tiny_torch_model, toy_task, tmp_path):
    res = Export()(tiny_torch_model, _ctx(tmp_path, toy_task))
    om = res.artifact
    files = {p.name for p in om.folder.iterdir()}
    assert om.folder == tmp_path / "01-export" and om.kind == "onnx" and res.modified
    assert {"model.onnx", "config.json", "tokenizer_config.json"} <= files
    assert "tokenizer.json" in files or "vocab.txt" in files
    assert "raw" not in files and not list(tmp_path.glob(".*tmp*"))  # no leftovers
    m = res.metrics
    assert m["size_bytes"] == om.path.stat().st_size and m["opset"] == 17 and m["nodes"] > 50
    assert m["verify_providers"] == ["CPUExecutionProvider"] and m["inputs"] == NAMES
    assert len(m["max_abs_diff_by_shape"]) == 3 and "2x128" in m["max_abs_diff_by_shape"]
    assert 0 <= m["max_abs_diff"] <= 1e-4
    assert not tiny_torch_model.model.training  # export must leave the model in eval mode


def test_dynamic_axes_match_torch(tiny_torch_model, tmp_path):
    import onnx

    om = Export(verify=False)(tiny_torch_model, _ctx(tmp_path)).artifact
    graph = onnx.load(str(om.path)).graph
    for inp in graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
    assert [o.name for o in graph.output] == ["logits"]
    sess = make_session(om)
    for i, (b, s) in enumerate(((1, 7), (3, 19), (8, 32))):
        feeds = random_feeds(NAMES, b, s, vocab_size=30522, seed=i)
        got = sess.run(["logits"], feeds)[0]
        assert got.shape == (b, 2)
        np.testing.assert_allclose(got, _torch_logits(tiny_torch_model.model, feeds), atol=1e-4, rtol=0)


def test_verification_without_data_uses_random_ids(tiny_torch_model, tmp_path):
    m = Export()(tiny_torch_model, _ctx(tmp_path)).metrics
    assert set(m["max_abs_diff_by_shape"]) == {"1x7", "8x19", "2x128"} and m["max_abs_diff"] <= 1e-4


def _sabotage(monkeypatch):
    """After the real export, shift the torch model's logits by 0.5: ORT and torch disagree."""
    import passes.export_onnx as mod

    real = mod.export_model

    def export_then_shift(model, names, folder, opset):
        real(model, names, folder, opset)
        model.classifier.bias.data += 0.5

    monkeypatch.setattr(mod, "export_model", export_then_shift)


def test_verification_failure_reports_difference(tiny_torch_model, toy_task, tmp_path, monkeypatch):
    _sabotage(monkeypatch)
    with pytest.raises(VerificationError, match=r"differ by 0\.5 > tolerance 0\.0001 at input shape 1x8"):
        Export()(tiny_torch_model, _ctx(tmp_path, toy_task))
    assert not (tmp_path / "01-export").exists()  # the atomic write left nothing behind


def test_verification_failure_is_a_failed_step(tiny_torch_model, toy_task, tmp_path, monkeypatch):
    from compressor.pipeline import Pipeline

    _sabotage(monkeypatch)
    with pytest.raises(StepFailed, match=r"step 'export' failed: VerificationError: .*differ by 0\.5"):
        Pipeline("export").run(tiny_torch_model, RunContext(workdir=tmp_path, data=toy_task))


def test_options_are_validated():
    from compressor.pipeline import parse_spec

    with pytest.raises(ConfigError, match="opset=12"):
        Export(opset=12)
    with pytest.raises(ConfigError, match="tolerance=0"):
        Export(tolerance=0.0)
    assert parse_spec("export{opset=18,tolerance=1e-5}")[0] == Export(opset=18, tolerance=1e-5)


def test_other_opset(tiny_torch_model, tmp_path):
    res = Export(opset=18)(tiny_torch_model, _ctx(tmp_path))
    assert res.metrics["opset"] == 18 and res.metrics["max_abs_diff"] <= 1e-4


def _strip_heads(model, keep: dict[int, int], ffn: dict[int, int]):
    """Keep the first ``keep[layer]`` heads and ``ffn[layer]`` FFN neurons of some layers, fixing
    each attention module's own head bookkeeping (config.num_attention_heads stays as it was)."""
    import torch

    def cut(linear, idx, dim):
        w = linear.weight.data.index_select(dim, idx).clone()
        b = linear.bias.data if dim == 1 else linear.bias.data.index_select(0, idx)
        new = torch.nn.Linear(w.shape[1], w.shape[0])
        new.weight.data, new.bias.data = w, b.clone()
        return new

    for i, heads in keep.items():
        att = model.bert.encoder.layer[i].attention
        size = att.self.attention_head_size
        idx = torch.arange(heads * size)
        for name in ("query", "key", "value"):
            setattr(att.self, name, cut(getattr(att.self, name), idx, 0))
        att.output.dense = cut(att.output.dense, idx, 1)
        att.self.num_attention_heads, att.self.all_head_size = heads, heads * size
    for i, width in ffn.items():
        layer = model.bert.encoder.layer[i]
        idx = torch.arange(width)
        layer.intermediate.dense = cut(layer.intermediate.dense, idx, 0)
        layer.output.dense = cut(layer.output.dense, idx, 1)
    return model


def test_uneven_heads_export(tokenizer, toy_task, tmp_path):
    model = _strip_heads(make_tiny_model(layers=3), keep={0: 1, 1: 3}, ffn={1: 16, 2: 40})
    assert model.config.num_attention_heads == 4
    res = Export()(TorchModel(model, tokenizer), _ctx(tmp_path, toy_task))
    assert res.metrics["max_abs_diff"] <= 1e-4
    feeds = random_feeds(NAMES, 3, 21, vocab_size=30522, seed=5)
    got = make_session(res.artifact).run(["logits"], feeds)[0]
    np.testing.assert_allclose(got, _torch_logits(model, feeds), atol=1e-4, rtol=0)


def test_sdpa_model_exports_and_keeps_its_attention(tokenizer, toy_task, tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, attn_implementation="sdpa")
    model = BertForSequenceClassification(cfg).eval()
    res = Export()(TorchModel(model, tokenizer), _ctx(tmp_path, toy_task))
    assert res.metrics["max_abs_diff"] <= 1e-4
    assert res.metrics["attn_implementation"] in ("eager", "sdpa")  # 4.57 cannot switch BERT
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_optimum_loads_folder(tiny_torch_model, tmp_path):
    ort_models = pytest.importorskip("optimum.onnxruntime", reason="optimum is not installed here")
    om = Export()(tiny_torch_model, _ctx(tmp_path)).artifact
    loaded = ort_models.ORTModelForSequenceClassification.from_pretrained(om.folder)
    enc = tiny_torch_model.tokenizer(["a good film", "an awful, boring film"], padding=True,
                                     return_tensors="np")
    got = np.asarray(loaded(**enc).logits)
    ref = _torch_logits(tiny_torch_model.model, {k: v.astype(np.int64) for k, v in enc.items()})
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_consolidates_spilled_external_data(tiny_torch_model, tmp_path):
    """An export that spilled tensors into many files (the > 2 GB path) becomes one data file."""
    import onnx

    from passes.export_onnx import _finalize

    om = Export(verify=False)(tiny_torch_model, _ctx(tmp_path)).artifact
    raw = tmp_path / "raw"
    raw.mkdir()
    onnx.save(onnx.load(str(om.path)), str(raw / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(raw.iterdir())) > 5
    out = tmp_path / "final"
    out.mkdir()
    _finalize(raw, out / "model.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data"]
    feeds = random_feeds(NAMES, 2, 9, vocab_size=30522)
    np.testing.assert_array_equal(make_session(out).run(None, feeds)[0], make_session(om).run(None, feeds)[0])


@pytest.mark.slow
def test_minilm_export_verifies(tokenizer, toy_task, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=2, local_files_only=True, attn_implementation="eager")
    ctx = _ctx(tmp_path, toy_task)
    ctx.max_length = 64
    res = Export()(TorchModel(model.eval(), tokenizer), ctx)
    assert res.metrics["max_abs_diff"] <= 1e-4 and len(res.metrics["max_abs_diff_by_shape"]) == 3
    assert res.metrics["size_bytes"] > 80e6  # 22.7M float32 parameters
