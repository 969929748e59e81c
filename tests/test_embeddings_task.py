"""Embedding models compressed as embedding models (``--task-type embeddings``): pooling and
normalization as sentence-transformers computes them, the distillation loss, the dense model's
embeddings as targets, the ONNX export with the pooled output verified and loadable as a
sentence-transformers folder, and `compress run` end to end with every method."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from compressor.data import Example, TaskData  # noqa: E402
from compressor.errors import ModelError  # noqa: E402


def make_embedder_folder(root, pooling="mean", normalize=True, layers=2, seed=0):
    """A tiny seeded BertModel saved as a sentence-transformers folder (MiniLM's tokenizer)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from compressor.embedder import write_st_files
    from tests.conftest import minilm_dir
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    folder = root / f"embedder-{pooling}"
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True).save_pretrained(folder)
    write_st_files(folder, {"pooling": pooling, "normalize": normalize}, 32, 64)
    return folder


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")


TEXTS = ["a good film", "the plot was dull and the acting was weak", "fun", "charming and smart story"]


# -- pooling and loss --------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_pooling_matches_a_reference(pooling, tmp_path):
    from compressor.embedder import load_source
    tm = load_source(str(make_embedder_folder(tmp_path, pooling, normalize=False)))
    assert tm.model.config.compressor_embedding["pooling"] == pooling  # read from 1_Pooling/config.json
    enc = _batch(tm.tokenizer, TEXTS)
    with torch.no_grad():
        out = tm.model(**enc)
        tokens = tm.model.base_model(**enc).last_hidden_state
    for i in range(len(TEXTS)):
        n = int(enc["attention_mask"][i].sum())
        real = tokens[i, :n]
        want = {"mean": real.mean(0), "cls": real[0], "max": real.max(0).values}[pooling]
        assert torch.allclose(out.logits[i], want, atol=1e-6)


def test_pooling_and_normalize_match_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from compressor.embedder import load_source
    folder = make_embedder_folder(tmp_path, "mean", normalize=True)
    tm = load_source(str(folder))
    with torch.no_grad():
        ours = tm.model(**_batch(tm.tokenizer, TEXTS)).logits
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert (ours - ref).abs().max() < 1e-5


def test_flags_override_the_folder_and_bad_pooling_is_refused(tmp_path):
    from compressor.embedder import check_settings, load_source, read_st_settings
    folder = make_embedder_folder(tmp_path, "mean", normalize=True)
    tm = load_source(str(folder), pooling="cls", normalize=False)
    assert tm.model.config.compressor_embedding["pooling"] == "cls"
    assert tm.model.config.compressor_embedding["normalize"] is False
    pool = folder / "1_Pooling" / "config.json"
    pool.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ModelError, match="weightedmean"):
        read_st_settings(folder)
    with pytest.raises(ModelError, match="pooling 'sum' is not allowed"):
        check_settings({"pooling": "sum"})


def test_embedding_loss_is_zero_at_the_teacher_and_fisher_loss_has_a_gradient():
    from compressor.embedder import DEFAULTS, embedding_loss, fisher_loss
    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    s = t.clone().requires_grad_(True)
    assert float(embedding_loss(s, t, DEFAULTS).detach()) == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(embedding_loss(s, t, DEFAULTS), s)
    assert float(grad.abs().max()) < 1e-6  # why fisher needs another loss
    (grad,) = torch.autograd.grad(fisher_loss(s, t, DEFAULTS), s)
    assert float(grad.abs().max()) > 1e-4
    # 1 - cos of orthogonal vectors is 1
    assert float(embedding_loss(torch.eye(2), torch.eye(2).flip(0), DEFAULTS)) == pytest.approx(1.0)


def test_trivial_fidelity_hand_computed():
    from compressor.metrics import majority_accuracy, trivial_fidelity
    # targets e1, e2: their mean (0.5, 0.5) has cosine 1/sqrt(2) to each
    rows = [Example("a", (1.0, 0.0)), Example("b", (0.0, 1.0))]
    assert trivial_fidelity(rows) == pytest.approx(1 / math.sqrt(2))
    assert majority_accuracy(rows) == pytest.approx(1 / math.sqrt(2))


def test_teacher_targets_label_every_split_and_keep_the_classes(tmp_path):
    from compressor.embedder import load_source, teacher_targets
    from compressor.evaluation import evaluate
    tm = load_source(str(make_embedder_folder(tmp_path)))
    data = TaskData("toy", [Example(t, i % 2) for i, t in enumerate(TEXTS)], [Example("a dull plot", 0)],
                    ["neg", "pos"], dev=[Example("great fun", 1)], task_type="embeddings")
    out = teacher_targets(data, tm, max_length=32)
    assert [len(e.label) for e in out.train + out.dev + out.eval] == [32] * 6
    assert out.info["probe_labels"] == {"train": [0, 1, 0, 1], "dev": [1], "eval": [0]}
    assert evaluate(tm.model, tm.tokenizer, out.train, 32) == pytest.approx(1.0, abs=1e-5)  # its own fidelity


# -- export ------------------------------------------------------------------------------------
def test_export_has_the_pooled_output_verified_and_loads_as_sentence_transformers(tmp_path):
    from types import SimpleNamespace

    import numpy as np
    import onnxruntime as ort

    from compressor.embedder import load_source
    from passes.export_onnx import Export
    tm = load_source(str(make_embedder_folder(tmp_path)))
    ctx = SimpleNamespace(data=None, max_length=32, seed=0, out_dir=lambda: tmp_path / "onnx",
                          step_dir=tmp_path / "onnx")
    res = Export().run(tm, ctx)
    assert res.metrics["max_abs_diff"] < 1e-4
    folder = res.artifact.folder
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    enc = _batch(tm.tokenizer, TEXTS)
    got = session.run(["sentence_embedding"], {k: v.numpy() for k, v in enc.items()})[0]
    with torch.no_grad():
        want = tm.model(**enc).logits.numpy()
    assert np.abs(got - want).max() < 1e-5
    assert json.loads((folder / "modules.json").read_text())[1]["path"] == "1_Pooling"
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("optimum.onnxruntime")
    model = st.SentenceTransformer(str(folder), backend="onnx", device="cpu")
    assert np.abs(model.encode(TEXTS) - want).max() < 1e-4
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    ort_model = ORTModelForFeatureExtraction.from_pretrained(str(folder), file_name="model.onnx")
    tokens = ort_model(**enc).last_hidden_state
    tokens = tokens.numpy() if hasattr(tokens, "numpy") else np.asarray(tokens)
    mask = enc["attention_mask"].numpy()[..., None]
    mean = (tokens * mask).sum(1) / mask.sum(1)  # the folder's pooling (mean) and normalization
    assert np.abs(mean / np.linalg.norm(mean, axis=-1, keepdims=True) - want).max() < 1e-4


# -- compress run --------------------------------------------------------------------------------
def _inputs(tmp_path):
    from tests.conftest import make_toy_task, write_tsv
    task = make_toy_task(n_train=64, n_eval=24, seed=2)
    return (make_embedder_folder(tmp_path), write_tsv(tmp_path / "train.tsv", task.train),
            write_tsv(tmp_path / "eval.tsv", task.eval))


def _run(tmp_path, *args):
    from compressor.cli import main
    model, train, eval_ = tmp_path / "embedder-mean", tmp_path / "train.tsv", tmp_path / "eval.tsv"
    if not model.exists():
        model, train, eval_ = _inputs(tmp_path)
    out = tmp_path / "run"
    code = main(["run", str(model), "--task-type", "embeddings", "--train", str(train), "--eval", str(eval_),
                 *args, "--epochs", "1", "--runs", "2", "--batch-sizes", "1", "--seq-lens", "16",
                 "--allow-collapse", "-o", str(out), "-q"])
    return code, out


def _user_eval_files(root):
    """A 6-pair STS file and a 3-query BEIR folder in the toy task's words."""
    sts = root / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"{a}\t{b}\t{g}\n" for a, b, g in [("good film", "great film", 4.5), ("good film", "awful plot", 0.5),
                                          ("boring plot", "dull plot", 4.0), ("fun story", "tedious story", 1.0),
                                          ("smart film", "brilliant film", 4.2), ("weak plot", "charming plot", 0.8)]))
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {"d1": "a good and great film", "d2": "an awful boring plot", "d3": "a fun charming story",
            "d4": "dull tedious and weak", "d5": "the film was a plot"}
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                               for k, v in docs.items()))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in
                                                [("q1", "great film"), ("q2", "boring plot"), ("q3", "charming")]))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq2\td2\t1\n"
                                             "q2\td4\t1\nq3\td3\t1\n")
    return sts, beir


def test_compress_run_fisher_recover_vocab_prune(tmp_path):
    sts, beir = _user_eval_files(tmp_path)
    _inputs(tmp_path)  # and eval texts with words no training text has: vocab-prune changes their ids
    with (tmp_path / "eval.tsv").open("a") as f:
        f.write("a zebra played the oboe\t1\nquantum yodel film\t0\n")
    code, out = _run(tmp_path, "--method", "fisher", "--method-option", "samples=64", "--recover",
                     "--vocab-prune", "--sts", str(sts), "--retrieval", str(beir))
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s["metrics"] for s in doc["steps"]}
    assert "finetune" not in steps  # the dense model is its own teacher
    assert {"fisher", "distill", "vocab-prune", "export", "quantize"} <= set(steps)
    assert "kd_hidden=1.0" in next(s["spec"] for s in doc["steps"] if s["name"] == "distill")
    assert steps["export"]["max_abs_diff"] < 1e-4
    assert steps["vocab-prune"]["eval_examples_changed"] >= 2 and steps["vocab-prune"]["accuracy_change"] < 0
    assert doc["data"]["metric_name"] == "fidelity" and doc["data"]["embedding_dimension"] == 32
    models = doc["models"]
    assert models["dense"]["accuracy_onnx"] == pytest.approx(1.0, abs=1e-5)
    comp = models["compressed"]
    assert -1.0 <= comp["accuracy_onnx"] < 1.0
    quality = {"fidelity", "neighbours", "probe", "sts", "ndcg", "recall"}
    assert set(comp["embedding"]) == quality
    assert comp["embedding"]["fidelity"]["interval"][0] <= comp["accuracy_onnx"] <= comp["embedding"]["fidelity"]["interval"][1]
    assert set(comp["versus_paired_embedding"]["dense-int8"]) == quality
    assert models["dense"]["embedding"]["sts"]["percent_of_dense"] == pytest.approx(100.0)
    assert 0.0 <= comp["embedding"]["ndcg"]["value"] <= 1.0 and -1.0 <= comp["embedding"]["sts"]["value"] <= 1.0
    assert (out / "04-vocab-prune").exists() or any(p.name.endswith("vocab-prune") for p in out.iterdir())
    final = next(p for p in sorted(out.iterdir()) if p.name.endswith("-quantize"))
    assert json.loads((final / "modules.json").read_text())[2]["type"].endswith("Normalize")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads((Path(__file__).parents[1] / "compressor" / "schema" / "report.schema.json").read_text()))
    assert "fidelity points" in doc["summary"]["versus_dense_int8"]["verdict"]
    md = (out / "report.md").read_text()
    assert "Embedding quality" in md and "Fidelity (ONNX)" in md and "Retrieval nDCG@10" in md


def test_a_bad_sts_file_is_one_line_and_nothing_is_written(tmp_path, capsys):
    sts, _ = _user_eval_files(tmp_path)
    sts.write_text("sentence1\tsentence2\tscore\ngood\tgreat\thigh\n")
    code, out = _run(tmp_path, "--method", "magnitude", "--sts", str(sts))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("'high'" in line for line in err) and "Traceback" not in "\n".join(err)
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("method", ["magnitude", "nip", "rpp", "cap", "sparsebert"])
def test_every_method_trains_an_embedder(method, tmp_path):
    extra = ("--contrastive", "0.5") if method == "cap" else ()  # CAP's own contrast plus the in-batch one
    code, out = _run(tmp_path, "--method", method, "--sparsity", "0.5", *extra)
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    comp = doc["models"]["compressed"]
    assert comp["metric_name"] == "fidelity" and comp["sparsity"] > 0.3
    settings = doc["data"]["embedding_settings"]
    assert settings["pooling"] == "mean" and settings["contrastive"] == (0.5 if method == "cap" else 0.0)
    assert 0.0 < comp["accuracy_onnx"] <= 1.0 + 1e-6


def test_distill_on_augmented_texts_labels_them_with_the_teacher(tmp_path):
    code, out = _run(tmp_path, "--pipeline", "distill{augment=1,epochs=1,min_steps=0},export")
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    distill = next(s["metrics"] for s in doc["steps"] if s["name"] == "distill")
    assert distill["augmented_examples"] > 0 and distill["train_examples"] > 0
    assert 0.5 < doc["models"]["compressed"]["accuracy_onnx"] <= 1.0 + 1e-6  # dense start, one epoch of KD


def test_pooling_flag_needs_the_embeddings_task(tmp_path):
    from compressor.cli import main
    _, train, eval_ = _inputs(tmp_path)
    code = main(["run", "minilm", "--pooling", "cls", "--train", str(train), "--eval", str(eval_),
                 "-o", str(tmp_path / "x"), "-q"])
    assert code == 2
    assert not (tmp_path / "x").exists()
