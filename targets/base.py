"""Targets: where a model runs (an ONNX Runtime execution provider and its options), and the
profiler that times ONNX models side by side on it.

Modelled on Olive's ``ort_inference``: after creating a session, compare
``session.get_providers()`` with what was asked and fail loudly on a silent fallback; time
after warm-up; report p50/p90/p95/p99 and throughput, and keep the first run (session creation
and, on TensorRT, the engine build) apart from the latency statistics. Models are timed in
interleaved rounds (every model once per round, order rotated; fast models a block of runs after
an untimed one) because separate runs drift 20-50% on shared machines: only side-by-side ratios
are trustworthy. Sessions stop their threads' spinning at the end of each run, so models timed
side by side do not steal each other's cores.

onnxruntime is imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from compressor.errors import ArtifactError, ConfigError, TargetError, check_choice, check_range
from compressor.pass_base import option
from compressor.profiling import FIXED, REAL, shape_key
from targets._io import (make_feeds, make_token_arrays, model_size_bytes, read_rss_mb, reset_peak_rss,
                         resolve_max_positions, resolve_vocab_size)

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")


def percentiles(timings_ms) -> dict:
    """p50, p90, p95, p99 (numpy linear interpolation), mean, min and max of ``timings_ms``."""
    import numpy as np
    arr = np.asarray(list(timings_ms), dtype=float)
    if arr.size == 0:
        raise ConfigError("percentiles of an empty timing list: need at least one run")
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


def plan_rounds(runs: int, min_seconds: float, round_ms: float, inputs: int = 1, cap: int = 20) -> int:
    """Timed runs per model for one shape: at least ``runs``, more until they fill ``min_seconds``
    at ``round_ms`` for one run of every model (as ``timeit``'s autorange: a 2 ms model gets
    hundreds of runs, a 400 ms one keeps ``runs``), at most ``cap`` x ``runs``, rounded up to a
    multiple of ``inputs`` (every real input timed equally often, whole blocks)."""
    rounds = int(runs)
    if min_seconds > 0 and round_ms > 0:
        rounds = max(rounds, min(int(runs) * cap, math.ceil(min_seconds * 1000.0 / round_ms)))
    return -(-rounds // max(1, int(inputs))) * max(1, int(inputs))


SHORT_RUN_MS = 20.0  # runs shorter than this are timed in blocks after an untimed settling run
BLOCK = 8


def timing_block(run_ms: float, inputs: int = 1, runs: int = BLOCK) -> tuple[int, int]:
    """``(block, settle)``: per round each model runs ``settle`` untimed runs, then ``block`` timed
    ones back to back. Short runs (< :data:`SHORT_RUN_MS`) get a block of :data:`BLOCK` (at most
    ``runs``; with several real inputs, one run of each of up to :data:`BLOCK` inputs, the next
    ones in the next round) after one settling run, so the timed runs
    see the model's own thread pool awake and the other models' idle (measured on 2 cores at b1: one run per model per round put
    the wake-up of the pool in every timing and moved the dense/compressed ratio from 1.49 to
    1.42); long runs are interleaved one by one, where a wake-up is noise. With 64 real texts a
    round times 8 of them on every model, so each text is timed on all models within one round
    (its per-text latency ratio compares runs made close together) and the order still rotates."""
    if run_ms >= SHORT_RUN_MS:
        return 1, 0
    return (min(int(inputs), BLOCK) if inputs > 1 else max(1, min(BLOCK, int(runs)))), 1


def typical(timings_ms, input_index) -> tuple[float, list[float]]:
    """Mean over inputs of each input's median latency, and those medians (see :class:`Profile`)."""
    import numpy as np
    arr, idx = np.asarray(timings_ms, dtype=float), np.asarray(input_index)
    medians = [float(np.median(arr[idx == i])) for i in sorted(set(idx.tolist()))]
    return float(np.mean(medians)), medians


def throughput(batch: int, p50_ms: float) -> float:
    """Samples per second for one batch of ``batch`` samples taking ``p50_ms`` milliseconds."""
    return batch * 1000.0 / p50_ms if p50_ms > 0 else float("inf")


@dataclass
class Profile:
    """Latency of one model at one input shape on one target.

    Latencies are in milliseconds over ``runs`` timed runs after ``warmup`` untimed ones;
    ``first_run_ms`` is session creation plus the first inference (kept apart; on TensorRT it
    holds the engine build), split into ``session_ms`` and ``first_inference_ms``.
    ``peak_rss_mb`` is the process-wide resident-memory high-water mark over this shape's
    sessions and runs (all models of the shape were loaded together); ``load_rss_mb`` is how much
    resident memory grew while this model's session was created and run once;
    ``device_memory_mb`` is GPU memory after the runs (None on CPU or when unknown, with
    ``device_memory_source`` saying where it was read).

    ``shape_kind`` is ``"fixed"`` (every input ``batch`` x ``seq_len``) or ``"real"``: batches
    of real eval texts padded to their longest, one batch per run in turn; ``padded_lens`` are
    those batches' lengths and ``seq_len`` their median.

    ``typical_ms`` is what speedups are computed from: the mean over the inputs of each input's
    median latency (``input_p50_ms``, real shapes only). At a fixed shape it equals ``p50_ms``; at
    a real shape every text counts once, while the p50 of the mixed run times sits between two
    different texts' times and a ratio of two such p50s compares different texts (measured: the
    same pair of models gave 1.30..1.68x over 8 repeats of 30 runs, 1.30..1.37x at 300 runs,
    against 1.41..1.50x text by text).
    """

    model: str
    target: str
    providers_requested: list[str]
    providers_used: list[str]
    fallback: bool
    batch: int
    seq_len: int
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    first_run_ms: float
    size_bytes: int
    peak_rss_mb: float | None = None
    load_rss_mb: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    options: dict = field(default_factory=dict)
    shape_kind: str = FIXED
    padded_lens: list[int] | None = None
    session_ms: float | None = None
    first_inference_ms: float | None = None
    device_memory_mb: float | None = None
    device_memory_source: str | None = None
    typical_ms: float | None = None
    input_p50_ms: list[float] | None = None

    @property
    def shape(self) -> str:
        """This profile's shape label (:func:`shape_key`)."""
        return shape_key(self.batch, self.seq_len, self.shape_kind)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """An ONNX Runtime execution-provider setup. Subclasses set ``name``, ``providers`` (in
    priority order; the first is the one that must be in use) and ``requires`` (what to install
    for it), and may override :meth:`provider_options`, :meth:`session_options`,
    :meth:`runner`, :meth:`device_memory` and :meth:`with_workdir`.

    ``allow_fallback=False`` (the default) turns a silent fallback to a later provider, or a
    requested provider that this onnxruntime build lacks, into a :class:`TargetError`.
    """

    name: ClassVar[str] = ""
    providers: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[str] = "an onnxruntime build"

    threads: int = option(0, "intra-op threads (0 = ONNX Runtime default: all physical cores)")
    graph_optimization: str = option("all", "ONNX Runtime graph optimization level",
                                     choices=GRAPH_OPTIMIZATIONS)
    allow_fallback: bool = option(False, "run on a later provider instead of failing when the "
                                         "first one is not available or not used")

    def __post_init__(self):
        check_range("threads", self.threads, 0, 4096)
        check_choice("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS)

    def options(self) -> dict:
        """This target's option values by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def is_available(cls) -> bool:
        """Whether this onnxruntime build offers the target's first provider."""
        import onnxruntime as ort
        return bool(cls.providers) and cls.providers[0] in ort.get_available_providers()

    def check_available(self) -> list[str]:
        """The providers this onnxruntime build offers. TargetError (one line naming the provider,
        what to install and what is available) when the target's first provider is missing and
        fallback is not allowed: call it before hours of work that end in profiling."""
        import onnxruntime as ort
        available = list(ort.get_available_providers())
        if not self.providers:
            raise TargetError(f"target '{self.name}' requests no execution provider")
        missing = [p for p in self.providers if p not in available]
        if missing and not self.allow_fallback:
            raise TargetError(f"target '{self.name}' needs {self.requires} with {missing[0]}; "
                              f"available here: {', '.join(available)} (--allow-fallback runs "
                              f"on those instead and marks the report)")
        return available

    def provider_options(self, path=None, shape_range=None) -> list[dict]:
        """Per-provider option dicts, aligned with ``providers`` (e.g. CUDA ``device_id``).
        ``path`` is the model and ``shape_range`` the ``((batch, seq) min, opt, max)`` input
        shapes the session will see (TensorRT builds its engine for that range)."""
        return [{} for _ in self.providers]

    def session_options(self):
        """The ``onnxruntime.SessionOptions`` for every session of this target."""
        import onnxruntime as ort
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.graph_optimization]
        so.intra_op_num_threads = self.threads
        # the intra-op threads stop spinning when a run ends: a lone session runs as fast (measured
        # 3.86 vs 3.79 ms, MiniLM fp32 b1 on 2 cores), and sessions timed side by side no longer
        # steal each other's cores (by default an idle pool spins ~50 ms, slowing the next model's
        # runs up to 2.8x)
        so.add_session_config_entry("session.force_spinning_stop", "1")
        return so

    def with_workdir(self, workdir: str | Path) -> "Target":
        """This target with its caches (e.g. TensorRT engines) under ``workdir``."""
        return self

    def _requested(self, path=None, shape_range=None) -> tuple[list[str], list[dict]]:
        """Providers (and options) to hand to ORT: unavailable ones fail, or are dropped with a
        warning when ``allow_fallback``."""
        available = self.check_available()
        pairs = list(zip(self.providers, self.provider_options(path, shape_range)))
        missing = [p for p, _ in pairs if p not in available]
        if missing:
            log.warning("target '%s': %s not available (available: %s); falling back",
                        self.name, ", ".join(missing), ", ".join(available))
        pairs = [(p, o) for p, o in pairs if p in available] or [("CPUExecutionProvider", {})]
        return [p for p, _ in pairs], [o for _, o in pairs]

    def session(self, path: str | Path, shape_range=None):
        """An ``onnxruntime.InferenceSession`` for ``path`` on this target's providers.

        Raises TargetError when the first requested provider is missing or not the one in use
        (ORT falls back silently otherwise), unless ``allow_fallback``, or when the provider
        fails to build a session; ArtifactError for a missing or unreadable model file.
        """
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"ONNX model {str(path)!r} does not exist")
        providers, provider_options = self._requested(path, shape_range)
        try:
            sess = ort.InferenceSession(str(path), sess_options=self.session_options(),
                                        providers=providers, provider_options=provider_options)
        except (ort_state.InvalidProtobuf, ort_state.NoSuchFile, ort_state.InvalidGraph) as exc:
            raise ArtifactError(f"cannot load ONNX model {str(path)!r}: {exc}") from None
        except (ort_state.Fail, ort_state.RuntimeException, ort_state.EPFail,
                ort_state.NotImplemented, ort_state.InvalidArgument) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TargetError(f"target '{self.name}' could not create a session for {str(path)!r} "
                              f"on {', '.join(providers)}: {first}") from None
        if self.fell_back(sess):
            msg = (f"target '{self.name}' asked for {', '.join(self.providers)} but the session "
                   f"uses {', '.join(sess.get_providers())}")
            if not self.allow_fallback:
                raise TargetError(msg + ": pass allow_fallback=True (--allow-fallback) to accept it")
            log.warning("%s (fallback allowed)", msg)
        return sess

    def fell_back(self, sess) -> bool:
        """Whether ``sess`` does not use this target's first provider."""
        used = sess.get_providers()
        return not used or used[0] != self.providers[0]

    def runner(self, sess, inputs: list[dict]):
        """``(run, info)``: ``run(i)`` runs ``sess`` once on ``inputs[i % len(inputs)]`` (dicts of
        int64 arrays) and returns its outputs; ``info`` records how (e.g.
        ``{"io_binding_used": True}``) for the Profile. Feeds are prepared here so ``run`` times
        only the inference."""
        feeds = [make_feeds(sess, a) for a in inputs]

        def run(i: int) -> list:
            return sess.run(None, feeds[i % len(feeds)])
        return run, {}

    def device_memory(self) -> tuple[float | None, str | None]:
        """Device memory in MB in use now and its source; ``(None, None)`` on the CPU."""
        return None, None

    def accuracy(self, path: str | Path, examples, max_length: int = 128, batch_size: int = 64,
                 tokenizer=None, threshold: float | None = None) -> float:
        """Accuracy of the ONNX model at ``path`` on labelled ``examples``, run on this target
        (so a precision problem or a fallback shows up as a number). The tokenizer is loaded from
        the model's folder unless given."""
        from compressor.errors import DataError
        from compressor.onnx_utils import folder_tokenizer, onnx_predict_logits
        examples = list(examples)
        if not examples:
            raise DataError("no eval examples: expected at least one to measure accuracy")
        path = Path(path)
        if tokenizer is None:
            tokenizer = folder_tokenizer(path.parent)
        qa = any(getattr(e, "qa", None) is not None for e in examples)  # QA: batches of windows, more than questions
        top = (batch_size if qa else min(batch_size, len(examples)), max_length)
        sess = self.session(path, shape_range=((1, 1), top, top))
        if qa:  # SQuAD F1 of the answers read from every window of each question
            from compressor.qa import onnx_span_logits, qa_scores
            wins, starts, ends = onnx_span_logits(sess, tokenizer, examples, max_length, batch_size)
            return sum(qa_scores(examples, wins, starts, ends)[1]) / len(examples)
        logits = onnx_predict_logits(sess, tokenizer, examples, max_length, batch_size)
        from compressor.metrics import TOKEN_METRIC, f1_from_counts, is_regression, is_tagging, pearson, tag_names
        from compressor.metrics import is_multi_label
        if is_multi_label(examples):  # micro F1 of the sigmoid outputs at the threshold chosen on dev (else 0.5)
            from compressor.metrics import DEFAULT_THRESHOLD, MULTI_LABEL_METRIC, multi_label_scores, sigmoid
            return multi_label_scores(sigmoid(logits), [e.label for e in examples],
                                      DEFAULT_THRESHOLD if threshold is None else threshold)[MULTI_LABEL_METRIC]
        if is_tagging(examples):  # a token classifier: entity-level micro F1 (tag names from config.json)
            import json
            from compressor.onnx_utils import tagging_counts_of
            names = tag_names(json.loads((path.parent / "config.json").read_text()))
            counts = tagging_counts_of(logits, tokenizer, examples, max_length, names)
            return f1_from_counts(*counts.sum(0).tolist())[TOKEN_METRIC]
        if is_regression(examples):  # the task metric of a regression task: Pearson's r
            return pearson(logits[:, 0].tolist(), [e.label for e in examples])
        preds = logits.argmax(axis=-1)
        return float(sum(int(p) == e.label for p, e in zip(preds, examples)) / len(examples))

    def profile(self, models: dict, batch_sizes=(1,), seq_lens=(128,), warmup: int = 5,
                runs: int = 30, vocab_size: int | None = None, seed: int = 0,
                real_inputs: dict | None = None, min_seconds: float = 0.0) -> list[Profile]:
        """Time every model in ``models`` (label -> ONNX path or OnnxModel) at every
        (batch, seq_len), side by side: per shape all sessions are created, each runs once
        (``first_run_ms``) and ``warmup`` times, then ``runs`` rounds each time every model
        once (fast models a block of runs, :func:`timing_block`), in an order rotated by one each
        round. Inputs are identical for all models:
        ``input_ids`` drawn from ``[0, vocab_size)`` with ``seed`` (vocab from config.json
        beside the models when not given), ``attention_mask`` ones, ``token_type_ids`` zeros.

        ``real_inputs`` (``{batch: [arrays, ...]}``, see :func:`compressor.profiling.real_batches`) adds
        one "real" shape per batch size: round ``r`` feeds every model batch ``r % n``; a value
        may be ``{label: [arrays, ...]}`` instead, the same texts in each model's own token ids.

        ``min_seconds``: a shape whose rounds are fast gets more of them, until they fill about
        this many seconds (:func:`plan_rounds`; ``runs`` stays the minimum). The rounds are a
        multiple of the number of inputs, so every real text is timed equally often.
        """
        if not models:
            raise ConfigError("profile needs at least one model: got none")
        check_range("runs", runs, 1, 10**7)
        check_range("warmup", warmup, 0, 10**7)
        check_range("min_seconds", min_seconds, 0.0, 3600.0)
        paths = {label: Path(getattr(m, "path", m)) for label, m in models.items()}
        for label, path in paths.items():
            if not path.is_file():
                raise ArtifactError(f"ONNX model {str(path)!r} for '{label}' does not exist")
        max_pos = resolve_max_positions(paths.values())
        for b in batch_sizes:
            check_range("batch", b, 1, 10**6)
        for s in seq_lens:
            check_range("seq_len", s, 1, max_pos or 10**6)
        real_inputs = {b: v if isinstance(v, dict) else list(v) for b, v in (real_inputs or {}).items() if v}
        if not (list(batch_sizes) and list(seq_lens)) and not real_inputs:
            raise ConfigError("nothing to profile: give batch sizes and sequence lengths, or real "
                              "inputs")
        vocab = resolve_vocab_size(paths.values(), vocab_size)
        sizes = {label: model_size_bytes(p) for label, p in paths.items()}
        out = []
        for batch in batch_sizes:
            for seq in seq_lens:
                inputs = [make_token_arrays(batch, seq, vocab, seed)]
                out += self._profile_shape(paths, sizes, batch, inputs, FIXED, warmup, runs, min_seconds)
        for batch, inputs in real_inputs.items():
            out += self._profile_shape(paths, sizes, int(batch), inputs, REAL, warmup, runs, min_seconds)
        return out

    def _profile_shape(self, paths, sizes, batch, inputs, kind, warmup, runs, min_seconds=0.0) -> list[Profile]:
        """``inputs``: arrays every model runs, or ``{label: arrays}`` where models tokenize the
        same texts differently (a vocabulary-pruned model has its own token ids)."""
        per_model = inputs if isinstance(inputs, dict) else {label: inputs for label in paths}
        lens = sorted(int(a["input_ids"].shape[1]) for a in per_model[next(iter(paths))])
        seq = lens[len(lens) // 2]
        every = [int(a["input_ids"].shape[1]) for arrays in per_model.values() for a in arrays]
        shape_range = ((batch, min(every)), (batch, seq), (batch, max(every)))
        labels = list(paths)
        reset_peak_rss()
        sessions, runners, info, timing, load_rss, round_ms = {}, {}, {}, {}, {}, 0.0
        for label in labels:
            before = read_rss_mb()["current"]
            t0 = time.perf_counter()
            sess = self.session(paths[label], shape_range=shape_range)
            t1 = time.perf_counter()
            runners[label], info[label] = self.runner(sess, per_model[label])
            t2 = time.perf_counter()
            runners[label](0)
            t3 = time.perf_counter()
            timing[label] = ((t1 - t0) * 1000, (t3 - t2) * 1000)
            after = read_rss_mb()["current"]
            load_rss[label] = after - before if before is not None and after is not None else None
            sessions[label] = sess
            t0 = time.perf_counter()
            for i in range(warmup):
                runners[label](i + 1)
            round_ms += ((time.perf_counter() - t0) / warmup if warmup else t3 - t2) * 1000
        n_inputs = len(per_model[labels[0]])
        block, settle = timing_block(round_ms / len(labels), n_inputs, runs)
        runs = plan_rounds(runs, min_seconds, round_ms, math.lcm(n_inputs, block))
        timings = {label: [] for label in labels}
        for r in range(runs // block):
            k = r % len(labels)
            for label in labels[k:] + labels[:k]:
                for _ in range(settle):
                    runners[label](r * block)
                for j in range(r * block, (r + 1) * block):
                    t0 = time.perf_counter()
                    runners[label](j)  # input j % n_inputs
                    timings[label].append((time.perf_counter() - t0) * 1000)
        which = [j % n_inputs for j in range(runs)]
        peak = read_rss_mb()["peak"]
        device_mb, device_src = self.device_memory()
        out = []
        for label in labels:
            st = percentiles(timings[label])
            typical_ms, per_input = typical(timings[label], which)
            session_ms, first_ms = timing[label]
            out.append(Profile(
                model=label, target=self.name, providers_requested=list(self.providers),
                providers_used=list(sessions[label].get_providers()),
                fallback=self.fell_back(sessions[label]), batch=batch, seq_len=seq, runs=runs,
                warmup=warmup, p50_ms=st["p50"], p90_ms=st["p90"], p95_ms=st["p95"],
                p99_ms=st["p99"], mean_ms=st["mean"], throughput=throughput(batch, st["p50"]),
                first_run_ms=session_ms + first_ms, size_bytes=sizes[label], peak_rss_mb=peak,
                load_rss_mb=load_rss[label], min_ms=st["min"], max_ms=st["max"],
                options={**self.options(), **info[label], "block": block, "settle_runs": settle},
                shape_kind=kind,
                padded_lens=lens if kind == REAL else None, session_ms=session_ms,
                first_inference_ms=first_ms, device_memory_mb=device_mb,
                device_memory_source=device_src, typical_ms=typical_ms,
                input_p50_ms=per_input if kind == REAL else None))
            log.info("%s %s %s: p50 %.2f ms, p90 %.2f ms, first run %.1f ms", self.name, label,
                     shape_key(batch, seq, kind), st["p50"], st["p90"], session_ms + first_ms)
        return out
