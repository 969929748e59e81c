"""passes.sparse_initializers.SparseInit: smaller file, checker passes, identical outputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from compressor.onnx_utils import make_session, onnx_accuracy, random_feeds
from passes.export_onnx import Export
from passes.sparse_initializers import SparseInit

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _export(model, tokenizer, folder):
    ctx = RunContext(workdir=folder)
    ctx.step_dir = folder / "01-export"
    return Export()(TorchModel(model, tokenizer), ctx).artifact


@pytest.fixture(scope="module")
def sparse_export(tokenizer, tmp_path_factory):
    """A tiny model with ~90% of its encoder weight matrices zeroed, exported once."""
    import torch

    model = make_tiny_model(hidden=64, ffn=256, vocab_size=2000)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.bert.encoder.parameters():
            if p.dim() == 2:
                p.mul_((torch.rand(p.shape, generator=gen) > 0.9).float())
    return _export(model, tokenizer, tmp_path_factory.mktemp("sparse"))


@pytest.fixture(scope="module")
def dense_export(tokenizer, tmp_path_factory):
    """A tiny model like a trained one: no exact zeros (BERT initializes biases to zero)."""
    import torch

    model = make_tiny_model(vocab_size=2000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return _export(model, tokenizer, tmp_path_factory.mktemp("dense"))


def _run(om, tmp_path, **options):
    ctx = RunContext(workdir=tmp_path)
    ctx.step_dir = tmp_path / "02-sparse-init"
    return SparseInit(**options)(om, ctx)


def _outputs(om, shapes=((1, 7), (3, 19), (8, 32))):
    sess = make_session(om)
    return [sess.run(["logits"], random_feeds(NAMES, b, s, vocab_size=2000, seed=i))[0]
            for i, (b, s) in enumerate(shapes)]


def _sparse_tensors(proto):
    """(name, SparseTensorProto) of sparse initializers and Constant(sparse_value) nodes."""
    out = [(s.values.name, s) for s in proto.graph.sparse_initializer]
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "sparse_value":
            out.append((node.output[0], node.attribute[0].sparse_tensor))
    return out


def test_sparse_model_shrinks_and_keeps_outputs(sparse_export, tmp_path):
    import onnx

    res = _run(sparse_export, tmp_path)
    om, m = res.artifact, res.metrics
    assert res.modified and om.folder == tmp_path / "02-sparse-init"
    assert m["size_bytes"] == om.size_bytes() < m["size_bytes_before"] == sparse_export.size_bytes()
    assert m["size_bytes"] < 0.8 * m["size_bytes_before"]
    assert m["max_abs_diff"] == 0.0 and m["index_format"] == "flat" and m["storage"] == "constant"
    assert m["zeros_fraction"] == pytest.approx(0.9, abs=0.02)
    onnx.checker.check_model(str(om.path), full_check=True)
    for before, after in zip(_outputs(sparse_export), _outputs(om)):
        np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
    # Structure: every encoder weight matrix (MatMul_* transposed ones too) is sparse, no dense copy.
    proto = onnx.load(str(om.path))
    sparse = dict(_sparse_tensors(proto))
    dense = {t.name for t in proto.graph.initializer}
    matmul_weights = {t.name for t in onnx.load(str(sparse_export.path)).graph.initializer
                      if t.name.startswith("onnx::MatMul")}
    assert len(matmul_weights) == 12  # 2 layers x (q, k, v, o, ffn in, ffn out), stored transposed
    assert matmul_weights <= set(sparse) and len(sparse) == m["tensors_converted"]
    assert not dense & set(sparse)  # no dense copy left
    assert all(list(s.indices.dims) == [s.values.dims[0]] for s in sparse.values())  # flat COO
    assert {p.name for p in om.folder.iterdir()} >= {"model.onnx", "config.json", "tokenizer_config.json"}


def test_sparse_initializer_storage(sparse_export, tmp_path):
    import onnx

    res = _run(sparse_export, tmp_path, storage="initializer")
    proto = onnx.load(str(res.artifact.path))
    assert len(proto.graph.sparse_initializer) == res.metrics["tensors_converted"] > 0
    sparse_names = {s.values.name for s in proto.graph.sparse_initializer}
    assert not {t.name for t in proto.graph.initializer} & sparse_names  # no dense copy left
    onnx.checker.check_model(proto)  # the plain checker; full_check fails on MatMul with a sparse B
    assert res.metrics["max_abs_diff"] == 0.0
    for before, after in zip(_outputs(sparse_export), _outputs(res.artifact)):
        np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


def test_flat_indices_are_smaller_than_2d(sparse_export, tmp_path):
    import onnx

    flat = _run(sparse_export, tmp_path / "flat", index_format="flat")
    two_d = _run(sparse_export, tmp_path / "2d", index_format="2d")
    assert flat.metrics["size_bytes"] < two_d.metrics["size_bytes"] < two_d.metrics["size_bytes_before"]
    for _, s in _sparse_tensors(onnx.load(str(two_d.artifact.path))):
        assert len(s.indices.dims) == 2 and s.indices.dims[1] == len(s.dims)
    onnx.checker.check_model(str(two_d.artifact.path), full_check=True)


def test_only_tensors_that_shrink_are_converted(sparse_export, tmp_path):
    import onnx
    from onnx import numpy_helper

    res = _run(sparse_export, tmp_path, min_sparsity=0.0)
    default = _run(sparse_export, tmp_path / "default")
    assert res.metrics["tensors_converted"] == default.metrics["tensors_converted"]
    for t in onnx.load(str(res.artifact.path)).graph.initializer:  # what stayed dense has few zeros
        arr = numpy_helper.to_array(t)
        assert (arr == 0).mean() < 0.5 or arr.size <= 4, t.name
    strict = _run(sparse_export, tmp_path / "strict", min_sparsity=0.95)  # only all-zero biases
    kept = {t.name for t in onnx.load(str(strict.artifact.path)).graph.initializer}
    assert strict.metrics["zeros_fraction"] == 1.0 and any(n.startswith("onnx::MatMul") for n in kept)


def test_dense_model_is_unchanged(dense_export, tmp_path):
    res = _run(dense_export, tmp_path)
    assert res.modified is False and res.artifact is dense_export
    assert res.metrics["tensors_converted"] == 0
    assert res.metrics["size_bytes"] == res.metrics["size_bytes_before"] == dense_export.size_bytes()


def test_options_are_validated():
    from compressor.pipeline import parse_spec

    with pytest.raises(ConfigError, match="min_sparsity=1.5"):
        SparseInit(min_sparsity=1.5)
    with pytest.raises(ConfigError, match="index_format='csr'"):
        SparseInit(index_format="csr")
    with pytest.raises(ConfigError, match="'csr' is not allowed"):
        parse_spec("sparse-init{index_format=csr}")
    assert parse_spec("sparse-init{storage=initializer}")[0] == SparseInit(storage="initializer")


def test_pipeline_export_then_sparse_init(tokenizer, tmp_path, toy_task):
    import torch

    from compressor.pipeline import Pipeline

    model = make_tiny_model(hidden=64, ffn=256)
    with torch.no_grad():
        for p in model.bert.encoder.parameters():
            if p.dim() == 2:
                p[p.abs() < p.abs().quantile(0.9)] = 0.0
    ctx = RunContext(workdir=tmp_path, data=toy_task)
    res = Pipeline("export,sparse-init").run(TorchModel(model, tokenizer), ctx)
    export, sparse = res.records
    assert sparse.modified and sparse.metrics["size_bytes"] < export.metrics["size_bytes"]
    assert res.artifact.folder == tmp_path / "02-sparse-init"
    dense_acc = onnx_accuracy(tmp_path / "01-export", toy_task.eval)
    assert onnx_accuracy(res.artifact, toy_task.eval) == dense_acc
