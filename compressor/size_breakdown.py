"""Where the bytes of an ONNX file go: embeddings, encoder, head and the rest.

Every stored tensor (initializers, ``sparse_initializer`` entries, ``Constant`` node values,
dense or sparse, inline or in external data) is attributed by name, first its own and then the
names of the nodes that read it (node name and output names), following up to
``MAX_HOPS`` nodes downstream when a reader's names say nothing:

- ``embeddings``: a name with ``embeddings`` (``bert.embeddings.word_embeddings.weight``, the
  exporter's ``/model/bert/embeddings/...`` nodes, the position-ids buffer read by
  ``/model/bert/embeddings/Slice``, a fused ``EmbedLayerNormalization``'s tables);
- ``encoder``: ``encoder`` or ``layer.N`` (the exporter's transposed ``onnx::MatMul_*`` weights
  are read by ``/model/bert/encoder/layer.N/...`` MatMuls; ``quantize``'s ``*_quantized`` /
  ``*_scale`` / ``*_zero_point`` by its ``..._quant`` nodes; ``ort-fuse``'s
  ``Attention_N_qkv_weight`` by an ``Attention`` whose output keeps the layer's name);
- ``head``: ``pooler``, ``classifier`` (``qa_outputs`` for question answering) or ``lm_head`` /
  ``cls.predictions``;
- ``other``: tensors nothing names (shape constants and the like) plus the graph itself (nodes,
  names, metadata): the file size less the tensors counted above.

So ``embeddings + encoder + head + other`` is the file size (``model.onnx`` plus its external
data file). Works on this project's raw, stripped, fused, quantized, sparse-initializer and
``embed-int8`` exports. Importing this module imports no onnx: it loads inside the function.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

PARTS = ("embeddings", "encoder", "head", "other")
MAX_HOPS = 3
_RULES = (("embeddings", re.compile(r"embeddings|EmbedLayerNorm", re.I)),
          ("head", re.compile(r"pooler|classifier|qa_outputs|lm_head|cls[./]predictions", re.I)),
          ("encoder", re.compile(r"encoder|layer[._]\d+[/._]", re.I)))


def classify_name(name: str) -> str | None:
    """The part a tensor or node name points at, or None."""
    for part, pattern in _RULES:
        if pattern.search(name or ""):
            return part
    return None


def _tensor_bytes(tensor) -> int:
    """Stored bytes of a TensorProto: its external-data length, or its serialized size."""
    if tensor.data_location == 1:  # TensorProto.EXTERNAL
        entries = {e.key: e.value for e in tensor.external_data}
        if "length" in entries:
            return int(entries["length"])
        from onnx import helper
        n = 1
        for d in tensor.dims:
            n *= d
        return n * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return tensor.ByteSize()


def _stored_tensors(graph) -> list[tuple[str, int, str]]:
    """``(name, bytes, kind)`` of every tensor stored in ``graph`` (subgraphs not included)."""
    out = [(t.name, _tensor_bytes(t), "initializer") for t in graph.initializer]
    for s in graph.sparse_initializer:
        out.append((s.values.name, s.ByteSize(), "sparse_initializer"))
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.name == "value":
                out.append((node.output[0], _tensor_bytes(a.t), "constant"))
            elif a.name == "sparse_value":
                out.append((node.output[0], a.sparse_tensor.ByteSize(), "sparse_constant"))
    return out


def _classify_tensor(name: str, consumers: dict) -> str:
    part = classify_name(name)
    if part:
        return part
    frontier, seen = [name], {name}
    for _ in range(MAX_HOPS):
        found, nxt = defaultdict(int), []
        for tensor in frontier:
            for node in consumers.get(tensor, []):
                hit = classify_name(node.name) or next(
                    (p for p in map(classify_name, node.output) if p), None)
                if hit:
                    found[hit] += 1
                nxt.extend(o for o in node.output if o not in seen)
        if found:  # the part most readers belong to (first in PARTS order on a tie)
            return max(PARTS[:3], key=lambda p: found.get(p, 0))
        seen.update(nxt)
        frontier = nxt
    return "other"


def size_breakdown(path) -> dict:
    """Bytes of an ONNX model (a ``model.onnx`` path, its folder, or an OnnxModel) by part:
    ``{"total_bytes", "embeddings_bytes", "encoder_bytes", "head_bytes", "other_bytes",
    "fractions": {part: share of total}, "largest": {part: [name, bytes]}}``."""
    import onnx

    file = Path(getattr(path, "path", path))
    if file.is_dir():
        file = file / "model.onnx"
    proto = onnx.load(str(file), load_external_data=False)
    total = file.stat().st_size + sum(p.stat().st_size for p in file.parent.glob(file.name + "*.data"))
    consumers = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    parts = dict.fromkeys(PARTS, 0)
    largest: dict[str, list] = {}
    for name, size, _ in _stored_tensors(proto.graph):
        part = _classify_tensor(name, consumers)
        parts[part] += size
        if size > largest.get(part, ["", -1])[1]:
            largest[part] = [name, size]
    counted = parts["embeddings"] + parts["encoder"] + parts["head"]
    parts["other"] = max(total - counted, 0)
    out = {"total_bytes": total, **{f"{p}_bytes": parts[p] for p in PARTS}}
    out["fractions"] = {p: round(parts[p] / total, 6) if total else 0.0 for p in PARTS}
    out["largest"] = largest
    return out
