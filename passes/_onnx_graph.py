"""ONNX graph helpers shared by the graph passes (``ort-fuse``, ``quantize``): read constants,
densify sparse tensors, give attention reshapes an explicit head count, attribute nodes to
encoder layers, count ops per layer, compare two models' outputs and copy a folder's side files.

Layers are found from the node and output names the TorchScript exporter writes
(``/model/bert/encoder/layer.3/attention/self/Reshape``; Optimum's exports use the same
scheme): fused nodes keep the output names of the subgraph they replace, so an ``Attention``
node is placed by its output ``.../layer.3/attention/self/Reshape_3_output_0``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

_LAYER = re.compile(r"layer[._](\d+)[/.]")
GELU_OPS = ("Gelu", "FastGelu", "BiasGelu", "GemmFastGelu")
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "LayerNormalization") + GELU_OPS
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
             "DynamicQuantizeMatMul", "QAttention", "QGemm", "MatMulIntegerToFloat", "QEmbedLayerNormalization")


def constant_value(graph, name: str, producers: dict | None = None):
    """The numpy value of ``name`` when it is an initializer, a ``Constant`` node's output, or
    an ``Identity`` of one; None otherwise."""
    from onnx import numpy_helper

    producers = producers if producers is not None else _producers(graph)
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Identity":
        return constant_value(graph, node.input[0], producers)
    if node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def densify_sparse(graph) -> int:
    """Turn ``Constant(sparse_value)`` nodes and ``graph.sparse_initializer`` entries (written by
    ``sparse-init``) back into dense initializers, in place: fusion and quantization look for
    weights among the initializers. Returns how many tensors were densified."""
    import numpy as np
    from onnx import numpy_helper

    def dense(sparse, name):
        values = numpy_helper.to_array(sparse.values)
        idx = numpy_helper.to_array(sparse.indices)
        shape = tuple(sparse.dims)
        out = np.zeros(shape, dtype=values.dtype)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), shape)
        out.reshape(-1)[flat] = values
        return numpy_helper.from_array(out, name)

    count = 0
    for sparse in list(graph.sparse_initializer):
        graph.initializer.append(dense(sparse, sparse.values.name))
        count += 1
    del graph.sparse_initializer[:]
    keep = []
    for node in graph.node:
        attr = next((a for a in node.attribute if a.name == "sparse_value"), None)
        if node.op_type == "Constant" and attr is not None:
            graph.initializer.append(dense(attr.sparse_tensor, node.output[0]))
            count += 1
        else:
            keep.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(keep)
    return count


def clear_value_info(graph) -> int:
    """Drop the intermediate ``value_info`` (shape annotations): stale entries left by earlier
    rewrites make ONNX shape inference fail inside the quantizer. Returns how many were dropped."""
    n = len(graph.value_info)
    del graph.value_info[:]
    return n


def add_domain_imports(model) -> None:
    """Add an opset import for every node domain that lacks one (ORT's optimizer at
    ``opt_level=0`` writes com.microsoft nodes without importing the domain, which
    ``onnx.checker`` rejects)."""
    from onnx import helper

    have = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - have - {"", "ai.onnx"}):
        model.opset_import.append(helper.make_opsetid(domain, 1))


def layer_of(node) -> int | None:
    """The encoder layer a node belongs to, from its name or else its first output's name."""
    for text in [node.name, *node.output]:
        m = _LAYER.search(text)
        if m:
            return int(m.group(1))
    return None


def layer_indices(graph) -> list[int]:
    """Every encoder layer index named in the graph (a layer with no heads and no FFN still has
    its LayerNorm nodes, so it is found)."""
    return sorted({i for i in (layer_of(n) for n in graph.node) if i is not None})


def _head_reshapes(graph, producers):
    """Yield ``(reshape, shape_source, heads_value, head_size)`` for each 4-D attention reshape
    ``[batch, seq, heads, head_size]`` of the Q/K/V projections (``heads`` may be -1)."""
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        src = producers.get(node.input[1])
        if src is not None and src.op_type == "Concat" and len(src.input) == 4:
            heads = constant_value(graph, src.input[2], producers)
            size = constant_value(graph, src.input[3], producers)
        else:
            shape = constant_value(graph, node.input[1], producers)
            if shape is None or shape.size != 4:
                continue
            heads, size = shape.reshape(-1)[2:3], shape.reshape(-1)[3:4]
        if heads is None or size is None or heads.size != 1 or size.size != 1 or int(size.reshape(-1)[0]) <= 0:
            continue
        yield node, src, int(heads.reshape(-1)[0]), int(size.reshape(-1)[0])


def _projection_width(graph, name: str, producers) -> int | None:
    """Output width of the MatMul (optionally followed by a bias Add) that produces ``name``."""
    node = producers.get(name)
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    if node is None or node.op_type != "MatMul":
        return None
    w = constant_value(graph, node.input[1], producers)
    return int(w.shape[-1]) if w is not None and w.ndim == 2 else None


def explicit_head_counts(graph) -> int:
    """Replace the ``-1`` head dimension of Q/K/V reshapes (transformers 5.x writes
    ``view(*shape, -1, head_size)``) by the layer's real head count, read from the projection
    weight's width, in place. ONNX Runtime's BERT fusion reads the head count there; with -1 it
    fails ("Failed to detect num_heads") and fuses no Attention. Returns the number rewritten."""
    import numpy as np
    from onnx import numpy_helper

    producers, count = _producers(graph), 0
    names = {t.name for t in graph.initializer}
    for node, src, heads, size in list(_head_reshapes(graph, producers)):
        if heads != -1:
            continue
        width = _projection_width(graph, node.input[0], producers)
        if width is None or width % size:
            continue
        concat = src is not None and src.op_type == "Concat"
        if concat:
            value = np.array([width // size], np.int64)
        else:
            value = constant_value(graph, node.input[1], producers).reshape(-1).astype(np.int64)
            value[2] = width // size
        name = f"{node.name}/shape_{'_'.join(map(str, value))}".replace("-", "m")
        if name not in names:
            graph.initializer.append(numpy_helper.from_array(value, name))
            names.add(name)
        if concat:
            src.input[2] = name
        else:
            node.input[1] = name
        count += 1
    return count


def heads_per_layer(graph) -> dict[int, int]:
    """Attention heads of every layer of an unfused graph (0 for a layer without attention),
    from the head count of its Q/K/V reshapes (call :func:`explicit_head_counts` first)."""
    producers = _producers(graph)
    out = {i: 0 for i in layer_indices(graph)}
    for node, _, heads, _ in _head_reshapes(graph, producers):
        layer = layer_of(node)
        if layer is not None and heads > 0:
            out[layer] = max(out.get(layer, 0), heads)
    return out


def ops_per_layer(graph, op_types) -> dict[int, Counter]:
    """``{layer: Counter(op_type)}`` of the nodes of ``op_types`` (layer -1: outside layers)."""
    out: dict[int, Counter] = {i: Counter() for i in layer_indices(graph)}
    for node in graph.node:
        if node.op_type in op_types:
            layer = layer_of(node)
            out.setdefault(-1 if layer is None else layer, Counter())[node.op_type] += 1
    return out


def op_counts(graph) -> dict[str, int]:
    """Number of nodes of each op type, sorted by name."""
    return dict(sorted(Counter(n.op_type for n in graph.node).items()))


def attribute(node, name: str, default=None):
    """The value of attribute ``name`` of ``node`` (``default`` when absent)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def check_feeds(input_names, vocab_size: int, shapes=((1, 9), (4, 23)), seed: int = 0,
                left_pad: bool = True) -> list[dict]:
    """Seeded random BERT feeds at ``shapes``; in a batch > 2 the rows are padded differently:
    row 1 on the right and (``left_pad``) row 2 on the left, so fused attention must honour
    the mask itself."""
    from compressor.onnx_utils import random_feeds

    out = []
    for i, (batch, seq) in enumerate(shapes):
        feeds = random_feeds(list(input_names), batch, seq, vocab_size, seed + i)
        if "attention_mask" in feeds and batch > 2:
            mask = feeds["attention_mask"]
            mask[1:] = 1
            mask[1, seq - seq // 3:] = 0
            if left_pad:
                mask[2, :seq // 4] = 0
        out.append(feeds)
    return out


def compare_outputs(path_a, path_b, feeds_list) -> list[dict]:
    """Run both models (CPU EP) on each feed dict: ``[{"shape": "4x23", "max_abs_diff": d}]``
    over all outputs (NaN when shapes differ or values are not finite)."""
    import numpy as np

    from compressor.onnx_utils import make_session

    a, b = make_session(path_a), make_session(path_b)
    names_b = {i.name for i in b.get_inputs()}
    out = []
    for feeds in feeds_list:
        xs = a.run(None, feeds)
        ys = b.run(None, {k: v for k, v in feeds.items() if k in names_b})
        diff = 0.0
        for x, y in zip(xs, ys):
            if x.shape != y.shape:
                diff = float("nan")
                break
            d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            diff = d if not np.isfinite(d) else max(diff, d)
        out.append({"shape": "x".join(map(str, feeds["input_ids"].shape)), "max_abs_diff": diff})
    return out


def copy_side_files(src, dst, model_file: str = "model.onnx") -> None:
    """Copy everything in ``src`` (config, tokenizer, ...) but the model file and its data."""
    for item in Path(src).iterdir():
        if item.name.startswith(model_file) or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, Path(dst) / item.name)
        else:
            shutil.copy2(item, Path(dst) / item.name)


def config_value(folder, key: str, default=None):
    """``key`` of ``folder/config.json`` (``default`` when unreadable or missing)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return default


def vocab_size(folder, default: int = 100) -> int:
    """``vocab_size`` from ``folder/config.json`` (``default`` when unreadable)."""
    try:
        return int(config_value(folder, "vocab_size", default))
    except (ValueError, TypeError):
        return default


@contextlib.contextmanager
def quiet_loggers(prefixes=("fusion", "onnx_model", "shape_infer", "symbolic_shape", "onnxruntime"),
                  level: int = logging.ERROR):
    """Raise the level of the loggers whose names start with ``prefixes`` while inside: ONNX
    Runtime's transformer optimizer and quantizer warn about things that are expected on
    pruned models (per-layer hidden sizes); the passes check the outcome themselves."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(tuple(prefixes))]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(max(level, saved[n]))
    # ORT's quantizer logs through the root logger itself (``logging.warning``); a filter on
    # the root logger sees only those direct calls, not records propagated from other loggers.
    root_filter = _BelowLevel(level)
    logging.root.addFilter(root_filter)
    try:
        yield
    finally:
        logging.root.removeFilter(root_filter)
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


class _BelowLevel(logging.Filter):
    """Drops records below ``level``."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record) -> bool:
        return record.levelno >= self.level
