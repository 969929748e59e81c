"""ort-fuse: fused op counts per layer on dense and unevenly stripped tiny BERTs (a layer with 0
heads, one with 0 FFN), outputs within 1e-4 of the unfused graph, the transformers-5.x ``-1``
head reshape, silent-fusion failures caught; and sparse-init after strip (file shrinks only where
COO is smaller)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from compressor.onnx_utils import VerificationError, make_session, random_feeds
from passes.families import family_of
from passes import _onnx_graph as og
from passes.export_onnx import Export
from passes.ort_fusion import OrtFuse
from passes.sparse_initializers import SparseInit
from passes.strip import Strip

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
# per layer: heads kept (of 6), FFN neurons kept (of 80); layer 1 loses every head, layer 2 its FFN
UNEVEN = [([0, 2], range(80)), ([], range(40)), (range(6), []), ([1, 2, 3, 4, 5], range(7))]


def _export(model, tokenizer, tmp_path, name):
    return Export(verify=False)(TorchModel(model, tokenizer), RunContext(tmp_path / name)).artifact


def _uneven_model():
    """Heads and FFN kept per layer as in UNEVEN; no all-zero tensor (biases get small values)."""
    model = make_tiny_model(layers=4, hidden=48, heads=6, ffn=80, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    for layer, (heads, ffn) in zip(family_of(model).layers(), UNEVEN):
        if len(heads) < 6:
            family_of(model).keep_heads(layer, list(heads))
        if len(ffn) < 80:
            family_of(model).keep_ffn(layer, list(ffn))
    return model


@pytest.fixture(scope="module")
def dense_onnx(tokenizer, tmp_path_factory):
    return _export(make_tiny_model(layers=2, hidden=32, heads=4, ffn=64), tokenizer,
                   tmp_path_factory.mktemp("dense"), "export")


@pytest.fixture(scope="module")
def uneven_onnx(tokenizer, tmp_path_factory):
    return _export(_uneven_model(), tokenizer, tmp_path_factory.mktemp("uneven"), "export")


def _fuse(onnx_model, tmp_path, **options):
    return OrtFuse(**options)(onnx_model, RunContext(tmp_path / "fuse"))


def _max_diff(a, b, batch, seq, seed):
    feeds = random_feeds(NAMES, batch, seq, vocab_size=30522, seed=seed)
    feeds["attention_mask"][0, : seq // 3] = 0  # left padding in row 0 (row -1 is right-padded)
    return float(np.max(np.abs(make_session(a).run(None, feeds)[0] - make_session(b).run(None, feeds)[0])))


def _attention_nodes(path):
    graph = onnx.load(str(path)).graph
    return {og.layer_of(n): n for n in graph.node if n.op_type == "Attention"}, graph


def test_dense_fusion_counts_and_outputs(dense_onnx, tmp_path):
    res = _fuse(dense_onnx, tmp_path)
    m = res.metrics
    assert res.modified and m["problems"] == []
    assert m["fused_ops"] == {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4,
                              "BiasGelu": 2}
    assert m["attention_per_layer"] == m["expected_heads"] == [4, 4]
    assert m["skip_layernorm_per_layer"] == [2, 2] and m["gelu_per_layer"] == [1, 1]
    assert 0 <= m["max_abs_diff"] <= 1e-4 and set(m["max_abs_diff_by_shape"]) == {"1x9", "4x23"}
    nodes, graph = _attention_nodes(res.artifact.path)
    assert {k: og.attribute(n, "num_heads") for k, n in nodes.items()} == {0: 4, 1: 4}
    assert not any(n.op_type in ("Softmax", "Erf", "LayerNormalization") for n in graph.node)
    onnx.checker.check_model(str(res.artifact.path))  # com.microsoft domain imported
    assert {p.name for p in res.artifact.folder.iterdir()} >= {"model.onnx", "config.json", "tokenizer_config.json"}
    for seed, (batch, seq) in enumerate([(1, 31), (3, 17), (2, 64)]):  # shapes the pass did not check
        assert _max_diff(dense_onnx.path, res.artifact.path, batch, seq, seed) <= 1e-4


def test_uneven_strip_fusion_has_per_layer_heads(uneven_onnx, tmp_path):
    res = _fuse(uneven_onnx, tmp_path)
    m = res.metrics
    assert m["expected_heads"] == [2, 0, 6, 5] and m["attention_per_layer"] == [2, 0, 6, 5]
    assert m["fused_ops"]["Attention"] == 3 and m["fused_ops"]["EmbedLayerNormalization"] == 1
    assert m["gelu_per_layer"] == [1, 1, 0, 1]  # the layer without FFN has no GELU to fuse
    assert m["problems"] == [] and m["max_abs_diff"] <= 1e-4
    nodes, _ = _attention_nodes(res.artifact.path)
    assert sorted(nodes) == [0, 2, 3]
    assert [og.attribute(nodes[i], "num_heads") for i in (0, 2, 3)] == [2, 6, 5]
    for seed, (batch, seq) in enumerate([(1, 40), (4, 13)]):
        assert _max_diff(uneven_onnx.path, res.artifact.path, batch, seq, seed) <= 1e-4


def test_minus_one_head_reshape_is_rewritten(uneven_onnx, tmp_path):
    """transformers 5.x reshapes with -1 heads: emulate it on any export, then fuse."""
    proto = onnx.load(str(uneven_onnx.path))
    og.explicit_head_counts(proto.graph)  # a no-op on 4.57 exports, the real rewrite on 5.x
    producers = {o: n for n in proto.graph.node for o in n.output}
    minus_one = onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    proto.graph.initializer.append(minus_one)
    n = 0
    for node, src, heads, size in og._head_reshapes(proto.graph, producers):
        src.input[2], n = "minus_one", n + 1
    assert n == 3 * 3  # Q, K and V of the three layers with heads
    assert set(og.heads_per_layer(proto.graph).values()) == {0}
    assert og.explicit_head_counts(proto.graph) == 9
    assert og.heads_per_layer(proto.graph) == {0: 2, 1: 0, 2: 6, 3: 5}
    folder = tmp_path / "minus1"
    folder.mkdir()
    og.copy_side_files(uneven_onnx.folder, folder)
    onnx.save(proto, str(folder / "model.onnx"))
    from compressor.artifact import OnnxModel
    res = _fuse(OnnxModel(folder), tmp_path)
    assert res.metrics["attention_per_layer"] == [2, 0, 6, 5] and res.metrics["max_abs_diff"] <= 1e-4


def test_raw_and_index_mask(dense_onnx, tmp_path):
    producers_of = lambda graph: {o: n for n in graph.node for o in n.output}  # noqa: E731
    raw = _fuse(dense_onnx, tmp_path / "raw")
    nodes, graph = _attention_nodes(raw.artifact.path)
    mask = producers_of(graph).get(nodes[0].input[3])
    assert mask is None or mask.op_type != "EmbedLayerNormalization"  # the 2-D mask itself
    index = _fuse(dense_onnx, tmp_path / "index", mask="index")
    nodes, graph = _attention_nodes(index.artifact.path)
    assert producers_of(graph)[nodes[0].input[3]].op_type == "EmbedLayerNormalization"  # 1-D lengths
    assert index.metrics["max_abs_diff"] <= 1e-4  # right padding only, which index handles


@pytest.fixture
def no_attention_fusion(monkeypatch):
    """Make ORT's optimizer fuse no Attention: the silent failure the pass must catch."""
    import onnxruntime.transformers.optimizer as opt

    real = opt.optimize_model

    def crippled(*args, optimization_options=None, **kwargs):
        optimization_options.enable_attention = False
        return real(*args, optimization_options=optimization_options, **kwargs)

    monkeypatch.setattr(opt, "optimize_model", crippled)


def test_missing_attention_fails_when_strict(uneven_onnx, tmp_path, no_attention_fusion):
    with pytest.raises(VerificationError, match=r"layer 0 kept 2 heads but has Attention none"):
        _fuse(uneven_onnx, tmp_path)
    assert not (tmp_path / "fuse" / "onnx").exists()
    res = _fuse(uneven_onnx, tmp_path, strict=False)
    assert res.metrics["attention_per_layer"] == [0, 0, 0, 0]
    assert len(res.metrics["problems"]) == 4  # 3 layers with heads; EmbedLayerNorm needs Attention
    assert res.metrics["max_abs_diff"] <= 1e-4  # still a correct (partly fused) model


def test_output_mismatch_fails(dense_onnx, tmp_path):
    with pytest.raises(VerificationError, match=r"differ from the unfused by .* > tolerance 1e-15"):
        _fuse(dense_onnx, tmp_path, tolerance=1e-15)


def test_already_fused_is_unchanged(dense_onnx, tmp_path):
    fused = _fuse(dense_onnx, tmp_path).artifact
    again = OrtFuse()(fused, RunContext(tmp_path / "again"))
    assert again.modified is False and again.artifact is fused and again.metrics["already_fused"]
    assert again.metrics["fused_ops"]["Attention"] == 2


def test_options_and_spec(monkeypatch):
    import compressor.registry as registry
    from compressor.pipeline import parse_spec

    with pytest.raises(ConfigError, match="mask='none'"):
        OrtFuse(mask="none")
    with pytest.raises(ConfigError, match="tolerance=0"):
        OrtFuse(tolerance=0.0)
    monkeypatch.setitem(registry.PASSES, "ort-fuse", OrtFuse)
    assert parse_spec("ort-fuse{mask=index,strict=false}") == [OrtFuse(mask="index", strict=False)]


# -- sparse initializers after strip ------------------------------------------------------------

def _masked_then_stripped(tokenizer, tmp_path):
    """Structured zeros (two heads, 30 neurons of layer 0; all of layer 1's heads) plus 90%
    unstructured zeros in layer 0's intermediate weight, then strip: what is left is dense except
    that one matrix."""
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64, seed=3)
    layers = family_of(model).layers()
    with torch.no_grad():
        layers[0].attention.self.value.weight[:16] = 0
        layers[0].attention.self.value.bias[:16] = 0
        layers[0].output.dense.weight[:, :30] = 0
        layers[1].attention.output.dense.weight[:] = 0
        w = layers[0].intermediate.dense.weight
        drop = torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.9
        drop[:, 0] = False  # no row entirely zero: strip keeps every one of these neurons
        w[drop] = 0
    res = Strip()(TorchModel(model, tokenizer), RunContext(tmp_path / "strip"))
    assert res.metrics["heads_kept"] == [2, 0] and res.metrics["ffn_kept"] == [34, 64]
    return _export(res.artifact.model, tokenizer, tmp_path, "export")


def _sparse_constants(path) -> list[tuple[tuple[int, ...], int]]:
    """(dims, non-zeros) of each Constant(sparse_value) node of an ONNX file."""
    out = []
    for node in onnx.load(str(path)).graph.node:
        for a in node.attribute:
            if a.name == "sparse_value":
                values = onnx.numpy_helper.to_array(a.sparse_tensor.values)
                out.append((tuple(a.sparse_tensor.dims), int(values.size)))
    return out


def test_sparse_init_after_strip_only_where_it_shrinks(tokenizer, tmp_path):
    exported = _masked_then_stripped(tokenizer, tmp_path)
    res = SparseInit()(exported, RunContext(tmp_path / "sparse"))
    converted = _sparse_constants(res.artifact.path)
    matrices = {dims: nnz for dims, nnz in converted if len(dims) == 2}
    dense = {tuple(t.dims): int(np.count_nonzero(onnx.numpy_helper.to_array(t)))
             for t in onnx.load(str(exported.path)).graph.initializer if len(t.dims) == 2}
    assert matrices == {(32, 34): dense[(32, 34)]}  # the ~88%-zero matrix only, all its non-zeros
    assert all(nnz == 0 for dims, nnz in converted if len(dims) == 1)  # all-zero biases
    assert res.metrics["size_bytes"] < res.metrics["size_bytes_before"] and res.metrics["max_abs_diff"] <= 1e-6
    at_zero = SparseInit(min_sparsity=0.0)(exported, RunContext(tmp_path / "sparse0")).metrics
    assert at_zero["tensors_converted"] == len(converted)  # every other tensor would grow as COO
    # a stripped model without leftover zeros: nothing converted, file unchanged
    plain = _export(_uneven_model(), tokenizer, tmp_path, "plain")
    none = SparseInit()(plain, RunContext(tmp_path / "sparse-plain"))
    assert none.modified is False and none.metrics["tensors_converted"] == 0
    assert none.metrics["size_bytes"] == none.metrics["size_bytes_before"]
    # fusing the sparse file densifies the COO constants first and still fuses every layer
    fused = _fuse(res.artifact, tmp_path)
    assert fused.metrics["sparse_tensors_densified"] == len(converted)
    assert fused.metrics["attention_per_layer"] == [2, 0]
    assert _max_diff(exported.path, fused.artifact.path, 2, 21, 4) <= 1e-4
