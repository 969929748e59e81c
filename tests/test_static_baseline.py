"""``--static-baseline DIR``: a model2vec folder read without model2vec, its ONNX graph against a
numpy reference of model2vec's ``StaticModel.encode``, bad folders refused in one line, and the
baseline row of an embeddings report (scored and profiled beside the other rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compressor.errors import ModelError

WORDS = ["good", "great", "film", "plot", "the", "was", "a", "dull", "boring", "fun", "charming", "smart",
         "awful", "weak", "story", "##s", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_wordpiece(post_processor: bool = True):
    """A tiny BERT-style WordPiece tokenizer (lower-cased; [CLS] text [SEP] when ``post_processor``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIAL)
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def make_static_folder(root: Path, normalize: bool = True, dim: int = 8, quantized: bool = False,
                       post_processor: bool = True, seed: int = 0) -> Path:
    """A model2vec folder as StaticModel.save_pretrained writes it, with random float16 embeddings
    (``quantized``: 6 rows, a token -> row ``mapping`` and per-token ``weights``)."""
    from safetensors.numpy import save_file
    tok = tiny_wordpiece(post_processor)
    vocab = tok.get_vocab_size()
    rng = np.random.default_rng(seed)
    tensors = {"embeddings": rng.standard_normal((6 if quantized else vocab, dim)).astype(np.float16)}
    if quantized:
        tensors["mapping"] = rng.integers(0, 6, size=vocab).astype(np.int64)
        tensors["weights"] = rng.uniform(0.5, 2.0, size=vocab).astype(np.float32)
    folder = root / f"m2v-{'q' if quantized else 'plain'}-{int(normalize)}-{int(post_processor)}"
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"model_type": "model2vec", "architectures": ["StaticModel"],
                                                    "normalize": normalize, "pooling": "mean", "max_length": 512,
                                                    "embedding_dtype": "float16"}))
    return folder


TEXTS = ["a good film", "the plot was dull and boring", "fun", "charming smart stories", "zebra quartet",
         "", "Great FILM, great plot!"]


def test_reference_is_model2vecs_mean_of_token_rows(tmp_path):
    from compressor.static_baseline import encode_reference, load_static
    m = load_static(make_static_folder(tmp_path, normalize=False))
    vocab = m.tokenizer.get_vocab()
    got = encode_reference(m, ["good film", "good zebra", "zebra", "storys"])
    rows = m.embeddings
    assert np.allclose(got[0], (rows[vocab["good"]] + rows[vocab["film"]]) / 2)
    assert np.allclose(got[1], rows[vocab["good"]])  # the unknown token is dropped, not averaged in
    assert np.allclose(got[2], 0.0)  # no token left: zeros
    assert np.allclose(got[3], (rows[vocab["story"]] + rows[vocab["##s"]]) / 2)  # no [CLS]/[SEP]
    normed = encode_reference(load_static(make_static_folder(tmp_path, normalize=True)), ["good film"])
    assert np.allclose(normed[0], got[0] / np.linalg.norm(got[0]), atol=1e-6)


@pytest.mark.parametrize("normalize,quantized,post", [(True, False, True), (False, False, True),
                                                       (True, True, True), (False, True, False)])
def test_onnx_graph_matches_the_reference(tmp_path, normalize, quantized, post):
    import onnx

    from compressor.data import Example
    from compressor.onnx_utils import onnx_logits
    from compressor.static_baseline import encode_reference, export_static, load_static
    m = load_static(make_static_folder(tmp_path, normalize, quantized=quantized, post_processor=post))
    om = export_static(m, tmp_path / "onnx", TEXTS, max_length=32)
    assert om.info["max_abs_diff"] <= 1e-5 and om.info["checked_texts"] == len(TEXTS)
    # the run's feed: the folder's tokenizer through transformers, padded batches, [CLS]/[SEP] added
    got = onnx_logits(om, [Example(t, 0) for t in TEXTS], max_length=32, batch_size=3)
    assert got.shape == (len(TEXTS), 8)
    assert np.abs(got - encode_reference(m, TEXTS)).max() < 1e-5
    ops = [n.op_type for n in onnx.load(str(om.path)).graph.node]
    assert ops.count("Gather") == (4 if quantized else 3) and ("Sqrt" in ops) == normalize
    assert json.loads((om.folder / "config.json").read_text())["vocab_size"] == len(SPECIAL + WORDS)


def test_bad_folders_are_one_line_model_errors(tmp_path):
    from safetensors.numpy import save_file

    from compressor.static_baseline import load_static
    with pytest.raises(ModelError, match="folder not found"):
        load_static(tmp_path / "nowhere")
    folder = make_static_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="tokenizer.json missing"):
        load_static(folder)
    folder = make_static_folder(tmp_path, normalize=False)
    save_file({"vectors": np.zeros((3, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="no 2-D 'embeddings' tensor"):
        load_static(folder)
    save_file({"embeddings": np.zeros((3, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="3 embedding rows for 22 tokens"):
        load_static(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read") as err:
        load_static(folder)
    assert "\n" not in str(err.value)


# -- compress run --------------------------------------------------------------------------------
def _run(tmp_path, *args):
    from tests.test_embeddings_task import _run as run_embeddings
    return run_embeddings(tmp_path, "--method", "magnitude", "--sparsity", "0.5", *args)


def test_the_static_model_is_a_baseline_row(tmp_path):
    from tests.test_embeddings_task import _user_eval_files
    sts, _ = _user_eval_files(tmp_path)
    static = make_static_folder(tmp_path)
    code, out = _run(tmp_path, "--static-baseline", str(static), "--sts", str(sts))
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    row = doc["models"]["static (model2vec)"]
    assert row["accuracy_onnx"] is None and row["static_baseline"]["max_abs_diff"] <= 1e-5
    assert set(row["embedding"]) == {"neighbours", "probe", "sts"}  # no fidelity: another space
    assert 0.0 <= row["embedding"]["neighbours"]["value"] <= 1.0
    assert row["embedding"]["probe"]["percent_of_dense"] is not None
    assert row["size_bytes"] < doc["models"]["dense"]["size_bytes"]
    timed = {(p["model"], p.get("shape_kind")) for p in doc["profiles"]}
    assert {("static (model2vec)", "real"), ("static (model2vec)", "fixed")} <= timed
    assert (out / "static-model2vec" / "model.onnx").is_file()
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads((Path(__file__).parents[1] / "compressor" / "schema"
                                         / "report.schema.json").read_text()))
    md = (out / "report.md").read_text()
    quality = md.split("### Embedding quality")[1]
    quality_row = next(line for line in quality.splitlines() if line.startswith("| static (model2vec)"))
    assert quality_row.split("|")[2].strip() == "—"  # the fidelity column
    assert "fidelity does not apply" in md


def test_a_bad_static_folder_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    from tests.test_embeddings_task import _inputs
    folder = make_static_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    _inputs(tmp_path)
    capsys.readouterr()  # the fixtures' output (transformers 5 shows a progress bar when saving)
    code, out = _run(tmp_path, "--static-baseline", str(folder))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors missing" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (out / "report.json").exists()


def test_static_baseline_needs_the_embeddings_task():
    from compressor.config import RunConfig
    from compressor.errors import ConfigError
    with pytest.raises(ConfigError, match="--static-baseline apply to an embedding model: add --task-type embeddings"):
        RunConfig(static_baseline="somewhere").validate()
