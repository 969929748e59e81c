"""vocab-prune on byte-level BPE (RoBERTa) and Unigram (XLM-R) tokenizers trained in-process."""

from __future__ import annotations

import json
import random

import pytest
import torch

from compressor.context import RunContext
from compressor.data import Example, TaskData
from compressor.errors import ConfigError
from conftest import make_toy_task

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
VARIED = ["Wonderful acting; the café scenes were naïve but fun!", "A 2-hour film? Too long... 3/10.",
          "Über-stylish, très drôle, and smart.", "THE PLOT WAS DULL, the actors were GREAT.",
          "Zero stars: messy, clumsy & tedious.", "It's a well-made, moving story (mostly).",
          "The director's cut runs 148 minutes; the score is lovely."]
OTHER = ("camera lighting editing soundtrack villain hero sequel prequel franchise studio budget "
         "cinematography screenplay dialogue ensemble cameo trailer premiere festival critics audience "
         "popcorn theatre streaming documentary animation horror comedy thriller romance western").split()
UNSEEN = "Quirky zebras jump over 42 lazy dogs ~ {wow} #yes"


def corpus():
    """The toy task (200 training sentences) and what the tokenizers are trained on: those,
    varied sentences, and sentences of film words the task never uses (their tokens drop)."""
    rng = random.Random(7)
    toy = make_toy_task(n_train=193, n_eval=24, seed=5)
    train = toy.train + [Example(t, i % 2) for i, t in enumerate(VARIED)]
    other = [" ".join(rng.sample(OTHER, 6)) + "." for _ in range(150)]
    dropped = Example("the soundtrack and the cinematography: a premiere for critics", 0)
    task = TaskData("toy", train, toy.eval + [Example(UNSEEN, 1), dropped], ["neg", "pos"])
    return task, [e.text for e in train + toy.eval] + other


def _wrap_and_reload(tk, cls_name, tmp_path):
    """A transformers tokenizer as a user has it: wrapped, saved and loaded with AutoTokenizer."""
    import transformers
    from transformers import AutoTokenizer
    cls = getattr(transformers, cls_name)
    tok = cls(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
              unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tok.save_pretrained(str(tmp_path / "orig"))
    return AutoTokenizer.from_pretrained(str(tmp_path / "orig"), local_files_only=True)


def bpe_tokenizer(texts, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return _wrap_and_reload(tk, "RobertaTokenizerFast", tmp_path)


def unigram_tokenizer(texts, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=600, special_tokens=SPECIALS,
                                                          unk_token="<unk>"))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    return _wrap_and_reload(tk, "XLMRobertaTokenizerFast", tmp_path)


def tiny_model(kind, tok):
    from transformers import (RobertaConfig, RobertaForSequenceClassification, XLMRobertaConfig,
                              XLMRobertaForSequenceClassification)
    config_cls, model_cls = ((RobertaConfig, RobertaForSequenceClassification) if kind == "BPE"
                             else (XLMRobertaConfig, XLMRobertaForSequenceClassification))
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=160, type_vocab_size=1, num_labels=2,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    return model_cls(cfg).eval()


@pytest.fixture(params=["BPE", "Unigram"])
def pruned(request, tmp_path):
    from compressor.artifact import TorchModel
    from passes.vocab.prune import VocabPrune
    task, texts = corpus()
    make = bpe_tokenizer if request.param == "BPE" else unigram_tokenizer
    tok = make(texts, tmp_path)
    art = TorchModel(tiny_model(request.param, tok), tok, info={"source": "tiny"})
    ctx = RunContext(tmp_path / "run", data=task)
    return request.param, art, VocabPrune()(art, ctx), ctx, task


def remap_of(old_tok, new_tok):
    return {old_tok.convert_tokens_to_ids(t): i for t, i in new_tok.get_vocab().items()}


def test_training_ids_remapped_folder_reloads_and_logits_equal(pruned):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compressor.evaluation import predict_logits
    kind, art, res, ctx, task = pruned
    m, new_tok = res.metrics, res.artifact.tokenizer
    assert m["tokenizer_kind"] == kind
    assert m["vocab_after"] == len(new_tok) < m["vocab_before"] == len(art.tokenizer)
    assert m["train_texts_checked"] == len(task.train) and m["train_texts_with_dropped"] == 0
    folder = ctx.workdir / "model"
    tokenizers = [new_tok, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)]
    if (folder / "vocab.json").is_file():  # transformers 4.57 also writes the slow BPE tokenizer's files
        tokenizers.append(AutoTokenizer.from_pretrained(str(folder), use_fast=False, local_files_only=True))
    remap = remap_of(art.tokenizer, new_tok)
    texts = [e.text for e in task.train]
    old = art.tokenizer(texts)["input_ids"]
    for tok in tokenizers:
        assert remap_of(art.tokenizer, tok) == remap
        assert tok(texts)["input_ids"] == [[remap[i] for i in ids] for ids in old], type(tok).__name__
    want = predict_logits(art.model, art.tokenizer, task.train, 64)
    torch.testing.assert_close(predict_logits(res.artifact.model, new_tok, task.train, 64), want, atol=1e-6, rtol=0)
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    torch.testing.assert_close(predict_logits(reloaded, tokenizers[1], task.train, 64), want, atol=1e-6, rtol=0)
    assert 0 <= m["eval_unk_fraction"] <= 1 and 0 < m["eval_changed_split_fraction"] <= 1
    assert m["eval_texts_changed_fraction"] > 0 and m["eval_examples_changed"] >= 1 and "accuracy_change" in m


@pytest.mark.parametrize("pruned", ["BPE"], indirect=True)
def test_bpe_merges_consistent_and_byte_alphabet_kept(pruned):
    from tokenizers import pre_tokenizers
    kind, art, res, ctx, task = pruned
    m, tok = res.metrics, res.artifact.tokenizer
    data = json.loads((ctx.workdir / "model" / "tokenizer.json").read_text())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    old_merges = json.loads(art.tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert 0 < len(merges) < len(old_merges)
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        assert a in vocab and b in vocab and a + b in vocab
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)
    assert m["kept_by"]["byte_alphabet"] > 0 and m["kept_by"]["merge_paths"] > 0
    ids = tok(UNSEEN)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == UNSEEN
    assert m["eval_unk_fraction"] == 0 and m["eval_changed_split_fraction"] > 0


@pytest.mark.parametrize("pruned", ["Unigram"], indirect=True)
def test_unigram_keeps_lowest_score_and_seen_characters(pruned):
    kind, art, res, ctx, task = pruned
    m, tok = res.metrics, res.artifact.tokenizer
    data = json.loads((ctx.workdir / "model" / "tokenizer.json").read_text())
    old = json.loads(art.tokenizer.backend_tokenizer.to_str())["model"]
    assert data["model"]["unk_id"] == tok.unk_token_id == 3
    assert min(s for _, s in data["model"]["vocab"]) == min(s for _, s in old["vocab"])
    assert m["kept_by"]["seen_chars"] > 0 and "added_back" not in m["kept_by"]
    pieces = {p for p, _ in data["model"]["vocab"]}
    assert {"é", "ï", "è"} <= pieces  # single characters of the training texts stay
    assert tok.unk_token_id not in tok("Très naïve cafés")["input_ids"]  # unseen words, seen characters


def _hand_unigram(tmp_path):
    """'abc' splits into '▁a bc' (-24), against '▁ab c' (-26): with the lowest piece 'zz' and
    the unused 'c' dropped, the unknown penalty rises to -22 and '▁ab <unk>' (-23) would win."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = [(s, 0.0) for s in SPECIALS] + [("▁a", -12.0), ("bc", -12.0), ("▁ab", -1.0), ("c", -25.0),
                                            ("▁", -30.0), ("a", -30.0), ("b", -30.0), ("zz", -40.0)]
    tk = Tokenizer(models.Unigram(vocab, unk_id=3))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    return _wrap_and_reload(tk, "XLMRobertaTokenizerFast", tmp_path)


def test_unigram_adds_back_the_pieces_a_changed_split_needs(tmp_path, monkeypatch):
    from compressor.artifact import TorchModel
    from passes.vocab import compare as vc
    from passes.vocab import tokenizer as vt
    from passes.vocab import unigram as vuni
    from passes.vocab.prune import VocabPrune
    tok = _hand_unigram(tmp_path)
    assert tok.convert_ids_to_tokens(tok("abc ab")["input_ids"]) == ["<s>", "▁a", "bc", "▁ab", "</s>"]
    monkeypatch.setattr(vuni, "structural_ids", lambda *a, **k: (set(), {}))  # no lowest piece kept
    keep = sorted(set(range(5)) | {5, 6, 7})
    with pytest.raises(Exception, match="differently"):
        vc.verify_remapped(tok, vt.pruned_tokenizer(tok, keep, tmp_path / "bare"), keep, [Example("abc ab", 0)])
    art = TorchModel(tiny_model("Unigram", tok), tok, info={})
    ctx = RunContext(tmp_path / "run", data=TaskData("t", [Example("abc ab", 0)], [], ["a", "b"]))
    res = VocabPrune(keep_chars="none")(art, ctx)
    assert res.metrics["kept_by"]["added_back"] >= 1 and res.metrics["train_texts_checked"] == 1
    new = res.artifact.tokenizer
    assert new.convert_ids_to_tokens(new("abc ab")["input_ids"]) == ["<s>", "▁a", "bc", "▁ab", "</s>"]


def test_bpe_string_merges_are_rewritten_in_their_format():
    from tokenizers import Tokenizer, models

    from passes.vocab import bpe as vbpe
    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5, "bc": 6}
    tk = Tokenizer(models.BPE(vocab, [("a", "b"), ("ab", "c"), ("b", "c")], unk_token="<unk>"))
    data = json.loads(tk.to_str())
    data["model"]["merges"] = [" ".join(m) for m in vbpe.parse_merges(data["model"]["merges"])]
    keep = {0, 5}
    more, by = vbpe.structural_ids(data["model"], False, keep)
    assert more | keep == {0, 1, 2, 3, 4, 5} and by["merge_paths"] == 4  # a, b, c, ab; not bc
    remap = {old: new for new, old in enumerate(sorted(keep | more))}
    vbpe.rewrite_model(data["model"], remap)
    assert data["model"]["merges"] == ["a b", "ab c"]
    assert Tokenizer.from_str(json.dumps(data)).encode("abc").tokens == ["abc"]


def test_unsupported_kind_is_refused_before_data(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from compressor.artifact import TorchModel
    from conftest import make_tiny_model
    from passes.vocab.prune import VocabPrune
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "film": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    art = TorchModel(make_tiny_model(vocab_size=3), tok, info={})
    with pytest.raises(ConfigError) as err:
        VocabPrune()(art, RunContext(tmp_path / "run"))
    assert "'WordLevel'" in str(err.value) and "\n" not in str(err.value)
    assert all(k in str(err.value) for k in ("WordPiece", "BPE", "Unigram"))


def test_roberta_pad_id_keeps_its_value(tmp_path):
    # RoBERTa numbers positions after padding_idx: the ids up to <pad> stay, else a clear error
    from passes.vocab import embeddings as ve
    model = tiny_model("BPE", bpe_tokenizer(corpus()[1][:50], tmp_path))
    assert ve.pinned_ids(model) == {0, 1}
    with pytest.raises(ConfigError, match="pad token id 1 would change"):
        ve.prune_embeddings(model, [1, 2, 3])


@pytest.mark.parametrize("kind", ["BPE", "Unigram"])
def test_min_count_checks_the_texts_whose_tokens_stay(kind, tmp_path):
    from compressor.artifact import TorchModel
    from passes.vocab.prune import VocabPrune
    task, texts = corpus()
    tok = (bpe_tokenizer if kind == "BPE" else unigram_tokenizer)(texts, tmp_path)
    art = TorchModel(tiny_model(kind, tok), tok, info={})
    m = VocabPrune(min_count=3, measure_accuracy=False)(art, RunContext(tmp_path / "run", data=task)).metrics
    assert m["train_texts_with_dropped"] >= 1 and m["train_texts_checked"] >= 1
    assert m["train_texts_checked"] + m["train_texts_with_dropped"] == len(task.train)
