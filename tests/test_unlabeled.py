"""``--unlabeled FILE``: more training texts for an embedding task, labelled with the teacher's
embeddings, deduplicated and never taken from dev or eval; the errors of a bad file; `compress run`
end to end (every training pass and vocab-prune see them, the report says how many and from
where); the recipe round trip."""

from __future__ import annotations

import json
import logging
import math

import pytest

from compressor.data import Example, TaskData
from compressor.errors import ConfigError, DataError

torch = pytest.importorskip("torch")


def test_read_texts_skips_blanks_and_repeats(tmp_path):
    from compressor.unlabeled import read_texts
    f = tmp_path / "u.txt"
    f.write_text("\ufeffa fine  film\n\n   \nA fine film\na fine film\n  dull\tplot \nnaïve charm\n", encoding="utf-8")
    assert read_texts(f) == ["a fine film", "A fine film", "dull plot", "naïve charm"]


@pytest.mark.parametrize("content,match", [(None, "file not found"), (b"\n  \n\n", "has no texts"),
                                           (b"good\n\xff\xfe bad bytes\n", "is not UTF-8 text")])
def test_bad_files_are_one_line_data_errors(tmp_path, content, match):
    from compressor.unlabeled import read_texts
    f = tmp_path / "u.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        read_texts(f)
    assert "--unlabeled" in str(err.value) and "\n" not in str(err.value)


def _toy(tmp_path):
    from compressor.embedder import load_source, teacher_targets
    from tests.test_embeddings_task import make_embedder_folder
    teacher = load_source(str(make_embedder_folder(tmp_path)))
    data = TaskData("toy", [Example("a good film", 1), Example("a dull plot", 0)], [Example("great fun", 1)],
                    ["neg", "pos"], dev=[Example("weak story", 0)], task_type="embeddings")
    return teacher, teacher_targets(data, teacher, max_length=32)


def test_texts_join_train_labelled_by_the_teacher_never_dev_or_eval(tmp_path, caplog):
    from compressor.embedder import labelled_by
    from compressor.unlabeled import add_unlabeled
    teacher, data = _toy(tmp_path)
    texts = ["charming and smart", "great fun", "weak story", "a good film", "boring acting"]
    with caplog.at_level(logging.INFO, logger="compressor.unlabeled"):
        out = add_unlabeled(data, texts, teacher, 32, "u.txt")
    assert [e.text for e in out.train] == ["a good film", "a dull plot", "charming and smart", "boring acting"]
    assert out.dev == data.dev and out.eval == data.eval  # dev and eval untouched
    info = out.info["unlabeled"]
    assert (info["lines"], info["texts"], info["in_dev_or_eval"], info["in_train"]) == (5, 2, 2, 1)
    assert "2 dropped as in dev/eval" in caplog.text
    want = labelled_by(teacher, [Example("charming and smart", -1)], 32)[0].label
    assert out.train[2].label == pytest.approx(want, abs=1e-6) and len(want) == 32
    assert out.info["probe_labels"]["train"] == [1, 0]  # the probe samples the task's own texts only
    with pytest.raises(DataError, match="none of its 2 texts is new"):
        add_unlabeled(data, ["great fun", "a dull plot"], teacher, 32, "u.txt")


def test_unlabeled_needs_the_embeddings_task():
    from compressor.config import RunConfig
    with pytest.raises(ConfigError, match="--unlabeled apply to an embedding model: add --task-type embeddings"):
        RunConfig(unlabeled_file="u.txt").validate()


def test_recipe_round_trip(tmp_path):
    from compressor.config import RunConfig
    from compressor.recipe import dump_recipe, parse_recipe
    (tmp_path / "u.txt").write_text("a text\n")
    (tmp_path / "m2v").mkdir()
    cfg = RunConfig(task_type="embeddings", unlabeled_file=str(tmp_path / "u.txt"),
                    static_baseline=str(tmp_path / "m2v"))
    text = dump_recipe(cfg)
    assert f"  unlabeled: {tmp_path / 'u.txt'}" in text and f"  static_baseline: {tmp_path / 'm2v'}" in text
    values = parse_recipe(text)
    assert values["unlabeled_file"] == str(tmp_path / "u.txt") and values["static_baseline"] == str(tmp_path / "m2v")
    values = parse_recipe("data: {unlabeled: more.txt, static_baseline: m2v, task_type: embeddings}")
    assert (values["unlabeled_file"], values["static_baseline"]) == ("more.txt", "m2v")


# -- compress run --------------------------------------------------------------------------------
def _run(tmp_path, *args):
    from tests.test_embeddings_task import _run as run_embeddings
    return run_embeddings(tmp_path, *args)


def test_compress_run_trains_on_them_and_reports_them(tmp_path):
    from tests.conftest import make_toy_task
    eval_text = make_toy_task(n_train=64, n_eval=24, seed=2).eval[0].text
    words = ("good", "great", "charming", "smart", "fun", "brilliant", "dull", "weak")
    texts = [f"the zebra was {a} and {b}" for a in words for b in words[:5]]  # 40 texts
    unlabeled = tmp_path / "more.txt"
    unlabeled.write_text("\n".join(texts + ["", texts[0], eval_text]) + "\n")
    code, out = _run(tmp_path, "--method", "magnitude", "--sparsity", "0.5", "--recover", "--vocab-prune",
                     "--unlabeled", str(unlabeled))
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    data = doc["data"]
    assert data["unlabeled"] == {"file": str(unlabeled.resolve()), "lines": 41, "texts": 40, "in_dev_or_eval": 1,
                                 "in_train": 0}
    steps = {s["name"]: s["metrics"] for s in doc["steps"]}
    assert steps["distill"]["train_examples"] == data["train_size"] + 40  # recovery trains on them
    batches = math.ceil((data["train_size"] + 40) / 32)  # one epoch at batch size 32
    assert batches > math.ceil(data["train_size"] / 32)
    assert steps["magnitude"]["training"][0]["steps"] == batches  # so does the method's pass
    folder = next(p for p in out.iterdir() if p.name.endswith("-vocab-prune"))
    vocab = json.loads((folder / "model" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "zebra" in vocab  # only the unlabeled texts have it: vocab-prune keeps their tokens
    md = (out / "report.md").read_text()
    assert f"{data['train_size']} + 40 unlabeled" in md and "Unlabeled texts (--unlabeled): 40 from" in md
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path
    jsonschema.validate(doc, json.loads((Path(__file__).parents[1] / "compressor" / "schema"
                                         / "report.schema.json").read_text()))


@pytest.mark.parametrize("content,match", [(None, "file not found"), (b"\n\n", "has no texts"),
                                           (b"\xff\xfe\x00", "not UTF-8")])
def test_a_bad_file_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, content, match):
    from tests.test_embeddings_task import _inputs
    f = tmp_path / "more.txt"
    if content is not None:
        f.write_bytes(content)
    _inputs(tmp_path)
    capsys.readouterr()  # the fixtures' output (transformers 5 shows a progress bar when saving)
    code, out = _run(tmp_path, "--method", "magnitude", "--unlabeled", str(f))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (out / "report.json").exists()


def test_a_classifier_run_refuses_it(tmp_path, capsys):
    from compressor.cli import main
    from tests.test_embeddings_task import _inputs
    _, train, eval_ = _inputs(tmp_path)
    (tmp_path / "more.txt").write_text("a text\n")
    code = main(["run", "minilm", "--unlabeled", str(tmp_path / "more.txt"), "--train", str(train),
                 "--eval", str(eval_), "-o", str(tmp_path / "x"), "-q"])
    assert code == 2
    assert "add --task-type embeddings" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
