"""The DistilBERT family (passes/families/distilbert.py) through the passes: roles and stand-ins,
strip after uneven structured masks (a layer emptied of heads, one of FFN neurons) equal to the
masked model at two shapes, the stripped folder reloaded, export verified, ORT fusion, dynamic INT8,
fisher, a structured magnitude pipeline, CAP's unit gates and a structured CAP run, layer-drop,
trim-positions and INT8 embeddings.

Tiny random DistilBertForSequenceClassification (dim 32, 4 heads, FFN 64, dropout 0, eager) and
the MiniLM WordPiece tokenizer without token types (as DistilBERT's own tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.onnx_utils import VerificationError  # noqa: E402
from conftest import make_toy_task, minilm_dir, randomize_linears  # noqa: E402
from passes.families import family_of  # noqa: E402
from passes.families.base import ROLES, BiasOnly  # noqa: E402
from passes.families.distilbert import DistilBertFamily, NoFFN, NoHeads  # noqa: E402


TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])


def make_tiny_distilbert(layers=3, dim=32, heads=4, ffn=64, seed=0, vocab_size=30522):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=vocab_size, dim=dim, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                           max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
                           seq_classif_dropout=0.0, num_labels=2)
    cfg._attn_implementation = "eager"
    return DistilBertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def dtok():
    """The MiniLM WordPiece tokenizer giving input_ids and attention_mask only (DistilBERT's inputs)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True,
                                         model_input_names=["input_ids", "attention_mask"])


def _inputs(batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        mask[b, seq - 3 * b:] = 0  # right padding of different lengths
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(model, inputs):
    with torch.no_grad():
        return model.distilbert(**inputs)[0], model(**inputs).logits


def _close(a_model, b_model, shapes, atol):
    for seed, (batch, seq) in enumerate(shapes):
        inputs = _inputs(batch, seq, seed)
        for a, b in zip(_outputs(a_model, inputs), _outputs(b_model, inputs)):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=atol, rtol=atol)


# heads kept per layer by the masks and FFN neurons kept; layer 0 also loses head 2 through zero
# value rows (its value bias folded) and neuron 5 through a zero input row (act(bias) folded)
HEAD_KEEP = [[0, 2, 3], [], [1]]
FFN_KEEP = [40, 10, 0]
KEPT = [{"heads": 2, "ffn": 39}, {"heads": 0, "ffn": 10}, {"heads": 1, "ffn": 0}]


@pytest.fixture(scope="module")
def masked_and_stripped(dtok, tmp_path_factory):
    from passes._masks import MaskSet
    from passes.strip import Strip
    model = randomize_linears(make_tiny_distilbert())
    layer0 = model.distilbert.transformer.layer[0]
    with torch.no_grad():
        layer0.attention.v_lin.weight[16:24] = 0   # head 2: constant context b_v
        layer0.ffn.lin1.weight[5] = 0              # neuron 5: constant act(b_1[5])
    masks = MaskSet.attach(model, bias=True)
    heads = torch.zeros(3, 4, dtype=torch.bool)
    neurons = torch.zeros(3, 64, dtype=torch.bool)
    for i, (h, f) in enumerate(zip(HEAD_KEEP, FFN_KEEP)):
        heads[i, h] = True
        neurons[i, :f] = True
    masks.set_structured(heads, neurons)
    masks.bake()
    ctx = RunContext(tmp_path_factory.mktemp("strip"), data=make_toy_task(n_train=16, n_eval=16), progress=False)
    result = Strip()(TorchModel(model, dtok, {"source": "tiny-distilbert"}), ctx)
    return model, result, ctx


def test_roles_stand_ins_positions_and_score_capture():
    from passes._distill import ScoreCapture
    model = make_tiny_distilbert(layers=2)
    fam = family_of(model)
    assert isinstance(fam, DistilBertFamily) and fam.num_heads() == 4 and fam.hidden_size() == 32
    roles = fam.linear_roles()
    assert list(roles) == [n for n, m in model.named_modules()
                           if isinstance(m, nn.Linear) and ".transformer.layer." in n]
    assert [r for _, r in roles.values()] == list(ROLES) * 2
    assert set(fam.linears(include=("pooler", "classifier"))) == set(roles) | {"pre_classifier", "classifier"}
    ids = _inputs(2, 9)
    with ScoreCapture(model) as cap:  # the attention-distillation scores of sparsebert / distill
        with torch.no_grad():
            out = model(**ids, output_attentions=True)
        scores = cap.scores(ids["attention_mask"])
    for s, a in zip(scores, out.attentions):
        torch.testing.assert_close(torch.softmax(s, -1), a, atol=1e-6, rtol=0)
    before = _outputs(model, _inputs(2, 12))[1]
    fam.trim_positions(16)
    assert fam.position_table().num_embeddings == 16 and fam.embeddings().position_ids.shape[1] == 16
    torch.testing.assert_close(_outputs(model, _inputs(2, 12))[1], before, atol=0, rtol=0)
    second = fam.layers()[1]
    fam.keep_heads(second, [])
    fam.keep_ffn(second, [])
    assert fam.layer_sizes(second) == (0, 0) and isinstance(second.attention, NoHeads)
    assert isinstance(second.ffn, NoFFN) and isinstance(fam.linear(second, "attn_out"), BiasOnly)
    assert fam.linear(second, "query") is None and len(fam.linear_roles()) == 6
    keys = [k for k in model.state_dict() if ".layer.1." in k]
    assert "distilbert.transformer.layer.1.attention.out_lin.bias" in keys
    assert "distilbert.transformer.layer.1.ffn.lin2.bias" in keys and not any("q_lin" in k for k in keys)
    assert fam.encoder_flops(16) > 0 and torch.isfinite(model(**_inputs(2, 5)).logits).all()


def test_strip_matches_the_masked_model(masked_and_stripped):
    masked, result, _ = masked_and_stripped
    stripped = result.artifact.model
    assert result.modified and stripped.config.compressor_layers == KEPT
    assert result.metrics["heads_kept"] == [2, 0, 1] and result.metrics["ffn_kept"] == [39, 10, 0]
    _close(masked, stripped, [(3, 13), (2, 29)], atol=1e-5)
    layers = stripped.distilbert.transformer.layer
    assert isinstance(layers[1].attention, NoHeads) and isinstance(layers[2].ffn, NoFFN)
    att = layers[0].attention
    assert (att.n_heads, att.dim, att.attention_head_size) == (2, 16, 8)
    assert tuple(att.q_lin.weight.shape) == (16, 32) and tuple(att.out_lin.weight.shape) == (32, 16)
    assert tuple(layers[0].ffn.lin1.weight.shape) == (39, 32)


def test_stripped_folder_reloads_to_the_same_logits(masked_and_stripped):
    from compressor.models import load_model
    from passes.strip import load_stripped
    _, result, ctx = masked_and_stripped
    loaded = load_model(str(ctx.out_dir()))  # the plugin's loader: load_stripped (default attention)
    assert loaded.model.config.compressor_layers == KEPT
    assert "token_type_ids" not in loaded.tokenizer("a film")
    _close(result.artifact.model, loaded.model, [(2, 11)], atol=1e-5)
    eager = load_stripped(ctx.out_dir(), attn_implementation="eager")
    _close(result.artifact.model, eager.model, [(2, 11), (3, 20)], atol=1e-6)
    sdpa = load_stripped(ctx.out_dir(), attn_implementation="sdpa")  # the other attention code path
    _close(result.artifact.model, sdpa.model, [(2, 11)], atol=1e-5)


def test_export_verifies_then_fuses_and_quantizes(masked_and_stripped, tmp_path):
    from passes.export_onnx import Export
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize
    _, result, ctx = masked_and_stripped
    task = ctx.data
    exported = Export()(result.artifact, RunContext(tmp_path / "export", data=task))
    assert exported.metrics["inputs"] == ["input_ids", "attention_mask"]
    assert exported.metrics["max_abs_diff"] <= 1e-4
    fused = OrtFuse(strict=False)(exported.artifact, RunContext(tmp_path / "fuse", data=task)).metrics
    assert fused["max_abs_diff"] <= 1e-4 and fused["expected_heads"] == [2, 0, 1]
    assert fused["skip_layernorm_per_layer"] == [2, 2, 2] and fused["gelu_per_layer"] == [1, 1, 0]
    if TRANSFORMERS_MAJOR >= 5:  # ORT's BERT fusions take all of 5.x's DistilBERT graph
        assert not fused["problems"] and fused["attention_per_layer"] == [2, 0, 1]
        assert fused["fused_ops"].get("EmbedLayerNormalization") == 1
    else:
        # 4.57's attention masks with Where(mask == 0, min, Q K^T): ORT 1.32 matches that path
        # ("distill") but then requires a negative constant on the mask's first node (BERT's Mul
        # path) and gives up; the embeddings fuse only before a fused Attention
        assert fused["attention_per_layer"] == [0, 0, 0] and "EmbedLayerNormalization" not in fused["fused_ops"]
        with pytest.raises(VerificationError, match="layer 0 kept 2 heads but has Attention none"):
            OrtFuse()(exported.artifact, RunContext(tmp_path / "strict", data=task))
    q = Quantize(mode="dynamic")(exported.artifact, RunContext(tmp_path / "int8", data=task)).metrics
    assert q["quant_ops"] and q["size_bytes"] < q["size_bytes_before"]
    assert q["accuracy_onnx"] is not None
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError:
        return
    ort_model = ORTModelForSequenceClassification.from_pretrained(str(exported.artifact.folder))
    enc = result.artifact.tokenizer(["a good film", "an awful, boring film"], padding=True, return_tensors="pt")
    torch.testing.assert_close(torch.as_tensor(ort_model(**enc).logits), _outputs(result.artifact.model, dict(enc))[1],
                               atol=1e-4, rtol=0)


def test_trim_positions_export_and_int8_embeddings(dtok, tmp_path):
    from compressor.pipeline import Pipeline
    res = Pipeline("trim-positions{max_positions=64},export,embed-int8").run(
        TorchModel(make_tiny_distilbert(layers=2), dtok, {"source": "tiny"}),
        RunContext(tmp_path, data=make_toy_task(n_train=16, n_eval=16), progress=False, max_length=32))
    trim, export, emb = (r.metrics for r in res.records)
    assert trim["position_params_removed"] == 64 * 32 and export["max_abs_diff"] <= 1e-4
    assert emb["size_bytes"] < export["size_bytes"] / 2 and emb["max_abs_diff"] <= 1e-3


def test_fisher_prunes_to_the_flops_budget_and_reloads(dtok, tmp_path):
    from compressor.evaluation import predict_logits
    from passes.fisher.prune import Fisher
    from passes.strip import load_stripped
    task = make_toy_task(n_train=32, n_eval=16)
    res = Fisher(flops=0.5, samples=32, batch_size=16)(
        TorchModel(make_tiny_distilbert(seed=2), dtok, {"source": "tiny"}), RunContext(tmp_path, data=task))
    m = res.metrics
    assert m["kept_mac_fraction"] <= 0.5 and m["max_abs_diff_masked_vs_stripped"] <= 1e-5
    tuned = [r for r in m["mask_tuning"] if r["status"] == "tuned"]
    assert tuned and all(r["error_after"] <= r["error_before"] for r in tuned)
    reloaded = load_stripped(tmp_path)
    torch.testing.assert_close(predict_logits(reloaded.model, dtok, task.eval, 32),
                               predict_logits(res.artifact.model, dtok, task.eval, 32), rtol=0, atol=1e-5)


def test_structured_magnitude_strip_export_pipeline(dtok, tmp_path):
    from compressor.pipeline import Pipeline
    task = make_toy_task(n_train=32, n_eval=16)
    res = Pipeline("magnitude{granularity=structured,scope=global,sparsity=0.5,epochs=1,batch_size=16,"
                   "max_length=16,lr=0.003},strip,export").run(
        TorchModel(make_tiny_distilbert(), dtok, {"source": "tiny"}), RunContext(tmp_path, data=task, progress=False))
    strip, export = res.records[1].metrics, res.records[2].metrics
    assert sum(strip["heads_kept"]) == 6 and strip["params_after"] < strip["params_before"]
    assert export["max_abs_diff"] <= 1e-4 and export["inputs"] == ["input_ids", "attention_mask"]


def test_cap_unit_gates_are_the_heads_and_neurons(dtok):
    """A zero gate equals removing the unit (pre-hooks on out_lin / lin2 gate the context and the
    hidden units); the gates' gradients flow."""
    from passes.cap.prune import UnitGates
    model = randomize_linears(make_tiny_distilbert(layers=2))
    ids = _inputs(2, 7)
    with UnitGates(model) as gates:
        gates.heads = gates.heads.detach().clone()
        gates.heads[1, 2] = 0
        gates.neurons = gates.neurons.detach().clone()
        gates.neurons[0, 3] = 0
        with torch.no_grad():
            gated = model(**ids).logits
    with torch.no_grad():
        layers = model.distilbert.transformer.layer
        layers[1].attention.out_lin.weight[:, 16:24] = 0
        layers[0].ffn.lin2.weight[:, 3] = 0
        torch.testing.assert_close(model(**ids).logits, gated, atol=1e-6, rtol=0)
    with UnitGates(model) as gates:
        model(**ids).logits.sum().backward()
        assert gates.heads.grad.abs().sum() > 0 and gates.neurons.grad.abs().sum() > 0


def test_cap_structured_run_zeroes_whole_units(dtok, tmp_path):
    from passes.cap.cap import Cap
    task = make_toy_task(n_train=32, n_eval=16)
    student = TorchModel(make_tiny_distilbert(layers=2), dtok, {"source": "tiny"})
    teacher = TorchModel(make_tiny_distilbert(layers=2, seed=1), dtok, {})
    res = Cap(sparsity=0.5, granularity="structured", stages=1, epochs=1, batch_size=16, max_snapshots=2)(
        student, RunContext(workdir=tmp_path, data=task, teacher=teacher, progress=False))
    m = res.metrics
    assert sum(m["heads_kept"]) == 4 and m["seconds"]["importance"] > 0
    for layer, heads in zip(res.artifact.model.distilbert.transformer.layer, m["heads_kept"]):
        zero = (layer.attention.v_lin.weight.reshape(4, 8, -1) == 0).flatten(1).all(1)
        assert int((~zero).sum()) == heads
        assert torch.equal((layer.attention.out_lin.weight.reshape(32, 4, 8) == 0).all(2).all(0), zero)
        assert torch.equal((layer.ffn.lin1.weight == 0).all(1), (layer.ffn.lin2.weight == 0).all(0))


def test_layer_drop_of_a_stripped_model_reloads(masked_and_stripped, tmp_path):
    from compressor.models import load_model
    from passes.layer_drop import LayerDrop
    _, result, _ = masked_and_stripped
    ctx = RunContext(tmp_path)
    out = LayerDrop(keep=2, which="0,2")(result.artifact, ctx)
    model = out.artifact.model
    assert out.metrics["layers_after"] == 2 and model.config.n_layers == 2
    assert model.config.compressor_layers == [KEPT[0], KEPT[2]]
    assert len(model.distilbert.transformer.layer) == 2
    reloaded = load_model(str(ctx.out_dir()))
    _close(model, reloaded.model, [(2, 9)], atol=1e-5)


def test_load_model_drops_token_types_the_model_does_not_take(tokenizer, tmp_path):
    """A DistilBERT folder saved with a BERT tokenizer (which emits token_type_ids) loads with a
    tokenizer that feeds the model only what its forward takes."""
    from compressor.models import load_model
    assert "token_type_ids" in tokenizer.model_input_names
    make_tiny_distilbert(layers=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    art = load_model(str(tmp_path))
    batch = art.tokenizer(["a fun film", "dull"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in batch
    assert art.model(**batch).logits.shape == (2, 2)
