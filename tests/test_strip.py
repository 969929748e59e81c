"""strip: equivalence with the masked dense model, exact shapes and parameter counts, reload
from the recorded per-layer sizes, and ONNX export of the stripped model."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ArtifactError, ConfigError, ModelError
from conftest import make_tiny_model, randomize_linears
from passes.families import family_of
from passes.families.base import BiasOnly, count_params
from passes.families.bert import NoFFN, NoHeads
from passes.strip import Strip, load_stripped

# (heads removed, FFN neurons removed) per layer; "all" removes every one.
SHAPES = {
    "h32x3": (dict(layers=3, hidden=32, heads=4, ffn=64),
              [(2, 20), ("all", 10), (1, "all")]),
    "h48x4": (dict(layers=4, hidden=48, heads=6, ffn=80),
              [(0, 0), ("all", "all"), (3, 50), (5, 79)]),
}


def _mask(model, plan, seed=0):
    """Zero the planned heads (V rows + bias, or attention-output columns) and neurons (W1 row +
    bias, or W2 column), route chosen at random; returns the kept sizes per layer."""
    rng = random.Random(seed)
    n_heads, ffn = model.config.num_attention_heads, model.config.intermediate_size
    d = model.config.hidden_size // n_heads
    kept = []
    with torch.no_grad():
        for layer, (rh, rf) in zip(model.bert.encoder.layer, plan):
            rh, rf = (n_heads if rh == "all" else rh), (ffn if rf == "all" else rf)
            sa = layer.attention.self
            for h in rng.sample(range(n_heads), rh):
                rows = slice(h * d, (h + 1) * d)
                if rng.random() < 0.5:
                    sa.value.weight[rows] = 0
                    sa.value.bias[rows] = 0
                else:
                    layer.attention.output.dense.weight[:, rows] = 0
            for i in rng.sample(range(ffn), rf):
                if rng.random() < 0.5:
                    layer.intermediate.dense.weight[i] = 0
                    layer.intermediate.dense.bias[i] = 0
                else:
                    layer.output.dense.weight[:, i] = 0
            kept.append({"heads": n_heads - rh, "ffn": ffn - rf})
    return kept


def _inputs(batch=3, seq=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        mask[b, seq - 3 * b:] = 0  # padded rows of different lengths
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _outputs(model, inputs):
    with torch.no_grad():
        return model.bert(**inputs)[0], model(**inputs).logits


def _expected_encoder_params(kept, hidden, head_size):
    total = 0
    for k in kept:
        inner = k["heads"] * head_size
        attn = 3 * (hidden * inner + inner) + inner * hidden + hidden if inner else hidden  # q,k,v; out
        ffn = 2 * hidden * k["ffn"] + k["ffn"] + hidden if k["ffn"] else hidden
        total += attn + ffn + 4 * hidden  # two LayerNorms
    return total


def _masked_case(name, tokenizer):
    shape, plan = SHAPES[name]
    model = randomize_linears(make_tiny_model(**shape))
    kept = _mask(model, plan, seed=len(name))
    return TorchModel(model, tokenizer, {"source": "tiny"}), shape, kept


@pytest.fixture(params=sorted(SHAPES))
def stripped(request, tokenizer, tmp_path):
    dense, shape, kept = _masked_case(request.param, tokenizer)
    ctx = RunContext(tmp_path / "run")
    result = Strip()(dense, ctx)
    result.artifact.model.eval()
    return dense, result, shape, kept, ctx


def test_strip_matches_masked_model(stripped):
    dense, result, _, kept, _ = stripped
    assert result.modified
    for seed, (batch, seq) in enumerate([(3, 13), (2, 29)]):
        inputs = _inputs(batch, seq, seed)
        for a, b in zip(_outputs(dense.model, inputs), _outputs(result.artifact.model, inputs)):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-5)
    # the input artifact is left dense
    cfg = dense.model.config
    assert all(family_of(dense.model).layer_sizes(layer) == (cfg.num_attention_heads, cfg.intermediate_size)
               for layer in dense.model.bert.encoder.layer)


def test_strip_shapes_attributes_and_params(stripped):
    dense, result, shape, kept, _ = stripped
    model, hidden = result.artifact.model, shape["hidden"]
    d = hidden // shape["heads"]
    assert model.config.compressor_layers == kept
    assert result.metrics["heads_kept"] == [k["heads"] for k in kept]
    assert result.metrics["ffn_kept"] == [k["ffn"] for k in kept]
    for layer, k in zip(model.bert.encoder.layer, kept):
        sa, inner = layer.attention.self, k["heads"] * d
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (k["heads"], d, inner)
        if k["heads"]:
            for lin in (sa.query, sa.key, sa.value):
                assert tuple(lin.weight.shape) == (inner, hidden) and tuple(lin.bias.shape) == (inner,)
            assert tuple(layer.attention.output.dense.weight.shape) == (hidden, inner)
        else:
            assert isinstance(sa, NoHeads) and isinstance(layer.attention.output.dense, BiasOnly)
        if k["ffn"]:
            assert tuple(layer.intermediate.dense.weight.shape) == (k["ffn"], hidden)
            assert tuple(layer.output.dense.weight.shape) == (hidden, k["ffn"])
        else:
            assert isinstance(layer.intermediate, NoFFN) and isinstance(layer.output.dense, BiasOnly)
    dense_kept = [{"heads": shape["heads"], "ffn": shape["ffn"]}] * shape["layers"]
    enc_dense = count_params(dense.model.bert.encoder)
    assert enc_dense == _expected_encoder_params(dense_kept, hidden, d)
    enc = _expected_encoder_params(kept, hidden, d)
    other = count_params(dense.model) - enc_dense
    assert count_params(model.bert.encoder) == enc
    assert result.metrics["params_after"] == other + enc == count_params(model)
    assert result.metrics["encoder_params_after"] == enc
    assert result.metrics["encoder_params_reduction"] == pytest.approx(1 - enc / enc_dense, abs=1e-6)
    seq = 128  # FLOPs: 2*seq*(4*hidden*inner + 2*hidden*ffn) + 4*seq^2*inner per layer
    flops = [2 * seq * (4 * hidden * k["heads"] * d + 2 * hidden * k["ffn"]) + 4 * seq * seq * k["heads"] * d
             for k in kept + dense_kept]
    after, before = sum(flops[:len(kept)]), sum(flops[len(kept):])
    assert result.metrics["encoder_flops_seq128_after"] == after
    assert result.metrics["encoder_flops_reduction"] == pytest.approx(1 - after / before, abs=1e-6)


def test_save_and_load_stripped_gives_same_logits(stripped):
    _, result, _, kept, ctx = stripped
    folder = ctx.out_dir()
    assert json.loads((folder / "config.json").read_text())["compressor_layers"] == kept
    loaded = load_stripped(folder, attn_implementation="eager")
    assert loaded.model.config.compressor_layers == kept
    assert loaded.tokenizer is not None
    inputs = _inputs(2, 11, seed=3)
    for a, b in zip(_outputs(result.artifact.model, inputs), _outputs(loaded.model, inputs)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, rtol=0)
    sdpa = load_stripped(folder, attn_implementation="sdpa")  # the other attention code path
    for a, b in zip(_outputs(result.artifact.model, inputs), _outputs(sdpa.model, inputs)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-5)


def test_load_stripped_rejects_sizes_that_do_not_fit(stripped, tmp_path):
    _, result, _, kept, ctx = stripped
    config = json.loads((ctx.out_dir() / "config.json").read_text())
    config["compressor_layers"][0]["ffn"] = kept[0]["ffn"] - 1 if kept[0]["ffn"] else 1
    (ctx.out_dir() / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_stripped(ctx.out_dir())
    with pytest.raises(ArtifactError, match="config.json"):
        load_stripped(tmp_path / "nowhere")


def test_onnx_export_of_stripped_model_matches_torch(stripped, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = stripped[1].artifact.model

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = tmp_path / "model.onnx"
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"logits": {0: "batch"}}
    torch.onnx.export(Logits(model), tuple(_inputs(2, 16).values()), str(path), input_names=names,
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    model.eval()  # the TorchScript exporter leaves the module in train mode
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 7), (4, 37)]:
        inputs = _inputs(batch, seq, seed=seq)
        got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
        np.testing.assert_allclose(got, _outputs(model, inputs)[1].numpy(), atol=1e-4, rtol=1e-4)


def test_export_pass_on_stripped_model(stripped, tmp_path):
    export = pytest.importorskip("passes.export_onnx")
    ort = pytest.importorskip("onnxruntime")
    _, result, _, _, _ = stripped
    out = export.Export()(result.artifact, RunContext(tmp_path / "export")).artifact
    result.artifact.model.eval()
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    for batch, seq in [(1, 9), (3, 21)]:
        inputs = _inputs(batch, seq, seed=seq)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items() if k in wanted})[0]
        np.testing.assert_allclose(got, _outputs(result.artifact.model, inputs)[1].numpy(), atol=1e-4, rtol=1e-4)


def test_constant_contributions_are_folded_into_biases(tokenizer, tmp_path):
    """A head with zero value weights but a value bias, and a neuron with a zero input row but a
    bias, add constants: they are removed and folded into the next bias, outputs unchanged."""
    model = randomize_linears(make_tiny_model(layers=2, hidden=32, heads=4, ffn=64))
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.value.weight[8:16] = 0
        model.bert.encoder.layer[1].intermediate.dense.weight[[3, 40]] = 0
    result = Strip()(TorchModel(model, tokenizer), RunContext(tmp_path / "run"))
    assert result.metrics["heads_kept"] == [3, 4] and result.metrics["ffn_kept"] == [64, 62]
    inputs = _inputs(3, 15)
    for a, b in zip(_outputs(model, inputs), _outputs(result.artifact.model, inputs)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=1e-5)


def test_nothing_removable_is_not_modified(tokenizer, tmp_path):
    model = randomize_linears(make_tiny_model(layers=2, hidden=32, heads=4, ffn=64))
    with torch.no_grad():  # query/key rows alone do not make a head removable
        model.bert.encoder.layer[0].attention.self.query.weight[:8] = 0
        model.bert.encoder.layer[0].attention.self.key.weight[:8] = 0
        model.bert.encoder.layer[0].attention.self.key.bias[:8] = 0
    artifact = TorchModel(model, tokenizer)
    result = Strip()(artifact, RunContext(tmp_path / "run"))
    assert result.modified is False and result.artifact is artifact
    assert result.metrics["heads_removed"] == 0 and result.metrics["ffn_removed"] == 0
    assert result.metrics["encoder_params_reduction"] == 0


def test_options_select_what_is_removed(tokenizer, tmp_path):
    dense, _, _ = _masked_case("h32x3", tokenizer)
    only_ffn = Strip(heads=False)(dense, RunContext(tmp_path / "a")).metrics
    assert only_ffn["heads_kept"] == [4, 4, 4] and only_ffn["ffn_kept"] == [44, 54, 0]
    only_heads = Strip(ffn=False)(dense, RunContext(tmp_path / "b")).metrics
    assert only_heads["heads_kept"] == [2, 0, 3] and only_heads["ffn_kept"] == [64, 64, 64]
    with pytest.raises(ConfigError, match="heads=False"):
        Strip(heads=False, ffn=False)


def test_rejects_a_model_that_is_not_bert(tokenizer, tmp_path):
    with pytest.raises(ModelError, match="encoder"):
        Strip()(TorchModel(nn.Linear(2, 2), tokenizer), RunContext(tmp_path / "run"))
