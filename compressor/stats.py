"""How sure a printed number is: intervals for the decisions a run reports.

- :func:`wilson`: a Wilson score interval for an accuracy (``k`` right out of ``n``).
- :func:`paired_bootstrap`: a percentile bootstrap interval for ``mean(a) - mean(b)`` of two
  per-example score arrays on the same rows (e.g. 0/1 correctness of two models on the eval
  split): the rows are resampled together, so what both models get right or wrong cancels.
- :func:`ratio_interval`: a percentile bootstrap interval for a speed ratio from paired
  per-item latencies (the same texts or batches timed on both models).
- :func:`pearson_interval` and :func:`paired_bootstrap_pearson`: the same percentile bootstrap
  over rows for a regression task's metric, Pearson's r, which is not a mean of per-row scores:
  each resample draws rows (prediction and label together; for the difference, both models'
  predictions and the label) and recomputes r.
- :func:`f1_interval` and :func:`paired_bootstrap_f1`: the same for a token-classification task's
  metric, micro entity F1, from per-sentence counts (matches, predicted, gold entities): each
  resample draws sentences and recomputes F1 from the summed counts.

Plain numpy; nothing heavy is imported. Every resampling is seeded, so a report is reproducible.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

LEVEL = 0.95
RESAMPLES = 10_000
_CHUNK = 2_000_000  # resampled indices held at once (resamples x items)
_FEW_VALUES = 64  # up to this many distinct values, resample counts per value (multinomial)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of a proportion ``k / n`` (``z`` = 1.96: 95%).

    Unlike ``p +- z * se`` it stays inside [0, 1] and is not empty at ``k = 0`` or ``k = n``.
    ValueError when ``n < 1`` or ``k`` is not in ``[0, n]``."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n >= 1: got k={k}, n={n}")
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def _percentiles(values, level: float) -> tuple[float, float]:
    """The central ``level`` range of ``values`` (numpy's linear interpolation)."""
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must be between 0 and 1")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _check_resamples(resamples) -> int:
    if resamples < 1:
        raise ValueError(f"resamples={resamples!r} must be 1 or more")
    return int(resamples)


def _over_resamples(n: int, resamples: int, rng, stat) -> np.ndarray:
    """``stat(idx)`` of ``resamples`` bootstrap draws of ``n`` items, ``idx`` an index matrix
    ``[draws, n]`` of at most :data:`_CHUNK` indices at a time, concatenated in draw order."""
    out, step = [], max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        out.append(stat(rng.integers(0, n, size=(min(step, resamples - start), n))))
    return np.concatenate(out)


def _resampled_means(values, resamples: int, rng) -> np.ndarray:
    """``resamples`` bootstrap means of ``values`` (each a mean over ``len(values)`` draws with
    replacement). With few distinct values (0/1 scores, their differences) the number of draws of
    each value is drawn at once from a multinomial: the same distribution as resampling indices,
    without holding ``resamples x n`` of them."""
    n = values.size
    uniq, counts = np.unique(values, return_counts=True)
    if uniq.size <= _FEW_VALUES:
        draws = rng.multinomial(n, counts / n, size=resamples)
        return draws @ uniq / n
    return _over_resamples(n, resamples, rng, lambda idx: values[idx].mean(axis=1))


def _binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0, 1)).all())


def mean_interval(values, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """A percentile bootstrap interval ``(low, high)`` of ``mean(values)`` over the rows (per-row
    scores that are not proportions, e.g. cosines: no Wilson interval for them)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 1:
        raise ValueError("mean_interval needs at least one value")
    return _percentiles(_resampled_means(values, _check_resamples(resamples), np.random.default_rng(seed)), level)


def paired_bootstrap(a, b, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """The difference ``mean(a) - mean(b)`` of two per-example scores on the same rows, with a
    percentile bootstrap interval over the rows (resampled in pairs).

    Returns ``{"diff", "low", "high", "n", "level", "resamples"}``, plus ``"a_only"`` and
    ``"b_only"`` (rows where only ``a``, or only ``b``, scores 1: the discordant pairs, the only
    rows that move the difference) when both arrays hold 0/1 scores. Identical scores give exactly
    ``[0, 0]``. ValueError for empty arrays or arrays of different lengths."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or a.size != b.size:
        raise ValueError(f"paired_bootstrap needs two non-empty score arrays of the same length: "
                         f"got {a.size} and {b.size}")
    resamples = _check_resamples(resamples)
    d = a - b
    low, high = _percentiles(_resampled_means(d, resamples, np.random.default_rng(seed)), level)
    out = {"diff": float(d.mean()), "low": low, "high": high, "n": int(d.size), "level": level,
           "resamples": int(resamples)}
    if _binary(a) and _binary(b):
        out.update(a_only=int(((a == 1) & (b == 0)).sum()), b_only=int(((a == 0) & (b == 1)).sum()))
    return out


def ratio_interval(base_times, cand_times, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL) -> dict:
    """How many times faster ``cand`` is than ``base``, from paired per-item latencies (item ``i``
    the same text or batch timed on both), with a percentile bootstrap interval over the items.

    The estimate is the **ratio of means**, ``mean(base) / mean(cand)`` (equivalently total base
    time over total candidate time on the same items): it is exactly the speedup the report prints
    (:func:`compressor.profiling.speedups` divides the mean per-item latencies), and it weighs each
    item by its time, as a deployment pays it. (The geometric mean of per-item ratios would weigh
    a 1 ms text like a 10 ms one and print a second, different speedup.) Each resample draws the
    items with replacement and keeps the pairs together.

    Returns ``{"ratio", "low", "high", "n", "level", "resamples"}``. ValueError for empty or
    unequal arrays or latencies that are not positive and finite."""
    base, cand = np.asarray(base_times, dtype=float).ravel(), np.asarray(cand_times, dtype=float).ravel()
    if base.size == 0 or base.size != cand.size:
        raise ValueError(f"ratio_interval needs two non-empty latency arrays of the same length: "
                         f"got {base.size} and {cand.size}")
    if not (np.isfinite(base).all() and np.isfinite(cand).all() and (base > 0).all() and (cand > 0).all()):
        raise ValueError("ratio_interval needs positive, finite latencies")
    resamples, n = _check_resamples(resamples), base.size
    ratios = _over_resamples(n, resamples, np.random.default_rng(seed),
                             lambda idx: base[idx].sum(axis=1) / cand[idx].sum(axis=1))
    low, high = _percentiles(ratios, level)
    return {"ratio": float(base.sum() / cand.sum()), "low": low, "high": high, "n": int(n),
            "level": level, "resamples": int(resamples)}


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of ``x``, ``y`` ``[R, n]``; 0 where undefined (a constant row),
    as :func:`compressor.metrics.pearson`."""
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    sxx, syy = (xc * xc).sum(axis=1), (yc * yc).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt(sxx * syy)
    ok = np.isfinite(r) & (np.ptp(x, axis=1) > 0) & (np.ptp(y, axis=1) > 0)
    return np.where(ok, np.clip(r, -1.0, 1.0), 0.0)


def _resampled_pearson_diffs(a, b, labels, resamples: int, rng) -> np.ndarray:
    """``resamples`` bootstrap values of ``r(a, labels) - r(b, labels)`` (``b`` None: of
    ``r(a, labels)``), rows drawn with replacement and kept together."""
    def stat(idx):
        y = labels[idx]
        r = _pearson_rows(a[idx], y)
        return r if b is None else r - _pearson_rows(b[idx], y)
    return _over_resamples(labels.size, resamples, rng, stat)


def _regression_arrays(*arrays) -> list[np.ndarray]:
    out = [np.asarray(x, dtype=float).ravel() for x in arrays]
    if out[0].size < 2 or any(x.size != out[0].size for x in out):
        raise ValueError(f"a Pearson bootstrap needs predictions and labels of the same length, at "
                         f"least 2: got {', '.join(str(x.size) for x in out)}")
    return out


def pearson_interval(predictions, labels, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, float]:
    """A percentile bootstrap interval ``(low, high)`` of Pearson's r of ``predictions`` against
    ``labels`` (a regression model's eval metric), the rows resampled. ValueError for fewer than
    2 rows or arrays of different lengths."""
    preds, y = _regression_arrays(predictions, labels)
    return _percentiles(_resampled_pearson_diffs(preds, None, y, _check_resamples(resamples),
                                                 np.random.default_rng(seed)), level)


def paired_bootstrap_pearson(a, b, labels, resamples: int = RESAMPLES, seed: int = 0,
                             level: float = LEVEL) -> dict:
    """The difference ``r(a, labels) - r(b, labels)`` of two regression models' Pearson's r on
    the same rows (``a``, ``b``: their predictions), with a percentile bootstrap interval over the
    rows (each resample keeps a row's two predictions and label together, so what both models
    get alike cancels). Returns ``{"diff", "low", "high", "n", "level", "resamples"}`` (no
    discordant counts: the scores are not 0/1). Identical predictions give exactly ``[0, 0]``."""
    from compressor.metrics import pearson
    a, b, y = _regression_arrays(a, b, labels)
    diffs = _resampled_pearson_diffs(a, b, y, _check_resamples(resamples), np.random.default_rng(seed))
    low, high = _percentiles(diffs, level)
    return {"diff": pearson(a.tolist(), y.tolist()) - pearson(b.tolist(), y.tolist()), "low": low,
            "high": high, "n": int(y.size), "level": level, "resamples": int(resamples)}


def _f1_rows(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Micro F1 of the sentences ``idx [R, n]`` of ``counts [n, 3]`` (matches, predicted, gold)."""
    tp, pred, gold = (counts[:, k][idx].sum(axis=1) for k in range(3))
    denom = pred + gold
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _f1_counts(*arrays) -> list[np.ndarray]:
    out = [np.asarray(x, dtype=float).reshape(-1, 3) for x in arrays]
    if out[0].shape[0] < 1 or any(x.shape != out[0].shape for x in out):
        raise ValueError(f"an F1 bootstrap needs per-sentence counts [n, 3] of the same length, at least 1: "
                         f"got {', '.join(str(x.shape[0]) for x in out)}")
    return out


def f1_interval(counts, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """A percentile bootstrap interval ``(low, high)`` of micro entity F1 from per-sentence
    ``counts`` (rows of matches, predicted and gold entities), the sentences resampled."""
    (c,) = _f1_counts(counts)
    n = c.shape[0]
    f1s = _over_resamples(n, _check_resamples(resamples), np.random.default_rng(seed), lambda idx: _f1_rows(c, idx))
    return _percentiles(f1s, level)


def paired_bootstrap_f1(a, b, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """The difference ``F1(a) - F1(b)`` of two taggers' micro entity F1 on the same sentences
    (``a``, ``b``: their per-sentence counts), with a percentile bootstrap interval over the
    sentences (both models' counts of a sentence drawn together). Returns ``{"diff", "low",
    "high", "n", "level", "resamples"}``. Identical counts give exactly ``[0, 0]``."""
    a, b = _f1_counts(a, b)
    n, everything = a.shape[0], np.arange(a.shape[0])[None, :]
    diffs = _over_resamples(n, _check_resamples(resamples), np.random.default_rng(seed),
                            lambda idx: _f1_rows(a, idx) - _f1_rows(b, idx))
    low, high = _percentiles(diffs, level)
    return {"diff": float(_f1_rows(a, everything)[0] - _f1_rows(b, everything)[0]), "low": low, "high": high,
            "n": int(n), "level": level, "resamples": int(resamples)}


__all__ = ["wilson", "paired_bootstrap", "ratio_interval", "pearson_interval", "paired_bootstrap_pearson",
           "f1_interval", "paired_bootstrap_f1",
           "LEVEL", "RESAMPLES"]
