"""layer-drop: which layers are kept, the model with every layer kept equals the input, a dropped
model equals running the kept layers of the input, and it reloads with the same logits (also
after strip)."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError, ModelError
from compressor.models import load_model
from conftest import make_tiny_model, randomize_linears
from passes.families import family_of
from passes.families.base import count_params
from passes.layer_drop import LayerDrop, layers_to_keep
from passes.strip import Strip


def _batch(tokenizer):
    return tokenizer(["a good film with a plot", "bad", "the acting was fine but the ending dragged on"],
                     padding=True, return_tensors="pt")


@pytest.mark.parametrize("n, keep, which, expected", [
    (12, 6, "even", [0, 2, 4, 7, 9, 11]),  # DistilBERT's extract_distilbert.py
    (6, 3, "even", [0, 3, 5]),
    (6, 2, "even", [0, 5]),
    (6, 1, "even", [0]),
    (6, 0, "even", [0, 3, 5]),  # 0 = half
    (5, 0, "first", [0, 1, 2]),
    (6, 2, "first", [0, 1]),
    (6, 2, "last", [4, 5]),
    (6, 6, "even", [0, 1, 2, 3, 4, 5]),
    (6, 0, "5, 1,3", [1, 3, 5]),
    (6, 3, "0,1,2", [0, 1, 2]),
])
def test_layers_to_keep(n, keep, which, expected):
    assert layers_to_keep(n, keep, which) == expected


def test_bad_options():
    with pytest.raises(ConfigError, match=r"which='middle' is not allowed.*even, first, last"):
        LayerDrop(which="middle")
    with pytest.raises(ConfigError, match="lists a layer twice"):
        LayerDrop(which="1,1")
    with pytest.raises(ConfigError, match=r"keep=-1 is out of range"):
        LayerDrop(keep=-1)
    with pytest.raises(ConfigError, match="keep=2 with which='0,1,2'"):
        layers_to_keep(6, 2, "0,1,2")
    with pytest.raises(ModelError, match=r"keep=7 is out of range.*6 layers.*\[1, 6\]"):
        layers_to_keep(6, 7)
    with pytest.raises(ModelError, match="layer 6 does not exist"):
        layers_to_keep(6, 0, "0,6")


def test_structure_and_equivalence_with_kept_layers(tokenizer, tmp_path):
    model = randomize_linears(make_tiny_model(layers=5, seed=1))
    result = LayerDrop(keep=3, which="even")(TorchModel(model, tokenizer), RunContext(tmp_path / "run"))
    dropped = result.artifact.model
    assert result.modified and result.metrics["layers_kept"] == [0, 2, 4]
    assert len(family_of(dropped).layers()) == 3 and dropped.config.num_hidden_layers == 3
    assert len(model.bert.encoder.layer) == 5  # the input is not changed
    for new, old in zip(dropped.bert.encoder.layer, [model.bert.encoder.layer[i] for i in (0, 2, 4)]):
        for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items()):
            assert torch.equal(a, b), k
    per_layer = count_params(model.bert.encoder.layer[0])
    m = result.metrics
    assert m["params_before"] == count_params(model) and m["params_before"] - m["params_after"] == 2 * per_layer
    assert m["encoder_flops_reduction"] == pytest.approx(0.4)
    # equals running the input's embeddings, layers 0, 2, 4 and head by hand
    batch = _batch(tokenizer)
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i in (0, 2, 4):
            out = model.bert.encoder.layer[i](hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 5.x returns the tensor
        manual = model.classifier(model.bert.pooler(hidden))
        torch.testing.assert_close(dropped(**batch).logits, manual, rtol=1e-5, atol=1e-5)


def test_all_layers_kept_equals_input(tokenizer, tmp_path):
    model = randomize_linears(make_tiny_model(layers=3, seed=2))
    batch = _batch(tokenizer)
    for which in ("even", "0,1,2"):
        result = LayerDrop(keep=3, which=which)(TorchModel(model, tokenizer), RunContext(tmp_path / which))
        assert not result.modified and result.metrics["params_after"] == result.metrics["params_before"]
        with torch.no_grad():
            torch.testing.assert_close(result.artifact.model(**batch).logits, model(**batch).logits,
                                       rtol=0, atol=0)


def test_reload_same_logits(tokenizer, tmp_path):
    model = randomize_linears(make_tiny_model(layers=4, seed=3))
    ctx = RunContext(tmp_path / "run")
    result = LayerDrop(keep=2, which="last")(TorchModel(model, tokenizer), ctx)
    config = json.loads((ctx.out_dir() / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    loaded = load_model(str(ctx.out_dir()), num_labels=2).model
    assert len(loaded.bert.encoder.layer) == 2
    batch = _batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, result.artifact.model(**batch).logits,
                                   rtol=1e-6, atol=1e-6)


def test_after_strip_keeps_layer_sizes_and_reloads(tokenizer, tmp_path):
    model = randomize_linears(make_tiny_model(layers=3, seed=4))
    with torch.no_grad():  # zero 1 head of layer 0, 2 heads of layer 1, 10 FFN neurons of layer 2
        d = model.config.hidden_size // model.config.num_attention_heads
        model.bert.encoder.layer[0].attention.self.value.weight[:d] = 0
        model.bert.encoder.layer[0].attention.self.value.bias[:d] = 0
        model.bert.encoder.layer[1].attention.output.dense.weight[:, :2 * d] = 0
        model.bert.encoder.layer[2].intermediate.dense.weight[:10] = 0
    stripped = Strip()(TorchModel(model, tokenizer), RunContext(tmp_path / "strip")).artifact
    assert stripped.model.config.compressor_layers == [{"heads": 3, "ffn": 64}, {"heads": 2, "ffn": 64},
                                                       {"heads": 4, "ffn": 54}]
    ctx = RunContext(tmp_path / "drop")
    result = LayerDrop(keep=2, which="1,2")(stripped, ctx)
    assert result.artifact.model.config.compressor_layers == [{"heads": 2, "ffn": 64}, {"heads": 4, "ffn": 54}]
    assert result.artifact.info["compressor_layers"] == result.artifact.model.config.compressor_layers
    loaded = load_model(str(ctx.out_dir()), num_labels=2).model  # load_stripped: sdpa attention
    batch = _batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, result.artifact.model(**batch).logits,
                                   rtol=1e-5, atol=1e-5)


def test_export_of_dropped_model(tokenizer, tmp_path):
    export = pytest.importorskip("passes.export_onnx")
    ort = pytest.importorskip("onnxruntime")
    model = randomize_linears(make_tiny_model(layers=4, seed=5))
    dropped = LayerDrop(keep=2)(TorchModel(model, tokenizer), RunContext(tmp_path / "drop")).artifact
    out = export.Export()(dropped, RunContext(tmp_path / "export")).artifact
    dropped.model.eval()
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    batch = _batch(tokenizer)
    got = session.run(None, {k: v.numpy() for k, v in batch.items() if k in wanted})[0]
    with torch.no_grad():
        want = dropped.model(**batch).logits.numpy()
    assert abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_minilm_keep_3_reloads(tmp_path):
    tm = load_model("minilm", num_labels=2)
    ctx = RunContext(tmp_path / "drop")
    result = LayerDrop(keep=3)(tm, ctx)
    assert result.metrics["layers_kept"] == [0, 3, 5] and result.metrics["layers_after"] == 3
    loaded = load_model(str(ctx.out_dir()), num_labels=2).model
    batch = _batch(tm.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, result.artifact.model(**batch).logits,
                                   rtol=1e-5, atol=1e-5)
