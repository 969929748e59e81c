"""compressor.embedding_metrics: teacher agreement, STS, retrieval and probe metrics against
hand-computed values, and the STS / BEIR readers' bad-input errors."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from compressor.embedding_metrics import (_undersample, fidelity, neighbour_agreement, probe_accuracy,
                                          qrels_file, read_retrieval, read_sts, retrieval_scores,
                                          sts_scores, sts_spearman)
from compressor.errors import DataError
from compressor.metrics import spearman


def unit(*degrees):
    """2-d vectors at the given angles (degrees)."""
    return np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


# -- fidelity ------------------------------------------------------------------------------------
def test_fidelity_identical_orthogonal_opposite():
    x = np.random.default_rng(0).normal(size=(6, 5))
    np.testing.assert_allclose(fidelity(x, x), np.ones(6))
    np.testing.assert_allclose(fidelity([[1, 0], [0, 2]], [[0, 3], [5, 0]]), [0, 0], atol=1e-12)
    np.testing.assert_allclose(fidelity(x, -x), -np.ones(6))
    np.testing.assert_allclose(fidelity([[1, 0]], [[1, 1]]), [1 / math.sqrt(2)])


def test_fidelity_is_scale_invariant_per_row():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    scales = np.array([[0.01], [3.0], [7.5], [0.2], [100.0]])
    np.testing.assert_allclose(fidelity(s * scales, t * scales[::-1]), fidelity(s, t))
    assert fidelity([[0, 0]], [[1, 0]])[0] == 0.0  # a zero row has cosine 0, not NaN


def test_fidelity_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        fidelity(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="same shape"):
        fidelity(np.ones((3, 4)), np.ones((2, 4)))


# -- neighbour agreement -------------------------------------------------------------------------
def test_neighbour_agreement_five_points_by_hand():
    # Teacher at 0, 10, 30, 90, 180 degrees; k=2 nearest by angle (cosine):
    #   row 0: {1 (10), 2 (30)}  row 1: {0 (10), 2 (20)}  row 2: {1 (20), 0 (30)}
    #   row 3: {2 (60), 1 (80)}  row 4: {3 (90), 2 (150)}
    # Student at 0, 50, 30, 90, 260 degrees:
    #   row 0: {2 (30), 1 (50)} -> 2/2   row 1: {2 (20), 3 (40)} -> {2} = 1/2
    #   row 2: {1 (20), 0 (30)} -> 2/2   row 3: {1 (40), 2 (60)} -> 2/2
    #   row 4: {0 (100), 2 (130)} -> {2} = 1/2
    teacher = unit(0, 10, 30, 90, 180)
    student = unit(0, 50, 30, 90, 260) * np.array([[1], [2], [0.5], [3], [9]])  # scale does not matter
    agree = neighbour_agreement(student, teacher, k=2)
    np.testing.assert_allclose(agree, [1, 0.5, 1, 1, 0.5])
    assert agree.mean() == pytest.approx(0.8)
    np.testing.assert_allclose(neighbour_agreement(teacher, teacher, k=2), np.ones(5))


def test_neighbour_agreement_ties_go_to_lower_index():
    # The student's row 0 is equally far (cosine 0) from rows 1, 2, 3: its neighbour is row 1.
    student = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], dtype=float)
    towards_1 = np.array([[1, 0], [0.1, 1], [0, 1], [0, 1]])
    towards_3 = np.array([[1, 0], [0, 1], [0, 1], [0.1, 1]])
    assert neighbour_agreement(student, towards_1, k=1)[0] == 1.0
    assert neighbour_agreement(student, towards_3, k=1)[0] == 0.0


def test_neighbour_agreement_caps_k_and_checks_input():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 7))  # dims may differ
    np.testing.assert_allclose(neighbour_agreement(a, b, k=10), np.ones(3))  # k -> 2: all the others
    with pytest.raises(ValueError, match="at least 2 rows"):
        neighbour_agreement(a[:1], b[:1])
    with pytest.raises(ValueError, match="same rows"):
        neighbour_agreement(a, b[:2])


# -- STS -----------------------------------------------------------------------------------------
def test_sts_spearman_with_ties_by_hand():
    emb_a = np.tile([1.0, 0.0], (5, 1))
    emb_b = np.array([[1, 0], [0, 1], [1, 1], [0, 3], [-2, 0]], dtype=float)
    cos = sts_scores(emb_a, emb_b)
    np.testing.assert_allclose(cos, [1, 0, 1 / math.sqrt(2), 0, -1], atol=1e-12)
    gold = [5, 1, 3, 2, 0]
    # ranks of cos [5, 2.5, 4, 2.5, 1] (the two zeros tie), of gold [5, 2, 4, 3, 1]; both mean 3:
    # sum dx*dy = 4 + 0.5 + 1 + 0 + 4 = 9.5, sum dx^2 = 9.5, sum dy^2 = 10 -> rho = sqrt(0.95)
    rho = sts_spearman(emb_a, emb_b, gold)
    assert rho == pytest.approx(math.sqrt(0.95))
    assert rho == pytest.approx(spearman(cos.tolist(), gold))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert rho == pytest.approx(scipy_stats.spearmanr(cos, gold).statistic)
    with pytest.raises(ValueError, match="same shape"):
        sts_scores(emb_a, emb_b[:4])


# -- retrieval -----------------------------------------------------------------------------------
def retrieval_case():
    """12 documents d0..d11 at 0, 5, ..., 55 degrees, stored in a shuffled order; the query at 0
    degrees ranks them d0, d1, ..., d11."""
    order = [7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6]
    corpus_ids = [f"d{i}" for i in order]
    corpus_emb = unit(*[5 * i for i in order]) * np.linspace(1, 3, 12)[:, None]
    return corpus_emb, corpus_ids


def test_retrieval_ndcg_and_recall_by_hand():
    corpus_emb, corpus_ids = retrieval_case()
    qrels = {"q1": {"d1": 2, "d3": 1, "d10": 3, "d5": 0},
             "q2": {"d0": 1},
             "q3": {"d4": 0},                       # nothing relevant: left out
             "q9": {"d0": 1}}                       # not among the queries: ignored
    query_ids = ["q1", "q2", "q3", "q4"]            # q4 has no qrels: left out
    query_emb = unit(0, 0, 0, 0)
    out = retrieval_scores(query_emb, corpus_emb, qrels, query_ids, corpus_ids, k=10)
    assert out["query_ids"] == ["q1", "q2"]
    # q1, top 10 = d0..d9: d1 (rel 2) at rank 2, d3 (rel 1) at rank 4; d10 (rel 3) is rank 11.
    # DCG = 2/log2(3) + 1/log2(5) = 1.261860 + 0.430677 = 1.692536
    # IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.261860 + 0.5 = 4.761860
    # nDCG@10 = 1.692536 / 4.761860 = 0.355436 (exponential gain 2^rel - 1 would give 0.2474)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert out["ndcg"][0] == pytest.approx(dcg / idcg) and out["ndcg"][0] == pytest.approx(0.355436, abs=1e-6)
    assert out["recall"][0] == pytest.approx(2 / 3)  # d1, d3 of {d1, d3, d10}
    assert out["ndcg"][1] == 1.0 and out["recall"][1] == 1.0  # q2: d0 at rank 1

    at3 = retrieval_scores(query_emb, corpus_emb, qrels, query_ids, corpus_ids, k=3)
    # top 3 = d0, d1, d2: DCG = 2/log2(3) = 1.261860; IDCG@3 is the same 4.761860 -> 0.264991
    assert at3["ndcg"][0] == pytest.approx((2 / math.log2(3)) / idcg)
    assert at3["recall"][0] == pytest.approx(1 / 3)


def test_retrieval_ties_go_to_earlier_corpus_row():
    corpus_emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: the same cosine
    ids = ["a", "b", "c"]
    first = retrieval_scores([[1, 0]], corpus_emb, {"q": {"a": 1}}, ["q"], ids, k=1)
    second = retrieval_scores([[1, 0]], corpus_emb, {"q": {"b": 1}}, ["q"], ids, k=1)
    assert first["recall"][0] == 1.0 and second["recall"][0] == 0.0
    with pytest.raises(ValueError, match="one id per row"):
        retrieval_scores([[1, 0]], corpus_emb, {}, ["q", "r"], ids)


# -- classification probe ------------------------------------------------------------------------
def blobs(n, seed, shuffle_labels=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    emb = rng.normal(size=(n, 8)) + 4.0 * labels[:, None]
    if shuffle_labels:
        labels = rng.permutation(labels)
    return emb, labels


def test_probe_separable_near_one():
    (xt, yt), (xe, ye) = blobs(200, 0), blobs(300, 1)
    correct = probe_accuracy(xt, yt, xe, ye)
    assert correct.shape == (300,) and correct.mean() >= 0.97
    np.testing.assert_allclose(correct * 10, np.round(correct * 10))  # the mean of 10 experiments
    np.testing.assert_array_equal(correct, probe_accuracy(xt, yt, xe, ye))  # seeded
    full = probe_accuracy(xt, yt, xe, ye, samples_per_label=None)
    assert set(np.unique(full)) <= {0.0, 1.0} and full.mean() >= 0.97


def test_probe_shuffled_labels_near_chance():
    (xt, yt), (xe, ye) = blobs(400, 2, shuffle_labels=True), blobs(1000, 3, shuffle_labels=True)
    assert abs(probe_accuracy(xt, yt, xe, ye).mean() - 0.5) < 0.08
    assert abs(probe_accuracy(xt, yt, xe, ye, samples_per_label=None).mean() - 0.5) < 0.08


def test_probe_undersampling_takes_first_rows_of_each_label():
    labels = [0, 1, 0, 0, 1, 2, 1, 0]
    assert _undersample(labels, [7, 6, 5, 4, 3, 2, 1, 0], 2) == [7, 6, 5, 4, 3]
    assert _undersample(labels, [3, 1, 0], None) == [0, 1, 3]
    with pytest.raises(ValueError, match="at least 2 labels"):
        probe_accuracy(np.ones((4, 2)), [1, 1, 1, 1], np.ones((2, 2)), [1, 1])


# -- read_sts ------------------------------------------------------------------------------------
def test_read_sts_tsv_csv_jsonl(tmp_path):
    tsv = tmp_path / "sts.tsv"
    tsv.write_text("score\tsentence1\tsentence2\n"
                   "4.5\tA man sings.\tA man is singing.\n0\tA cat.\tThe stock fell.\n")
    assert read_sts(tsv) == [("A man sings.", "A man is singing.", 4.5), ("A cat.", "The stock fell.", 0.0)]
    csv_file = tmp_path / "sts.csv"
    csv_file.write_text('sentence1,sentence2,score\n"Hi, there",Hello,3.2\n')
    assert read_sts(csv_file) == [("Hi, there", "Hello", 3.2)]
    jsonl = tmp_path / "sts.jsonl"
    jsonl.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 2}) + "\n")
    assert read_sts(jsonl) == [("a", "b", 2.0)]


def assert_one_line_error(call, needles) -> None:
    """``call()`` raises a DataError of one line containing every needle."""
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("name, text, needles", [
    ("bad.tsv", "sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\thigh\n",
     ["bad.tsv", "line 3", "'high'", "finite number"]),
    ("nan.csv", "sentence1,sentence2,score\na,b,nan\n", ["nan.csv", "line 2", "'nan'", "finite number"]),
    ("bad.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "n/a"}\n', ["bad.jsonl", "line 1", "'n/a'"]),
    ("nohead.tsv", "a\tb\t1.0\n", ["nohead.tsv", "'sentence1'", "header row"]),
    ("sts.txt", "sentence1\tsentence2\tscore\n", ["sts.txt", "'.txt'", ".tsv, .csv, .jsonl"]),
])
def test_read_sts_bad_input(tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_error(lambda: read_sts(path), needles)


# -- read_retrieval ------------------------------------------------------------------------------
def write_beir(folder, corpus=None, queries=None, qrels=None, split="test"):
    corpus = corpus if corpus is not None else [
        json.dumps({"_id": "d1", "title": "Paris", "text": "The capital of France."}),
        json.dumps({"_id": "d2", "title": "", "text": "Bananas are yellow."}),
        json.dumps({"_id": 3, "text": "No title here."})]
    queries = queries if queries is not None else [
        json.dumps({"_id": "q1", "text": "capital of france"}), json.dumps({"_id": "q2", "text": "fruit"})]
    qrels = qrels if qrels is not None else ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q2\td2\t1", "q2\t3\t0"]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def test_read_retrieval_beir_layout(tmp_path):
    queries, corpus, qrels = read_retrieval(write_beir(tmp_path / "task"))
    assert queries == {"q1": "capital of france", "q2": "fruit"}
    assert corpus == {"d1": "Paris The capital of France.", "d2": "Bananas are yellow.", "3": "No title here."}
    assert qrels == {"q1": {"d1": 2}, "q2": {"d2": 1, "3": 0}}
    assert qrels_file(tmp_path / "task").name == "test.tsv"


def test_read_retrieval_falls_back_to_dev_and_says_so(tmp_path, caplog):
    folder = write_beir(tmp_path / "task", split="dev")
    assert qrels_file(folder).name == "dev.tsv"
    with caplog.at_level(logging.INFO, logger="compressor.embedding_metrics"):
        _, _, qrels = read_retrieval(folder)
    assert qrels["q1"] == {"d1": 2}
    assert "qrels/dev.tsv" in caplog.text


HEADER = "query-id\tcorpus-id\tscore"


@pytest.mark.parametrize("kwargs, needles", [
    ({"qrels": [HEADER, "q1\td1\t1", "q1\td99\t1"]}, ["test.tsv", "line 3", "'d99'", "corpus.jsonl"]),
    ({"qrels": [HEADER, "q7\td1\t1"]}, ["test.tsv", "line 2", "'q7'", "queries.jsonl"]),
    ({"qrels": [HEADER, "q1\td1\t1.5"]}, ["test.tsv", "line 2", "'1.5'", "whole numbers"]),
    ({"qrels": [HEADER, "q1\td1\thigh"]}, ["line 2", "'high'", "not an integer"]),
    ({"qrels": ["q1\td1\t1"]}, ["test.tsv", "line 1", "'query-id'", "header"]),
    ({"corpus": ['{"_id": "d1", "text": "ok"}', '{"_id": "d2", "text": "broken']},
     ["corpus.jsonl", "line 2", "broken", "JSON object per line"]),
    ({"queries": ['{"_id": "q1", "text": "a"}', '{"text": "no id"}']},
     ["queries.jsonl", "line 2", "'_id'", "no id"]),
    ({"corpus": ['{"_id": "d1", "text": "a"}', '{"_id": "d1", "text": "b"}']},
     ["corpus.jsonl", "line 2", "'d1'", "unique"]),
])
def test_read_retrieval_bad_input(tmp_path, kwargs, needles):
    folder = write_beir(tmp_path / "task", **kwargs)
    assert_one_line_error(lambda: read_retrieval(folder), needles)


def test_read_retrieval_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match="not found.*corpus.jsonl"):
        read_retrieval(tmp_path / "nowhere")
    folder = write_beir(tmp_path / "task")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match="has no corpus.jsonl"):
        read_retrieval(folder)
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"no qrels/test.tsv or qrels/dev.tsv"):
        read_retrieval(folder)
