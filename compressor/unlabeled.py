"""``--unlabeled FILE``: more training texts for an embedding task (``--task-type embeddings``).

The file is UTF-8 text, one text per line: whitespace runs are collapsed, blank lines skipped,
repeated lines kept once, and a text longer than ``--max-length`` tokens is truncated by the
tokenizer like any other. The texts are labelled with the teacher's sentence embeddings exactly as
the task's own texts are (:func:`compressor.embedder.labelled_by`) and appended to the training
split, so every pass that trains or measures importance on ``ctx.data.train`` (the method's pass,
fisher's samples, distill's recovery) and vocab-prune (whose kept tokens are the training texts')
sees them. Never dev or eval: a text that is also in either is dropped (no leak), counted in the
log and the report; so is one the task's training texts already hold.

Why: at x2 over dense INT8 the compressed MiniLM keeps 0.80 fidelity on ~10k training texts, and
more text was the strongest lead measured (augmentation: +0.013 dev fidelity; RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from compressor.errors import DataError

log = logging.getLogger(__name__)

UNLABELED = -1  # an Example's label before the teacher labels it (as passes.distill.augment's)


def read_texts(path) -> list[str]:
    """The texts of ``path`` (one per line, whitespace collapsed, blank lines skipped, first
    occurrence kept). DataError, one line, for a missing file, one that is not UTF-8, or no text."""
    from compressor.data import normalize_text
    where = f"--unlabeled {str(path)!r}"
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{where}: file not found (one text per line, UTF-8)")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text (byte {exc.start}): save it as UTF-8, one text per line") from None
    except OSError as exc:
        raise DataError(f"{where} cannot be read: {exc.strerror or exc}") from None
    texts = list(dict.fromkeys(t for t in (normalize_text(line) for line in raw.splitlines()) if t))
    if not texts:
        raise DataError(f"{where} has no texts: expected one text per line (blank lines are skipped)")
    return texts


def add_unlabeled(data, texts: list[str], teacher, max_length: int, source: str):
    """``data`` (an embedding task, its texts already labelled by ``teacher``) with ``texts``
    appended to ``train``, each labelled with ``teacher``'s sentence embedding; texts also in dev
    or eval, or already in train, are left out. ``info["unlabeled"]`` says what was used:
    ``{"file", "lines", "texts", "in_dev_or_eval", "in_train"}``."""
    from compressor.data import Example
    from compressor.embedder import labelled_by
    held_out = {e.text for e in list(data.dev) + list(data.eval)}
    train = {e.text for e in data.train}
    kept = [t for t in texts if t not in held_out and t not in train]
    leak = sum(t in held_out for t in texts)
    summary = {"file": str(Path(source).expanduser().resolve()), "lines": len(texts), "texts": len(kept),
               "in_dev_or_eval": leak, "in_train": len(texts) - len(kept) - leak}
    log.info("unlabeled: %d texts from %s join the %d training texts (%d dropped as in dev/eval: no leak; "
             "%d already training texts)", len(kept), source, len(data.train), leak, summary["in_train"])
    if not kept:
        raise DataError(f"--unlabeled {source!r}: none of its {len(texts)} texts is new (all are in the "
                        "training, dev or eval texts)")
    rows = labelled_by(teacher, [Example(t, UNLABELED) for t in kept], max_length)
    return dataclasses.replace(data, train=list(data.train) + rows, info=dict(data.info, unlabeled=summary))


__all__ = ["read_texts", "add_unlabeled"]
