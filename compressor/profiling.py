"""The profile grid of a run, in the core: fixed shapes (batch sizes x sequence lengths) plus
"real" shapes, batches of real eval texts padded to their longest (the lengths a deployment
sees), timed on every target with the dense and compressed models side by side, the accuracy of
each model on each target, and the speedups read off the profiles. At a real shape every batch
(at b1 every one of :data:`REAL_TEXTS` texts) is timed on every model, so the speedup gets a
bootstrap 95% interval over the paired per-input latencies (:func:`speed_intervals`).

:func:`profile_targets` is a step of ``compress run``; the targets it is handed (objects with
``name``, ``profile`` and ``accuracy``, from the ``targets`` plugin) do the timing.
:func:`speedups` is used by the report, the CLI and the targets alike.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from compressor.config import MIN_SECONDS
from compressor.errors import DataError, check_range

log = logging.getLogger(__name__)

FIXED, REAL = "fixed", "real"


def shape_key(batch: int, seq_len: int, kind: str = FIXED) -> str:
    """The label of an input shape in reports and summaries: ``b1xs128`` for a fixed shape,
    ``b8xreal`` for batches of real eval texts padded to their longest (``kind="real"``)."""
    return f"b{batch}xreal" if kind == REAL else f"b{batch}xs{seq_len}"


DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_SEQ_LENS = (32, 128)
REAL_BATCHES = 8  # distinct real batches per batch size, fed in turn (at least)
REAL_TEXTS = 64  # at least this many real texts per batch size: b1 times 64 texts, one by one
SPEED_REFERENCES = ("dense-int8", "dense")  # the rows a speed interval is computed against


def real_batch_count(batch: int) -> int:
    """How many real batches of size ``batch`` are timed: a multiple of :data:`REAL_BATCHES`
    holding at least :data:`REAL_TEXTS` texts (64 at b1, 8 at b8 and b32), so the per-text (b1)
    or per-batch latency ratio gets an interval over enough items while the larger, slower batch
    sizes keep their cost."""
    groups = -(-REAL_TEXTS // (int(batch) * REAL_BATCHES))
    return REAL_BATCHES * max(1, groups)


def check_seq_lens(seq_lens, max_positions: int | None) -> None:
    """ConfigError unless every sequence length fits the model's ``max_position_embeddings``
    (checked before training, not when profiling starts hours later)."""
    for s in seq_lens:
        check_range("sequence length", s, 1, max_positions or 10**6)


def real_batches(tokenizer, examples, batch_sizes, max_length: int, count: int | None = None,
                 seed: int = 0) -> dict[int, list[dict]]:
    """``{batch: [arrays, ...]}``: for each batch size, ``count`` batches (default
    :func:`real_batch_count`) of eval examples drawn with ``seed`` and the batch size (with
    replacement when there are fewer examples), each tokenized with dynamic padding to its longest
    text (truncated at ``max_length``)."""
    from compressor.onnx_utils import encode
    examples = list(examples)
    if not examples:
        raise DataError("no eval examples to draw real batches from: expected at least one")
    if count is not None:
        check_range("count", count, 1, 10**4)
    out = {}
    for b in batch_sizes:
        check_range("batch", b, 1, 10**6)
        rng = random.Random(seed * 1_000_003 + int(b))  # the same draw whatever other sizes ask
        batches = []
        for _ in range(real_batch_count(b) if count is None else count):
            pick = (rng.sample(examples, b) if b <= len(examples)
                    else [rng.choice(examples) for _ in range(b)])
            batches.append(encode(tokenizer, pick, max_length))
        out[int(b)] = batches
    return out


def token_length_stats(tokenizer, examples, max_length: int) -> dict:
    """Token lengths of ``examples`` (special tokens included, truncated at ``max_length``):
    count, mean, median, p95, max and the fraction cut at ``max_length``."""
    import numpy as np
    examples = list(examples)
    if not examples:
        return {"count": 0, "mean": None, "median": None, "p95": None, "max": None, "truncated": None}
    texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    args = (texts, pairs) if all(p is not None for p in pairs) else (texts,)
    ids = tokenizer(*args, truncation=True, max_length=max_length)["input_ids"]
    lens = np.array([len(x) for x in ids], dtype=float)
    return {"count": int(lens.size), "mean": float(lens.mean()), "median": float(np.median(lens)),
            "p95": float(np.percentile(lens, 95)), "max": int(lens.max()),
            "truncated": float((lens >= max_length).mean())}


def own_tokenizers(models: dict, tokenizer) -> dict:
    """``{label: tokenizer}`` for the models whose folder holds a tokenizer with another vocabulary
    than ``tokenizer`` (e.g. after ``vocab-prune``): they need the texts in their own token ids."""
    from compressor.onnx_utils import folder_tokenizer
    vocab, out = tokenizer.get_vocab(), {}
    for label, model in models.items():
        folder = Path(getattr(model, "path", model)).parent
        if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            continue
        tok = folder_tokenizer(folder)
        if tok.get_vocab() != vocab:
            out[label] = tok
    return out


def model_real_batches(models: dict, tokenizer, examples, batch_sizes, max_length: int, seed: int = 0) -> dict:
    """:func:`real_batches` for profiling ``models``: ``{batch: [arrays]}``, or, when some model
    has its own vocabulary, ``{batch: {label: [arrays]}}``: the same texts (the same draw), each
    model fed its own token ids."""
    real = real_batches(tokenizer, examples, batch_sizes, max_length, seed=seed)
    own = {label: real_batches(tok, examples, batch_sizes, max_length, seed=seed)
           for label, tok in own_tokenizers(models, tokenizer).items()}
    return {b: {label: own.get(label, real)[b] for label in models} for b in real} if own else real


def profile_targets(targets, models: dict, *, examples=None, tokenizer=None,
                    batch_sizes=DEFAULT_BATCH_SIZES, seq_lens=DEFAULT_SEQ_LENS, runs: int = 30,
                    warmup: int = 5, max_length: int = 128, real_shapes: bool = True,
                    seed: int = 0, known_accuracy: dict | None = None, min_seconds: float = MIN_SECONDS,
                    thresholds: dict | None = None, skip_accuracy=()) -> dict:
    """Profile ``models`` (label -> ONNX path or OnnxModel) on every target and measure their
    accuracy there. Returns ``{"profiles": [Profile dicts], "accuracy": {label: {target: acc}},
    "grid": {...}}``; real-shape profiles carry ``speedup_interval`` (:func:`speed_intervals`).

    Real shapes need ``examples`` and ``tokenizer``; accuracy needs ``examples`` (each model's
    tokenizer is read from its folder). ``known_accuracy`` (``{label: acc}``, measured with
    ONNX Runtime's CPU provider) is reused for the ``cpu`` target instead of measuring again.
    ``thresholds`` (``{label: t}``, a multi-label task's, chosen on dev) are what each model's
    accuracy is measured at on the other targets. ``skip_accuracy``: labels whose accuracy does
    not apply (a static-embedding baseline: another embedding space), timed only.
    """
    examples = list(examples or [])
    grid = {"batch_sizes": [int(b) for b in batch_sizes], "seq_lens": [int(s) for s in seq_lens],
            "runs": runs, "min_seconds": min_seconds, "warmup": warmup, "real_shapes": False, "real_batches_per_size": 0,
            "max_length": max_length, "eval_token_lengths": None}
    real = None
    if real_shapes and examples and tokenizer is not None:
        real = model_real_batches(models, tokenizer, examples, batch_sizes, max_length, seed)
        grid.update(real_shapes=True, real_batches_per_size=REAL_BATCHES,
                    real_batches_by_size={str(b): len(real[b]) for b in real},
                    eval_token_lengths=token_length_stats(tokenizer, examples, max_length))
    profiles, accuracy = [], {label: {} for label in models}
    for target in targets:
        log.info("profiling %s on %s", ", ".join(models), target.name)
        profiles += [p.to_dict() for p in target.profile(
            models, batch_sizes=batch_sizes, seq_lens=seq_lens, warmup=warmup, runs=runs,
            seed=seed, real_inputs=real, min_seconds=min_seconds)]
        if real and 1 in real:  # where the time goes at b1 real texts: the report's per-operator table
            from compressor.op_profile import op_breakdowns
            b1 = real[1]
            grid.setdefault("op_breakdown", {})[target.name] = op_breakdowns(
                target, {label: getattr(m, "path", m) for label, m in models.items()},
                {label: b1[label] if isinstance(b1, dict) else b1 for label in models})
        if not examples:
            continue
        for label, model in models.items():
            if label in skip_accuracy:
                continue
            known = (known_accuracy or {}).get(label)
            if target.name == "cpu" and known is not None:
                accuracy[label][target.name] = known
                continue
            log.info("accuracy of %s on %s (%d eval examples)", label, target.name, len(examples))
            at = {"threshold": thresholds[label]} if label in (thresholds or {}) else {}
            accuracy[label][target.name] = target.accuracy(
                Path(getattr(model, "path", model)), examples, max_length=max_length, **at)
    return {"profiles": speed_intervals(profiles, seed=seed), "accuracy": accuracy, "grid": grid}


def speed_intervals(profiles, references=SPEED_REFERENCES, seed: int = 0) -> list[dict]:
    """``profiles`` (dicts) with ``speedup_interval`` added to every real-shape profile that has a
    reference row (:data:`SPEED_REFERENCES`) timed on the same target and shape:
    ``{reference: {"ratio", "low", "high", "n", "level", "items"}}``, the speedup over the reference
    with a bootstrap 95% interval over the paired per-input latencies (``input_p50_ms``: at b1 one
    per text, ``"items": "texts"``; at larger batch sizes one per batch, ``"batches"``), see
    :func:`compressor.stats.ratio_interval`. Its ``ratio`` is the speedup :func:`speedups` reports.
    Fixed shapes (one random input) and profiles without per-input latencies get none."""
    from compressor.stats import ratio_interval
    rows = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in profiles]

    def key(r):
        return r.get("target"), r.get("batch"), r.get("shape_kind")
    per_input = {(r.get("model"), key(r)): r.get("input_p50_ms") for r in rows
                 if r.get("shape_kind") == REAL and r.get("input_p50_ms")}
    for r in rows:
        mine = per_input.get((r.get("model"), key(r)))
        found = {}
        for ref in references:
            base = per_input.get((ref, key(r)))
            if not mine or r.get("model") == ref or not base or len(base) != len(mine):
                continue
            try:
                iv = ratio_interval(base, mine, seed=seed)
            except ValueError as exc:  # a zero or missing latency: no interval, say why
                log.warning("no speed interval for %s over %s at %s: %s", r.get("model"), ref, key(r), exc)
                continue
            found[ref] = {**{k: iv[k] for k in ("ratio", "low", "high", "n", "level")},
                          "items": "texts" if r.get("batch") == 1 else "batches"}
        if found:
            r["speedup_interval"] = found
    return rows


def speed_ms(profile) -> float | None:
    """The latency a speedup is computed from: ``typical_ms`` (each input's median latency,
    averaged over the inputs: at a real shape every text counts once; see ``targets.base.Profile``),
    or ``p50_ms`` in reports made before it existed. ``profile`` is a Profile or its dict."""
    row = profile.to_dict() if hasattr(profile, "to_dict") else dict(profile)
    value = row.get("typical_ms")
    return value if value is not None else row.get("p50_ms")


def speedups(profiles, baseline: str = "dense") -> dict:
    """Baseline latency / model latency (:func:`speed_ms`) for each model other than ``baseline``,
    measured in the same target and shape: ``{target: {model: {"b1xs128": ratio, "b8xreal": ratio}}}``.
    Shapes without a baseline profile are left out. ``profiles`` may be Profile objects or dicts."""
    rows = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in profiles]

    def key(r):
        return r["target"], shape_key(r["batch"], r["seq_len"], r.get("shape_kind") or FIXED)
    base = {key(r): speed_ms(r) for r in rows if r["model"] == baseline}
    out: dict = {}
    for r in rows:
        ref, mine = base.get(key(r)), speed_ms(r)
        if r["model"] == baseline or ref is None or not mine:
            continue
        out.setdefault(r["target"], {}).setdefault(r["model"], {})[key(r)[1]] = ref / mine
    return out
