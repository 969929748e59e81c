"""size_breakdown: an ONNX file's bytes split into embeddings / encoder / head / other on raw,
fused, quantized, sparse-initializer, embed-int8 and external-data exports."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.onnx_utils import save_model
from compressor.size_breakdown import classify_name, size_breakdown
from passes.embed_quant import EmbedInt8
from passes.export_onnx import Export
from passes.ort_fusion import OrtFuse
from passes.quantize import Quantize
from passes.sparse_initializers import SparseInit

V, H = 30522, 32
WORD_BYTES = V * H * 4


def _model(sparse: bool = False):
    model = make_tiny_model(layers=2, hidden=H, heads=4, ffn=64, seed=1)
    if sparse:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "encoder" in name and p.dim() == 2:
                    p[:, torch.arange(p.shape[1]) % 10 != 0] = 0
    return model


@pytest.fixture(scope="module")
def exports(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    raw = Export(verify=False)(TorchModel(_model(), tokenizer), RunContext(root / "raw")).artifact
    sparse_raw = Export(verify=False)(TorchModel(_model(sparse=True), tokenizer), RunContext(root / "sr")).artifact
    return {"raw": raw,
            "fused": OrtFuse()(raw, RunContext(root / "fused")).artifact,
            "quantized": Quantize(ops="linear")(raw, RunContext(root / "q")).artifact,
            "quantized_all": Quantize(ops="all")(raw, RunContext(root / "qa")).artifact,
            "embed_int8": EmbedInt8()(raw, RunContext(root / "e")).artifact,
            "sparse_raw": sparse_raw,
            "sparse": SparseInit()(sparse_raw, RunContext(root / "s")).artifact}


def _encoder_weight_bytes(model) -> int:
    return sum(p.numel() * 4 for n, p in model.named_parameters() if ".encoder." in f".{n}")


@pytest.mark.parametrize("label", ["raw", "fused", "quantized", "quantized_all", "embed_int8", "sparse_raw", "sparse"])
def test_parts_add_up_to_the_file(exports, label):
    b = size_breakdown(exports[label])
    assert b["total_bytes"] == exports[label].size_bytes()
    assert sum(b[f"{p}_bytes"] for p in ("embeddings", "encoder", "head", "other")) == b["total_bytes"]
    assert b["encoder_bytes"] > 0 and b["head_bytes"] > 0 and b["embeddings_bytes"] > 0
    assert b["other_bytes"] < 100_000  # the graph's nodes and small constants (2 layers)
    assert b["largest"]["embeddings"][0].startswith("model.bert.embeddings.word_embeddings")


def test_each_pass_moves_the_right_part(exports):
    raw = size_breakdown(exports["raw"])
    enc = _encoder_weight_bytes(_model())
    assert WORD_BYTES <= raw["embeddings_bytes"] <= WORD_BYTES * 1.05
    # the exporter stores identical tensors once (e.g. LayerNorm weights still all ones)
    assert 0.9 * enc <= raw["encoder_bytes"] <= enc * 1.05
    head = (H * H + H + 2 * H + 2) * 4  # pooler + classifier
    assert 0.95 * head <= raw["head_bytes"] <= head + 1024
    fused = size_breakdown(exports["fused"])  # Attention_N_qkv_weight counted in the encoder
    assert abs(fused["encoder_bytes"] - raw["encoder_bytes"]) < 0.02 * raw["encoder_bytes"]
    assert abs(fused["embeddings_bytes"] - raw["embeddings_bytes"]) < 4096  # position-ids buffer gone
    q = size_breakdown(exports["quantized"])  # INT8 MatMul weights: encoder ~4x smaller
    assert q["encoder_bytes"] < 0.4 * raw["encoder_bytes"]
    assert abs(q["embeddings_bytes"] - raw["embeddings_bytes"]) < 1024
    qa = size_breakdown(exports["quantized_all"])
    assert qa["embeddings_bytes"] < 0.3 * raw["embeddings_bytes"]
    e = size_breakdown(exports["embed_int8"])  # int8 table + row scales: ~1/4 + 4 bytes a row
    assert V * H + V * 4 <= e["embeddings_bytes"] < 0.3 * raw["embeddings_bytes"]
    assert e["encoder_bytes"] == raw["encoder_bytes"] and e["head_bytes"] == raw["head_bytes"]
    sr, s = size_breakdown(exports["sparse_raw"]), size_breakdown(exports["sparse"])
    assert s["encoder_bytes"] < 0.5 * sr["encoder_bytes"]
    assert abs(s["embeddings_bytes"] - sr["embeddings_bytes"]) < 1024


def test_external_data_is_counted(exports, tmp_path):
    proto = onnx.load(str(exports["raw"].path))
    path = save_model(proto, tmp_path / "model.onnx", external=True)
    assert (tmp_path / "model.onnx.data").is_file()
    b = size_breakdown(tmp_path)
    raw = size_breakdown(exports["raw"])
    assert abs(b["embeddings_bytes"] - raw["embeddings_bytes"]) < 1024
    assert b["total_bytes"] == path.stat().st_size + (tmp_path / "model.onnx.data").stat().st_size


def test_names():
    assert classify_name("/model/bert/embeddings/Slice") == "embeddings"
    assert classify_name("/model/bert/encoder/layer.3/attention/self/Reshape_3_output_0") == "encoder"
    assert classify_name("model.bert.pooler.dense.weight") == "head"
    assert classify_name("model.classifier.bias") == "head"
    assert classify_name("onnx::MatMul_671") is None


def test_import_pulls_in_no_onnx_or_torch():
    code = "import sys, compressor.size_breakdown; print('onnx' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
