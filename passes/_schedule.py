"""Sparsity and learning-rate schedules as pure functions of the optimizer step.

No torch here: everything is plain arithmetic so the schedules are tested without a model
(the torch.ao.pruning idea of keeping schedulers separate from the sparsifier).
"""

from __future__ import annotations

import bisect

from compressor.errors import check_choice


def _progress(step: int, total_steps: int, start: float, end: float) -> float:
    """Progress p in [0, 1] of ``step`` through the [start, end] fractions of ``total_steps``."""
    frac = step / total_steps if total_steps > 0 else 1.0
    if end <= start:
        return 1.0 if frac >= start else 0.0
    return min(1.0, max(0.0, (frac - start) / (end - start)))


def cubic_sparsity(step: int, total_steps: int, s_init: float, s_final: float,
                   start: float = 0.0, end: float = 1.0) -> float:
    """Gradual pruning schedule of Zhu & Gupta, "To prune, or not to prune" (2017,
    arXiv:1710.01878), eq. (1): ``s_t = s_f + (s_i - s_f) * (1 - p)^3``.

    ``p`` is the progress of ``step`` through the window from ``start * total_steps`` to
    ``end * total_steps`` (fractions of training); the sparsity is ``s_init`` before the window
    and ``s_final`` after it. Fast pruning early, slow near the end, monotone in ``step``.
    """
    p = _progress(step, total_steps, start, end)
    return s_final + (s_init - s_final) * (1.0 - p) ** 3


def oneshot(step: int, total_steps: int, s_init: float, s_final: float, at: float = 0.0) -> float:
    """One-shot schedule: ``s_init`` before the ``at`` fraction of training, ``s_final`` from it on
    (``at=0``: prune before the first step, then fine-tune with the mask fixed)."""
    return s_final if _progress(step, total_steps, at, at) >= 1.0 else s_init


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0
    at ``total_steps`` (the BERT fine-tuning schedule; same as HF's ``get_linear_schedule_with_warmup``)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_constant(step: int, warmup_steps: int, total_steps: int = 0) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then constant 1 (SparseBERT uses a
    constant LR with ``warmup_steps=0``)."""
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


LR_SCHEDULES = {"linear": warmup_linear_decay, "constant": warmup_constant}
"""LR multiplier functions by name, each ``f(step, warmup_steps, total_steps) -> float``."""


def lr_lambda(kind: str, warmup_steps: int, total_steps: int, restarts=()):
    """A ``torch.optim.lr_scheduler.LambdaLR`` function for schedule ``kind`` ("linear" or
    "constant"). The multiplier at step ``t`` is ``LR_SCHEDULES[kind](t, warmup_steps, total_steps)``,
    so a caller (e.g. a proximal step) can recompute the LR of any step."""
    check_choice("lr_schedule", kind, LR_SCHEDULES)
    fn = LR_SCHEDULES[kind]
    edges = [0, *sorted({int(r) for r in restarts if 0 < int(r) < total_steps}), total_steps]
    if len(edges) == 2:
        return lambda step: fn(step, warmup_steps, total_steps)

    def cyclic(step: int) -> float:
        """``restarts``: the schedule starts over at each of these optimizer steps (the LR
        re-warming around pruning steps of oBERT, Kurtic et al. 2022, arXiv:2203.07259, Sec. 4):
        each cycle ``[a, b)`` warms up over its share of ``warmup_steps`` and then follows ``kind``
        (linear: decays to 0 at ``b``)."""
        k = max(0, min(len(edges) - 2, bisect.bisect_right(edges, step) - 1))
        a, b = edges[k], edges[k + 1]
        return fn(step - a, int(round(warmup_steps * (b - a) / max(1, total_steps))), b - a)
    return cyclic


def epochs_for(n_examples: int, batch_size: int, epochs: int, min_steps: int = 0, max_epochs: int = 50) -> int:
    """The epochs a training pass runs so the budget scales with the data: ``epochs``, raised on a
    small task until it takes at least ``min_steps`` optimizer steps (at most ``max_epochs``). A
    large task keeps ``epochs`` (it is never over-trained by the minimum). E.g. at batch 32 and
    ``min_steps=500``: 9k rows (282 steps an epoch) keep 2 epochs, 2.5k pairs (79 steps an
    epoch) get 7."""
    per_epoch = max(1, -(-int(n_examples) // int(batch_size)))
    need = -(-int(min_steps) // per_epoch) if min_steps > 0 else 0
    return int(min(max(epochs, need), max(epochs, max_epochs)))
