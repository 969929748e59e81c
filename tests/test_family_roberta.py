"""RoBERTa, XLM-R and CamemBERT through the passes: tiny random models from configs and real
tokenizers of their kinds trained here (byte-level BPE, SentencePiece Unigram) with ``tokenizers``.

Per family: strip after structured masks (uneven heads and FFN, a layer with no heads, one with no
FFN) equals the masked model at two shapes, the stripped folder reloads through ``load_model``,
export verifies, INT8 runs, trim-positions keeps ``count + padding_idx + 1`` rows, fisher and a
magnitude pipeline run, ``load_model`` accepts a saved folder (refused without the family line)."""

from __future__ import annotations

import functools
import random

import pytest

torch = pytest.importorskip("torch")

from compressor import registry  # noqa: E402
from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from compressor.errors import DataError, ModelError  # noqa: E402
from conftest import (INT8_LOGIT_TOL, logits, make_toy_task, mask_structured, randomize_linears,  # noqa: E402
                      strip_matches_masked)
from passes.families import family_of  # noqa: E402

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa and XLM-R
EXTRA = ("the film was a plot actors story ending movie scene music camera director script long short "
         "funny sad quiet loud dark bright slow fast every minute hour night city house friend family "
         "river road train ticket seat screen sound light color voice dialogue character hero twist").split()
MAX_TOKENS = 64
FAMILIES = {"roberta": "bpe", "xlm-roberta": "unigram", "camembert": "unigram"}


def texts(n=200, seed=0, words=EXTRA, longest=9) -> list[str]:
    """~``n`` short sentences: the toy task's and some of 4-``longest`` ``words`` (a wider vocabulary)."""
    rng = random.Random(seed)
    toy = make_toy_task(n_train=n // 2, n_eval=0, seed=seed).train
    return [e.text for e in toy] + [" ".join(rng.choice(words) for _ in range(rng.randint(4, longest)))
                                    for _ in range(n - len(toy))]


@functools.lru_cache(maxsize=None)
def make_tokenizer(kind: str):
    """A byte-level BPE (RobertaTokenizerFast) or Unigram (XLMRobertaTokenizerFast) tokenizer
    trained on :func:`texts`, with ``<s> X </s>`` / ``<s> A </s></s> B </s>`` post-processing."""
    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, processors
    from transformers import RobertaTokenizerFast, XLMRobertaTokenizerFast
    if kind == "bpe":
        impl = ByteLevelBPETokenizer()
        impl.train_from_iterator(texts(), vocab_size=500, min_frequency=2, special_tokens=SPECIALS,
                                 show_progress=False)
        cls = RobertaTokenizerFast
    else:
        impl = SentencePieceUnigramTokenizer()
        impl.train_from_iterator(texts(), vocab_size=200, special_tokens=SPECIALS, unk_token="<unk>",
                                 show_progress=False)
        cls = XLMRobertaTokenizerFast
    backend = impl._tokenizer
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = cls(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
              cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
              model_max_length=MAX_TOKENS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    return tok


def make_model(model_type: str, tokenizer, layers=3, seed=0):
    """A seeded tiny ``<family>ForSequenceClassification`` (eager, no dropout) with unit-scale
    Linear weights (so that every removed unit would change the output)."""
    import transformers
    names = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"}
    config_cls = getattr(transformers, f"{names[model_type]}Config")
    model_cls = getattr(transformers, f"{names[model_type]}ForSequenceClassification")
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=MAX_TOKENS + 2, type_vocab_size=1,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).eval()
    return randomize_linears(model, seed)


def case(model_type: str, layers=3, seed=0) -> TorchModel:
    tok = make_tokenizer(FAMILIES[model_type])
    return TorchModel(make_model(model_type, tok, layers, seed), tok, {"source": f"tiny-{model_type}"})


def _mask(model, seed=0):
    """Uneven heads / FFN neurons per layer (layer 1 keeps no heads, layer 2 no FFN), baked in."""
    return mask_structured(model, [[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], (40, 10, 0), 64, seed)


def batches(tokenizer):
    """Two shapes: three eval texts padded to the longest, two padded to 40 tokens."""
    sents = texts(20, seed=5)
    return [dict(tokenizer(sents[:3], padding="longest", return_tensors="pt")),
            dict(tokenizer([s + " " + s for s in sents[3:5]], padding="max_length", max_length=40,
                           return_tensors="pt"))]


def test_families_are_listed_with_their_tokenizers_and_positions():
    from passes.families.roberta import CamembertFamily, RobertaFamily, XLMRobertaFamily
    assert [registry.family(t) for t in FAMILIES] == [RobertaFamily, XLMRobertaFamily, CamembertFamily]
    assert [registry.family(t).tokenizer_kind for t in FAMILIES] == list(FAMILIES.values())
    fam = family_of(case("roberta").model)
    assert fam.position_offset(fam.model.config) == 2 and fam.max_tokens() == MAX_TOKENS
    assert fam.hidden_size() == 32 and not fam.token_types and not fam.ort_fuses_embeddings
    assert set(fam.linears(include=("pooler", "classifier"))) - set(fam.linear_roles()) == \
        {"classifier.dense", "classifier.out_proj"}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_load_model_accepts_a_saved_folder(model_type, tmp_path, monkeypatch):
    from compressor.models import check_family, load_model
    art = case(model_type, layers=2)
    art.model.save_pretrained(tmp_path / "m")
    art.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert type(family_of(loaded.model)).model_types == (model_type,)
    batch = batches(loaded.tokenizer)[0]
    torch.testing.assert_close(logits(loaded.model, batch), logits(art.model, batch), rtol=0, atol=1e-6)
    monkeypatch.delitem(registry.FAMILIES, model_type)  # as before this family's line
    with pytest.raises(ModelError, match=f"unsupported architecture '{model_type}'"):
        check_family(str(tmp_path / "m"))


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_strip_reload_export_fuse_and_int8(model_type, tmp_path):
    from compressor.models import load_model
    from passes.export_onnx import Export
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize
    dense = case(model_type)
    kept = _mask(dense.model)
    stripped, ctx = strip_matches_masked(dense, kept, batches(dense.tokenizer), tmp_path)  # two shapes
    reloaded = load_model(str(ctx.step_dir))  # through compressor_layers -> load_stripped
    for batch in batches(dense.tokenizer):
        torch.testing.assert_close(logits(reloaded.model, batch), logits(stripped.model, batch), rtol=1e-5, atol=1e-5)

    ctx.step_dir = tmp_path / "export"
    exported = Export()(stripped, ctx)
    assert exported.metrics["inputs"] == ["input_ids", "attention_mask"]  # one token type: no input
    assert exported.metrics["max_abs_diff"] <= 1e-4 and "2x48" in exported.metrics["max_abs_diff_by_shape"]

    ctx.step_dir = tmp_path / "fuse"
    fused = OrtFuse()(exported.artifact, ctx).metrics  # strict: every layer with heads fused
    assert fused["attention_per_layer"] == [3, 0, 1] and fused["problems"] == []
    assert fused["not_fused"] == ["embeddings"] and fused["max_abs_diff"] <= 1e-4

    ctx.step_dir = tmp_path / "int8"
    int8 = Quantize()(exported.artifact, ctx).metrics
    assert int8["quant_ops"].get("MatMulInteger", 0) > 0 and int8["max_abs_diff"] <= INT8_LOGIT_TOL  # logits O(1-3)


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_trim_positions_keeps_the_padding_offset(model_type, tmp_path):
    from passes.export_onnx import Export
    from passes.trim_positions import TrimPositions, check_input_length
    dense = case(model_type, layers=2)
    ctx = RunContext(tmp_path / "run", data=make_toy_task(n_train=16, n_eval=16), max_length=32)
    ctx.step_dir = tmp_path / "trim"
    res = TrimPositions(max_positions=32)(dense, ctx)
    model, tok = res.artifact.model, res.artifact.tokenizer
    assert res.metrics == {"positions_before": MAX_TOKENS, "positions_after": 32,
                           "position_params_removed": (MAX_TOKENS - 32) * 32}
    emb = family_of(model).embeddings()
    assert emb.position_embeddings.num_embeddings == 34 == model.config.max_position_embeddings
    assert emb.position_embeddings.padding_idx == 1 and tok.model_max_length == 32
    assert family_of(model).max_tokens() == 32
    batch = dict(tok([" ".join(["story"] * 60), "a fun film"], padding=True, truncation=True, return_tensors="pt"))
    assert batch["input_ids"].shape[1] == 32  # the tokenizer truncates at the new limit
    torch.testing.assert_close(logits(model, batch), logits(dense.model, batch), rtol=0, atol=0)
    check_input_length(ctx.step_dir / "model", 32)
    with pytest.raises(DataError, match="33 tokens is longer than the model's 32"):
        check_input_length(ctx.step_dir / "model", 33)
    ctx.step_dir = tmp_path / "export"
    out = Export()(res.artifact, ctx)
    assert out.metrics["max_abs_diff"] <= 1e-4 and "2x32" in out.metrics["max_abs_diff_by_shape"]
    from targets._io import resolve_max_positions  # what the profiler lets through: tokens, not rows
    assert resolve_max_positions([out.artifact.path]) == 32


def test_fisher_and_magnitude_pipeline(tmp_path):
    from compressor import Pipeline
    from passes.fisher.prune import Fisher
    task = make_toy_task(n_train=32, n_eval=16)
    dense = case("roberta")
    res = Fisher(flops=0.5, samples=32, batch_size=16)(dense, RunContext(tmp_path / "fisher", data=task))
    assert res.metrics["encoder_flops_reduction"] >= 0.5 - 1e-9
    assert res.metrics["max_abs_diff_masked_vs_stripped"] <= 1e-5
    out = Pipeline("magnitude{granularity=structured,sparsity=0.5,schedule=oneshot,epochs=0},strip,export").run(
        case("xlm-roberta", seed=1), RunContext(tmp_path / "pipe", data=task, max_length=32))
    assert [r.name for r in out.records] == ["magnitude", "strip", "export"]
    assert out.records[1].metrics["heads_removed"] + out.records[1].metrics["ffn_removed"] > 0
    assert out.records[2].metrics["max_abs_diff"] <= 1e-4 and out.artifact.path.is_file()
