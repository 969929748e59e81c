"""``embed-int8``: INT8 embedding tables with one scale per row (onnx -> onnx).

Once the encoder is pruned, the word-embedding table is most of the file (the 97% structured
MiniLM export: 46.9 of 49.6 MB). This pass stores each embedding table ``W [V, H]`` that a
``Gather`` reads as ``int8`` with a symmetric per-row scale ``s_v = max_h |W[v, h]| / 127``
(``q = round(W / s)``, so ``|W - q * s| <= s / 2`` elementwise) and replaces

    Gather(W, ids)   by   Mul(Cast<float>(Gather(W_int8, ids)), Gather(S [V, 1], ids))

All four are standard ONNX ops, run here on ONNX Runtime's CPU kernels (the CUDA EP has the
same ops; not run, no GPU was at hand): ``Gather`` on int8 data, ``Cast`` int8 -> float, a second
``Gather`` on the float scales and a broadcasting ``Mul``; only the rows of the tokens in the
batch are dequantized, and the table stays int8 in memory. (``DequantizeLinear`` cannot take a
per-row scale after the Gather at opset < 21, and a ``DequantizeLinear`` of the whole table
before it is left unfolded by ORT 1.32's optimizer, checked, so it would dequantize all V rows
on every run.) ``quantize{ops=all}`` quantizes Gathers too, but with one scale per tensor (and
``QEmbedLayerNormalization`` on fused graphs); per-row scales cost 4 bytes a row and stay much
closer to fp32 (MiniLM's word table: relative RMS error 0.73% per row vs 3.2% per tensor uint8).

Which tables: ``tables=word`` the Gathers indexed by the ``input_ids`` graph input, ``all`` also
every other Gather of a 2-D float initializer with at least ``min_rows`` (1024) rows. Small tables
stay fp32: every token reads the same few rows, so their error is systematic, and there is little
to save. Measured on fine-tuned MiniLM (random feeds, max |Δlogit|): word table 0.004, the
512 x 384 position table 0.020, the 2-row token-type table 0.040 (its 3 KB would save 2 KB). Order with the other graph
passes: after ``export``; before or after ``quantize{ops=linear}`` (that quantizes MatMuls only and
leaves these nodes alone) and ``sparse-init``; before ``ort-fuse`` (a fused
``EmbedLayerNormalization`` holds the table itself: refused with a message; ``ort-fuse`` then
fuses attention but not the embeddings, so it needs ``strict=false``).

The scales are a ``Constant`` node (not an initializer), so a later ``quantize{ops=all}`` leaves
them alone. Checked on ONNX Runtime with seeded random feeds: the rewritten Gathers' outputs
must equal the fp32 rows within the quantization error (always; ``embedding_max_abs_diff``), the
logits within ``tolerance`` of a float input model (``max_abs_diff``; on an already INT8 input,
whose dynamic activation ranges amplify small changes, it is reported only), and, when the context
has eval data, accuracy on ORT before and after (``max_accuracy_drop`` as in ``quantize``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.errors import ConfigError, check_choice, check_range
from compressor.onnx_utils import (MODEL_FILE, VerificationError, accuracy_change, graph_io, load_checked,
                                   output_folder, save_model)
from compressor.pass_base import Pass, PassResult, option
from passes import _onnx_graph as og

log = logging.getLogger(__name__)

TABLES = ("word", "all")
FUSED_EMBEDDINGS = ("EmbedLayerNormalization", "QEmbedLayerNormalization")


@dataclass(frozen=True)
class EmbedInt8(Pass):
    """Store embedding tables as int8 with per-row scales; see the module doc."""

    name: ClassVar[str] = "embed-int8"
    consumes: ClassVar[str] = "onnx"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 70

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--embed-int8``."""
        return f"embed-int8{{max_length={cfg.max_length}}}" if cfg.embed_int8 else None

    tables: str = option("word", "which Gather tables: word (indexed by input_ids) or all 2-D "
                         "float tables of at least min_rows rows", choices=TABLES)
    min_rows: int = option(1024, "tables=all: leave smaller tables (token type, position) in fp32")
    tolerance: float = option(0.05, "largest allowed max |logit difference| against a float input model "
                              "(reported only when the input is already INT8)")
    max_length: int = option(128, "truncate eval inputs to this many tokens")
    max_eval: int = option(0, "measure accuracy on at most this many eval examples (0 = all)")
    max_accuracy_drop: float = option(1.0, "fail when ONNX accuracy drops more than this (1 = never)")

    def __post_init__(self):
        check_choice("embed-int8.tables", self.tables, TABLES)
        check_range("embed-int8.tolerance", self.tolerance, 0.0, 100.0, lo_open=True)
        check_range("embed-int8.min_rows", self.min_rows, 1, 10**9)
        check_range("embed-int8.max_length", self.max_length, 8, 4096)
        check_range("embed-int8.max_eval", self.max_eval, 0, 10**9)
        check_range("embed-int8.max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)

    def run(self, artifact, ctx) -> PassResult:
        proto = load_checked(artifact.path)
        graph = proto.graph
        fused = [n.op_type for n in graph.node if n.op_type in FUSED_EMBEDDINGS]
        if fused:
            raise ConfigError(f"embed-int8 cannot rewrite a fused {fused[0]} ({artifact.path}): run it "
                              "before ort-fuse (then ort-fuse{strict=false}), or use quantize{ops=all}")
        before = artifact.size_bytes()
        original = _copy(proto)
        done = quantize_tables(graph, self.tables, self.min_rows)
        metrics = {"tables": [d["name"] for d in done], "size_bytes_before": before}
        if not done:
            log.info("embed-int8: no float Gather table to quantize in %s", artifact.path)
            return PassResult(artifact, False, {**metrics, "size_bytes": before})
        inputs, _ = graph_io(proto)
        feeds = og.check_feeds(inputs, og.vocab_size(artifact.folder), seed=ctx.seed)
        bound = max(d["max_error"] for d in done)
        metrics.update(rows=sum(d["rows"] for d in done), max_dequant_error=bound,
                       embedding_max_abs_diff=_check_embeddings(original, proto, done, feeds, bound))
        del original
        quantized_input = any(n.op_type in og.QUANT_OPS for n in graph.node)
        folder = output_folder(ctx)
        with atomic_dir(folder) as tmp:
            og.copy_side_files(artifact.folder, tmp, artifact.filename)
            path = save_model(proto, tmp / MODEL_FILE)
            load_checked(path)
            checks = og.compare_outputs(artifact.path, path, feeds)
            worst = max(c["max_abs_diff"] for c in checks)
            if not quantized_input and not worst <= self.tolerance:  # NaN fails too
                shapes = ", ".join(f"{c['shape']}: {c['max_abs_diff']:.3g}" for c in checks)
                raise VerificationError(f"INT8 embeddings change the logits by {worst:.3g} > tolerance "
                                        f"{self.tolerance:g} ({shapes})")
            accuracy = self._accuracy(artifact, OnnxModel(tmp), ctx)
        out = OnnxModel(folder, info={**artifact.info, "embed_int8": self.to_spec()})
        metrics.update(size_bytes=out.size_bytes(), max_abs_diff=worst, tolerance_applied=not quantized_input,
                       max_abs_diff_by_shape={c["shape"]: c["max_abs_diff"] for c in checks}, **accuracy)
        log.info("embed-int8: %s, %d -> %d bytes, max |diff| embeddings %.3g logits %.3g, accuracy %s -> %s",
                 metrics["tables"], before, metrics["size_bytes"], metrics["embedding_max_abs_diff"], worst,
                 accuracy.get("accuracy_input"), accuracy.get("accuracy_onnx"))
        return PassResult(out, True, metrics)

    def _accuracy(self, artifact, out, ctx) -> dict:
        return accuracy_change(artifact, out, ctx, self.max_length, self.max_eval, self.max_accuracy_drop,
                               "INT8-embedding")


def quantize_rows(table):
    """``(q int8 [V, H], scale float32 [V, 1])`` with ``q = round(table / scale)`` and
    ``scale = max |row| / 127`` (1 for an all-zero row)."""
    import numpy as np

    peak = np.abs(table).max(axis=1, keepdims=True).astype(np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_tables(graph, tables: str = "word", min_rows: int = 1024) -> list[dict]:
    """Rewrite, in place, every Gather (axis 0) of a 2-D float32 initializer that only Gathers
    read as int8 Gather * per-row scale: the ``input_ids`` table, and with ``tables=all`` every
    other table of at least ``min_rows`` rows.
    Returns ``[{"name", "rows", "max_error"}]`` per table."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    consumers = defaultdict(list)  # tensor name -> indices of the nodes that read it
    for k, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(k)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    done, replaced, rewrites, scales = [], {}, {}, []
    for name, tensor in inits.items():
        users = [nodes[k] for k in consumers.get(name, [])]
        if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or not users or name in outputs
                or any(n.op_type != "Gather" or n.input[0] != name or og.attribute(n, "axis", 0) != 0
                       for n in users)):
            continue
        word = all(n.input[1] == "input_ids" for n in users)
        if not word and (tables == "word" or tensor.dims[0] < min_rows):
            continue
        table = numpy_helper.to_array(tensor)
        q, scale = quantize_rows(table)
        # float64: q * s in float32 rounds by up to 127 * s * 2^-24, a few 1e-5 of the half step
        row_err = np.abs(q.astype(np.float64) * scale - table.astype(np.float64)).max(axis=1, keepdims=True)
        if np.any(row_err > scale / 2 * (1 + 1e-5) + 1e-12):
            raise VerificationError(f"int8 rows of {name} are off by more than half a quantization step")
        err = float(row_err.max())
        replaced[name] = numpy_helper.from_array(q, f"{name}_int8")
        # the scales are a Constant, not an initializer: quantize{ops=all} would quantize a
        # Gather'd float initializer (per tensor, uint8), the scales included
        scales.append(helper.make_node("Constant", [], [f"{name}_row_scale"], name=f"{name}_row_scale",
                                       value=numpy_helper.from_array(scale, f"{name}_row_scale")))
        for k in consumers[name]:
            rewrites[k] = _dequant_nodes(nodes[k], name, helper, TensorProto.FLOAT)
        done.append({"name": name, "rows": int(table.shape[0]), "max_error": err})
    if replaced:
        keep = [t for t in graph.initializer if t.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(keep + list(replaced.values()))
        del graph.node[:]
        graph.node.extend(scales + [n for k, node in enumerate(nodes) for n in rewrites.get(k, [node])])
    return done


def _dequant_nodes(node, table: str, helper, float_type: int) -> list:
    """The nodes replacing ``node`` = Gather(table, ids) -> y: int8 Gather, Cast, scale Gather, Mul."""
    base, ids, y = node.name or node.output[0], node.input[1], node.output[0]
    return [helper.make_node("Gather", [f"{table}_int8", ids], [f"{y}/int8"], name=f"{base}/int8", axis=0),
            helper.make_node("Cast", [f"{y}/int8"], [f"{y}/float"], name=f"{base}/cast", to=float_type),
            helper.make_node("Gather", [f"{table}_row_scale", ids], [f"{y}/scale"], name=f"{base}/scale", axis=0),
            helper.make_node("Mul", [f"{y}/float", f"{y}/scale"], [y], name=f"{base}/dequant")]


def _copy(proto):
    from onnx import ModelProto
    out = ModelProto()
    out.CopyFrom(proto)
    return out


def _check_embeddings(original, rewritten, done: list[dict], feeds_list, bound: float) -> float | None:
    """Run both graphs on ORT with each rewritten Gather's output exposed; the dequantized rows
    must equal the fp32 rows within the quantization error ``bound`` (else VerificationError).
    Returns the largest difference (None for a model too big to run from memory)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from compressor.onnx_utils import PROTO_LIMIT
    if original.ByteSize() >= PROTO_LIMIT:
        log.info("embed-int8: model over 2 GB: embedding rows not compared on ORT")
        return None
    tables = {d["name"] for d in done}
    names = [n.output[0] for n in original.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    sessions = []
    for proto in (original, rewritten):
        probe = _copy(proto)
        probe.graph.output.extend(helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in names)
        sessions.append(ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]))
    worst = 0.0
    for feeds in feeds_list:
        a, b = (s.run(names, feeds) for s in sessions)
        for x, y in zip(a, b):
            if x.shape != y.shape:
                raise VerificationError(f"INT8 embedding output has shape {y.shape}, fp32 {x.shape}")
            worst = max(worst, float(np.max(np.abs(x - y))))
    if not worst <= bound * (1 + 1e-5) + 1e-7:
        raise VerificationError(f"INT8 embedding rows differ from fp32 by {worst:.3g}, more than the "
                                f"quantization error {bound:.3g}: the rewritten graph is wrong")
    return worst
