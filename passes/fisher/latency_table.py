"""Per-layer latency table measured on a target (:class:`passes.fisher.cost.LatencyTable`), and
whole-structure checks timed the same way.

The idea is ZipLM's (Kurtic, Frantar, Alistarh, "ZipLM: Inference-Aware Structured Pruning of
Language Models", NeurIPS 2023, arXiv:2302.04089; METHODS-structured.md section 2.2): a
structure search should price a head or an FFN neuron by what it costs on the deployment
runtime, measured there, not by FLOPs. An encoder's layers all have the same shapes, so one table per
sublayer type serves every layer (:meth:`~passes.fisher.cost.CostModel.per_layer` repeats it).

How the table is measured (ours): every entry comes from whole models exported like the real
one (TorchScript, eager attention), run in sessions of the target and timed together by
:func:`time_models` (the profiler's interleaved rounds, medians after warm-up), so ORT's graph fusions and
per-call overheads are those of the deployed model. With ``L`` layers and random weights:

- ``empty``: no encoder layers (embeddings, pooler, classifier);
- ``zero``: ``L`` layers with 0 heads and 0 neurons (residual + LayerNorm only);
- ``att h``: ``L`` layers with ``h`` heads and 0 neurons, h = 1..H;
- ``ffn n``: ``L`` layers with 0 heads and ``n`` neurons, n on a grid of widths;
- ``dense``: the full model with the real vocabulary.

Then ``att[h] = att[0] + (T(att h) - T(zero)) / L``, ``ffn[n] = ffn[0] + (T(ffn n) - T(zero)) / L``,
``att[0] + ffn[0] = (T(zero) - T(empty)) / L`` (split evenly: only their sum is identifiable) and
``fixed = T(dense) - L (att[H] + ffn[F])``, so the table predicts the dense time exactly. The
variants use a 1024-token vocabulary (the embedding lookup costs the same; the files are small).
More units never cost less: each measured curve is made non-decreasing by isotonic regression
(the raw medians are kept in ``info``). Widths between grid points are interpolated linearly.

Known limit: the table is additive, and a whole model need not be. On this project's 2-core
machine (1 thread, b1 x s27, MiniLM) with little else running, the table predicted the speedup
of whole pruned models within 5% of their measured speedup (timed like the table); with other
processes loading the machine (load 6) the dense model ran 9.5 ms against 5.5 ms for
``T(att H) + T(ffn F) - T(zero)`` (``info["additive_check_ms"]`` is that difference; the shared
cache no longer held its weights), ``fixed`` absorbed 4 ms a smaller model does not pay, and
half-FLOP models measured 3x where the table said 1.5x; with 2 threads under load, latency
also jumped where ORT starts splitting an op over both threads. The ``fisher`` pass therefore
times candidate structures whole (:class:`StructureTimer`) to set its budget
(:func:`passes.fisher.search.calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path

from compressor.artifact import atomic_write_text
from compressor.errors import check_choice, check_range
from passes.fisher.cost import LatencyTable, ModelShape

log = logging.getLogger(__name__)

TABLE_VERSION = 4  # 4: sessions stop spinning after each run (tables timed before were contended)
TABLE_SECONDS = 20.0  # the table's models together are timed for about this long (more rounds when fast)
SMALL_VOCAB = 1024  # the export dummy draws ids in [100, 1000)


def default_ffn_widths(ffn: int, step: int = 0) -> list[int]:
    """0, step, 2 step, ..., ffn (ffn always included); ``step=0``: about 24 points, a multiple of 16."""
    if step <= 0:
        step = max(16, int(round(ffn / 24 / 16)) * 16)
    return sorted(set(range(0, ffn, step)) | {ffn})


def isotonic(values) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(int(c))]


PRECISIONS = ("fp32", "int8", "int8f")  # int8f: ort-fuse, then dynamic INT8 (--quantize fused)


def cache_key(shape: ModelShape, target, batch: int, seq: int, widths: list[int], precision: str = "fp32") -> dict:
    """What a cached table must match: shape, target name and options, input shape, threads,
    precision, onnxruntime version, grid, host."""
    import onnxruntime as ort
    return {"version": TABLE_VERSION, "shape": asdict(shape), "target": target.name, "precision": precision,
            "options": {k: v for k, v in target.options().items()}, "batch": int(batch), "seq": int(seq),
            "threads": int(getattr(target, "threads", 0)), "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "ffn_widths": list(widths), "host": platform.node(),
            "machine": platform.machine()}


def _variant(config, vocab: int, layers: int, sizes: dict | None, hidden: int = 0):
    """A random-weight model of ``config``'s class with ``layers`` layers cut to ``sizes`` and
    narrowed to ``hidden`` hidden units (:meth:`passes.families.base.Family.keep_hidden`; 0: not)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from compressor.embedder import from_config as embedder_from_config
    from compressor.embedder import is_embedder
    from passes.families import family_of
    from passes.strip import apply_layer_sizes
    cfg = config.__class__.from_dict(config.to_dict())
    cfg.vocab_size, cfg.num_hidden_layers = vocab, max(layers, 1)  # ModernBERT's init divides by it
    if isinstance(getattr(cfg, "pad_token_id", None), int) and cfg.pad_token_id >= vocab:  # ModernBERT's: 50283
        cfg.pad_token_id = vocab - 1  # the padding row must be in the cut table
    cfg.__dict__.pop("compressor_layers", None)
    torch.manual_seed(0)
    cfg._attn_implementation = "eager"
    if is_embedder(cfg):  # an embedding model is timed as it deploys: pooling in the graph, no head
        model = embedder_from_config(cfg).eval()
    else:
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager").eval()
    if sizes is not None and layers:
        apply_layer_sizes(model, [dict(sizes) for _ in range(layers)])
    if hidden:  # before the layers go (the layer-less variant): the adapter needs its layer list
        family_of(model).keep_hidden(list(range(hidden)))
    if not layers:  # the layer-less variant: built with one layer, then without it
        family = family_of(model)
        family.set_layers([])
        for c in {id(c): c for c in (model.config, family.base.config)}.values():
            c.num_hidden_layers = 0
    return model


def time_models(target, paths: dict, batch: int, seq: int, vocab: int, rounds: int, warmup: int,
                min_seconds: float = 0.0) -> dict:
    """Latency (ms) of each ONNX model in ``paths`` on ``target`` at ``batch`` x ``seq``, timed side
    by side as every profile is (:meth:`targets.base.Target.profile`: sessions that stop spinning
    after each run, fast models in blocks after a settling run), ``4 * rounds`` timed runs at
    least, more until they fill ``min_seconds``. The same timing as the run's profile, so a check
    here and the report's measured speedup agree (measured with the earlier copies-and-blocks timer
    on contended sessions: 2.04x here against 1.73x in the report for one structure)."""
    profiles = target.profile(paths, batch_sizes=(batch,), seq_lens=(seq,), warmup=warmup, runs=4 * int(rounds),
                              vocab_size=vocab, seed=0, min_seconds=min_seconds)
    return {p.model: p.typical_ms for p in profiles}


def _export_variant(config, folder: Path, vocab: int, layers: int, sizes, precision: str = "fp32",
                    hidden: int = 0) -> Path:
    """Export a random-weight variant (``hidden``: narrowed to that many hidden units);
    ``precision="int8"`` times it as the deployment runs it: dynamically quantized like
    ``passes.quantize`` (MatMul weights INT8, per tensor); ``"int8f"`` fused by ORT's transformer
    optimizer first (``ort-fuse``: Attention, SkipLayerNorm, BiasGelu), as ``--quantize fused`` deploys."""
    import torch

    from passes.export_onnx import export_model, input_names
    from passes.strip import apply_layer_sizes
    with torch.no_grad():
        model = _variant(config, vocab, layers, sizes if isinstance(sizes, dict) else None, hidden)
        if isinstance(sizes, list):
            apply_layer_sizes(model, sizes)
        folder.mkdir(parents=True)
        export_model(model, input_names(model), folder, 17)
    path = folder / "model.onnx"
    if precision == "int8f":  # ORT's transformer fusions first (QAttention after quantization), as ort-fuse
        from passes.families import family_of
        from passes.ort_fusion import fuse_file
        fuse_file(path, family_of(model))
    if precision in ("int8", "int8f"):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from passes import _onnx_graph as og
        out = folder / "model.int8.onnx"
        with og.quiet_loggers():
            quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8,  # ORT's default ops, as deployed
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        out.replace(path)
    return path


class StructureTimer:
    """Measured speedup of whole structures over dense on ``target`` (random weights, real
    vocabulary, exported and timed as the table's models): ``timer(structure)`` times the
    structure and the dense model together and returns dense ms / structure ms (``hidden``: the
    structure narrowed to that many hidden units, the dense model at full width). A context
    manager (its exports live in a temporary folder)."""

    def __init__(self, config, target, batch: int, seq: int, runs: int = 10, warmup: int = 5,
                 precision: str = "fp32", min_seconds: float = 0.0, hidden: int = 0):
        self.config, self.target, self.batch, self.seq = config, target, int(batch), int(round(seq))
        self.precision, self.min_seconds, self.hidden = precision, min_seconds, int(hidden)
        self.runs, self.warmup, self.trials = runs, warmup, []
        self._tmp = tempfile.TemporaryDirectory(prefix="structures-")
        self.shape = ModelShape.from_config(config)
        self._dense = _export_variant(config, Path(self._tmp.name) / "dense", self.shape.vocab, self.shape.layers,
                                      None, precision)

    def __call__(self, structure: list[dict]) -> float:
        path = _export_variant(self.config, Path(self._tmp.name) / f"s{len(self.trials)}", self.shape.vocab,
                               self.shape.layers, [dict(s) for s in structure], self.precision, self.hidden)
        t = time_models(self.target, {"dense": self._dense, "candidate": path}, self.batch, self.seq,
                        min(SMALL_VOCAB, self.shape.vocab), self.runs, self.warmup, min_seconds=self.min_seconds)
        path.unlink()
        self.trials.append({"structure": structure, "dense_ms": t["dense"], "ms": t["candidate"],
                            "speedup": t["dense"] / t["candidate"]})
        log.info("structure check: dense %.3f ms, candidate %.3f ms (%.2fx)", t["dense"], t["candidate"],
                 t["dense"] / t["candidate"])
        return t["dense"] / t["candidate"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()
        return False


def measure_latency_table(config, target, batch: int, seq: int, cache_dir, runs: int = 10,
                          warmup: int = 5, ffn_step: int = 0, precision: str = "fp32",
                          min_seconds: float = TABLE_SECONDS, hidden: int = 0) -> LatencyTable:
    """The latency table of ``config``'s shape on ``target`` at ``batch`` x ``seq`` tokens in
    ``precision`` (``int8``: every timed model dynamically quantized, as an INT8 deployment runs;
    see the module doc), read from ``cache_dir`` when a table with the same :func:`cache_key` is
    there, else measured (``4 * runs`` timed runs per model at least, more until all together take
    about ``min_seconds``) and saved there.

    ``hidden`` (``hidden-prune`` after the search): every entry is timed at that many hidden units
    and the full-width dense model is timed beside them as the reference a speedup is over
    (``info["reference_ms"]``, what :attr:`LatencyTable.dense` then returns), so the search reaches
    the asked speedup with the narrower width counted."""
    check_choice("precision", precision, PRECISIONS)
    check_range("batch", batch, 1, 10**5)
    check_range("seq", seq, 1, 10**5)
    check_range("runs", runs, 1, 10**6)
    shape = ModelShape.from_config(config)
    seq, widths = int(round(seq)), default_ffn_widths(shape.ffn, ffn_step)
    key = cache_key(shape, target, batch, seq, widths, precision)
    if hidden:
        key["hidden"] = int(hidden)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"latency-{digest}.json"
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                log.info("latency table: reusing %s", cache)
                table = LatencyTable.from_dict(saved["table"])
                table.info.update(cache_file=str(cache), cached=True)
                return table
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("latency table cache %s unreadable (%s): measuring again", cache, exc)
    L, H, F = shape.layers, shape.heads, shape.ffn
    vocab = min(SMALL_VOCAB, shape.vocab)
    plan = {"dense": (shape.vocab, L, None), "empty": (vocab, 0, None), "zero": (vocab, L, {"heads": 0, "ffn": 0})}
    if hidden:
        plan["reference"] = (shape.vocab, L, None)  # full width: what the asked speedup is over
    plan.update({f"att{h}": (vocab, L, {"heads": h, "ffn": 0}) for h in range(1, H + 1)})
    plan.update({f"ffn{n}": (vocab, L, {"heads": 0, "ffn": n}) for n in widths if n})
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        paths = {label: _export_variant(config, Path(tmp) / label, v, layers, sizes, precision,
                                        0 if label == "reference" else hidden)
                 for label, (v, layers, sizes) in plan.items()}
        log.info("latency table: timing %d models at b%d x s%d on %s", len(paths), batch, seq, target.name)
        t = time_models(target, paths, batch, seq, vocab, runs, warmup, min_seconds=min_seconds)
    base = (t["zero"] - t["empty"]) / L / 2
    att_raw = [base] + [base + (t[f"att{h}"] - t["zero"]) / L for h in range(1, H + 1)]
    ffn_raw = [base] + [base + (t[f"ffn{n}"] - t["zero"]) / L for n in widths if n]
    att, ffn = isotonic(att_raw), isotonic(ffn_raw)
    fixed = t["dense"] - L * (att[-1] + ffn[-1])
    info = {"key": key, "measured_ms": t, "attention_raw": att_raw, "ffn_raw": ffn_raw, "runs": runs,
            "warmup": warmup, "additive_check_ms": t["att%d" % H] + t[f"ffn{F}"] - t["zero"] - t["dense"]}
    if hidden:
        info.update(hidden=int(hidden), reference_ms=t["reference"])
    if fixed < 0:
        log.warning("latency table: dense %.3f ms < sum of its layers %.3f ms (noise?): fixed cost set to 0",
                    t["dense"], L * (att[-1] + ffn[-1]))
        fixed = 0.0
    table = LatencyTable(shape, "ms", fixed, att, widths, ffn, info)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"key": key, "table": table.to_dict()}, indent=1))
    table.info.update(cache_file=str(cache), cached=False)
    log.info("latency table: dense %.3f ms, fixed %.3f ms, attention %.3f ms/layer, FFN %.3f ms/layer -> %s",
             t["dense"], fixed, att[-1], ffn[-1], cache)
    return table
