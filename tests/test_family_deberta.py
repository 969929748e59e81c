"""The DeBERTa-v2/v3 family (passes/families/deberta.py) through the passes: roles, the position
projections sliced with their heads, FLOPs, strip after uneven structured masks (a layer emptied
of heads, one of FFN neurons) equal to the masked model at two shapes, the stripped folder
reloaded, export verified, ORT fusion reported honestly, dynamic INT8, trim-positions (refused
without a position table), fisher, a structured magnitude pipeline, vocab-prune on a Unigram
vocabulary and layer-drop.

Tiny random DebertaV2ForSequenceClassification (hidden 32, 4 heads, FFN 64, eager, no dropout)
in two shapes: "v3" as deberta-v3 / mDeBERTa-v3 (``share_att_key``, c2p|p2c, 16 log position
buckets, no absolute positions, no token types) and "unshared" (``pos_key_proj`` /
``pos_query_proj``, linear relative positions, absolute positions, two token types and the
first-layer convolution of deberta-v2-xlarge); a DeBERTa-v3 style SentencePiece Unigram
tokenizer ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] last) trained here with ``tokenizers``."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from compressor import registry  # noqa: E402
from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.errors import ModelError  # noqa: E402
from conftest import (INT8_LOGIT_TOL, logits, make_toy_task, mask_structured, randomize_linears,  # noqa: E402
                      strip_matches_masked)
from passes.families import family_of  # noqa: E402
from passes.families.base import ROLES, BiasOnly  # noqa: E402
from passes.families.bert import NoFFN, NoHeads  # noqa: E402
from passes.families.deberta import DebertaV2Family  # noqa: E402
from test_family_roberta import texts  # noqa: E402
from test_vocab_kinds import corpus  # noqa: E402

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]  # ids 0..3 as in deberta-v3; [MASK] is added last
MAX_TOKENS = 64
VARIANTS = {
    "v3": dict(share_att_key=True, position_buckets=16, position_biased_input=False, type_vocab_size=0,
               norm_rel_ebd="layer_norm"),
    "unshared": dict(share_att_key=False, position_buckets=-1, position_biased_input=True, type_vocab_size=2,
                     norm_rel_ebd="none", conv_kernel_size=3),
}


@functools.lru_cache(maxsize=None)
def make_tokenizer():
    """A Unigram tokenizer (Metaspace pieces, as SentencePiece's) trained on the vocab-kinds corpus
    (the toy task's words and film words it never uses), with DeBERTa-v3's special tokens and
    ``[CLS] A [SEP] B [SEP]`` (token types 0 / 1), in transformers' DeBERTa-v2 class."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(corpus()[1], trainers.UnigramTrainer(
        vocab_size=600, special_tokens=SPECIALS, unk_token="[UNK]", show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    cls = getattr(transformers, "DebertaV2TokenizerFast", None) or transformers.DebertaV2Tokenizer
    tok = cls(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]",
              cls_token="[CLS]", unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
              model_max_length=MAX_TOKENS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS + ["[MASK]"]] == [0, 1, 2, 3, len(tok) - 1]
    return tok


def make_model(tokenizer, variant="v3", layers=3, seed=0, hidden=32):
    """A seeded tiny DebertaV2ForSequenceClassification of ``variant`` (eager, no dropout) with
    unit-scale Linear weights (so that every removed unit would change the output)."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
    torch.manual_seed(seed)
    cfg = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=MAX_TOKENS,
                          relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                          pad_token_id=0, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          pooler_dropout=0.0, **VARIANTS[variant])
    cfg._attn_implementation = "eager"
    return randomize_linears(DebertaV2ForSequenceClassification(cfg).eval(), seed)


def case(variant="v3", layers=3, seed=0, hidden=32) -> TorchModel:
    tok = make_tokenizer()
    return TorchModel(make_model(tok, variant, layers, seed, hidden), tok, {"source": f"tiny-deberta-{variant}"})


def batches(tokenizer):
    """Two shapes: three texts padded to the longest, two text pairs padded to 40 tokens."""
    sents = texts(20, seed=5)
    return [dict(tokenizer(sents[:3], padding="longest", return_tensors="pt")),
            dict(tokenizer(sents[3:5], sents[5:7], padding="max_length", max_length=40, return_tensors="pt"))]


def test_family_is_listed_with_its_roles_tokenizer_and_ort_state():
    assert registry.family("deberta-v2") is DebertaV2Family and DebertaV2Family.tokenizer_kind == "unigram"
    assert not DebertaV2Family.ort_fuses_attention and not DebertaV2Family.ort_fuses_embeddings
    model = case("unshared", layers=2).model
    fam = family_of(model)
    assert isinstance(fam, DebertaV2Family) and fam.num_heads() == 4 and fam.hidden_size() == 32
    roles = fam.linear_roles()  # the six roles in model order; pos_*_proj are not roles
    assert list(roles) == [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                           and ".encoder.layer." in n and ".pos_" not in n]
    assert [r for _, r in roles.values()] == list(ROLES) * 2
    assert set(fam.linears(include=("pooler", "classifier"))) - set(roles) == {"pooler.dense", "classifier"}
    assert fam.token_types and fam.position_table() is not None and fam.max_tokens() == MAX_TOKENS
    v3 = family_of(case("v3", layers=1).model)
    assert not v3.token_types and v3.position_table() is None and v3.max_tokens() == MAX_TOKENS


def test_load_model_accepts_a_saved_folder(tmp_path, monkeypatch):
    from compressor.models import check_family, load_model
    art = case("v3", layers=2)
    art.model.save_pretrained(tmp_path / "m")
    art.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert isinstance(family_of(loaded.model), DebertaV2Family)
    batch = batches(loaded.tokenizer)[1]
    assert batch["token_type_ids"].amax(1).tolist() == [1, 1]  # pairs: B's tokens have type 1
    torch.testing.assert_close(logits(loaded.model, batch), logits(art.model, batch), rtol=0, atol=1e-6)
    monkeypatch.delitem(registry.FAMILIES, "deberta-v2")  # as before this family's line
    with pytest.raises(ModelError, match="unsupported architecture 'deberta-v2'"):
        check_family(str(tmp_path / "m"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keep_heads_slices_the_position_projections_and_flops_follow(variant):
    model = case(variant, layers=2).model
    fam = family_of(model)
    first, second = fam.layers()
    sa = first.attention.self
    old = {n: getattr(sa, n).weight.detach().clone() for n in ("query_proj", "pos_key_proj", "pos_query_proj")
           if hasattr(sa, n)}
    assert ("pos_key_proj" in old) == (variant == "unshared")
    rows = 2 * (16 if variant == "v3" else MAX_TOKENS)  # relative position rows (2k)
    dense = fam.encoder_flops(16)
    fam.keep_heads(first, [1, 3])
    fam.keep_ffn(first, list(range(10)))
    fam.keep_heads(second, [])
    fam.keep_ffn(second, [])
    assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (2, 8, 16)
    for name, weight in old.items():  # the same rows (heads 1 and 3) of every per-head projection
        torch.testing.assert_close(getattr(sa, name).weight, torch.cat([weight[8:16], weight[24:32]]), rtol=0, atol=0)
    assert fam.layer_sizes(first) == (2, 10) and fam.layer_sizes(second) == (0, 0)
    assert isinstance(second.attention.self, NoHeads) and isinstance(second.intermediate, NoFFN)
    assert isinstance(fam.linear(second, "attn_out"), BiasOnly) and len(fam.linear_roles()) == 6
    assert not any(".layer.1.attention.self." in k for k in model.state_dict())
    s, w = 16, 16  # seq, kept heads * head size
    linear = 2 * s * (3 * 32 * w + w * 32 + 2 * 32 * 10)  # the role Linears (not pos_*_proj)
    assert fam.encoder_flops(s) == linear + 4 * s * s * w + 2 * 2 * s * rows * w < dense  # + c2p and p2c
    batch = batches(make_tokenizer())[0]
    assert torch.isfinite(logits(model, batch)).all()


@pytest.fixture(scope="module", params=list(VARIANTS))
def stripped(request, tmp_path_factory):
    """A dense model of the variant, masked unevenly (layer 1 keeps no heads, layer 2 no FFN),
    with head 3 of layer 0 left without value weights (its b_v folded) and one kept neuron of
    layer 0 without input weights (act(b_1) folded), stripped: ``(variant, dense, stripped, ctx,
    kept, folder)`` (``folder``: the saved stripped model; the tests move ``ctx.step_dir`` on)."""
    dense = case(request.param)
    mask_structured(dense.model, [[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], (40, 10, 0), 64)
    layer0 = dense.model.deberta.encoder.layer[0]
    with torch.no_grad():
        layer0.attention.self.value_proj.weight[24:32] = 0
        first_kept = int((layer0.intermediate.dense.weight != 0).any(1).nonzero()[0])
        layer0.intermediate.dense.weight[first_kept] = 0
    kept = [(2, 39), (0, 10), (1, 0)]
    out, ctx = strip_matches_masked(dense, kept, batches(dense.tokenizer), tmp_path_factory.mktemp("strip"))
    return request.param, dense, out, ctx, kept, ctx.step_dir


def test_strip_matches_the_masked_model_and_reloads(stripped):
    from compressor.models import load_model
    variant, dense, out, _, kept, folder = stripped  # strip_matches_masked checked two shapes to 1e-5
    layers = out.model.deberta.encoder.layer
    sa = layers[0].attention.self
    assert (sa.num_attention_heads, sa.all_head_size) == (2, 16) and sa.query_proj.out_features == 16
    if variant == "unshared":
        assert sa.pos_key_proj.out_features == sa.pos_query_proj.out_features == 16
    else:
        assert not hasattr(sa, "pos_key_proj") and not hasattr(sa, "pos_query_proj")
    assert isinstance(layers[1].attention.self, NoHeads) and isinstance(layers[2].intermediate, NoFFN)
    assert out.model.config.compressor_layers == [{"heads": h, "ffn": f} for h, f in kept]
    reloaded = load_model(str(folder))  # through compressor_layers -> load_stripped
    assert isinstance(reloaded.model.deberta.encoder.layer[1].attention.self, NoHeads)
    for batch in batches(dense.tokenizer):
        torch.testing.assert_close(logits(reloaded.model, batch), logits(dense.model, batch), rtol=1e-5, atol=1e-5)


def test_export_verifies_fusion_is_reported_and_int8_runs(stripped, tmp_path):
    from compressor.onnx_utils import load_checked
    from passes import _onnx_graph as og
    from passes.export_onnx import Export
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize
    variant, _, out, ctx, _, _ = stripped
    ctx.step_dir = tmp_path / "export"
    exported = Export()(out, ctx)
    types = ["token_type_ids"] if variant == "unshared" else []  # v3 has no token type table
    assert exported.metrics["inputs"] == ["input_ids", "attention_mask"] + types
    assert exported.metrics["max_abs_diff"] <= 1e-4 and "2x48" in exported.metrics["max_abs_diff_by_shape"]
    assert "If" not in og.op_counts(load_checked(exported.artifact.path).graph)  # 4.57's scripted build_rpos

    ctx.step_dir = tmp_path / "fuse"
    fused = OrtFuse()(exported.artifact, ctx).metrics  # strict: passes because the gaps are declared
    assert fused["not_fused"] == ["attention", "embeddings"] and fused["attention_per_layer"] == [0, 0, 0]
    assert "Attention" not in fused["fused_ops"] and "MultiHeadAttention" not in fused["fused_ops"]
    assert fused["skip_layernorm_per_layer"] == [2, 2, 2] and fused["gelu_per_layer"] == [1, 1, 0]
    assert fused["problems"] == [] and fused["max_abs_diff"] <= 1e-4

    ctx.step_dir = tmp_path / "int8"
    int8 = Quantize()(exported.artifact, ctx)
    assert int8.metrics["quant_ops"].get("MatMulInteger", 0) > 0 and int8.metrics["max_abs_diff"] <= INT8_LOGIT_TOL
    load_checked(int8.artifact.path)  # what the report and the profiler load
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification
    except ImportError:
        return
    ort_model = ORTModelForSequenceClassification.from_pretrained(str(exported.artifact.folder))
    batch = batches(out.tokenizer)[1]
    feeds = {k: v for k, v in batch.items() if k in exported.metrics["inputs"]}
    torch.testing.assert_close(torch.as_tensor(ort_model(**feeds).logits), logits(out.model, batch), atol=1e-4, rtol=0)


def test_layer_drop_of_a_stripped_model_reloads(stripped, tmp_path):
    from compressor.models import load_model
    from passes.layer_drop import LayerDrop
    _, _, out, _, kept, _ = stripped
    ctx = RunContext(tmp_path)
    res = LayerDrop(keep=2, which="0,2")(out, ctx)
    model = res.artifact.model
    assert res.metrics["layers_after"] == 2 and model.config.num_hidden_layers == 2
    assert model.config.compressor_layers == [{"heads": h, "ffn": f} for h, f in (kept[0], kept[2])]
    reloaded = load_model(str(ctx.out_dir()))
    for batch in batches(out.tokenizer):
        torch.testing.assert_close(logits(reloaded.model, batch), logits(model, batch), rtol=1e-5, atol=1e-5)


def test_trim_positions_refuses_v3_and_trims_a_position_table(tmp_path):
    from compressor.models import load_model
    from compressor.pipeline import Pipeline
    from passes.trim_positions import TrimPositions
    ctx = RunContext(tmp_path / "refused", data=make_toy_task(n_train=16, n_eval=16), max_length=32)
    with pytest.raises(ModelError, match="no absolute position embeddings"):
        TrimPositions(max_positions=32)(case("v3", layers=2), ctx)
    dense = case("unshared", layers=2)
    res = Pipeline("trim-positions{max_positions=32},export,embed-int8").run(
        dense, RunContext(tmp_path / "run", data=make_toy_task(n_train=16, n_eval=16), progress=False, max_length=32))
    trim, export, emb = (r.metrics for r in res.records)
    assert trim["position_params_removed"] == (MAX_TOKENS - 32) * 32 and export["max_abs_diff"] <= 1e-4
    assert emb["size_bytes"] < export["size_bytes"] and emb["max_abs_diff"] <= 0.05  # logits O(1-3)
    folder = tmp_path / "run" / "01-trim-positions" / "model"
    reloaded = load_model(str(folder))  # the relative positions still span 64 (pinned in config.json)
    assert reloaded.model.config.max_position_embeddings == 32
    assert reloaded.model.config.max_relative_positions == MAX_TOKENS
    batch = dict(make_tokenizer()(texts(4, seed=3), padding=True, truncation=True, max_length=32, return_tensors="pt"))
    torch.testing.assert_close(logits(reloaded.model, batch), logits(dense.model, batch), rtol=0, atol=1e-6)


def test_fisher_and_magnitude_pipeline(tmp_path):
    from compressor import Pipeline
    from compressor.evaluation import predict_logits
    from passes.fisher.prune import Fisher
    from passes.strip import load_stripped
    task = make_toy_task(n_train=32, n_eval=16)
    dense = case("v3", seed=2)
    res = Fisher(flops=0.5, samples=32, batch_size=16)(dense, RunContext(tmp_path / "fisher", data=task))
    m = res.metrics
    assert m["kept_mac_fraction"] <= 0.5 and m["max_abs_diff_masked_vs_stripped"] <= 1e-5
    assert m["encoder_flops_reduction"] > 0
    reloaded = load_stripped(tmp_path / "fisher")
    torch.testing.assert_close(predict_logits(reloaded.model, dense.tokenizer, task.eval, 32),
                               predict_logits(res.artifact.model, dense.tokenizer, task.eval, 32), rtol=0, atol=1e-5)
    out = Pipeline("magnitude{granularity=structured,sparsity=0.5,schedule=oneshot,epochs=0},strip,export").run(
        case("unshared", seed=1), RunContext(tmp_path / "pipe", data=task, max_length=32))
    assert [r.name for r in out.records] == ["magnitude", "strip", "export"]
    assert out.records[1].metrics["heads_removed"] + out.records[1].metrics["ffn_removed"] > 0
    assert out.records[2].metrics["max_abs_diff"] <= 1e-4 and out.artifact.path.is_file()


def test_score_capture_and_a_structured_sparsebert_run(tmp_path):
    """sparsebert's attention distillation reads Q K^T / sqrt(d) from the query/key outputs: with
    ``share_att_key`` those Linears run again on the relative positions, which must not count."""
    import math

    from passes._distill import ScoreCapture
    from passes.sparsebert.sparsebert import SparseBert
    from passes.strip import Strip
    model = case("v3").model
    batch = batches(make_tokenizer())[0]
    with ScoreCapture(model) as cap, torch.no_grad():
        model(**batch)
        scores = cap.scores()
        sa = model.deberta.encoder.layer[0].attention.self
        x = model.deberta.embeddings(input_ids=batch["input_ids"], mask=batch["attention_mask"])
        q, k = (p(x).unflatten(-1, (4, 8)).transpose(1, 2) for p in (sa.query_proj, sa.key_proj))
    assert [tuple(s.shape) for s in scores] == [(3, 4, x.shape[1], x.shape[1])] * 3
    torch.testing.assert_close(scores[0], q @ k.transpose(-1, -2) / math.sqrt(8), rtol=0, atol=1e-5)
    ctx = RunContext(workdir=tmp_path / "sb", data=make_toy_task(n_train=32, n_eval=16), teacher=case("v3", seed=1),
                     progress=False, max_length=32)
    res = SparseBert(sparsity=0.5, granularity="structured", epochs=1, batch_size=8)(case("v3"), ctx)
    assert abs(res.metrics["sparsity"] - 0.5) <= 0.005 and res.metrics["loss_terms_mean"]["attn"] > 0
    ctx.step_dir = tmp_path / "strip"
    strip = Strip()(res.artifact, ctx).metrics
    assert strip["heads_removed"] > 0 and strip["ffn_removed"] > 0


def test_vocab_prune_keeps_the_ids_it_should(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compressor.evaluation import predict_logits
    from passes.vocab.prune import VocabPrune
    task = make_toy_task(n_train=48, n_eval=16, seed=3)
    dense = case("v3", layers=2)
    old = dense.tokenizer
    ctx = RunContext(tmp_path / "run", data=task)
    res = VocabPrune()(dense, ctx)
    m, new = res.metrics, res.artifact.tokenizer
    assert m["tokenizer_kind"] == "Unigram" and m["train_texts_with_dropped"] == 0
    assert m["vocab_after"] == len(new) < m["vocab_before"] == len(old)
    remap = {old.convert_tokens_to_ids(t): i for t, i in new.get_vocab().items()}
    assert [remap[i] for i in range(4)] == [0, 1, 2, 3]  # [PAD] [CLS] [SEP] [UNK] keep their ids
    assert remap[old.mask_token_id] == len(new) - 1 == new.mask_token_id  # [MASK] stays last
    used = {i for e in task.train for i in old(e.text)["input_ids"]}
    assert used <= set(remap) and len(remap) == len(new)
    unused = ["▁camera", "▁soundtrack", "▁critics"]  # words only the other texts use
    assert all(t in old.get_vocab() and t not in new.get_vocab() for t in unused)
    model = res.artifact.model
    assert model.config.pad_token_id == 0 == model.deberta.embeddings.word_embeddings.padding_idx
    want = predict_logits(dense.model, old, task.train, 64)
    torch.testing.assert_close(predict_logits(model, new, task.train, 64), want, rtol=0, atol=1e-6)
    folder = ctx.workdir / "model"
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    texts_ = [e.text for e in task.train]
    assert tok(texts_)["input_ids"] == [[remap[i] for i in ids] for ids in old(texts_)["input_ids"]]
    torch.testing.assert_close(predict_logits(reloaded, tok, task.train, 64), want, rtol=0, atol=1e-6)
