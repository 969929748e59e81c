"""Accuracy baselines for reports: the majority class, the gap closed and collapse detection,
and the regression metrics.

Pure python (no torch). Accuracies are fractions in [0, 1]; "a point" is 0.01.

The task metric: accuracy for a classification task, Pearson's r for a regression task (float
labels, :mod:`compressor.data`). Wherever a run records an "accuracy" (the training loop's dev
selection, the reports' ``accuracy_*`` keys, the collapse checks, ``--max-drop`` points) a
regression task's value is Pearson's r (in [-1, 1]; "a point" is 0.01 of r) and its trivial
baseline, predicting the train mean, scores 0 (:func:`majority_accuracy` of float labels), so
"gap closed" is ``r / r_dense``. A constant prediction has no Pearson's r: it counts as 0, the
trivial level, so a regression model that collapsed to one output is a collapse.

- :func:`majority_accuracy`: accuracy of always predicting the most frequent label.
- :func:`gap_closed`: ``(acc - majority) / (dense - majority)``, the share of the dense model's
  gain over the majority class that a compressed model keeps (1 = all of it, 0 = none).
- :func:`collapse`: why a result is a collapse (at the majority class, or one class predicted
  for nearly every row), or None. A collapsed model is reported as such, never as a result.
- :func:`clearly_above`: whether an accuracy on n rows is told apart from the majority class.
- :func:`training_collapse`: whether a training call should stop after its latest epoch, from
  the dev metrics of its epochs so far (the training loop's early stop).
- :func:`pearson`, :func:`spearman` (Pearson's r of the ranks, ties averaged:
  :func:`average_ranks`), :func:`regression_scores`: the regression metrics; :func:`is_regression`
  tells a regression task's labels (floats) from class ids (ints).
- :func:`entity_spans`, :func:`entity_counts`, :func:`entity_scores`: a token-classification
  task's metric, entity-level micro F1 with exact spans under strict IOB2 (seqeval's
  ``mode="strict", scheme=IOB2``); its "accuracy" is that F1 and its trivial baseline, tagging
  every word ``O``, scores 0 (:func:`is_tagging` tells its examples: they have ``words``).
- :func:`multi_label_scores`, :func:`choose_threshold`, :func:`multi_label_counts`: a multi-label
  task's metric, micro F1 over every (row, label) decision at one global probability threshold
  (macro F1, precision and recall beside it); the threshold is chosen on dev from
  :data:`THRESHOLDS` and applied on eval. Its labels are :class:`MultiHot` (:func:`is_multi_label`)
  and its trivial baseline, predicting no label, scores 0.
- :func:`normalize_answer`, :func:`squad_exact`, :func:`squad_f1`, :func:`squad_scores`: a
  question-answering task's metric (:mod:`compressor.qa`), as the official SQuAD script computes
  it (v2.0's ``compute_f1``: a question without an answer is right only for ""); its "accuracy"
  is SQuAD F1 (:data:`QA_METRIC`) and its trivial baseline, the empty answer, scores the fraction
  of questions without an answer (:func:`no_answer_fraction`).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable

COLLAPSE_WITHIN = 0.01
"""A model whose accuracy is at most this above the majority class (1 point) has collapsed."""
COLLAPSE_SHARE = 0.97
"""A model that predicts one class for more than this share of the rows has collapsed."""


EMBEDDING_METRIC = "fidelity"
"""The task metric of an embedding task (labels are the dense model's sentence embeddings): the
mean cosine of the model's embedding to them; the trivial baseline is one constant embedding, their
mean direction (:func:`majority_accuracy`)."""
TOKEN_METRIC = "entity_f1"
"""The task metric of a token-classification task (what its "accuracy" keys hold): micro F1 of the
entities; precision and recall are reported beside it."""
REGRESSION_METRIC = "pearson"
"""The task metric of a regression task (what its "accuracy" keys hold); Spearman is reported beside."""
CLASSIFICATION_METRIC = "accuracy"
MULTI_LABEL_METRIC = "micro_f1"
"""The task metric of a multi-label task: micro F1 of the (row, label) decisions at the threshold
chosen on dev; macro F1 is reported beside it."""
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""The probability thresholds a multi-label model's one global threshold is chosen from (0.05..0.95)."""
DEFAULT_THRESHOLD = 0.5
"""A multi-label model's threshold where none was chosen on dev (a pass's record of eval, a check
that compares two models on the same rows)."""


class MultiHot(tuple):
    """A multi-label example's label: 0 or 1 per label of the task, in ``label_names`` order (all
    zeros: a row with no label). A tuple of its own type, so it is never taken for an embedding
    task's vector label."""

    __slots__ = ()


def _labels(rows: Iterable) -> list[int]:
    """Integer labels of ``rows``: Examples (their ``label``) or plain integers."""
    return [int(getattr(r, "label", r)) for r in rows]


def is_regression(rows: Iterable) -> bool:
    """Whether ``rows`` (Examples or labels) are a regression task's: float labels (class ids are
    ints). False for no rows."""
    return any(isinstance(getattr(r, "label", r), float) for r in rows)


def is_embedding(rows: Iterable) -> bool:
    """Whether ``rows`` (Examples or labels) are an embedding task's: vector labels (the dense
    model's sentence embeddings, tuples of floats). False for no rows."""
    return any(isinstance(getattr(r, "label", r), (tuple, list)) and getattr(r, "words", None) is None
               and not isinstance(getattr(r, "label", r), MultiHot) for r in rows)


def is_multi_label(rows: Iterable) -> bool:
    """Whether ``rows`` (Examples or labels) are a multi-label task's: :class:`MultiHot` labels."""
    return any(isinstance(getattr(r, "label", r), MultiHot) for r in rows)


def is_tagging(rows: Iterable) -> bool:
    """Whether ``rows`` (Examples) are a token-classification task's: they have ``words`` (and a
    tag id per word as their label). False for no rows."""
    return any(getattr(r, "words", None) is not None for r in rows)


def metric_name(rows: Iterable) -> str:
    """The task metric of ``rows``: ``"pearson"`` for regression labels, ``"fidelity"`` for
    embedding labels, else ``"accuracy"``."""
    rows = list(rows)
    if is_qa(rows):
        return QA_METRIC
    if is_tagging(rows):
        return TOKEN_METRIC
    if is_multi_label(rows):
        return MULTI_LABEL_METRIC
    if is_embedding(rows):
        return EMBEDDING_METRIC
    return REGRESSION_METRIC if is_regression(rows) else CLASSIFICATION_METRIC


def cosines(predictions, targets) -> list[float]:
    """Cosine of each prediction vector to its target vector (0 where either is all zeros)."""
    out = []
    for p, t in zip(predictions, targets):
        dot = sum(a * b for a, b in zip(p, t))
        norm = math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in t))
        out.append(dot / norm if norm > 0 else 0.0)
    return out


def trivial_fidelity(targets) -> float:
    """Mean cosine of one constant embedding, the targets' mean, to every target: what an
    embedder that gives every text the same vector scores (an embedding task's collapse level)."""
    targets = [list(getattr(t, "label", t)) for t in targets]
    if not targets:
        return 0.0
    mean = [sum(col) / len(targets) for col in zip(*targets)]
    return sum(cosines([mean] * len(targets), targets)) / len(targets)


def majority_accuracy(examples: Iterable, label: int | None = None) -> float:
    """Accuracy of always predicting ``label`` (default: the most frequent label of
    ``examples``) on ``examples`` (Examples or integer labels). 0.0 for no examples, and for
    regression labels (floats): the trivial baseline there, predicting the train mean, is a
    constant whose Pearson's r counts as 0."""
    examples = list(examples)
    if is_qa(examples):  # always answering "": right on the questions without an answer
        return no_answer_fraction(examples)
    if is_tagging(examples) or is_multi_label(examples):
        return 0.0  # all-O finds no entity, no label predicted finds none: F1 0
    if is_embedding(examples):
        return trivial_fidelity(examples)
    if is_regression(examples):
        return 0.0
    labels = _labels(examples)
    if not labels:
        return 0.0
    counts = Counter(labels)
    hits = counts[label] if label is not None else max(counts.values())
    return hits / len(labels)


def gap_closed(acc: float, dense: float, majority: float) -> float | None:
    """``(acc - majority) / (dense - majority)``; None when the dense model does not beat the
    majority class (the ratio has no meaning then). Can be < 0 (worse than the majority class)
    or > 1 (better than dense)."""
    span = dense - majority
    if span <= 1e-12:
        return None
    return (acc - majority) / span


def prediction_share(predictions: Iterable) -> tuple[int | None, float]:
    """(most predicted class, its share of the rows); ``(None, 0.0)`` for no predictions."""
    preds = _labels(predictions)
    if not preds:
        return None, 0.0
    label, n = Counter(preds).most_common(1)[0]
    return label, n / len(preds)


def collapse(acc: float, majority: float, predictions: Iterable | None = None, *,
             within: float = COLLAPSE_WITHIN, max_share: float = COLLAPSE_SHARE) -> str | None:
    """One line saying why a model with accuracy ``acc`` has collapsed, or None if it has not.

    Collapsed: ``acc <= majority + within`` (at, near or below the majority class), or, given
    its ``predictions`` (class ids, one per eval row), one class for more than ``max_share`` of
    the rows (a model that nearly always says one class is a collapse even where the classes
    are balanced enough for its accuracy to look like more)."""
    if acc <= majority + within:
        return (f"accuracy {100 * acc:.2f}% is within {100 * within:.1f} point(s) of the majority "
                f"class ({100 * majority:.2f}%) or below it")
    if predictions is not None:
        label, share = prediction_share(predictions)
        if label is not None and share > max_share:
            return f"predicts class {label} for {100 * share:.1f}% of the rows (more than {100 * max_share:.0f}%)"
    return None


def is_collapse(acc: float, majority: float, predictions: Iterable | None = None, **kwargs) -> bool:
    """True if :func:`collapse` gives a reason."""
    return collapse(acc, majority, predictions, **kwargs) is not None


TRAINING_MIN_ROWS = 50
"""Dev rows below which a training loop's dev accuracy cannot tell a collapse from chance (a model
still learning scores at the majority class on a handful of rows): no early stop then."""


def clearly_above(acc: float, majority: float, n: int, within: float = COLLAPSE_WITHIN,
                  metric: str = CLASSIFICATION_METRIC) -> bool:
    """Whether accuracy ``acc`` on ``n`` rows is above the majority class by more than ``within``
    and by more than two standard errors of the majority rate on ``n`` rows (a split of that size
    tells it apart from always predicting the majority class). ``metric="pearson"`` (regression):
    whether Pearson's r ``acc`` is above the trivial 0 by more than ``within`` and two standard
    errors of r between unrelated variables (``1 / sqrt(n)``)."""
    if n <= 0:
        return False
    if metric == REGRESSION_METRIC:
        se = 1.0 / math.sqrt(n)
    else:
        se = math.sqrt(max(0.0, majority * (1.0 - majority)) / n)
    return acc > majority + max(within, 2.0 * se)


def epoch_collapse(record: dict, *, within: float = COLLAPSE_WITHIN,
                   max_share: float = COLLAPSE_SHARE) -> str | None:
    """:func:`collapse` of one epoch's dev metrics: ``record`` holds ``dev_accuracy``,
    ``dev_majority`` and, when known, ``dev_top_class`` / ``dev_top_share`` (the most predicted
    class and its share of the dev rows). None when the record has no dev accuracy."""
    acc, majority = record.get("dev_accuracy"), record.get("dev_majority")
    if acc is None or majority is None:
        return None
    why = collapse(acc, majority, within=within, max_share=max_share)
    share = record.get("dev_top_share")
    if why is None and share is not None and share > max_share:
        why = (f"predicts class {record.get('dev_top_class')} for {100 * share:.1f}% of the rows "
               f"(more than {100 * max_share:.0f}%)")
    return why


def training_collapse(history: list[dict], epochs: int, kept: dict | None = None, *,
                      min_rows: int = TRAINING_MIN_ROWS, within: float = COLLAPSE_WITHIN,
                      max_share: float = COLLAPSE_SHARE, earlier: list[dict] = ()) -> str | None:
    """When a training call should stop after the last epoch of ``history``: how its dev metric
    came to the trivial level (``"after 80.00% at epoch 1"``, ``"at every epoch (1-4)"``), or None
    to train on.

    ``history``: the call's epoch records so far (``epoch``, ``dev_accuracy``, ``dev_majority``,
    ``dev_rows``, ``dev_top_class``, ``dev_top_share``); ``epochs``: the call's epochs in all;
    ``kept``: the record of the epoch whose state the call would keep now (its best eligible
    one), None when that is the last. The last epoch's dev metric must sit at the trivial level
    (:func:`epoch_collapse`) on at least ``min_rows`` dev rows, the kept state must be trivial
    too, and either

    - an earlier epoch was :func:`clearly_above` the majority class: the model had learned and
      training lost it (a pruning collapse: stopped at once), or
    - every epoch of the call (two or more) was trivial and this is its last: the model sat at the
      trivial level the whole call (stopped before the steps after it run on a trivial model).

    So the first epoch never stops a call, nor does a model that is slow to start: a healthy tiny
    model predicts one class for 2 of its 4 epochs before it learns (tests/test_collapse.py).
    ``earlier``: epoch records of earlier calls of the same pass (a staged method's stages): they
    count as evidence that the model had learned, never toward "every epoch was trivial"."""
    if not history:
        return None
    last = history[-1]
    if (last.get("dev_rows") or 0) < min_rows:
        return None
    why = epoch_collapse(last, within=within, max_share=max_share)
    if why is None or (kept is not None and kept is not last
                       and epoch_collapse(kept, within=within, max_share=max_share) is None):
        return None
    learned = [r for r in [*earlier, *history[:-1]] if r.get("dev_accuracy") is not None and r.get("dev_majority") is not None
               and clearly_above(r["dev_accuracy"], r["dev_majority"], r.get("dev_rows") or 0, within,
                                 r.get("dev_metric") or CLASSIFICATION_METRIC)]
    if learned:
        best = max(learned, key=lambda r: r["dev_accuracy"])
        return f"after {100 * best['dev_accuracy']:.2f}% at epoch {best['epoch']}"
    if (len(history) > 1 and last["epoch"] >= epochs
            and all(epoch_collapse(r, within=within, max_share=max_share) is not None for r in history)):
        return f"at every epoch ({history[0]['epoch']}-{last['epoch']})"
    return None


def deployment_collapse(acc: float, dense: float, majority: float, n: int, *,
                        within: float = COLLAPSE_WITHIN, metric: str = CLASSIFICATION_METRIC) -> str | None:
    """Why a deployment with eval accuracy ``acc`` is a collapse a run fails on, or None: ``acc``
    at the majority-class level (:func:`collapse`) while the dense model is :func:`clearly_above`
    it on these ``n`` eval rows, so compressing lost what the dense model had. A dense model at
    the majority level too (nothing learned to lose), or an eval split too small to tell, is
    reported as a collapse but not failed on. ``metric="pearson"``: the values are Pearson's r
    and the trivial level is 0 (a constant prediction)."""
    why = collapse(acc, majority, within=within)
    if why is None or not clearly_above(dense, majority, n, within, metric):
        return None
    if metric == REGRESSION_METRIC:
        return (f"Pearson r {acc:.4f} is within {within:g} of a constant prediction (0) or below it; "
                f"the dense model scores {dense:.4f}")
    if metric == MULTI_LABEL_METRIC:
        return (f"micro F1 {100 * acc:.2f}% is within {100 * within:.1f} point(s) of predicting no label (0%); "
                f"the dense model scores {100 * dense:.2f}%")
    if metric == QA_METRIC:
        return (f"SQuAD F1 {100 * acc:.2f}% is within {100 * within:.1f} point(s) of always answering \"\" "
                f"({100 * majority:.2f}%) or below it; the dense model scores {100 * dense:.2f}%")
    if metric == TOKEN_METRIC:
        return (f"entity F1 {100 * acc:.2f}% is within {100 * within:.1f} point(s) of tagging every word O (0%); "
                f"the dense model scores {100 * dense:.2f}%")
    return f"{why}; the dense model scores {100 * dense:.2f}%"


# -- regression metrics --------------------------------------------------------------------------
def pearson(predictions: Iterable, labels: Iterable) -> float:
    """Pearson's r of ``predictions`` and ``labels`` (numbers, same length). 0.0 where r is
    undefined: fewer than 2 rows, a constant side (a model that predicts one value everywhere) or
    a non-finite value. ValueError for different lengths."""
    x, y = [float(v) for v in predictions], [float(v) for v in labels]
    if len(x) != len(y):
        raise ValueError(f"pearson needs two sequences of the same length: got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2 or not all(map(math.isfinite, x + y)) or min(x) == max(x) or min(y) == max(y):
        return 0.0
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    dx, dy = [v - mx for v in x], [v - my for v in y]
    sxx, syy = math.fsum(d * d for d in dx), math.fsum(d * d for d in dy)
    r = math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0
    return max(-1.0, min(1.0, r)) if math.isfinite(r) else 0.0


def average_ranks(values: Iterable) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span
    (``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``)."""
    values = [float(v) for v in values]
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(predictions: Iterable, labels: Iterable) -> float:
    """Spearman's rho: Pearson's r of the :func:`average_ranks` (ties averaged, as
    ``scipy.stats.spearmanr``); 0.0 where undefined (see :func:`pearson`)."""
    x, y = list(predictions), list(labels)
    if len(x) != len(y):
        raise ValueError(f"spearman needs two sequences of the same length: got {len(x)} and {len(y)}")
    if not all(math.isfinite(float(v)) for v in x + y):
        return 0.0
    return pearson(average_ranks(x), average_ranks(y))


def regression_scores(predictions: Iterable, labels: Iterable) -> dict:
    """``{"pearson", "spearman"}`` of ``predictions`` against ``labels``."""
    x, y = list(predictions), list(labels)
    return {"pearson": pearson(x, y), "spearman": spearman(x, y)}


# -- token classification metrics ---------------------------------------------------------------
def entity_spans(tags) -> set[tuple[str, int, int]]:
    """The entities ``(type, start, end)`` (``end`` exclusive) of one sentence's IOB2 tags, under
    strict IOB2 (seqeval's strict mode): an entity starts at ``B-X`` and goes on over the ``I-X``
    that follow; an ``I-X`` that does not continue a ``B-X``/``I-X`` of its type starts nothing
    (it and the ``I-X`` after it are no entity)."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, name = (tag[0], tag[2:]) if tag != "O" and len(tag) > 2 and tag[1] == "-" else ("O", None)
        if prefix == "I" and name == kind:
            continue
        if kind is not None:
            spans.add((kind, start, i))
        kind, start = (name, i) if prefix == "B" else (None, i)
    return spans


def entity_counts(gold, predicted) -> tuple[int, int, int]:
    """``(exact matches, predicted entities, gold entities)`` of one sentence's IOB2 tags: an
    entity counts only with the same type, start and end (a partial span or a wrong type is a
    miss and a false positive)."""
    g, p = entity_spans(gold), entity_spans(predicted)
    return len(g & p), len(p), len(g)


def f1_from_counts(tp: float, n_pred: float, n_gold: float) -> dict:
    """``{"precision", "recall", "entity_f1"}`` of summed counts; 0 where a count is 0."""
    return {"precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_gold if n_gold else 0.0,
            TOKEN_METRIC: 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0}


def entity_scores(gold_sentences, predicted_sentences) -> dict:
    """Micro precision, recall and F1 (``entity_f1``) of the entities over sentences (IOB2 tag
    lists, gold and predicted in the same order)."""
    counts = [entity_counts(g, p) for g, p in zip(gold_sentences, predicted_sentences)]
    return f1_from_counts(*(sum(c[k] for c in counts) for k in range(3)))


def tag_names(config) -> list[str]:
    """A token classifier's tag names in id order, from its ``config`` (an object with
    ``id2label``, or the dict of a config.json); ValueError when they hold no ``B-`` tag (a head
    without the task's IOB2 tag names)."""
    id2label = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
    names = [id2label[i] for i in range(len(id2label))]
    if not any(n.startswith("B-") for n in names):
        raise ValueError(f"the model's labels {names} are not IOB2 tags: load it with the task's tag names")
    return names


def word_tags(token_ids, starts) -> list[list[int]]:
    """Per sentence, the predicted tag id of each word: the prediction at its first sub-word
    (``token_ids``: per sentence the argmax at each token position; ``starts``: per sentence the
    position of each word's first sub-word, -1 for none), 0 (``O``) for a word without one (cut by
    truncation)."""
    return [[int(ids[p]) if p >= 0 else 0 for p in first] for ids, first in zip(token_ids, starts)]


def tagging_counts(gold_ids, predicted_ids, names) -> list[tuple[int, int, int]]:
    """:func:`entity_counts` of each sentence, from tag ids (gold and predicted) and the tag ``names``."""
    return [entity_counts([names[i] for i in g], [names[i] for i in p]) for g, p in zip(gold_ids, predicted_ids)]


# -- multi-label metrics -------------------------------------------------------------------------
def sigmoid(logits) -> list[list[float]]:
    """``1 / (1 + exp(-z))`` of each logit of ``logits`` (rows of numbers), overflow-safe."""
    def one(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return [[one(float(z)) for z in row] for row in logits]


def multi_label_counts(probabilities, gold, threshold: float) -> list[tuple[int, int, int]]:
    """Per row ``(true positives, predicted labels, gold labels)`` at ``threshold``: a label is
    predicted where its probability is ``>= threshold`` (``gold``: 0/1 rows, :class:`MultiHot`).
    Micro F1 is ``2 * tp / (predicted + gold)`` of their sums (:func:`f1_from_counts`), which is
    what :func:`compressor.stats.f1_interval` resamples."""
    out = []
    for p, g in zip(probabilities, gold):
        pred = [float(x) >= threshold for x in p]
        out.append((sum(1 for a, b in zip(pred, g) if a and b), sum(pred), sum(int(b) for b in g)))
    return out


def multi_label_scores(probabilities, gold, threshold: float) -> dict:
    """``{"micro_f1", "macro_f1", "precision", "recall"}`` of probabilities ``[N, K]`` against 0/1
    ``gold`` rows at ``threshold``. Micro: over every (row, label) decision; macro: the mean over the
    K labels of each label's F1, 0 for a label neither predicted nor gold (scikit-learn's
    ``zero_division=0``); 0 where nothing is predicted or gold."""
    probs, gold = [[float(x) for x in p] for p in probabilities], [[int(b) for b in g] for g in gold]
    if len(probs) != len(gold):
        raise ValueError(f"multi-label scores need as many probability rows as gold rows: {len(probs)} vs {len(gold)}")
    micro = f1_from_counts(*(sum(c[k] for c in multi_label_counts(probs, gold, threshold)) for k in range(3)))
    k = len(gold[0]) if gold else 0
    per_label = []
    for j in range(k):
        tp = sum(1 for p, g in zip(probs, gold) if p[j] >= threshold and g[j])
        both = sum(1 for p in probs if p[j] >= threshold) + sum(g[j] for g in gold)
        per_label.append(2 * tp / both if both else 0.0)
    return {MULTI_LABEL_METRIC: micro[TOKEN_METRIC], "macro_f1": sum(per_label) / k if k else 0.0,
            "precision": micro["precision"], "recall": micro["recall"]}


def choose_threshold(probabilities, gold, grid=THRESHOLDS) -> float:
    """The threshold of ``grid`` with the best micro F1 of ``probabilities`` against ``gold`` (the
    dev rows: never the eval split); a tie goes to the threshold nearest 0.5, then the lower.
    :data:`DEFAULT_THRESHOLD` for no rows."""
    pairs = [(float(x), int(b)) for p, g in zip(probabilities, gold) for x, b in zip(p, g)]
    if not pairs:
        return DEFAULT_THRESHOLD
    n_gold = sum(b for _, b in pairs)

    def micro(t: float) -> float:
        tp = sum(b for x, b in pairs if x >= t)
        both = sum(1 for x, _ in pairs if x >= t) + n_gold
        return 2 * tp / both if both else 0.0
    return max(grid, key=lambda t: (micro(t), -round(abs(t - 0.5), 9), -t))


# -- question answering metrics ----------------------------------------------------------------
QA_METRIC = "squad_f1"
"""The task metric of a question-answering task (what its "accuracy" keys hold): SQuAD F1, the
mean over questions of the best token F1 against any gold answer; exact match is reported beside
it. Its trivial baseline, always answering "", scores the fraction of questions without an answer."""
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def is_qa(rows: Iterable) -> bool:
    """Whether ``rows`` (Examples) are a question-answering task's: they carry a ``qa`` field
    (:class:`compressor.qa.Question`). False for no rows."""
    return any(getattr(r, "qa", None) is not None for r in rows)


def no_answer_fraction(examples: Iterable) -> float:
    """The share of QA ``examples`` without a gold answer: the SQuAD F1 (and exact match) of
    always answering "". 0.0 for no examples."""
    examples = list(examples)
    return sum(not e.qa.answers for e in examples) / len(examples) if examples else 0.0


def normalize_answer(text: str) -> str:
    """The official SQuAD normalization: lower case, punctuation removed, the articles a/an/the
    dropped, whitespace collapsed."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> int:
    """1 when ``prediction`` and ``gold`` are equal after :func:`normalize_answer`, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of ``prediction`` against ``gold`` after :func:`normalize_answer` (the official
    v2.0 script's ``compute_f1``: where either side has no token, 1 when both have none, else 0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Iterable[str], golds: Iterable) -> tuple[list[int], list[float]]:
    """Per question, ``(exact match, F1)``: the best over its gold answer texts (``golds``: a list
    of texts per question); a question without a gold answer (SQuAD v2) counts as right, 1 and 1,
    only when the prediction is ""."""
    em, f1 = [], []
    for pred, answers in zip(predictions, golds):
        answers = list(answers) or [""]
        em.append(max(squad_exact(pred, a) for a in answers))
        f1.append(max(squad_f1(pred, a) for a in answers))
    return em, f1
