"""quantize: dynamic INT8 on raw, stripped, fused and sparse-init graphs (quantized ops present,
logits close), static QDQ pairs calibrated on task data, accuracy re-measured on ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError, DataError
from compressor.onnx_utils import VerificationError, make_session, random_feeds
from passes.families import family_of
from passes.export_onnx import Export
from passes.ort_fusion import OrtFuse
from passes.quantize import Quantize
from passes.sparse_initializers import SparseInit

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
INT8_ATOL = 0.05  # logits of these models are O(0.1-1); INT8 noise measured ~1e-3


def _model(strip: bool):
    """A tiny BERT with unit-scale biases; ``strip``: uneven heads/FFN, layer 1 without heads."""
    model = make_tiny_model(layers=3, hidden=32, heads=4, ffn=64, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    if strip:
        layers = family_of(model).layers()
        family_of(model).keep_heads(layers[0], [1, 3])
        family_of(model).keep_heads(layers[1], [])
        family_of(model).keep_ffn(layers[2], list(range(20)))
    return model


@pytest.fixture(scope="module")
def graphs(tokenizer, tmp_path_factory):
    """label -> OnnxModel: raw dense export, raw stripped export, fused stripped export."""
    root = tmp_path_factory.mktemp("graphs")
    raw = Export(verify=False)(TorchModel(_model(False), tokenizer), RunContext(root / "raw")).artifact
    stripped = Export(verify=False)(TorchModel(_model(True), tokenizer), RunContext(root / "stripped")).artifact
    fused = OrtFuse()(stripped, RunContext(root / "fused")).artifact
    return {"raw": raw, "stripped": stripped, "fused": fused}


def _ops(path) -> dict:
    counts: dict = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _logit_diff(a, b, batch=3, seq=21):
    feeds = random_feeds(NAMES, batch, seq, vocab_size=30522, seed=11)
    x, y = make_session(a).run(["logits"], feeds)[0], make_session(b).run(["logits"], feeds)[0]
    assert np.isfinite(y).all()
    return float(np.max(np.abs(x - y)))


@pytest.mark.parametrize("label", ["raw", "stripped", "fused"])
def test_dynamic_on_each_graph(graphs, label, toy_task, tmp_path):
    src = graphs[label]
    res = Quantize()(src, RunContext(tmp_path, data=toy_task))
    m, ops = res.metrics, _ops(res.artifact.path)
    assert res.modified and m["mode"] == "dynamic"
    assert ops.get("MatMulInteger", 0) > 0 and ops.get("DynamicQuantizeLinear", 0) > 0
    if label == "fused":
        assert ops["QAttention"] == 2 and "Attention" not in ops  # layers 0 and 2 kept heads
    assert m["quant_ops"]["MatMulInteger"] == ops["MatMulInteger"]
    assert 0 < m["max_abs_diff"] <= INT8_ATOL and _logit_diff(src.path, res.artifact.path) <= INT8_ATOL
    assert set(m) >= {"accuracy_input", "accuracy_onnx", "accuracy_drop"} and m["eval_examples"] == 32
    assert m["accuracy_drop"] == pytest.approx(m["accuracy_input"] - m["accuracy_onnx"])
    onnx.checker.check_model(str(res.artifact.path))
    assert (res.artifact.folder / "config.json").is_file()


def test_dynamic_per_channel_and_embeddings(graphs, tmp_path):
    src = graphs["fused"]
    linear = Quantize(ops="linear")(src, RunContext(tmp_path / "a")).metrics
    per_channel = Quantize(ops="linear", per_channel=True)(src, RunContext(tmp_path / "b")).metrics
    every = Quantize(ops="all")(src, RunContext(tmp_path / "c"))
    default = Quantize()(src, RunContext(tmp_path / "d"))  # auto: dynamic quantizes what ORT's default does
    assert default.metrics["quant_ops"] == every.metrics["quant_ops"]
    assert default.metrics["size_bytes"] == every.metrics["size_bytes"]
    assert per_channel["max_abs_diff"] <= INT8_ATOL
    assert "QEmbedLayerNormalization" in every.metrics["quant_ops"]
    # the int8 embedding table (30522 x 32) is what makes the file ~4x smaller
    assert every.metrics["size_bytes"] < 0.4 * linear["size_bytes"]
    assert linear["size_bytes"] < linear["size_bytes_before"]
    assert "accuracy_onnx" not in linear  # no data in the context: nothing to measure


def test_static_qdq_pairs(graphs, toy_task, tmp_path):
    src = graphs["stripped"]
    res = Quantize(mode="static", calibration_batches=2, calibration_batch_size=4)(
        src, RunContext(tmp_path, data=toy_task))
    graph = onnx.load(str(res.artifact.path)).graph
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(consumers.get(n.output[0]) == ["DequantizeLinear"] for n in q)  # Q -> DQ pairs
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers.get(n.input[0]) == "DequantizeLinear" for n in matmuls)  # activations quantized
    assert res.metrics["quant_ops"]["QuantizeLinear"] == len(q) and "accuracy_onnx" in res.metrics
    assert _logit_diff(src.path, res.artifact.path) <= 0.1  # calibrated on 8 toy sentences only


def test_static_needs_data(graphs, tmp_path):
    with pytest.raises(DataError, match="calibration data"):
        Quantize(mode="static")(graphs["raw"], RunContext(tmp_path))


def test_sparse_init_input_is_densified(tokenizer, tmp_path):
    model = _model(True)
    with torch.no_grad():
        w = family_of(model).layers()[2].intermediate.dense.weight
        w[torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.9] = 0
    dense = Export(verify=False)(TorchModel(model, tokenizer), RunContext(tmp_path / "x")).artifact
    sparse = SparseInit()(dense, RunContext(tmp_path / "sparse"))
    assert sparse.metrics["tensors_converted"] == 1
    res = Quantize()(sparse.artifact, RunContext(tmp_path / "q"))
    assert res.metrics["sparse_tensors_densified"] == 1
    plain = Quantize()(dense, RunContext(tmp_path / "q-dense")).metrics
    assert res.metrics["quant_ops"] == plain["quant_ops"]  # the densified weight is quantized too
    assert _logit_diff(dense.path, res.artifact.path) <= INT8_ATOL


def test_accuracy_drop_limit(graphs, toy_task, tmp_path, monkeypatch):
    import compressor.onnx_utils as mod

    results = iter([0.9, 0.7])
    monkeypatch.setattr(mod, "onnx_accuracy", lambda *a, **k: next(results))
    with pytest.raises(VerificationError, match=r"0\.7000 is 0\.2000 below the input's 0\.9000"):
        Quantize(max_accuracy_drop=0.1)(graphs["raw"], RunContext(tmp_path, data=toy_task))
    assert not (tmp_path / "onnx").exists()


def test_options_and_spec(monkeypatch):
    import compressor.registry as registry
    from compressor.pipeline import parse_spec

    with pytest.raises(ConfigError, match="mode='int4'"):
        Quantize(mode="int4")
    with pytest.raises(ConfigError, match="calibration_batches=0"):
        Quantize(calibration_batches=0)
    monkeypatch.setitem(registry.PASSES, "quantize", Quantize)
    assert parse_spec("quantize{mode=static,per_channel=true}") == [Quantize(mode="static", per_channel=True)]
