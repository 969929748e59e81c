"""The ModernBERT family (passes/families/modernbert.py) through the passes: the fused ``Wqkv`` /
``Wi`` held split (roles, gates, fused state-dict keys), stand-ins with and without biases, strip
after uneven structured masks (a layer emptied of heads, one of FFN neurons) equal to the masked
model at two shapes, the stripped folder reloaded (eager and sdpa agree), export verified, what ORT
fuses, dynamic INT8 and INT8 embeddings, trim-positions refused, fisher (and its piecewise layers),
structured and unstructured magnitude, CAP's unit gates and a structured CAP run, layer-drop with
the global / sliding-window pattern, vocab-prune of the byte-level BPE vocabulary.

Tiny random ModernBertForSequenceClassification (hidden 32, 4 layers alternating global and
sliding-window attention with a window of +-4 tokens, 4 heads, FFN 64, no biases, dropout 0,
eager) with random Linear weights of gain near 1, and a byte-level BPE tokenizer trained here with its
specials at the end of the vocabulary (as ModernBERT's)."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from compressor import registry  # noqa: E402
from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.errors import ModelError  # noqa: E402
from conftest import (INT8_LOGIT_TOL, logits, make_toy_task, mask_structured,  # noqa: E402
                      strip_matches_masked)
from test_family_roberta import texts as roberta_texts  # noqa: E402
from passes.families import family_of  # noqa: E402
from passes.families.base import ROLES, BiasOnly  # noqa: E402
from passes.families.modernbert import ModernBertFamily, NoFFN, NoHeads, SplitLinear  # noqa: E402

TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # appended after the BPE vocabulary
WORDS = ("the film was a plot actors story ending movie scene music camera director script long short "
         "funny sad quiet loud dark bright slow fast every minute hour night city house friend").split()
MAX_TOKENS, FFN = 64, 64


def texts(n=200, seed=0) -> list[str]:
    return roberta_texts(n, seed, words=WORDS, longest=12)


@functools.lru_cache(maxsize=None)
def make_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` (``[CLS] A [SEP]``, no token types) trained on
    :func:`texts`, its five specials at the end of the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts(), trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens(SPECIALS)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=MAX_TOKENS,
                                   model_input_names=["input_ids", "attention_mask"])


def randomize(model, seed=0):
    """Every Linear's weight (and bias, where there is one) redrawn (seeded) at a gain near 1
    (0.15 * sqrt(32)), so that a wrongly removed head or neuron would change the output (at 0.3
    the gated FFNs make the toy model chaotic: INT8 moves its logits by 0.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.15)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.15)
    return model


def make_model(tokenizer=None, layers=4, seed=0, bias=False, pooling="cls", attn="eager"):
    """A seeded tiny ModernBertForSequenceClassification: layers 0, 2 global, 1, 3 sliding window."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification
    tok = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=FFN, max_position_embeddings=MAX_TOKENS, global_attn_every_n_layers=2,
                           local_attention=8, pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                           attention_bias=bias, mlp_bias=bias, classifier_pooling=pooling,
                           embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0,
                           num_labels=2)
    cfg._attn_implementation = attn
    return randomize(ModernBertForSequenceClassification(cfg).eval(), seed)


def case(layers=4, seed=0, **kw) -> TorchModel:
    tok = make_tokenizer()
    return TorchModel(make_model(tok, layers, seed, **kw), tok, {"source": "tiny-modernbert"})


def batches(tokenizer):
    """Two shapes, both longer than the +-4 window: three texts padded to the longest, two padded to 40."""
    sents = texts(20, seed=5)
    return [dict(tokenizer(sents[:3], padding="longest", return_tensors="pt")),
            dict(tokenizer([s + " " + s for s in sents[3:5]], padding="max_length", max_length=40,
                           return_tensors="pt"))]


# heads kept per layer (layer 1 none) and FFN neurons kept (layer 2 none)
HEADS = [[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1]]
FFN_KEPT = (40, 10, 0, 20)
KEPT = [(3, 40), (0, 10), (1, 0), (3, 20)]


def test_family_is_listed_and_the_fused_linears_are_held_split():
    tok = make_tokenizer()
    model = make_model(tok)
    keys = list(model.state_dict())
    batch = batches(tok)[0]
    before = logits(model, batch)
    fam = family_of(model)
    assert registry.family("modernbert") is ModernBertFamily and isinstance(fam, ModernBertFamily)
    assert fam.tokenizer_kind == "bpe" and not fam.token_types and fam.ort_model_type == "bert"
    assert not fam.ort_fuses_embeddings and not fam.ort_fuses_attention
    assert fam.position_table() is None and fam.max_tokens() == MAX_TOKENS and fam.hidden_size() == 32
    layer = model.model.layers[1]
    assert isinstance(layer.attn.Wqkv, SplitLinear) and isinstance(layer.mlp.Wi, SplitLinear)
    assert fam.linear(layer, "key") is layer.attn.Wqkv.key and fam.linear(layer, "ffn_in") is layer.mlp.Wi.input
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=0)  # the same matmul
    assert list(model.state_dict()) == keys  # the fused keys: save_pretrained writes HF's checkpoint
    roles = fam.linear_roles()
    assert [r for _, r in roles.values()] == list(ROLES) * 4
    assert tuple(layer.attn.Wqkv.query.weight.shape) == (32, 32) and tuple(layer.mlp.Wi.gate.weight.shape) == (FFN, 32)
    gates = [f"model.layers.{i}.mlp.Wi.gate" for i in range(4)]
    assert set(fam.linears()) == set(roles) | set(gates)
    assert set(fam.linears(include=("pooler", "classifier"))) - set(fam.linears()) == {"head.dense", "classifier"}
    query = layer.attn.Wqkv.query
    assert family_of(model).linear(layer, "query") is query  # binding again splits nothing twice
    from compressor.models import count_parameters, model_layout
    counts = count_parameters(model)
    assert counts["embeddings"] == len(tok) * 32 + 32  # word table + LayerNorm weight
    assert counts["total"] == counts["embeddings"] + counts["encoder"] + counts["head"]
    assert counts["head"] == 32 * 32 + 32 + 32 * 2 + 2  # head.dense, head.norm, classifier
    assert model_layout(model) == {"num_layers": 4, "hidden_size": 32, "head_size": 8, "heads": [4] * 4,
                                   "ffn": [FFN] * 4}
    s = 16
    assert fam.encoder_flops(s) == 4 * (2 * s * (4 * 32 * 32 + 3 * 32 * FFN) + 4 * s * s * 32)


def test_saved_checkpoint_loads_with_from_pretrained(tmp_path):
    """A split (and masked, baked) model saves HF's fused keys: plain from_pretrained reads it."""
    from transformers import AutoModelForSequenceClassification

    from passes._masks import MaskSet
    art = case(layers=2)
    masks = MaskSet.attach(art.model)  # unstructured masks cover the gates too
    assert any(n.endswith("mlp.Wi.gate") for n in masks.modules)
    masks.apply_magnitude(0.5)
    masks.bake()
    assert float((art.model.model.layers[0].mlp.Wi.gate.weight == 0).float().mean()) > 0.2
    art.model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(loaded.model.layers[0].attn.Wqkv, nn.Linear)  # as HF builds it
    batch = batches(art.tokenizer)[1]
    torch.testing.assert_close(logits(loaded, batch), logits(art.model, batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_stand_ins_of_an_emptied_layer(bias):
    """0 heads: ``h = x + Wo.bias`` (``x``); 0 neurons: ``h + Wo.bias`` (``h``); biases keep their keys."""
    model = make_model(layers=2, bias=bias)
    fam = family_of(model)
    second = fam.layers()[1]
    x = torch.randn(2, 7, 32)
    biases = [second.attn.Wo.bias, second.mlp.Wo.bias]
    fam.keep_heads(second, [])
    fam.keep_ffn(second, [])
    assert fam.layer_sizes(second) == (0, 0) and isinstance(second.attn, NoHeads) and isinstance(second.mlp, NoFFN)
    assert fam.linear(second, "query") is None and len(fam.linear_roles()) == 6
    assert isinstance(fam.linear(second, "attn_out"), BiasOnly) == bias
    keys = [k for k in model.state_dict() if ".layers.1." in k]
    assert sorted(keys) == sorted(["model.layers.1.attn_norm.weight", "model.layers.1.mlp_norm.weight"] +
                                  (["model.layers.1.attn.Wo.bias", "model.layers.1.mlp.Wo.bias"] if bias else []))
    with torch.no_grad():
        out = second(x)
    out = out[0] if isinstance(out, tuple) else out  # 4.57 returns a tuple
    torch.testing.assert_close(out, x + biases[0] + biases[1] if bias else x, rtol=0, atol=1e-6)
    ids = torch.randint(0, 300, (2, 9))
    assert torch.isfinite(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).all()


def test_split_model_pickles_and_copies():
    import copy
    import pickle
    model = make_model(layers=2)
    family_of(model)
    batch = batches(make_tokenizer())[0]
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(other.model.layers[0].attn.Wqkv, SplitLinear)
        assert list(other.state_dict()) == list(model.state_dict())
        torch.testing.assert_close(logits(other, batch), logits(model, batch), rtol=0, atol=0)


def test_attention_scores_are_not_captured():
    """ScoreCapture (attention distillation) hooks Q and K outputs; ModernBERT's scores need the
    rotary rotation too, and its split parts do not run their own forward: nothing is captured,
    every layer reports None (sparsebert lists them as skipped) instead of wrong scores."""
    from passes._distill import ScoreCapture
    model = make_model(layers=2)
    batch = batches(make_tokenizer())[0]
    with ScoreCapture(model) as cap:
        logits(model, batch)
        assert cap.scores(batch["attention_mask"]) == [None, None]


@pytest.fixture(scope="module", params=[False, True], ids=["no-bias", "bias"])
def stripped(request, tmp_path_factory):
    """A masked model (uneven heads and neurons, layer 1 no heads, layer 2 no FFN) and its strip."""
    tmp = tmp_path_factory.mktemp("strip")
    dense = case(bias=request.param)
    kept = mask_structured(dense.model, HEADS, FFN_KEPT, FFN, seed=3)
    assert kept == KEPT
    out, ctx = strip_matches_masked(dense, KEPT, batches(dense.tokenizer), tmp)  # two shapes, 1e-5
    return dense, out, ctx


def test_strip_matches_the_masked_model(stripped):
    dense, out, _ = stripped
    model = out.model
    assert model.config.compressor_layers == [{"heads": h, "ffn": f} for h, f in KEPT]
    layers = model.model.layers
    assert isinstance(layers[1].attn, NoHeads) and isinstance(layers[2].mlp, NoFFN)
    att = layers[0].attn
    assert tuple(att.Wqkv.value.weight.shape) == (24, 32) and att.Wqkv.out_features == 72
    assert tuple(att.Wo.weight.shape) == (32, 24) and att.head_dim == 8
    assert tuple(layers[3].mlp.Wi.input.weight.shape) == tuple(layers[3].mlp.Wi.gate.weight.shape) == (20, 32)
    assert tuple(layers[3].mlp.Wo.weight.shape) == (32, 20)
    # the kept neurons' gate rows are the dense model's rows of the same neurons
    wi_dense = dense.model.model.layers[3].mlp.Wi
    kept = (wi_dense.input.weight != 0).any(1).nonzero().flatten()
    torch.testing.assert_close(layers[3].mlp.Wi.gate.weight, wi_dense.gate.weight[kept], rtol=0, atol=0)
    assert family_of(model).encoder_flops(16) < family_of(dense.model).encoder_flops(16)


def test_stripped_folder_reloads_and_attention_paths_agree(stripped):
    from compressor.models import load_model
    from passes.strip import load_stripped
    _, out, ctx = stripped
    loaded = load_model(str(ctx.step_dir))  # through compressor_layers -> load_stripped
    assert "token_type_ids" not in loaded.tokenizer("a film")
    for batch in batches(out.tokenizer):
        torch.testing.assert_close(logits(loaded.model, batch), logits(out.model, batch), rtol=1e-5, atol=1e-5)
        sdpa = load_stripped(ctx.step_dir, attn_implementation="sdpa")  # the CPU default path
        torch.testing.assert_close(logits(sdpa.model, batch), logits(out.model, batch), rtol=1e-5, atol=1e-5)


def test_export_verifies_fuses_what_ort_can_and_quantizes(stripped, tmp_path):
    from passes.embed_quant import EmbedInt8
    from passes.export_onnx import Export
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize
    _, out, ctx = stripped
    ctx.step_dir = tmp_path / "export"
    exported = Export()(out, ctx)
    m = exported.metrics
    assert m["inputs"] == ["input_ids", "attention_mask"] and m["max_abs_diff"] <= 1e-4
    import onnx
    graph = onnx.load(str(exported.artifact.path)).graph
    wqkv = [n for n in graph.node if n.op_type == "MatMul" and "Wqkv" in n.name]
    assert len(wqkv) == 3  # one MatMul per layer with heads: the split weights fold back into one
    ctx.step_dir = tmp_path / "fuse"
    fused = OrtFuse(strict=False)(exported.artifact, ctx).metrics
    assert fused["max_abs_diff"] <= 1e-4 and "Attention" not in fused["fused_ops"]
    assert fused["fused_ops"].get("SkipLayerNormalization", 0) > 0 and fused["fused_ops"].get("Gelu", 0) > 0
    assert set(fused["not_fused"]) == {"attention", "embeddings"} and fused["problems"] == []
    task = make_toy_task(n_train=16, n_eval=16)
    q = Quantize(mode="dynamic")(exported.artifact, RunContext(tmp_path / "int8", data=task)).metrics
    assert q["quant_ops"].get("MatMulInteger", 0) > 0 and q["size_bytes"] < q["size_bytes_before"]
    assert q["max_abs_diff"] <= INT8_LOGIT_TOL and q["accuracy_onnx"] is not None
    emb = EmbedInt8()(exported.artifact, RunContext(tmp_path / "emb", data=task)).metrics
    assert emb["tables"] == ["model.model.embeddings.tok_embeddings.weight"] and emb["max_abs_diff"] <= 0.05
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError:
        return
    ort_model = ORTModelForSequenceClassification.from_pretrained(str(exported.artifact.folder))
    batch = batches(out.tokenizer)[0]
    torch.testing.assert_close(torch.as_tensor(ort_model(**batch).logits), logits(out.model, batch), atol=1e-4, rtol=0)


def test_trim_positions_is_refused(tmp_path):
    from passes.trim_positions import TrimPositions
    with pytest.raises(ModelError, match="no absolute position embeddings table"):
        TrimPositions(max_positions=32)(case(layers=2), RunContext(tmp_path))


def test_fisher_layer_pieces_reproduce_the_forward():
    """Fisher's mask tuning runs each layer piecewise (its attention up to ``Wo``, then the
    family's blocks): that must be the model's own forward on both global and sliding-window
    layers (their masks and rotary differ)."""
    from compressor.evaluation import make_loader
    from passes.fisher.masks import UnitMasks
    from passes.fisher.tune import _Inputs
    tok = make_tokenizer()
    model = make_model(tok)
    masks = UnitMasks(model)
    try:
        long = [e.__class__(e.text + " " + e.text, e.label) for e in make_toy_task(n_train=4, n_eval=0).train]
        loader = make_loader(tok, long, 64, 4)
        data = _Inputs(model, masks, loader)
        batch = data.batches[0]
        with torch.no_grad():
            out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True)
            fam, h = masks.family, data.hidden[0]
            assert h.shape[1] > 9  # longer than the window: sliding layers differ from global ones
            for i, layer in enumerate(masks.layers):
                ctx, res = data.attention_inputs(i, 0, h)
                a = fam.block_norm(layer, "attn", fam.block_pre_norm(layer, "attn", ctx, res))
                h = fam.block_norm(layer, "ffn", fam.block_pre_norm(layer, "ffn", fam.ffn_hidden(layer)(a), a))
                if i < len(masks.layers) - 1:  # 5.x gives the last one after final_norm
                    torch.testing.assert_close(h, out.hidden_states[i + 1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.model.final_norm(h), out.last_hidden_state, rtol=1e-5, atol=1e-5)
    finally:
        masks.remove()


def test_latency_table_variants_build_and_export(tmp_path):
    """fisher's latency table times variants of the model's config, a layer-less one included
    (ModernBERT's weight init divides by the layer count: built with one layer, then without)."""
    import onnx

    from passes.fisher.latency_table import _export_variant
    config = make_model(layers=2).config
    for name, layers, sizes in (("empty", 0, None), ("zero", 2, {"heads": 0, "ffn": 0}),
                                ("att1", 2, {"heads": 1, "ffn": 0}), ("some", 2, [{"heads": 2, "ffn": 16}] * 2)):
        graph = onnx.load(str(_export_variant(config, tmp_path / name, 300, layers, sizes))).graph
        qkv = [n for n in graph.node if n.op_type == "MatMul" and "Wqkv" in n.name]
        assert len(qkv) == (0 if name in ("empty", "zero") else 2), name
        assert any(n.op_type == "Gemm" for n in graph.node)  # the classifier head


def test_fisher_prunes_to_the_flops_budget_and_reloads(tmp_path):
    from compressor.evaluation import predict_logits
    from passes.fisher.prune import Fisher
    from passes.strip import load_stripped
    task = make_toy_task(n_train=32, n_eval=16)
    art = case(seed=2)
    res = Fisher(flops=0.5, samples=32, batch_size=16)(art, RunContext(tmp_path, data=task))
    m = res.metrics
    assert m["kept_mac_fraction"] <= 0.5 and m["max_abs_diff_masked_vs_stripped"] <= 1e-5
    tuned = [r for r in m["mask_tuning"] if r["status"] == "tuned"]
    assert tuned and all(r["error_after"] <= r["error_before"] for r in tuned)
    reloaded = load_stripped(tmp_path)
    torch.testing.assert_close(predict_logits(reloaded.model, art.tokenizer, task.eval, 32),
                               predict_logits(res.artifact.model, art.tokenizer, task.eval, 32), rtol=0, atol=1e-5)


def test_structured_magnitude_strip_export_pipeline(tmp_path):
    from compressor.pipeline import Pipeline
    task = make_toy_task(n_train=32, n_eval=16)
    res = Pipeline("magnitude{granularity=structured,scope=global,sparsity=0.5,epochs=1,batch_size=16,"
                   "max_length=16,lr=0.003},strip,export").run(case(pooling="mean"),
                                                              RunContext(tmp_path, data=task, progress=False))
    strip, export = res.records[1].metrics, res.records[2].metrics
    assert sum(strip["heads_kept"]) == 8 and strip["params_after"] < strip["params_before"]
    assert export["max_abs_diff"] <= 1e-4 and export["inputs"] == ["input_ids", "attention_mask"]


def test_cap_unit_gates_are_the_heads_and_neurons():
    """A zero gate equals removing the unit (pre-hooks on attn.Wo / mlp.Wo gate the context and the
    hidden units ``act(input) * gate``); the gates' gradients flow."""
    from passes.cap.prune import UnitGates
    model = make_model(layers=2)
    batch = batches(make_tokenizer())[0]
    with UnitGates(model) as gates:
        gates.heads = gates.heads.detach().clone()
        gates.heads[1, 2] = 0
        gates.neurons = gates.neurons.detach().clone()
        gates.neurons[0, 3] = 0
        gated = logits(model, batch)
    with torch.no_grad():
        layers = model.model.layers
        layers[1].attn.Wo.weight[:, 16:24] = 0
        layers[0].mlp.Wo.weight[:, 3] = 0
    torch.testing.assert_close(logits(model, batch), gated, atol=1e-6, rtol=0)
    with UnitGates(model) as gates:
        model(**batch).logits.sum().backward()
        assert gates.heads.grad.abs().sum() > 0 and gates.neurons.grad.abs().sum() > 0


def test_cap_structured_run_zeroes_whole_units(tmp_path):
    from passes.cap.cap import Cap
    task = make_toy_task(n_train=32, n_eval=16)
    student, teacher = case(layers=2), case(layers=2, seed=1)
    res = Cap(sparsity=0.5, granularity="structured", stages=1, epochs=1, batch_size=16, max_snapshots=2)(
        student, RunContext(workdir=tmp_path, data=task, teacher=teacher, progress=False))
    m = res.metrics
    assert sum(m["heads_kept"]) == 4
    for layer, heads in zip(res.artifact.model.model.layers, m["heads_kept"]):
        qkv = layer.attn.Wqkv
        zero = [(p.weight.reshape(4, 8, -1) == 0).flatten(1).all(1) for p in (qkv.query, qkv.key, qkv.value)]
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2]) and int((~zero[2]).sum()) == heads
        assert torch.equal((layer.attn.Wo.weight.reshape(32, 4, 8) == 0).all(2).all(0), zero[2])
        assert torch.equal((layer.mlp.Wi.input.weight == 0).all(1), (layer.mlp.Wo.weight == 0).all(0))


def test_layer_drop_keeps_the_attention_types_and_reloads(stripped, tmp_path):
    from compressor.models import load_model
    from passes.layer_drop import LayerDrop
    _, out, _ = stripped
    ctx = RunContext(tmp_path / "a")
    res = LayerDrop(keep=2, which="0,3")(out, ctx)  # global + sliding: every 2nd layer global
    model = res.artifact.model
    assert res.metrics["layers_after"] == 2 and model.config.num_hidden_layers == 2
    assert model.config.compressor_layers == [{"heads": h, "ffn": f} for h, f in (KEPT[0], KEPT[3])]
    reloaded = load_model(str(ctx.out_dir()))
    for batch in batches(out.tokenizer):
        torch.testing.assert_close(logits(reloaded.model, batch), logits(model, batch), rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="must keep layer 0"):
        LayerDrop(which="last")(out, RunContext(tmp_path / "b"))
    three = LayerDrop(which="0,2,3")  # global, global, sliding: no every-n pattern
    if TRANSFORMERS_MAJOR >= 5:
        model = three(out, RunContext(tmp_path / "c")).artifact.model
        assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    else:
        with pytest.raises(ModelError, match="no global_attn_every_n_layers pattern"):
            three(out, RunContext(tmp_path / "c"))


def test_vocab_prune_keeps_the_ids_it_should(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compressor.evaluation import predict_logits
    from passes.vocab.prune import VocabPrune
    art = case(layers=2)
    tok = art.tokenizer
    task = make_toy_task(n_train=48, n_eval=16, seed=4)
    res = VocabPrune()(art, RunContext(tmp_path, data=task))
    m, new_tok, model = res.metrics, res.artifact.tokenizer, res.artifact.model
    assert m["tokenizer_kind"] == "BPE" and m["vocab_after"] == len(new_tok) < m["vocab_before"] == len(tok)
    assert m["train_texts_with_dropped"] == 0 and m["kept_by"]["byte_alphabet"] > 0
    remap = {tok.convert_tokens_to_ids(t): i for t, i in new_tok.get_vocab().items()}
    for name in ("pad", "cls", "sep"):  # the specials (ModernBERT's, at the end) and the config's ids
        old_id = getattr(tok, f"{name}_token_id")
        assert getattr(new_tok, f"{name}_token_id") == remap[old_id] == getattr(model.config, f"{name}_token_id")
    assert model.config.bos_token_id == remap[tok.cls_token_id] and model.config.vocab_size == len(new_tok)
    assert max(remap.values()) == len(new_tok) - 1 and remap[tok.mask_token_id] < len(new_tok)
    sents = [e.text for e in task.train]
    assert new_tok(sents)["input_ids"] == [[remap[i] for i in ids] for ids in tok(sents)["input_ids"]]
    want = predict_logits(art.model, tok, task.train, 64)
    torch.testing.assert_close(predict_logits(model, new_tok, task.train, 64), want, atol=1e-6, rtol=0)
    folder = tmp_path / "model"
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    reloaded_tok = AutoTokenizer.from_pretrained(folder)
    torch.testing.assert_close(predict_logits(reloaded, reloaded_tok, task.train, 64), want, atol=1e-6, rtol=0)
