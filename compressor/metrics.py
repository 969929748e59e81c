"""Accuracy baselines for reports: the majority class, the gap closed and collapse detection.

Pure python (no torch). Accuracies are fractions in [0, 1]; "a point" is 0.01.

- :func:`majority_accuracy`: accuracy of always predicting the most frequent label.
- :func:`gap_closed`: ``(acc - majority) / (dense - majority)``, the share of the dense model's
  gain over the majority class that a compressed model keeps (1 = all of it, 0 = none).
- :func:`collapse`: why a result is a collapse (at the majority class, or one class predicted
  for nearly every row), or None. A collapsed model is reported as such, never as a result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

COLLAPSE_WITHIN = 0.01
"""A model whose accuracy is at most this above the majority class (1 point) has collapsed."""
COLLAPSE_SHARE = 0.97
"""A model that predicts one class for more than this share of the rows has collapsed."""


def _labels(rows: Iterable) -> list[int]:
    """Integer labels of ``rows``: Examples (their ``label``) or plain integers."""
    return [int(getattr(r, "label", r)) for r in rows]


def majority_accuracy(examples: Iterable, label: int | None = None) -> float:
    """Accuracy of always predicting ``label`` (default: the most frequent label of
    ``examples``) on ``examples`` (Examples or integer labels). 0.0 for no examples."""
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
