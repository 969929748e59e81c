"""Targets: where a model runs (an ONNX Runtime execution provider and its options), and the
profiler that times ONNX models side by side on it.

Modelled on Olive's ``ort_inference``: after creating a session, compare
``session.get_providers()`` with what was asked and fail loudly on a silent fallback; time
after warm-up; report p50/p90/p95/p99 and throughput, and keep the first run (session creation
and, on TensorRT, the engine build) apart from the latency statistics. Models are timed in
interleaved rounds (every model once per round, order rotated) because separate runs drift
20-50% on shared machines: only side-by-side ratios are trustworthy.

onnxruntime is imported inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from compressor.errors import ArtifactError, ConfigError, TargetError, check_choice, check_range
from compressor.pass_base import option

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


def throughput(batch: int, p50_ms: float) -> float:
    """Samples per second for one batch of ``batch`` samples taking ``p50_ms`` milliseconds."""
    return batch * 1000.0 / p50_ms if p50_ms > 0 else float("inf")


def shape_key(batch: int, seq_len: int) -> str:
    """The label of an input shape in reports and summaries, e.g. ``b1xs128``."""
    return f"b{batch}xs{seq_len}"


def read_rss_mb() -> dict:
    """This process's resident memory in MB: ``{"peak": VmHWM, "current": VmRSS}``.

    Read from ``/proc/self/status`` on Linux (process-wide: every session and tensor in the
    process counts); elsewhere ``resource.getrusage`` gives the peak only. Missing -> None.
    """
    try:
        text = Path("/proc/self/status").read_text()
        kb = {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+)\s*kB", text, re.M)}
        return {"peak": kb["VmHWM"] / 1024, "current": kb["VmRSS"] / 1024}
    except (OSError, KeyError):
        pass
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return {"peak": peak / (1024 * 1024 if sys.platform == "darwin" else 1024), "current": None}
    except (ImportError, OSError):
        return {"peak": None, "current": None}


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0: ``/proc/self/clear_refs`` = 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def model_size_bytes(path: str | Path) -> int:
    """Size of an ONNX file plus its external-data files beside it (``model.onnx.data``,
    ``model.onnx_data``: anything named ``<file name>...data``)."""
    path = Path(path)
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + "?*data"):
        if extra.is_file():
            total += extra.stat().st_size
    return total


_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
           "tensor(float16)": "float16", "tensor(bool)": "bool"}
DEFAULT_VOCAB = 100  # token ids below 100 exist in every BERT-family vocabulary


def resolve_vocab_size(paths, vocab_size: int | None = None) -> int:
    """``vocab_size`` if given, else the smallest ``vocab_size`` in the config.json files beside
    ``paths`` (so the same ids are valid for every model), else :data:`DEFAULT_VOCAB`."""
    import json
    if vocab_size is not None:
        check_range("vocab_size", vocab_size, 1, 10**9)
        return int(vocab_size)
    found = []
    for path in paths:
        cfg = Path(path).parent / "config.json"
        try:
            found.append(int(json.loads(cfg.read_text())["vocab_size"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(found) if found else DEFAULT_VOCAB


def make_token_arrays(batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict:
    """Seeded ``input_ids`` in ``[0, vocab_size)``, ``attention_mask`` ones, ``token_type_ids``
    zeros and ``position_ids`` 0..seq_len-1, all int64 of shape (batch, seq_len)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64),
            "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64),
            "position_ids": np.tile(np.arange(seq_len, dtype=np.int64), (batch, 1))}


def make_feeds(sess, arrays: dict) -> dict:
    """The feed dict for ``sess``: each input by name from ``arrays``, cast to its ONNX type."""
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name not in arrays:
            raise ArtifactError(f"model input '{inp.name}' cannot be generated: known inputs are "
                                f"{', '.join(arrays)}")
        feeds[inp.name] = arrays[inp.name].astype(_DTYPES.get(inp.type, "int64"), copy=False)
    return feeds


@dataclass
class Profile:
    """Latency of one model at one input shape on one target.

    Latencies are in milliseconds over ``runs`` timed runs after ``warmup`` untimed ones;
    ``first_run_ms`` is session creation plus the first inference (kept apart). ``peak_rss_mb``
    is the process-wide resident-memory high-water mark over this shape's sessions and runs
    (all models of the shape were loaded together); ``load_rss_mb`` is how much resident
    memory grew while this model's session was created and run once.
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

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """An ONNX Runtime execution-provider setup. Subclasses set ``name`` and ``providers``
    (in priority order; the first is the one that must be in use) and may override
    :meth:`provider_options` and :meth:`session_options`.

    ``allow_fallback=False`` (the default) turns a silent fallback to a later provider, or a
    requested provider that this onnxruntime build lacks, into a :class:`TargetError`.
    """

    name: ClassVar[str] = ""
    providers: ClassVar[tuple[str, ...]] = ()

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

    def provider_options(self) -> list[dict]:
        """Per-provider option dicts, aligned with ``providers`` (e.g. CUDA ``device_id``)."""
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
        return so

    def _requested(self) -> tuple[list[str], list[dict]]:
        """Providers (and options) to hand to ORT: unavailable ones fail, or are dropped with a
        warning when ``allow_fallback``."""
        import onnxruntime as ort
        available = ort.get_available_providers()
        if not self.providers:
            raise TargetError(f"target '{self.name}' requests no execution provider")
        pairs = list(zip(self.providers, self.provider_options()))
        missing = [p for p, _ in pairs if p not in available]
        if missing and not self.allow_fallback:
            raise TargetError(f"target '{self.name}' needs {missing[0]}, which this onnxruntime "
                              f"build does not offer: available {', '.join(available)}")
        if missing:
            log.warning("target '%s': %s not available (available: %s); falling back",
                        self.name, ", ".join(missing), ", ".join(available))
        pairs = [(p, o) for p, o in pairs if p in available] or [("CPUExecutionProvider", {})]
        return [p for p, _ in pairs], [o for _, o in pairs]

    def session(self, path: str | Path):
        """An ``onnxruntime.InferenceSession`` for ``path`` on this target's providers.

        Raises TargetError when the first requested provider is not the one in use (ORT falls
        back silently otherwise), unless ``allow_fallback``; ArtifactError for a missing or
        unreadable model file.
        """
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"ONNX model {str(path)!r} does not exist")
        providers, provider_options = self._requested()
        try:
            sess = ort.InferenceSession(str(path), sess_options=self.session_options(),
                                        providers=providers, provider_options=provider_options)
        except (ort_state.InvalidProtobuf, ort_state.NoSuchFile, ort_state.InvalidGraph) as exc:
            raise ArtifactError(f"cannot load ONNX model {str(path)!r}: {exc}") from None
        if self.fell_back(sess):
            msg = (f"target '{self.name}' asked for {', '.join(self.providers)} but the session "
                   f"uses {', '.join(sess.get_providers())}")
            if not self.allow_fallback:
                raise TargetError(msg + ": pass allow_fallback=True to accept it")
            log.warning("%s (fallback allowed)", msg)
        return sess

    def fell_back(self, sess) -> bool:
        """Whether ``sess`` does not use this target's first provider."""
        used = sess.get_providers()
        return not used or used[0] != self.providers[0]

    def profile(self, models: dict, batch_sizes=(1,), seq_lens=(128,), warmup: int = 5,
                runs: int = 30, vocab_size: int | None = None, seed: int = 0) -> list[Profile]:
        """Time every model in ``models`` (label -> ONNX path or OnnxModel) at every
        (batch, seq_len), side by side: per shape all sessions are created, each runs once
        (``first_run_ms``) and ``warmup`` times, then ``runs`` rounds each time every model
        once, in an order rotated by one each round. Inputs are identical for all models:
        ``input_ids`` drawn from ``[0, vocab_size)`` with ``seed`` (vocab from config.json
        beside the models when not given), ``attention_mask`` ones, ``token_type_ids`` zeros.
        """
        if not models:
            raise ConfigError("profile needs at least one model: got none")
        check_range("runs", runs, 1, 10**7)
        check_range("warmup", warmup, 0, 10**7)
        for b in batch_sizes:
            check_range("batch", b, 1, 10**6)
        for s in seq_lens:
            check_range("seq_len", s, 1, 10**6)
        paths = {label: Path(getattr(m, "path", m)) for label, m in models.items()}
        for label, path in paths.items():
            if not path.is_file():
                raise ArtifactError(f"ONNX model {str(path)!r} for '{label}' does not exist")
        vocab = resolve_vocab_size(paths.values(), vocab_size)
        sizes = {label: model_size_bytes(p) for label, p in paths.items()}
        out = []
        for batch in batch_sizes:
            for seq in seq_lens:
                out += self._profile_shape(paths, sizes, batch, seq, warmup, runs, vocab, seed)
        return out

    def _profile_shape(self, paths, sizes, batch, seq, warmup, runs, vocab, seed) -> list[Profile]:
        arrays = make_token_arrays(batch, seq, vocab, seed)
        labels = list(paths)
        reset_peak_rss()
        sessions, feeds, first, load_rss, fallback = {}, {}, {}, {}, {}
        for label in labels:
            before = read_rss_mb()["current"]
            t0 = time.perf_counter()
            sess = self.session(paths[label])
            feeds[label] = make_feeds(sess, arrays)
            sess.run(None, feeds[label])
            first[label] = (time.perf_counter() - t0) * 1000
            after = read_rss_mb()["current"]
            load_rss[label] = after - before if before is not None and after is not None else None
            sessions[label], fallback[label] = sess, self.fell_back(sess)
            for _ in range(warmup):
                sess.run(None, feeds[label])
        timings = {label: [] for label in labels}
        for r in range(runs):
            k = r % len(labels)
            for label in labels[k:] + labels[:k]:
                t0 = time.perf_counter()
                sessions[label].run(None, feeds[label])
                timings[label].append((time.perf_counter() - t0) * 1000)
        peak = read_rss_mb()["peak"]
        out = []
        for label in labels:
            st = percentiles(timings[label])
            out.append(Profile(
                model=label, target=self.name, providers_requested=list(self.providers),
                providers_used=list(sessions[label].get_providers()), fallback=fallback[label],
                batch=batch, seq_len=seq, runs=runs, warmup=warmup, p50_ms=st["p50"],
                p90_ms=st["p90"], p95_ms=st["p95"], p99_ms=st["p99"], mean_ms=st["mean"],
                throughput=throughput(batch, st["p50"]), first_run_ms=first[label],
                size_bytes=sizes[label], peak_rss_mb=peak, load_rss_mb=load_rss[label],
                min_ms=st["min"], max_ms=st["max"], options=self.options()))
            log.info("%s %s %s: p50 %.2f ms, p90 %.2f ms, first run %.1f ms", self.name, label,
                     shape_key(batch, seq), st["p50"], st["p90"], first[label])
        return out


def speedups(profiles, baseline: str = "dense") -> dict:
    """Baseline p50 / model p50 for each model other than ``baseline``, measured in the same
    target and shape: ``{target: {model: {"b1xs128": ratio}}}``. Shapes without a baseline
    profile are left out. ``profiles`` may be Profile objects or their dicts."""
    rows = [p.to_dict() if hasattr(p, "to_dict") else dict(p) for p in profiles]
    base = {(r["target"], r["batch"], r["seq_len"]): r["p50_ms"] for r in rows if r["model"] == baseline}
    out: dict = {}
    for r in rows:
        ref = base.get((r["target"], r["batch"], r["seq_len"]))
        if r["model"] == baseline or ref is None or not r["p50_ms"]:
            continue
        out.setdefault(r["target"], {}).setdefault(r["model"], {})[
            shape_key(r["batch"], r["seq_len"])] = ref / r["p50_ms"]
    return out
