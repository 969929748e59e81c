"""compressor.onnx_utils: checked loading, BERT I/O check, sessions, encoding, ONNX accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_model

from compressor.data import Example
from compressor.errors import ArtifactError, ConfigError, DataError, TargetError
from compressor.onnx_utils import (check_bert_io, encode, graph_io, load_checked, make_session,
                                   onnx_accuracy, onnx_predict_logits, save_model)


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    """A tiny model exported once for the module: (TorchModel, OnnxModel)."""
    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from passes.export_onnx import Export

    tm = TorchModel(make_tiny_model(), tokenizer)
    ctx = RunContext(workdir=tmp_path_factory.mktemp("export"))
    return tm, Export()(tm, ctx).artifact


def _add_model(path=None, ir_version=8):
    """A valid, non-BERT ONNX model: y = a + b."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "adder", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    if path is not None:
        onnx.save(model, str(path))
    return model


def test_load_checked_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist") as err:
        load_checked(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(err.value) and "\n" not in str(err.value)


def test_load_checked_folder_without_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="has no model.onnx") as err:
        load_checked(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_load_checked_garbage_bytes(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ArtifactError) as err:
        load_checked(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_checked_truncated_file(exported, tmp_path):
    data = exported[1].path.read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="not a readable ONNX model|fails the ONNX checker") as err:
        load_checked(tmp_path)
    assert str(path) in str(err.value)


def test_load_checked_rejects_invalid_graph(tmp_path):
    import onnx

    model = _add_model()
    model.graph.node[0].input[1] = "undefined"  # uses a value nothing defines
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ArtifactError, match="fails the ONNX checker"):
        load_checked(tmp_path / "bad.onnx")


def test_load_checked_accepts_folder_and_file(exported):
    proto = load_checked(exported[1].folder)
    assert proto.graph.node and load_checked(exported[1].path).graph.name == proto.graph.name
    assert load_checked(exported[1]).ByteSize() == proto.ByteSize()


def test_check_bert_io(exported, tmp_path):
    proto = load_checked(exported[1].path)
    check_bert_io(proto)  # the export is BERT-style
    assert graph_io(proto) == (["input_ids", "attention_mask", "token_type_ids"], ["logits"])
    _add_model(tmp_path / "add.onnx")
    adder = load_checked(tmp_path / "add.onnx")
    with pytest.raises(ArtifactError, match="is not a BERT-style sequence-classification ONNX") as err:
        check_bert_io(adder)
    assert "inputs a, b" in str(err.value) and "expected input_ids, attention_mask" in str(err.value)
    with pytest.raises(ArtifactError, match="add.onnx is not a BERT-style"):
        check_bert_io(adder, source=tmp_path / "add.onnx")


def test_make_session_errors(exported, tmp_path):
    with pytest.raises(TargetError, match="NoSuchExecutionProvider"):
        make_session(exported[1].path, providers=("NoSuchExecutionProvider",))
    with pytest.raises(ConfigError, match="graph_optimization='max'"):
        make_session(exported[1].path, graph_optimization="max")
    with pytest.raises(ArtifactError, match="does not exist"):
        make_session(tmp_path / "missing.onnx")
    sess = make_session(exported[1].folder, threads=1, graph_optimization="disable")
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_encode_feeds(tokenizer):
    rows = [Example("a good film", 1), Example("a very long and boring film indeed", 0)]
    feeds = encode(tokenizer, rows, max_length=32)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 for v in feeds.values())
    assert feeds["input_ids"].shape == (2, int(feeds["attention_mask"].sum(1).max()))
    padded = encode(tokenizer, rows, max_length=32, pad_to=20, input_names=["input_ids", "attention_mask"])
    assert set(padded) == {"input_ids", "attention_mask"} and padded["input_ids"].shape == (2, 20)
    assert encode(tokenizer, rows, max_length=4)["input_ids"].shape == (2, 4)
    pairs = encode(tokenizer, [Example("a", 1, "b c"), Example("d e", 0, "f")], max_length=16)
    assert pairs["token_type_ids"].max() == 1
    with pytest.raises(DataError, match="mix single texts and text pairs"):
        encode(tokenizer, [Example("a", 1, "b"), Example("c", 0)], max_length=16)
    with pytest.raises(DataError, match="no examples"):
        encode(tokenizer, [], max_length=16)


def test_onnx_accuracy_matches_torch(exported, toy_task):
    import torch

    tm, om = exported
    feeds = encode(tm.tokenizer, toy_task.eval, max_length=128)
    with torch.no_grad():
        ref = tm.model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    torch_acc = float(np.mean(ref.argmax(-1) == np.array([e.label for e in toy_task.eval])))
    sess = make_session(om.folder)
    logits = onnx_predict_logits(sess, tm.tokenizer, toy_task.eval, max_length=128, batch_size=5)
    assert logits.shape == (len(toy_task.eval), 2)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert onnx_accuracy(om, toy_task.eval, max_length=128, batch_size=7) == pytest.approx(torch_acc)
    assert onnx_accuracy(om.folder, toy_task.eval) == pytest.approx(torch_acc)
    with pytest.raises(DataError):
        onnx_accuracy(om, [])


def test_save_model_external_data(exported, tmp_path):
    from compressor.artifact import OnnxModel

    proto = load_checked(exported[1].path)
    save_model(proto, tmp_path / "model.onnx", external=True)
    assert (tmp_path / "model.onnx.data").stat().st_size > (tmp_path / "model.onnx").stat().st_size
    om = OnnxModel(tmp_path)
    assert om.size_bytes() == sum(p.stat().st_size for p in tmp_path.iterdir())
    feeds = {"input_ids": np.array([[101, 2204, 102]]), "attention_mask": np.ones((1, 3), np.int64),
             "token_type_ids": np.zeros((1, 3), np.int64)}
    a = make_session(exported[1].path).run(None, feeds)[0]
    b = make_session(tmp_path).run(None, feeds)[0]
    np.testing.assert_array_equal(a, b)
    assert load_checked(tmp_path).graph.initializer  # external data loads back
