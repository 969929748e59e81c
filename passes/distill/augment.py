"""Extra in-domain text for distillation on small tasks: perturbed copies of training sentences
and unlabelled text a user passes. Every returned Example has label -1: the teacher's logits on
it are the target (soft labels), there is no gold label.

Why: a student distilled on a small task (MRPC-size, ~2.5k pairs) sees the teacher's function
on few inputs; more inputs near the training distribution carry more of it.

- Tang et al., "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", 2019,
  arXiv:1903.12136, Sec. 3.3 (data augmentation for distillation): each word is independently
  replaced by ``[MASK]`` with probability ``p_mask``; several perturbed copies per sentence,
  labelled by the teacher. We take the masking rule as written (``p_mask``; they use 0.1).
- Wei & Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
  Classification Tasks", 2019, arXiv:1901.11196, Sec. 2: random deletion and random swap. We use
  word dropout (each word deleted with probability ``p_drop``) and swaps of adjacent words only
  (each position with probability ``p_swap``), which keep a sentence closer to the original.
- Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", 2020,
  arXiv:1909.10351, Sec. 3.2 (data augmentation, Alg. 1) augment small tasks the same way but replace words with
  BERT-MLM or GloVe neighbours; that needs a language model and word vectors, so it is not here.

Deterministic: the copies of an example come from ``random.Random`` seeded with the seed and the
example's text and pair (a string seed is hashed with sha512, so independent of
PYTHONHASHSEED): the same seed gives the same output, and an example's copies do not depend on
the other examples or their order (a subsample of the examples gets the same copies).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from compressor.data import EXTENSIONS, Example, detect_text_columns, normalize_text, read_rows
from compressor.errors import ConfigError, DataError, check_range

UNLABELED = -1
TEXT_EXTENSIONS = (".txt", "")


def perturb(text: str, rng: random.Random, mask_token: str | None, p_drop: float, p_swap: float,
            p_mask: float) -> str:
    """One perturbed copy of ``text`` (split on whitespace). Each word is masked with probability
    ``p_mask`` or else dropped with probability ``p_drop`` (one draw per word, so the expected
    shares are ``p_mask`` and ``p_drop``); at least one word stays. Then each adjacent pair is
    swapped with probability ``p_swap`` (left to right; a swapped word does not move again)."""
    out = []
    for word in text.split():
        u = rng.random()
        if u < p_mask:
            out.append(mask_token)
        elif u >= p_mask + p_drop:
            out.append(word)
    words = text.split()
    if not out and words:
        out = [words[rng.randrange(len(words))]]
    i = 0
    while i < len(out) - 1:
        if rng.random() < p_swap:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return " ".join(out)


def check_rates(p_drop: float, p_swap: float, p_mask: float, mask_token: str | None) -> None:
    """ConfigError unless the rates are in [0, 1], ``p_drop + p_mask <= 1``, one is above 0 and
    a mask token is given when ``p_mask > 0``."""
    for name, value in (("p_drop", p_drop), ("p_swap", p_swap), ("p_mask", p_mask)):
        check_range(name, value, 0.0, 1.0)
    if p_drop + p_mask > 1.0:
        raise ConfigError(f"p_drop={p_drop} + p_mask={p_mask} is more than 1: a word is either masked "
                          "or dropped, so the two rates must sum to at most 1")
    if p_drop == p_swap == p_mask == 0:
        raise ConfigError("augmentation with p_drop=p_swap=p_mask=0 changes nothing: set one above 0")
    if p_mask > 0 and not mask_token:
        raise ConfigError(f"p_mask={p_mask} needs a mask token (the tokenizer's mask_token), got "
                          f"{mask_token!r}")


def augment(examples: list[Example], n_per_example: int = 1, seed: int = 0,
            mask_token: str | None = "[MASK]", p_drop: float = 0.1, p_swap: float = 0.1,
            p_mask: float = 0.1, distinct: bool = True, max_tries: int = 10) -> list[Example]:
    """``n_per_example`` perturbed copies of each example (:func:`perturb` on the text and on the
    pair), label -1, ``group`` kept; in input order. Pass the tokenizer's ``mask_token``.

    With ``distinct`` (default) a copy equal to an input example or to an earlier copy is drawn
    again, up to ``max_tries`` times, then left out: no copy is wasted on an input the student
    already has, but short texts may get fewer copies, and the observed rates are those of
    copies with at least one change (above ``p_*`` for short texts: 12 words at p_drop=0.1 are
    unchanged 28% of the time). ``distinct=False`` keeps every draw (rates exactly as given)."""
    check_range("n_per_example", n_per_example, 0, 1000)
    check_range("max_tries", max_tries, 1, 1000)
    check_rates(p_drop, p_swap, p_mask, mask_token)
    seen = {(e.text, e.text_pair) for e in examples}
    out = []
    for e in examples:
        rng = random.Random(f"{seed}\0{e.text}\0{e.text_pair}")
        for _ in range(n_per_example):
            for _ in range(max_tries if distinct else 1):
                text = perturb(e.text, rng, mask_token, p_drop, p_swap, p_mask)
                pair = (perturb(e.text_pair, rng, mask_token, p_drop, p_swap, p_mask)
                        if e.text_pair is not None else None)
                if not distinct or (text, pair) not in seen:
                    seen.add((text, pair))
                    out.append(Example(text, UNLABELED, pair, e.group))
                    break
    return out


def read_unlabeled(path: str | Path, text_column: str | None = None, limit: int | None = None,
                   exclude: Iterable[Example] = ()) -> list[Example]:
    """Unlabelled texts from ``path`` as Examples with label -1, in file order.

    ``.txt`` (or no extension): one text per line. ``.tsv``/``.csv`` (header row) or
    ``.jsonl``/``.json``: the ``text_column`` (lower-cased), or the text column (or text pair)
    found by name as for training files; a label column, if any, is ignored. Whitespace is
    normalised, empty texts and repeats are skipped, so are texts in ``exclude`` (pass the eval
    and dev examples: teacher labels on them would leak those splits into training). At most
    ``limit`` texts. DataError for a missing or unreadable file or one with no texts."""
    path = Path(path)
    ext = path.suffix.lower()
    if limit is not None:
        check_range("limit", limit, 1, 10**9)
    if ext in TEXT_EXTENSIONS:
        if not path.is_file():
            raise DataError(f"unlabeled file {str(path)!r} not found")
        pairs = [(line, None) for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()]
    elif ext in EXTENSIONS:
        columns, rows = read_rows(path)
        if text_column is not None:
            text_col, pair_col = text_column.strip().lower(), None
            if text_col not in columns:
                raise DataError(f"unlabeled file {str(path)!r} has no column {text_col!r}: "
                                f"found {', '.join(columns) or '(none)'}")
        else:
            text_col, pair_col = detect_text_columns(columns, path)
        pairs = [(row.get(text_col) or "", (row.get(pair_col) or "") if pair_col else None)
                 for _, row in rows]
    else:
        raise DataError(f"unlabeled file {str(path)!r} has unknown extension {ext!r}: allowed .txt "
                        f"(one text per line), no extension, or {', '.join(EXTENSIONS)}")
    seen = {(e.text, e.text_pair) for e in exclude}
    out = []
    for text, pair in pairs:
        key = (normalize_text(text), normalize_text(pair) if pair is not None else None)
        if not key[0] or key in seen:
            continue
        seen.add(key)
        out.append(Example(key[0], UNLABELED, key[1]))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"unlabeled file {str(path)!r} has no texts (empty, or all in the eval/dev splits)")
    return out
