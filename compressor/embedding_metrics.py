"""Quality of a sentence-embedding model against its teacher and on labeled tasks (issue 26).

Pure numpy (the probe also needs scikit-learn, imported when called). Every function takes
embeddings as (n, d) arrays, one row per text; cosine similarity is used throughout (a zero row
has cosine 0 with everything). Per-row / per-query arrays come back so callers can average,
bootstrap or pair them; the task score is their mean.

- :func:`fidelity`: per-row cosine of the student's embedding to the teacher's.
- :func:`neighbour_agreement`: per-row overlap of the top-k cosine neighbours (student vs teacher).
- :func:`sts_scores`, :func:`sts_spearman`: pair similarity; Spearman of cosines vs gold scores
  by :func:`compressor.metrics.spearman` (as MTEB's STS: Spearman of cosine similarity).
- :func:`retrieval_scores`: nDCG@k and recall@k per query as BEIR / pytrec_eval compute them.
- :func:`probe_accuracy`: MTEB's classification protocol (logistic regression on frozen
  embeddings, 10 experiments on undersampled train sets).
- :func:`read_sts`, :func:`read_retrieval` (:func:`qrels_file`): the data files, DataError (one
  line naming the file, line, value and what is allowed) on bad input.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from compressor.data import read_rows
from compressor.errors import DataError
from compressor.metrics import spearman

log = logging.getLogger(__name__)

_BLOCK = 1024
"""Rows of a similarity matrix computed at once (bounds memory to _BLOCK x n floats)."""


def _matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (rows, dims): got shape {a.shape}")
    return a


def _unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (cosine 0 with everything)."""
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first; ties go to the lower index
    (stable sort)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# -- teacher agreement ---------------------------------------------------------------------------
def fidelity(student, teacher) -> np.ndarray:
    """Per-row cosine similarity of ``student[i]`` and ``teacher[i]`` (both (n, d), same shape:
    ValueError otherwise), in [-1, 1]. The mean is the "fidelity" score. Scale-invariant per row."""
    s, t = _matrix(student, "student"), _matrix(teacher, "teacher")
    if s.shape != t.shape:
        raise ValueError(f"fidelity needs student and teacher of the same shape: got {s.shape} and {t.shape}")
    return np.clip(np.sum(_unit(s) * _unit(t), axis=1), -1.0, 1.0)


def _neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k cosine nearest neighbours within ``emb``, itself excluded."""
    u = _unit(emb)
    out = np.empty((len(u), k), dtype=np.int64)
    for start in range(0, len(u), _BLOCK):
        sims = u[start:start + _BLOCK] @ u.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        out[start:start + _BLOCK] = _top_k(sims, k)
    return out


def neighbour_agreement(student, teacher, k: int = 10) -> np.ndarray:
    """Per-row ``|top-k(student) ∩ top-k(teacher)| / k``: the share of each row's k cosine
    nearest neighbours within the same corpus (the row itself excluded) that the student and the
    teacher agree on. ``k`` is capped at n - 1; ties between equal similarities go to the lower
    row index. The two may have different dims but need the same n; ValueError for n < 2 or k < 1."""
    s, t = _matrix(student, "student"), _matrix(teacher, "teacher")
    if len(s) != len(t):
        raise ValueError("neighbour_agreement needs the same rows for student and teacher: "
                         f"got {len(s)} and {len(t)}")
    if len(s) < 2:
        raise ValueError(f"neighbour_agreement needs at least 2 rows: got {len(s)}")
    if k < 1:
        raise ValueError(f"neighbour_agreement needs k >= 1: got {k}")
    k = min(k, len(s) - 1)
    ns, nt = _neighbours(s, k), _neighbours(t, k)
    return np.array([len(set(a) & set(b)) / k for a, b in zip(ns.tolist(), nt.tolist())])


# -- pair similarity (STS) -----------------------------------------------------------------------
def sts_scores(emb_a, emb_b) -> np.ndarray:
    """Cosine similarity of each pair ``(emb_a[i], emb_b[i])`` (same shape: ValueError otherwise)."""
    a, b = _matrix(emb_a, "emb_a"), _matrix(emb_b, "emb_b")
    if a.shape != b.shape:
        raise ValueError(f"sts_scores needs two arrays of the same shape: got {a.shape} and {b.shape}")
    return np.clip(np.sum(_unit(a) * _unit(b), axis=1), -1.0, 1.0)


def sts_spearman(emb_a, emb_b, gold) -> float:
    """Spearman's rho of the pair cosines (:func:`sts_scores`) against the ``gold`` scores, by
    :func:`compressor.metrics.spearman` (ties averaged): MTEB's STS main score (cosine Spearman)."""
    return spearman(sts_scores(emb_a, emb_b).tolist(), list(gold))


# -- retrieval -----------------------------------------------------------------------------------
def retrieval_scores(query_emb, corpus_emb, qrels: dict, query_ids, corpus_ids, k: int = 10) -> dict:
    """nDCG@k and recall@k per query, ranking ``corpus_emb`` by cosine to each query.

    As BEIR computes them through pytrec_eval (``ndcg_cut_k``, ``recall_k``):
    DCG@k = sum over ranks i = 1..k of ``rel_i / log2(i + 1)`` (linear gain: the graded
    relevance of the doc at rank i in ``qrels``, 0 when unjudged, negatives count as 0); the ideal
    DCG ranks the query's own qrels relevances, highest first, cut at k; nDCG = DCG / ideal.
    recall@k = relevant docs (rel > 0) in the top k / all relevant docs of the query (not capped
    at k). Ties between equal cosines go to the earlier corpus row (trec_eval breaks exact ties
    by doc id instead; this only matters for identical scores).

    ``qrels``: ``{query_id: {corpus_id: relevance}}``; ``query_ids`` / ``corpus_ids`` name the
    rows of ``query_emb`` / ``corpus_emb``. Queries without a relevant doc are left out. Returns
    ``{"ndcg": array, "recall": array, "query_ids": [the queries scored, in order]}``.
    """
    q, c = _matrix(query_emb, "query_emb"), _matrix(corpus_emb, "corpus_emb")
    query_ids, corpus_ids = list(query_ids), list(corpus_ids)
    if len(query_ids) != len(q) or len(corpus_ids) != len(c):
        raise ValueError(f"retrieval_scores needs one id per row: {len(query_ids)} query ids for {len(q)} "
                         f"rows, {len(corpus_ids)} corpus ids for {len(c)} rows")
    if q.shape[1] != c.shape[1]:
        raise ValueError("retrieval_scores needs queries and corpus of the same dims: "
                         f"got {q.shape[1]} and {c.shape[1]}")
    if k < 1:
        raise ValueError(f"retrieval_scores needs k >= 1: got {k}")
    rows = [i for i, qid in enumerate(query_ids) if any(r > 0 for r in qrels.get(qid, {}).values())]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    qu, cu = _unit(q), _unit(c)
    ndcg, recall = [], []
    for start in range(0, len(rows), _BLOCK):
        block = rows[start:start + _BLOCK]
        ranked = _top_k(qu[block] @ cu.T, min(k, len(c)))
        for i, top in zip(block, ranked.tolist()):
            judged = qrels[query_ids[i]]
            gains = np.array([max(judged.get(corpus_ids[j], 0), 0) for j in top], dtype=np.float64)
            ideal = np.array(sorted((r for r in judged.values() if r > 0), reverse=True)[:k], dtype=np.float64)
            ndcg.append(float(gains @ discount[:len(gains)]) / float(ideal @ discount[:len(ideal)]))
            recall.append(float(np.count_nonzero(gains > 0)) / sum(1 for r in judged.values() if r > 0))
    return {"ndcg": np.array(ndcg), "recall": np.array(recall), "query_ids": [query_ids[i] for i in rows]}


# -- classification probe ------------------------------------------------------------------------
PROBE_EXPERIMENTS = 10
PROBE_SAMPLES_PER_LABEL = 8
PROBE_MAX_ITER = 100
"""MTEB's AbsTaskClassification defaults: ``n_experiments = 10``, ``samples_per_label = 8``,
``LogisticRegression(max_iter=100)`` (mteb/abstasks/classification.py)."""


def _undersample(labels: list, order: list[int], samples_per_label: int | None) -> list[int]:
    """The first ``samples_per_label`` rows of each label in ``order`` (all rows for None)."""
    if samples_per_label is None:
        return sorted(order)
    taken, count = [], defaultdict(int)
    for i in order:
        if count[labels[i]] < samples_per_label:
            taken.append(i)
            count[labels[i]] += 1
    return taken


def probe_accuracy(train_emb, train_labels, eval_emb, eval_labels, *, seed: int = 0,
                   n_experiments: int = PROBE_EXPERIMENTS,
                   samples_per_label: int | None = PROBE_SAMPLES_PER_LABEL) -> np.ndarray:
    """Per eval row, the share of ``n_experiments`` linear probes that classify it correctly
    (each 0 or 1; with several experiments the mean over them). Its mean is MTEB's classification
    accuracy (the mean of the experiments' accuracies).

    MTEB's protocol (``AbsTaskClassification._evaluate_subset`` / ``_undersample_data`` in
    mteb/abstasks/classification.py, mteb 2.x): a list of train row indices is shuffled in place
    by ``np.random.RandomState(seed)`` at the start of every experiment (the shuffles compound, so
    each experiment draws a different subset); the experiment's train set is the first
    ``samples_per_label`` rows of each label in that order; a
    ``sklearn.linear_model.LogisticRegression(max_iter=100, random_state=seed)`` (lbfgs, C=1) is
    fit on those train embeddings and predicts every eval row. MTEB's seed is 42 by default
    (pass ``seed=42`` for its draws); ``samples_per_label=None`` fits on the whole train set.
    ValueError when an experiment's train set holds fewer than 2 labels.
    """
    from sklearn.linear_model import LogisticRegression

    x_train, x_eval = _matrix(train_emb, "train_emb"), _matrix(eval_emb, "eval_emb")
    y_train, y_eval = list(train_labels), np.asarray(list(eval_labels))
    if len(y_train) != len(x_train) or len(y_eval) != len(x_eval):
        raise ValueError(f"probe_accuracy needs one label per row: {len(y_train)} train labels for "
                         f"{len(x_train)} rows, {len(y_eval)} eval labels for {len(x_eval)} rows")
    if n_experiments < 1:
        raise ValueError(f"probe_accuracy needs n_experiments >= 1: got {n_experiments}")
    order = list(range(len(y_train)))
    correct = np.zeros(len(x_eval))
    if samples_per_label is None:
        n_experiments = 1  # every experiment fits the same rows: the same probe (lbfgs is deterministic)
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(order)
        rows = _undersample(y_train, order, samples_per_label)
        labels = [y_train[i] for i in rows]
        if len(set(labels)) < 2:
            raise ValueError("probe_accuracy needs at least 2 labels in the train set: "
                             f"got {sorted(set(labels))}")
        probe = LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
        probe.fit(x_train[rows], np.asarray(labels))
        correct += probe.predict(x_eval) == y_eval
    return correct / n_experiments


# -- readers -------------------------------------------------------------------------------------
STS_EXTENSIONS = (".tsv", ".csv", ".jsonl")
STS_COLUMNS = ("sentence1", "sentence2", "score")


def read_sts(path) -> list[tuple[str, str, float]]:
    """Sentence pairs with gold scores: ``[(sentence1, sentence2, score)]``.

    A .tsv/.csv file with a header row naming the columns ``sentence1``, ``sentence2``, ``score``
    (any order, other columns ignored), or a .jsonl file of objects with those keys. DataError
    (one line: file, line, value, what is allowed) for another extension, a missing or empty file,
    a missing column or value, or a score that is not a finite number.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in STS_EXTENSIONS:
        raise DataError(f"STS file {str(path)!r} has unknown extension {ext or '(none)'!r}: "
                        f"allowed {', '.join(STS_EXTENSIONS)}")
    columns, rows = read_rows(path)
    missing = [c for c in STS_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"STS file {str(path)!r} has no column {missing[0]!r}: expected a header row with "
                        f"{', '.join(STS_COLUMNS)}; found {', '.join(columns) or '(none)'}")
    if not rows:
        raise DataError(f"STS file {str(path)!r} has no rows: expected pairs with {', '.join(STS_COLUMNS)}")
    pairs = []
    for lineno, row in rows:
        for col in ("sentence1", "sentence2"):
            if not isinstance(row.get(col), str):
                raise DataError(f"STS file {str(path)!r}: line {lineno}: {col} {row.get(col)!r} is not "
                                "allowed: expected a text on every row")
        value = row.get("score")
        score = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            score = float(value)
        elif isinstance(value, str):
            try:
                score = float(value.strip())
            except ValueError:
                pass
        if score is None or not math.isfinite(score):
            raise DataError(f"STS file {str(path)!r}: line {lineno}: score {value!r} is not a number: "
                            "allowed a finite number on every row (e.g. 3.8)")
        pairs.append((row["sentence1"], row["sentence2"], score))
    return pairs


BEIR_LAYOUT = "corpus.jsonl, queries.jsonl and qrels/test.tsv (or qrels/dev.tsv)"
QRELS_FILES = ("test.tsv", "dev.tsv")
QRELS_COLUMNS = ("query-id", "corpus-id", "score")
QRELS_HEADER = "query-id<TAB>corpus-id<TAB>score"
_INT = re.compile(r"[+-]?\d+")


def qrels_file(folder) -> Path:
    """The qrels file :func:`read_retrieval` reads in a BEIR folder: ``qrels/test.tsv``, else
    ``qrels/dev.tsv``. DataError when the folder or both files are missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"retrieval folder {str(folder)!r} not found: expected a folder with {BEIR_LAYOUT}")
    for name in QRELS_FILES:
        if (folder / "qrels" / name).is_file():
            return folder / "qrels" / name
    raise DataError(f"retrieval folder {str(folder)!r} has no qrels/test.tsv or qrels/dev.tsv: "
                    f"expected {BEIR_LAYOUT}")


def _read_jsonl(path: Path, what: str, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line, object) of each non-blank line of a JSONL file; DataError for a missing file, a line
    that is not a JSON object or an object without one of ``fields``."""
    if not path.is_file():
        raise DataError(f"retrieval folder {str(path.parent)!r} has no {path.name}: expected {BEIR_LAYOUT}")
    allowed = f"one JSON object per line with {', '.join(repr(f) for f in fields)}"
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{what} file {str(path)!r}: line {lineno}: malformed JSON ({e.msg}) "
                            f"{line[:80]!r}: allowed {allowed}") from None
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise DataError(f"{what} file {str(path)!r}: line {lineno}: {line[:80]!r} has no {missing[0]!r}: "
                            f"allowed {allowed}")
        out.append((lineno, item))
    if not out:
        raise DataError(f"{what} file {str(path)!r} is empty: expected {allowed}")
    return out


def _texts(path: Path, what: str, titled: bool) -> dict[str, str]:
    """``{_id: text}`` of a BEIR corpus (``title + " " + text`` when a title is given) or queries file."""
    texts: dict[str, str] = {}
    for lineno, item in _read_jsonl(path, what, ("_id", "text")):
        key, text, title = str(item["_id"]), item["text"], item.get("title") if titled else None
        if not isinstance(text, str) or not (title is None or isinstance(title, str)):
            raise DataError(f"{what} file {str(path)!r}: line {lineno}: text {text!r} of {key!r} is not "
                            "allowed: expected strings for 'text' and 'title'")
        if key in texts:
            raise DataError(f"{what} file {str(path)!r}: line {lineno}: _id {key!r} is not allowed: "
                            "it is already on an earlier line (ids must be unique)")
        texts[key] = f"{title} {text}" if title else text
    return texts


def read_retrieval(folder) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """``(queries, corpus, qrels)`` of a retrieval task in BEIR's layout.

    ``corpus.jsonl``: ``{"_id", "title", "text"}`` per line (text = title + " " + text when a
    title is given, as BEIR's sentence-transformers encoding); ``queries.jsonl``:
    ``{"_id", "text"}``; ``qrels/test.tsv`` (``qrels/dev.tsv`` when there is no test file, see
    :func:`qrels_file`; the file read is logged) with the header ``query-id corpus-id score`` and
    integer relevances. Ids are strings. ``qrels``: ``{query_id: {corpus_id: relevance}}``.
    DataError (one line: file, line, value, what is allowed) for a missing folder or file,
    malformed JSON, a duplicate id, a qrels query-id not in the queries, a corpus-id not in the
    corpus, or a relevance that is not an integer.
    """
    folder = Path(folder)
    qrels_path = qrels_file(folder)
    corpus = _texts(folder / "corpus.jsonl", "corpus", titled=True)
    queries = _texts(folder / "queries.jsonl", "queries", titled=False)
    columns, rows = read_rows(qrels_path)
    missing = [c for c in QRELS_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"qrels file {str(qrels_path)!r}: line 1 has no column {missing[0]!r} (found "
                        f"{', '.join(columns) or '(none)'}): expected the header row {QRELS_HEADER}")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, row in rows:
        qid, did, rel = (str(row.get(c) or "").strip() for c in QRELS_COLUMNS)
        where = f"qrels file {str(qrels_path)!r}: line {lineno}"
        if qid not in queries:
            raise DataError(f"{where}: query-id {qid!r} is not in queries.jsonl: allowed the ids of "
                            f"queries.jsonl ({len(queries)} queries)")
        if did not in corpus:
            raise DataError(f"{where}: corpus-id {did!r} is not in corpus.jsonl: allowed the ids of "
                            f"corpus.jsonl ({len(corpus)} documents)")
        if not _INT.fullmatch(rel):
            raise DataError(f"{where}: relevance {row.get('score')!r} is not an integer: allowed whole "
                            "numbers (0 = not relevant, 1, 2, ... graded)")
        qrels.setdefault(qid, {})[did] = int(rel)
    if not qrels:
        raise DataError(f"qrels file {str(qrels_path)!r} has no rows: "
                        f"expected lines under the header {QRELS_HEADER}")
    log.info("retrieval task %s: %d queries, %d documents, %d judged queries from %s", folder,
             len(queries), len(corpus), len(qrels), qrels_path.relative_to(folder))
    return queries, corpus, qrels
