"""``quantize``: INT8 quantization of an ONNX model with ONNX Runtime (onnx -> onnx).

- ``mode=dynamic`` (CPU): ``onnxruntime.quantization.quantize_dynamic``: INT8 weights, uint8
  activations quantized at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``, which ORT
  fuses into ``DynamicQuantizeMatMul`` at load; fused ``Attention`` becomes ``QAttention``).
  ``ops=all`` (what ``auto`` means here) is ONNX Runtime's own default: every op it quantizes,
  the embeddings too (``Gather`` with one scale per table, ``EmbedLayerNormalization``), so the
  embedding table, the bulk of a stripped model, is 4x smaller; ``ops=linear`` quantizes MatMul
  and Attention only. Measured on the fine-tuned MiniLM (``benchmarks/int8.py``): the same dev
  and eval accuracy either way (81.22% / 83.61%), 23.0 MB against 58.8 MB, the same latency.
- ``mode=static`` (TensorRT): ``quantize_static`` in QDQ format with symmetric INT8 weights and
  activations (what TensorRT's explicit quantization expects), calibrated on
  ``calibration_batches`` batches of ``ctx.data.train``; ``ops=linear`` puts QuantizeLinear /
  DequantizeLinear pairs on MatMul and Gemm inputs only (TensorRT's recommended placement).

Works on raw, stripped, fused and sparse-init graphs: sparse tensors are densified, stale
``value_info`` is dropped, and ``DefaultTensorType=FLOAT`` lets shape inference pass over
com.microsoft ops (the two failures listed in FACTS.md). Outputs are compared with the input
model on random feeds (``max_abs_diff``, reported, INT8 is not exact) and, when the context has
eval data, accuracy on ONNX Runtime before (``accuracy_input``) and after (``accuracy_onnx``);
``max_accuracy_drop`` < 1 turns a larger drop into a failed step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.errors import ArtifactError, DataError, check_choice, check_range
from compressor.onnx_utils import (MODEL_FILE, PROTO_LIMIT, VerificationError, accuracy_change, encode,
                                   graph_io, load_checked, output_folder)
from compressor.pass_base import Pass, PassResult, option
from passes import _onnx_graph as og

log = logging.getLogger(__name__)

MODES = ("dynamic", "static")
OPS = ("auto", "linear", "all")
CALIBRATION = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Quantize(Pass):
    """INT8 quantization: dynamic (CPU) or static QDQ with calibration (TensorRT)."""

    name: ClassVar[str] = "quantize"
    consumes: ClassVar[str] = "onnx"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 80
    starts_deployment: ClassVar[bool] = True

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--quantize dynamic|static`` (dynamic by default; none: fp32 deployment). An embedding
        model gets one scale per output channel, as sentence-transformers' own INT8 export
        (``export_dynamic_quantized_onnx_model``, Optimum's ``avx512_vnni`` config) does: per tensor,
        dynamic INT8 left MiniLM's embeddings at cosine 0.957 to fp32 on training texts, per
        channel at 0.9915 (benchmarks/RESULTS.md). ``auto``: ``choose-deploy`` runs instead;
        ``fused``: dynamic, after ``ort-fuse``."""
        if cfg.quantize in ("none", "auto"):
            return None
        channel = ",per_channel=true" if cfg.task_type == "embeddings" else ""
        mode = "dynamic" if cfg.quantize == "fused" else cfg.quantize
        return f"quantize{{mode={mode}{channel},max_length={cfg.max_length}}}"

    mode: str = option("dynamic", "dynamic INT8 (CPU) or static QDQ with calibration (TensorRT)",
                       choices=MODES)
    per_channel: bool = option(False, "one scale per output channel of each weight (else per tensor)")
    ops: str = option("auto", "what to quantize: MatMul/Attention (Gemm too in static), all ORT supports "
                      "(embeddings too), or auto (dynamic: all, ORT's default; static: linear, TensorRT's "
                      "placement)", choices=OPS)
    reduce_range: bool = option(False, "7-bit weights (for CPUs without VNNI)")
    calibration_batches: int = option(8, "static: batches of training data to calibrate on")
    calibration_batch_size: int = option(8, "static: examples per calibration batch")
    calibration_method: str = option("minmax", "static: activation range estimator", choices=CALIBRATION)
    max_length: int = option(128, "truncate calibration and eval inputs to this many tokens")
    max_eval: int = option(0, "measure accuracy on at most this many eval examples (0 = all)")
    max_accuracy_drop: float = option(1.0, "fail when ONNX accuracy drops more than this (1 = never)")

    def __post_init__(self):
        check_choice("quantize.mode", self.mode, MODES)
        check_choice("quantize.ops", self.ops, OPS)
        check_choice("quantize.calibration_method", self.calibration_method, CALIBRATION)
        check_range("quantize.calibration_batches", self.calibration_batches, 1, 100_000)
        check_range("quantize.calibration_batch_size", self.calibration_batch_size, 1, 65_536)
        check_range("quantize.max_length", self.max_length, 8, 4096)
        check_range("quantize.max_eval", self.max_eval, 0, 10**9)
        check_range("quantize.max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)

    def run(self, artifact, ctx) -> PassResult:
        import onnx

        proto = load_checked(artifact.path)
        densified = og.densify_sparse(proto.graph)
        og.clear_value_info(proto.graph)
        inputs, _ = graph_io(proto)
        if self.mode == "static" and any(n.domain == "com.microsoft" for n in proto.graph.node):
            log.warning("quantize mode=static on a graph with com.microsoft (ORT-fused) ops: ONNX Runtime "
                        "runs it, TensorRT cannot; for TensorRT quantize the unfused export")
        big = proto.ByteSize() >= PROTO_LIMIT
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        folder = output_folder(ctx)
        with atomic_dir(folder) as tmp:
            og.copy_side_files(artifact.folder, tmp, artifact.filename)
            path = tmp / MODEL_FILE
            with og.quiet_loggers():
                if self.mode == "dynamic":
                    self._dynamic(proto, path, big, extra)
                else:
                    reader = self._calibration_reader(artifact, ctx, inputs)
                    self._static(infer_types(proto), path, reader, big, extra)
            counts = og.op_counts(onnx.load(str(path), load_external_data=False).graph)
            quant_ops = {op: n for op, n in counts.items() if op in og.QUANT_OPS}
            if not quant_ops:
                raise VerificationError(f"quantize {self.mode} produced no quantized op: ops {counts}")
            checks = og.compare_outputs(artifact.path, path, og.check_feeds(
                inputs, og.vocab_size(artifact.folder), seed=ctx.seed))
            accuracy = self._accuracy(artifact, OnnxModel(tmp), ctx)
        out = OnnxModel(folder, info={**artifact.info, "quantized": self.to_spec()})
        metrics = {"mode": self.mode, "quant_ops": quant_ops, "size_bytes_before": artifact.size_bytes(),
                   "size_bytes": out.size_bytes(), "max_abs_diff": max(c["max_abs_diff"] for c in checks),
                   "max_abs_diff_by_shape": {c["shape"]: c["max_abs_diff"] for c in checks},
                   "sparse_tensors_densified": densified, **accuracy}
        log.info("quantize %s: %s, %d -> %d bytes, max |diff| %.3g, accuracy %s -> %s", self.mode,
                 metrics["quant_ops"], metrics["size_bytes_before"], metrics["size_bytes"],
                 metrics["max_abs_diff"], metrics.get("accuracy_input"), metrics.get("accuracy_onnx"))
        return PassResult(out, True, metrics)

    def _dynamic(self, proto, path: Path, big: bool, extra: dict) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ops = ["MatMul", "Attention"] if self.ops == "linear" else None  # None: ORT's default set
        quantize_dynamic(proto, str(path), op_types_to_quantize=ops, per_channel=self.per_channel,
                         reduce_range=self.reduce_range, weight_type=QuantType.QInt8,
                         use_external_data_format=big, extra_options={**extra, "MatMulConstBOnly": True})

    def _static(self, proto, path: Path, reader, big: bool, extra: dict) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.calibration_method]
        ops = None if self.ops == "all" else ["MatMul", "Gemm"]
        quantize_static(proto, str(path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                        per_channel=self.per_channel, reduce_range=self.reduce_range,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, use_external_data_format=big,
                        calibration_providers=["CPUExecutionProvider"],
                        extra_options={**extra, "ActivationSymmetric": True, "WeightSymmetric": True,
                                       "CalibTensorRangeSymmetric": True, "QuantizeBias": False})

    def _calibration_reader(self, artifact, ctx, inputs: list[str]):
        """A CalibrationDataReader over the first batches of ``ctx.data.train`` (DataError without)."""
        from onnxruntime.quantization import CalibrationDataReader
        from transformers import AutoTokenizer

        examples = list(getattr(getattr(ctx, "data", None), "train", None) or [])
        if not examples:
            raise DataError("quantize mode=static needs calibration data: give a task "
                            "(e.g. --task rotten-tomatoes) or use mode=dynamic")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(artifact.folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"no usable tokenizer in {artifact.folder} for calibration: {exc}") from None
        n = self.calibration_batch_size
        batches = [encode(tokenizer, examples[i:i + n], self.max_length, input_names=inputs)
                   for i in range(0, min(len(examples), n * self.calibration_batches), n)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(batches)

            def get_next(self):
                return next(self.items, None)

        return Reader()

    def _accuracy(self, artifact, out, ctx) -> dict:
        return accuracy_change(artifact, out, ctx, self.max_length, self.max_eval, self.max_accuracy_drop,
                               "INT8")


def infer_types(proto):
    """``proto`` with value_info from ORT's symbolic shape inference, which knows com.microsoft
    ops: static quantization only calibrates (and so quantizes the inputs of) tensors whose
    type it knows. Falls back to ``proto`` unchanged when inference fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
    except Exception as exc:  # inference is an aid only: quantize without it
        log.debug("symbolic shape inference failed (%s): quantizing without value_info", exc)
        return proto
