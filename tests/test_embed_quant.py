"""embed-int8: int8 embedding tables with per-row scales (structure, error bound, logits within
tolerance, accuracy on ORT) and how it composes with quantize, sparse-init and ort-fuse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_model
from onnx import numpy_helper

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from compressor.onnx_utils import VerificationError, make_session, random_feeds
from passes.embed_quant import EmbedInt8, quantize_rows
from passes.export_onnx import Export
from passes.ort_fusion import OrtFuse
from passes.quantize import Quantize
from passes.sparse_initializers import SparseInit

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
WORD = "model.bert.embeddings.word_embeddings.weight"
TOLERANCE = 0.05  # logits O(0.1-1); measured ~1e-3 on these models, 4e-3 on fine-tuned MiniLM


def _model(zero_most: bool = False):
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64, seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.any():  # unit-scale biases, so errors are not hidden by zeros
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
            if zero_most and "encoder" in name and p.dim() == 2:
                p[:, torch.arange(p.shape[1]) % 10 != 0] = 0  # 90% zeros: sparse-init converts these
    return model


@pytest.fixture(scope="module")
def raw(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    return Export(verify=False)(TorchModel(_model(), tokenizer), RunContext(root / "raw")).artifact


def _graph(path):
    return onnx.load(str(path)).graph


def _inits(graph) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _constants(graph) -> dict:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
            if n.op_type == "Constant" and n.attribute[0].name == "value"}


def _logits(path, batch=3, seq=21):
    return make_session(path).run(["logits"], random_feeds(NAMES, batch, seq, vocab_size=30522, seed=11))[0]


def test_word_table_becomes_int8_with_row_scales_within_half_a_step(raw, tmp_path):
    res = EmbedInt8()(raw, RunContext(tmp_path))
    graph = _graph(res.artifact.path)
    inits, consts, table = _inits(graph), _constants(graph), _inits(_graph(raw.path))[WORD]
    assert WORD not in inits and inits[WORD + "_int8"].dtype == np.int8
    q, scale = inits[WORD + "_int8"], consts[WORD + "_row_scale"]
    assert q.shape == table.shape and scale.shape == (table.shape[0], 1) and scale.dtype == np.float32
    assert np.all(np.abs(q.astype(np.float32) * scale - table) <= scale / 2 + 1e-7)
    assert np.abs(q).max() == 127
    ops = [n.op_type for n in graph.node if n.name.startswith("/model/bert/embeddings/word_embeddings/")]
    assert sorted(ops) == ["Cast", "Gather", "Gather", "Mul"]
    m = res.metrics
    assert m["tables"] == [WORD] and m["rows"] == 30522
    assert m["embedding_max_abs_diff"] <= m["max_dequant_error"] * (1 + 1e-5) + 1e-7
    assert 0 < m["max_abs_diff"] <= TOLERANCE and m["tolerance_applied"] is True
    assert np.abs(_logits(res.artifact.path) - _logits(raw.path)).max() <= TOLERANCE
    assert m["size_bytes"] < m["size_bytes_before"] - 0.7 * table.nbytes


def test_all_tables_and_zero_rows():
    q, scale = quantize_rows(np.array([[0.0, 0.0], [1.0, -0.5]], np.float32))
    assert q.tolist() == [[0, 0], [127, -64]] and scale[0, 0] == 1.0


def test_tables_all_quantizes_large_tables_only(raw, tmp_path):
    res = EmbedInt8(tables="all", min_rows=100)(raw, RunContext(tmp_path / "a"))  # position: 128 rows
    names = set(_inits(_graph(res.artifact.path)))
    assert {WORD + "_int8", "model.bert.embeddings.position_embeddings.weight_int8"} <= names
    assert "model.bert.embeddings.token_type_embeddings.weight" in names  # 2 rows: stays fp32
    assert res.metrics["max_abs_diff"] <= TOLERANCE
    default = EmbedInt8(tables="all")(raw, RunContext(tmp_path / "b"))
    assert default.metrics["tables"] == [WORD]
    with pytest.raises(ConfigError, match="min_rows=0"):
        EmbedInt8(min_rows=0)


def test_accuracy_on_ort_when_a_task_is_given(raw, toy_task, tmp_path):
    m = EmbedInt8()(raw, RunContext(tmp_path, data=toy_task)).metrics
    assert {"accuracy_input", "accuracy_onnx", "accuracy_drop"} <= set(m) and m["eval_examples"] == 32
    assert abs(m["accuracy_drop"]) <= 0.1


def test_then_dynamic_quantize_keeps_the_int8_gather(raw, tmp_path):
    emb = EmbedInt8()(raw, RunContext(tmp_path / "e")).artifact
    for ops in ("linear", "all"):
        q = Quantize(ops=ops)(emb, RunContext(tmp_path / ops)).artifact
        graph = _graph(q.path)
        assert WORD + "_int8" in _inits(graph) and WORD + "_row_scale" in _constants(graph)
        assert any(n.op_type == "MatMulInteger" for n in graph.node)
        deq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
        assert not any("word_embeddings" in n.name for n in deq)  # the row scales stay float
        assert np.abs(_logits(q.path) - _logits(raw.path)).max() <= 0.2


def test_after_dynamic_quantize(raw, tmp_path):
    q = Quantize(ops="linear")(raw, RunContext(tmp_path / "q")).artifact
    res = EmbedInt8()(q, RunContext(tmp_path / "e"))
    assert res.metrics["tolerance_applied"] is False and res.metrics["tables"] == [WORD]
    assert res.metrics["size_bytes"] < q.size_bytes()
    assert np.abs(_logits(res.artifact.path) - _logits(raw.path)).max() <= 0.2
    # quantize{ops=all} already quantized every Gather: nothing left to do
    qa = Quantize(ops="all")(raw, RunContext(tmp_path / "qa")).artifact
    again = EmbedInt8()(qa, RunContext(tmp_path / "e2"))
    assert again.modified is False and again.artifact is qa


def test_with_sparse_init_before_and_after(tokenizer, tmp_path):
    sparse_raw = Export(verify=False)(TorchModel(_model(zero_most=True), tokenizer),
                                      RunContext(tmp_path / "raw")).artifact
    before = SparseInit()(sparse_raw, RunContext(tmp_path / "s"))
    assert before.metrics["tensors_converted"] > 0
    e_after_s = EmbedInt8()(before.artifact, RunContext(tmp_path / "se")).artifact
    assert any(a.name == "sparse_value" for n in _graph(e_after_s.path).node for a in n.attribute)
    e = EmbedInt8()(sparse_raw, RunContext(tmp_path / "e")).artifact
    s_after_e = SparseInit()(e, RunContext(tmp_path / "es"))
    assert s_after_e.metrics["tensors_converted"] == before.metrics["tensors_converted"]
    want = _logits(sparse_raw.path)
    for art in (e_after_s, s_after_e.artifact):
        assert np.abs(_logits(art.path) - want).max() <= TOLERANCE
    assert abs(e_after_s.size_bytes() - s_after_e.artifact.size_bytes()) < 1024


def test_before_ort_fuse_and_refused_after(raw, tmp_path):
    e = EmbedInt8()(raw, RunContext(tmp_path / "e")).artifact
    fused = OrtFuse(strict=False)(e, RunContext(tmp_path / "f"))
    assert fused.metrics["fused_ops"].get("Attention") == 2
    assert "EmbedLayerNormalization" not in fused.metrics["fused_ops"]
    fused_first = OrtFuse()(raw, RunContext(tmp_path / "f2")).artifact
    with pytest.raises(ConfigError, match="before ort-fuse"):
        EmbedInt8()(fused_first, RunContext(tmp_path / "e2"))


def test_a_wrong_rewrite_fails_verification(raw, tmp_path, monkeypatch):
    import passes.embed_quant as eq

    def wrong_scales(table):
        q, scale = quantize_rows(table)
        return q, scale * 1.5  # scales that do not match the stored int8 values
    monkeypatch.setattr(eq, "quantize_rows", wrong_scales)
    with pytest.raises(VerificationError, match="half a quantization step"):
        EmbedInt8()(raw, RunContext(tmp_path / "a"))
    monkeypatch.undo()
    right = eq._dequant_nodes

    def wrong_wiring(node, table, helper, float_type):
        nodes = right(node, table, helper, float_type)
        nodes[-1].op_type = "Add"  # int8 + scale instead of int8 * scale
        return nodes
    monkeypatch.setattr(eq, "_dequant_nodes", wrong_wiring)
    with pytest.raises(VerificationError, match="embedding rows differ"):
        EmbedInt8()(raw, RunContext(tmp_path / "b"))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="tables"):
        EmbedInt8(tables="some")
    with pytest.raises(ConfigError, match="tolerance=0"):
        EmbedInt8(tolerance=0)
    assert EmbedInt8(tables="all").to_spec() == "embed-int8{tables=all}"
