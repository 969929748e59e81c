"""vocab-prune: kept tokens, remapped ids, tokenizer files, embedding rows and logits."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from compressor.context import RunContext
from compressor.data import Example, TaskData
from compressor.errors import ConfigError, DataError
from conftest import make_tiny_model

VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "good",
         "bad", "un", "##believ", "##able", "##s", "be", "##lie", "##ve", "believe", "a", "b",
         "##a", "##b", "##d", "u", "##n", ".", ",", "plot", "dull", "fun", "zebra", "quite"]
TRAIN = ["The film was good.", "the plot was dull, bda", "believe the film", "fun film", "good fun"]
EVAL = ["bad un", "the film was good"]


def write_tokenizer(folder):
    """A tiny uncased WordPiece tokenizer folder (vocab.txt only) that AutoTokenizer loads on
    transformers 4.57 (converted to fast) and 5.x."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128}))
    return folder


@pytest.fixture
def tiny(tmp_path):
    from transformers import AutoTokenizer

    from compressor.artifact import TorchModel
    tok = AutoTokenizer.from_pretrained(str(write_tokenizer(tmp_path / "tok")), local_files_only=True)
    model = make_tiny_model(vocab_size=len(VOCAB), seed=3)
    return TorchModel(model, tok, info={"source": "tiny"})


def task(train=TRAIN, evals=EVAL):
    return TaskData("toy", [Example(t, i % 2) for i, t in enumerate(train)],
                    [Example(t, i % 2) for i, t in enumerate(evals)], ["neg", "pos"])


def run_pass(art, tmp_path, **opts):
    from passes.vocab.prune import VocabPrune
    ctx = RunContext(tmp_path / "run", data=task())
    return VocabPrune(**opts)(art, ctx), ctx


def remap_of(old_tok, new_tok):
    """old id -> new id, from the tokens' strings."""
    return {old_tok.convert_tokens_to_ids(t): i for t, i in new_tok.get_vocab().items()}


def test_keeps_used_and_special_tokens_and_remaps_training_ids(tiny, tmp_path):
    res, _ = run_pass(tiny, tmp_path, keep_chars="none")
    new_tok, m = res.artifact.tokenizer, res.metrics
    kept = set(new_tok.get_vocab())
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "plot", "believe", "b", "##d", "##a"} <= kept
    assert not kept & {"[unused0]", "zebra", "quite", "bad", "un", "u", "be", "##lie"}
    assert m["vocab_before"] == len(VOCAB) and m["vocab_after"] == len(kept) == len(new_tok)
    assert m["train_texts_checked"] == len(TRAIN) and m["train_texts_with_dropped"] == 0
    remap = remap_of(tiny.tokenizer, new_tok)
    for text in TRAIN:
        assert new_tok(text)["input_ids"] == [remap[i] for i in tiny.tokenizer(text)["input_ids"]]
    emb = res.artifact.model.get_input_embeddings().weight
    assert emb.shape == (len(kept), 32) and res.artifact.model.config.vocab_size == len(kept)
    old = tiny.model.get_input_embeddings().weight
    for tok, new_id in new_tok.get_vocab().items():
        assert torch.equal(emb[new_id], old[tiny.tokenizer.convert_tokens_to_ids(tok)])
    assert m["embedding_params_after"] == emb.numel() < m["embedding_params_before"]


def test_special_tokens_keep_their_roles(tiny, tmp_path):
    res, _ = run_pass(tiny, tmp_path)
    tok, cfg = res.artifact.tokenizer, res.artifact.model.config
    for role in ("pad", "unk", "cls", "sep", "mask"):
        assert tok.convert_ids_to_tokens(getattr(tok, f"{role}_token_id")) == f"[{role.upper()}]"
    assert cfg.pad_token_id == tok.pad_token_id == 0
    enc = tok(["fun", "the film was good"], padding=True)
    assert enc["input_ids"][0][0] == tok.cls_token_id and enc["input_ids"][0][2] == tok.sep_token_id
    assert enc["input_ids"][0][-1] == tok.pad_token_id and enc["attention_mask"][0][-1] == 0
    assert tok("zebra")["input_ids"][1] == tok.unk_token_id
    pair = tok("fun", "good")
    assert pair["input_ids"].count(tok.sep_token_id) == 2 and pair["token_type_ids"][-1] == 1


def test_eval_unk_and_changed_split_fractions(tiny, tmp_path):
    # eval "bad un": old [bad] [un]; new: bad -> b ##a ##d (split changed, kept from "bda"),
    # un -> [UNK] (no single characters kept); "the film was good" unchanged.
    res, _ = run_pass(tiny, tmp_path, keep_chars="none")
    m = res.metrics
    assert m["eval_tokens"] == 6
    assert m["eval_unk_fraction"] == pytest.approx(1 / 6, abs=1e-6)
    assert m["eval_changed_split_fraction"] == pytest.approx(1 / 6, abs=1e-6)
    assert m["eval_texts_changed_fraction"] == 0.5 and m["eval_examples_changed"] == 1
    assert "accuracy_change" in m
    # with single ASCII characters kept, "un" splits into u ##n instead of [UNK]
    m2 = run_pass(tiny, tmp_path / "b", keep_chars="ascii")[0].metrics
    assert m2["eval_unk_fraction"] == 0 and m2["eval_changed_split_fraction"] == pytest.approx(2 / 6, abs=1e-6)


def test_saved_folder_loads_fast_and_slow_and_gives_same_logits(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    res, ctx = run_pass(tiny, tmp_path)
    folder = ctx.workdir / "model"
    fast = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    texts = ["the film was good .", "fun , dull plot", "believe the bda film"]
    tokenizers = [fast]
    if (folder / "vocab.txt").is_file():  # transformers 4.57 also writes the slow tokenizer's file
        tokenizers.append(AutoTokenizer.from_pretrained(str(folder), use_fast=False, local_files_only=True))
    old = tiny.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = tiny.model(**old).logits
        for tok in tokenizers:
            enc = tok(texts, padding=True, return_tensors="pt")
            remap = remap_of(tiny.tokenizer, tok)
            assert enc["input_ids"].tolist() == [[remap[i] for i in row] for row in old["input_ids"].tolist()]
            torch.testing.assert_close(model(**enc).logits, want, atol=1e-6, rtol=0)


def test_tied_output_layer_is_pruned_with_the_embeddings(tiny, tmp_path):
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    lm = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        lm.cls.predictions.bias.normal_()
    tiny.model = lm
    res, ctx = run_pass(tiny, tmp_path, measure_accuracy=False)
    new, tok = res.artifact.model, res.artifact.tokenizer
    assert res.metrics["tied_output"] is True
    assert new.get_output_embeddings().weight is new.get_input_embeddings().weight
    keep = [tiny.tokenizer.convert_tokens_to_ids(t) for t in tok.convert_ids_to_tokens(range(len(tok)))]
    ids = tiny.tokenizer("the film was good", return_tensors="pt")
    with torch.no_grad():
        want = lm(**ids).logits[..., keep]
        got = new(**tok("the film was good", return_tensors="pt")).logits
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        reloaded = BertForMaskedLM.from_pretrained(str(ctx.workdir / "model")).eval()
        torch.testing.assert_close(reloaded(**tok("the film was good", return_tensors="pt")).logits, want,
                                   atol=1e-6, rtol=0)


def test_vocab_texts_tokens_are_kept(tiny, tmp_path):
    lines = tmp_path / "traffic.txt"
    lines.write_text("zebra\n\nquite\n")
    kept = set(run_pass(tiny, tmp_path / "a", vocab_texts=str(lines))[0].artifact.tokenizer.get_vocab())
    assert {"zebra", "quite"} <= kept
    table = tmp_path / "traffic.csv"
    table.write_text("id,text\n1,zebra\n")
    res = run_pass(tiny, tmp_path / "b", vocab_texts=str(table))[0]
    assert "zebra" in res.artifact.tokenizer.get_vocab() and "quite" not in res.artifact.tokenizer.get_vocab()
    assert res.metrics["train_texts_checked"] == len(TRAIN) + 1


def test_min_count_drops_rare_tokens_and_counts_changed_texts(tiny, tmp_path):
    res, _ = run_pass(tiny, tmp_path, min_count=2, keep_chars="none")
    kept = set(res.artifact.tokenizer.get_vocab())
    assert {"the", "film", "good", "fun"} <= kept and "plot" not in kept
    assert res.metrics["train_texts_with_dropped"] >= 1
    assert res.metrics["train_texts_checked"] + res.metrics["train_texts_with_dropped"] == len(TRAIN)


def test_bad_options_raise_one_line_naming_the_value(tmp_path):
    from passes.vocab.prune import VocabPrune
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as err:
        VocabPrune(vocab_texts=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        VocabPrune(min_count=0)
    assert "min_count=0" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="keep_chars"):
        VocabPrune(keep_chars="some")


def test_vocab_texts_without_text_column_and_no_data(tiny, tmp_path):
    from passes.vocab.prune import VocabPrune
    bad = tmp_path / "t.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no text column"):
        VocabPrune(vocab_texts=str(bad))(tiny, RunContext(tmp_path / "r", data=task()))
    with pytest.raises(DataError, match="needs texts"):
        VocabPrune()(tiny, RunContext(tmp_path / "r2"))


def test_unsupported_tokenizer_kind_is_refused(tiny, tmp_path):
    from passes.vocab import tokenizer as vb
    folder = tmp_path / "saved"
    tiny.tokenizer.save_pretrained(str(folder))
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("this transformers version saves no tokenizer.json")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["type"] = "WordLevel"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="WordPiece.*BPE.*Unigram.*'WordLevel'"):
        vb._rewrite_tokenizer_json(folder / "tokenizer.json", {}, {0: 0})


@pytest.mark.skipif(importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.onnxruntime")
                    is None, reason="Optimum's ORT classes are not installed (the [optimum] extra)")
def test_pruned_export_loads_in_optimum_with_same_logits(tiny_torch_model, toy_task, tmp_path):
    # The MiniLM tokenizer with every single character kept: the export's dummy input draws ids
    # in [100, 1000), so the pruned vocabulary must have more than 1000 tokens.
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from passes.export_onnx import Export
    from passes.vocab.prune import VocabPrune
    ctx = RunContext(tmp_path / "run", data=toy_task)
    res = VocabPrune(keep_chars="all")(tiny_torch_model, ctx)
    assert 1000 < res.metrics["vocab_after"] < 3000
    ctx.step_dir = tmp_path / "export"
    onnx_art = Export()(res.artifact, ctx).artifact
    ort_model = ORTModelForSequenceClassification.from_pretrained(str(onnx_art.folder))
    tok = AutoTokenizer.from_pretrained(str(onnx_art.folder), local_files_only=True)
    texts = [e.text for e in toy_task.eval[:4]]
    got = ort_model(**tok(texts, padding=True, return_tensors="pt")).logits
    old = tiny_torch_model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = tiny_torch_model.model(**old).logits
    torch.testing.assert_close(torch.as_tensor(got), want, atol=1e-4, rtol=0)


def test_real_text_profile_feeds_a_pruned_model_its_own_token_ids(tiny_torch_model, toy_task, tmp_path):
    # The dense tokenizer's ids run past the pruned embedding table: a profile of dense and
    # vocab-pruned models on real texts must tokenize the same texts once per vocabulary.
    from compressor.profiling import own_tokenizers, profile_targets
    from passes.export_onnx import Export
    from passes.vocab.prune import VocabPrune
    from targets.cpu import CpuTarget
    ctx = RunContext(tmp_path / "run", data=toy_task)
    ctx.step_dir = tmp_path / "dense"
    dense = Export()(tiny_torch_model, ctx).artifact
    res = VocabPrune(keep_chars="all")(tiny_torch_model, ctx)
    ctx.step_dir = tmp_path / "pruned"
    pruned = Export()(res.artifact, ctx).artifact
    models = {"dense": dense.path, "pruned": pruned.path}
    assert set(own_tokenizers(models, tiny_torch_model.tokenizer)) == {"pruned"}
    out = profile_targets([CpuTarget(threads=1)], models, examples=toy_task.eval,
                          tokenizer=tiny_torch_model.tokenizer, batch_sizes=(2,), seq_lens=(), runs=2,
                          warmup=0, max_length=32)
    real = [p for p in out["profiles"] if p["shape_kind"] == "real"]
    assert sorted(p["model"] for p in real) == ["dense", "pruned"]
    assert all(p["p50_ms"] > 0 for p in real)
