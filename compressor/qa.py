"""Extractive question answering (SQuAD v1.1 / v2.0): the readers, the windows a model reads and
the answers read back from its start/end logits.

**Data** (:func:`compressor.data.load_qa`): SQuAD JSON (``{"data": [{"title", "paragraphs": [{"context", "qas":
[{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``) or JSONL
``{"question", "context", "answers"}`` (answers as HF's ``{"text": [...], "answer_start": [...]}``
or a list of ``{"text", "answer_start"}``), detected when both files are such files
(:func:`is_qa_file`) or named with ``--task-type question-answering``. An example's ``text`` is
the question, ``text_pair`` the context (what profiling and vocab-prune read), ``label`` 1 when
it has an answer (0: SQuAD v2's unanswerable questions; the dev split is stratified by it),
``group`` the article title (else the context), so a context is never on both sides of the dev
split, and ``qa`` a :class:`Question` (gold answers, window stride, whether "" may be predicted).

**Windows** (:func:`windows`): ``tokenizer(question, context, truncation="only_second",
max_length, stride, return_overflowing_tokens, return_offsets_mapping)``, as HF's ``run_qa.py``;
each window's labels are the token positions of the (first) gold answer inside it, or the CLS
token (index 0) when the answer is not inside that window or there is none. Padding is the
tool's (dynamic, right side: :class:`compressor.evaluation.PadCollator`).

**Answers** (:func:`best_answers`): per example, over all its windows, the :data:`N_BEST` best
start and end positions inside the context (offsets not None), ``end >= start`` and at most
:data:`MAX_ANSWER_TOKENS` tokens, scored ``start logit + end logit``; the text is cut from the
context with the offsets. SQuAD v2: "" when the null score (CLS start + end, the lowest over the
windows) beats the best span (threshold 0). The metric is :func:`compressor.metrics.squad_scores`.

Pure python (no torch): the tokenizer is the caller's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

QA_LABELS = ["start", "end"]
"""``label_names`` of a QA task: the head's two outputs per token (``qa_outputs``)."""
DEFAULT_DOC_STRIDE = 128
N_BEST = 20
MAX_ANSWER_TOKENS = 30
QA_EXTENSIONS = (".json", ".jsonl")


@dataclass(frozen=True)
class Question:
    """What a QA example carries besides its question and context: the gold ``answers`` (``(text,
    character start)`` pairs; empty: no answer), the window overlap ``doc_stride`` in tokens (0:
    the context must fit one window), ``allow_null`` (SQuAD v2: "" may be predicted) and its ``id``."""

    answers: tuple[tuple[str, int], ...]
    doc_stride: int = DEFAULT_DOC_STRIDE
    allow_null: bool = False
    id: str = ""


@dataclass(frozen=True)
class Window:
    """One tokenized window of an example: its index in the example list, the model inputs
    (lists), each token's character offsets in the context (None outside it) and the labels."""

    example: int
    inputs: dict
    offsets: tuple
    start: int
    end: int


# -- readers --------------------------------------------------------------------------------------
def _first_json(path: Path):
    """The whole file as JSON when it parses, else its first non-empty line as JSON (JSONL);
    None when neither parses."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            return json.loads(first)
        except json.JSONDecodeError:
            return None


def is_qa_file(path) -> bool:
    """Whether ``path`` is a QA file: SQuAD JSON (a ``data`` list of articles with ``paragraphs``)
    or JSONL whose first record has ``question`` and ``context``."""
    path = Path(path)
    if path.suffix.lower() not in QA_EXTENSIONS or not path.is_file():
        return False
    item = _first_json(path)
    if isinstance(item, dict) and isinstance(item.get("data"), list):
        return any(isinstance(a, dict) and "paragraphs" in a for a in item["data"])
    return isinstance(item, dict) and {"question", "context"} <= set(item)


def _answer_list(answers, where: str) -> list[tuple[str, int]]:
    """``(text, start)`` pairs of a record's answers: HF's ``{"text": [...], "answer_start": [...]}``
    or a list of ``{"text", "answer_start"}``."""
    if answers is None:
        return []
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where} has answers {json.dumps(answers)[:120]}: allowed "
                            '{"text": [...], "answer_start": [...]} of the same length, or a list of '
                            '{"text", "answer_start"}')
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        pairs = [(a.get("text"), a.get("answer_start")) for a in answers]
    else:
        raise DataError(f"{where} has answers {json.dumps(answers)[:120]}: allowed a list of "
                        '{"text", "answer_start"} or {"text": [...], "answer_start": [...]}')
    out = []
    for text, start in pairs:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where} has answer text {text!r} at answer_start {start!r}: allowed a string and "
                            "an integer character offset")
        out.append((text, start))
    return out


def _check_answers(context: str, answers, where: str) -> None:
    """DataError naming the first answer whose ``answer_start`` does not point at its text."""
    for text, start in answers:
        found = context[start:start + len(text)] if 0 <= start <= len(context) else None
        if not text.strip() or found != text:
            raise DataError(f"{where} has answer {text!r} at answer_start {start}, but the context there reads "
                            f"{found!r}: answer_start must be the character offset of the answer text in the "
                            f"context (0..{len(context) - 1})")


def read_squad(path) -> list[dict]:
    """Records ``{id, title, context, question, answers}`` of a SQuAD v1.1/v2.0 JSON file
    (``is_impossible`` questions get no answers)."""
    path = Path(path)
    data = _first_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"data file {str(path)!r} is not SQuAD JSON: expected "
                        '{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}')
    out = []
    for a, article in enumerate(data["data"]):
        title = article.get("title") if isinstance(article, dict) else None
        for p, para in enumerate((article.get("paragraphs") or []) if isinstance(article, dict) else []):
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"data file {str(path)!r}: article {a} paragraph {p} has no context: expected "
                                "a non-empty string")
            for q in para.get("qas") or []:
                qid = str(q.get("id", f"{a}.{p}.{len(out)}"))
                where = f"data file {str(path)!r}: question {qid!r}"
                question = q.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise DataError(f"{where} has question {question!r}: expected a non-empty string")
                answers = [] if q.get("is_impossible") else _answer_list(q.get("answers"), where)
                _check_answers(context, answers, where)
                out.append({"id": qid, "title": title, "context": context, "question": question,
                            "answers": answers})
    return out


def read_qa_jsonl(path) -> list[dict]:
    """Records of a JSONL file of ``{"question", "context", "answers"}`` (optional ``id``,
    ``title``)."""
    path = Path(path)
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"data file {str(path)!r}: line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object: expected {{\"question\", \"context\", \"answers\"}}")
        if "id" in row:
            where += f" (question {str(row['id'])!r})"
        question, context = row.get("question"), row.get("context")
        for name, value in (("question", question), ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where} has {name} {value!r}: expected a non-empty string")
        answers = _answer_list(row.get("answers"), where)
        _check_answers(context, answers, where)
        out.append({"id": str(row.get("id", f"line{lineno}")), "title": row.get("title"), "context": context,
                    "question": question, "answers": answers})
    return out


def read_qa(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found")
    if not is_qa_file(path):
        raise DataError(f"data file {str(path)!r} is not a question-answering file: expected SQuAD JSON "
                        '({"data": [{"paragraphs": [...]}]}) or JSONL {"question", "context", "answers"}')
    item = _first_json(path)
    records = read_squad(path) if isinstance(item, dict) and "data" in item else read_qa_jsonl(path)
    if not records:
        raise DataError(f"data file {str(path)!r} has no questions: expected at least one")
    return records


def doc_stride_for(doc_stride: int | None, max_length: int) -> int:
    """The window stride a run uses: ``doc_stride`` as given, else :data:`DEFAULT_DOC_STRIDE` capped
    at half of ``max_length`` (the default window of 64 tokens gets a stride of 32)."""
    return int(doc_stride) if doc_stride is not None else min(DEFAULT_DOC_STRIDE, max_length // 2)


def check_stride(doc_stride) -> None:
    if isinstance(doc_stride, bool) or not isinstance(doc_stride, int) or doc_stride < 0:
        raise ConfigError(f"doc_stride={doc_stride!r} is not allowed: an integer >= 0 (tokens two windows of a "
                          "context share; 0: every context must fit one window)")


# -- windows --------------------------------------------------------------------------------------
def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("question answering needs a fast tokenizer: its offsets map tokens to the context")


def check_windows(tokenizer, examples, max_length: int) -> None:
    """DataError (one line) for an example no window can hold: a question that leaves no room
    for ``doc_stride`` context tokens in ``max_length``, or with ``doc_stride`` 0 a question and
    context longer than ``max_length`` tokens."""
    examples = [e for e in examples if getattr(e, "qa", None) is not None]
    if not examples:
        return
    _require_fast(tokenizer)
    stride = examples[0].qa.doc_stride
    if stride >= max_length:
        raise ConfigError(f"--doc-stride {stride} is not allowed with --max-length {max_length}: allowed "
                          f"0..{max_length - 1} (the tokens two windows share)")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    questions = tokenizer([e.text for e in examples], add_special_tokens=False)["input_ids"]
    contexts = tokenizer([e.text_pair for e in examples], add_special_tokens=False)["input_ids"] if stride == 0 \
        else [[]] * len(examples)
    for e, q, c in zip(examples, questions, contexts):
        room = max_length - special - len(q)
        if stride == 0 and len(c) > room:
            raise DataError(f"question {e.qa.id!r}: its question and context take {len(q) + len(c) + special} "
                            f"tokens, more than --max-length {max_length}, and --doc-stride 0 allows one window: "
                            "allowed a --doc-stride of 1 or more (overlapping windows) or a higher --max-length")
        if room <= max(stride, 0):
            raise DataError(f"question {e.qa.id!r} takes {len(q)} tokens: with --doc-stride {stride} it leaves no "
                            f"room for the context in --max-length {max_length} windows: allowed question tokens + "
                            f"doc stride + {special} < max length (a lower --doc-stride or a higher --max-length)")


def windows(tokenizer, examples, max_length: int) -> list[Window]:
    """The windows of ``examples`` (QA Examples, one ``doc_stride``) in example order, with
    their labels (see the module docstring)."""
    examples = list(examples)
    if not examples:
        return []
    _require_fast(tokenizer)
    check_windows(tokenizer, examples, max_length)
    stride = examples[0].qa.doc_stride
    enc = tokenizer([e.text for e in examples], [e.text_pair for e in examples], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    out = []
    for i, j in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(i)
        offsets = tuple(tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq))
        start, end = _labels(examples[j].qa.answers, offsets)
        out.append(Window(int(j), {k: list(enc[k][i]) for k in keys}, offsets, start, end))
    return out


def _labels(answers, offsets) -> tuple[int, int]:
    """Token positions of the first answer inside the window (``offsets``: None outside the
    context), or ``(0, 0)`` (CLS) when it is not wholly inside or there is none."""
    inside = [t for t, o in enumerate(offsets) if o is not None]
    if not answers or not inside:
        return 0, 0
    text, char_start = answers[0]
    char_end = char_start + len(text)
    first, last = inside[0], inside[-1]
    if offsets[first][0] > char_start or offsets[last][1] < char_end:
        return 0, 0
    start = next(t for t in inside if offsets[t][1] > char_start)
    end = next(t for t in reversed(inside) if offsets[t][0] < char_end)
    return (start, end) if end >= start else (0, 0)


# -- answers --------------------------------------------------------------------------------------
def _top(values, n: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:n]


def best_answers(examples, wins: list[Window], start_logits, end_logits, n_best: int = N_BEST,
                 max_answer: int = MAX_ANSWER_TOKENS) -> list[str]:
    """The predicted answer text of each example from its windows' logits (``start_logits[i]``,
    ``end_logits[i]``: sequences for window ``i``, at least as long as its tokens; padding
    beyond is ignored). See the module docstring for the rule."""
    examples = list(examples)
    best: list[tuple[float, str] | None] = [None] * len(examples)
    null: list[float | None] = [None] * len(examples)
    for w, s_row, e_row in zip(wins, start_logits, end_logits):
        n = len(w.offsets)
        s_row, e_row = [float(x) for x in list(s_row)[:n]], [float(x) for x in list(e_row)[:n]]
        score0 = s_row[0] + e_row[0]
        if null[w.example] is None or score0 < null[w.example]:
            null[w.example] = score0
        context = examples[w.example].text_pair
        for s in _top(s_row, n_best):
            if w.offsets[s] is None:
                continue
            for e in _top(e_row, n_best):
                if w.offsets[e] is None or e < s or e - s + 1 > max_answer:
                    continue
                score = s_row[s] + e_row[e]
                if best[w.example] is None or score > best[w.example][0]:
                    best[w.example] = (score, context[w.offsets[s][0]:w.offsets[e][1]])
    out = []
    for ex, b, z in zip(examples, best, null):
        if b is None or (ex.qa.allow_null and z is not None and z > b[0]):
            out.append("")
        else:
            out.append(b[1])
    return out


def qa_scores(examples, wins: list[Window], start_logits, end_logits):
    """Per-question ``(exact match, F1)`` lists (0/1 and [0, 1]) of the answers read from the
    windows' logits (:func:`best_answers`, :func:`compressor.metrics.squad_scores`)."""
    from compressor.metrics import squad_scores
    predictions = best_answers(examples, wins, start_logits, end_logits)
    return squad_scores(predictions, [[t for t, _ in e.qa.answers] for e in examples])


# -- ONNX -----------------------------------------------------------------------------------------
def window_feeds(wins: list[Window], names, pad_id: int) -> dict:
    """int64 numpy feeds of ``wins`` right-padded to their longest (``names``: the session's
    inputs; token_type_ids zero-filled where the tokenizer gives none)."""
    import numpy as np
    longest = max(len(w.inputs["input_ids"]) for w in wins)
    feeds = {}
    for name in names:
        fill = pad_id if name == "input_ids" else 0
        rows = [w.inputs.get(name, [0] * len(w.inputs["input_ids"])) for w in wins]
        feeds[name] = np.asarray([r + [fill] * (longest - len(r)) for r in rows], dtype=np.int64)
    return feeds


__all__ = ["Question", "Window", "QA_LABELS", "DEFAULT_DOC_STRIDE", "N_BEST", "MAX_ANSWER_TOKENS",
           "is_qa_file", "read_squad", "read_qa_jsonl", "read_qa", "doc_stride_for", "check_stride",
           "check_windows", "windows", "best_answers", "qa_scores", "window_feeds"]
