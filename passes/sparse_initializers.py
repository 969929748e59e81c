"""``sparse-init``: store zero-heavy weights of an ONNX model as COO sparse tensors.

ONNX Runtime densifies sparse tensors when it loads the model (no kernel consumes them), so this
shrinks the file, not the latency. Every initializer (the TorchScript exporter's transposed
``onnx::MatMul_*`` weights included) whose zeros fraction is at least ``min_sparsity`` is
converted when, and only when, its sparse encoding is smaller than the dense one.

Representation, measured with onnx 1.23 / onnxruntime 1.32 on a 90%-zero BERT export:

==========================================  ===========  ==========  ===============
storage, indices                            check_model  full_check  ORT, outputs
==========================================  ===========  ==========  ===============
``graph.sparse_initializer``, flat int64    passes       fails [1]   loads, identical
``graph.sparse_initializer``, [nnz,2] int64 passes       fails [1]   loads, identical
either, int32 indices                       fails [2]    fails       loads
``Constant(sparse_value)``, flat int64      passes       passes      loads, identical
``Constant(sparse_value)``, [nnz,2] int64   passes       passes      loads, identical
==========================================  ===========  ==========  ===============

[1] shape inference: "MatMul ... B has unsupported type: sparse_tensor"; [2] "Sparse tensor
indices must have INT64 type". Flat indices cost 8 bytes per non-zero, [nnz, rank] ones
8 x rank. So the default is ``storage=constant`` with ``index_format=auto``, which picks flat
int64 indices for every tensor (never larger than [nnz, rank], and it passes the full check):
a ``Constant`` node with a ``sparse_value`` attribute replaces the initializer and outputs the
dense tensor under the same name. ``storage=initializer`` writes ``graph.sparse_initializer``
entries instead (for tools that look there; the plain checker only).

The result is checked with ``onnx.checker`` (full check for ``constant``) and, with ``verify``,
ORT's logits before and after must agree within 1e-6 on random inputs of two shapes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.errors import ConfigError, check_choice, check_range
from compressor.onnx_utils import (BERT_INPUTS, MODEL_FILE, VerificationError, load_checked,
                                   make_session, output_folder, random_feeds, save_model)
from compressor.pass_base import Pass, PassResult, option

log = logging.getLogger(__name__)

INDEX_FORMATS = ("auto", "flat", "2d")
STORAGES = ("constant", "initializer")
TOLERANCE = 1e-6


@dataclass(frozen=True)
class SparseInit(Pass):
    """Replace zero-heavy initializers by sparse tensors where that makes the file smaller."""

    name: ClassVar[str] = "sparse-init"
    consumes: ClassVar[str] = "onnx"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 90

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--sparse-init`` (on by default)."""
        return "sparse-init" if cfg.sparse_init else None

    min_sparsity: float = option(0.5, "smallest zeros fraction of a tensor to consider")
    index_format: str = option("auto", "COO indices: flat [nnz] or 2d [nnz, rank] int64; auto = "
                               "smallest that passes the checker (flat)", choices=INDEX_FORMATS)
    storage: str = option("constant", "Constant(sparse_value) nodes (pass the full checker) or "
                          "graph.sparse_initializer entries", choices=STORAGES)
    verify: bool = option(True, "compare ORT outputs before and after (within 1e-6)")

    def __post_init__(self):
        check_range("min_sparsity", self.min_sparsity, 0.0, 1.0)
        check_choice("index_format", self.index_format, INDEX_FORMATS)
        check_choice("storage", self.storage, STORAGES)

    def run(self, artifact, ctx) -> PassResult:
        import onnx

        proto = load_checked(artifact.path)
        before = artifact.size_bytes()
        if self.storage == "constant" and _opset(proto) < 11:
            raise ConfigError(f"storage=constant needs opset >= 11, {artifact.path} has opset "
                              f"{_opset(proto)}: use storage=initializer")
        fmt = "flat" if self.index_format == "auto" else self.index_format
        stats = sparsify(proto.graph, self.min_sparsity, fmt, self.storage)
        metrics = {"size_bytes_before": before, "tensors_converted": stats["converted"],
                   "zeros_fraction": stats["zeros_fraction"], "index_format": fmt,
                   "storage": self.storage}
        if not stats["converted"]:
            log.info("sparse-init: no initializer with >= %.0f%% zeros shrinks when sparse",
                     100 * self.min_sparsity)
            return PassResult(artifact, False, {**metrics, "size_bytes": before})
        folder = output_folder(ctx)
        with atomic_dir(folder) as tmp:
            _copy_side_files(Path(artifact.folder), tmp, artifact.filename)
            path = save_model(proto, tmp / MODEL_FILE)
            try:
                onnx.checker.check_model(str(path), full_check=self.storage == "constant")
            except Exception as exc:
                raise VerificationError(f"sparse model fails onnx.checker: {exc}") from exc
            if self.verify:
                metrics["max_abs_diff"] = _compare(artifact.path, path, _vocab_size(artifact.folder))
        out = OnnxModel(folder, info={**artifact.info, "sparse_init": self.to_spec()})
        metrics["size_bytes"] = out.size_bytes()
        log.info("sparse-init: %d tensors, %d -> %d bytes", stats["converted"], before, metrics["size_bytes"])
        return PassResult(out, True, metrics)


def sparsify(graph, min_sparsity: float, index_format: str = "flat", storage: str = "constant") -> dict:
    """Convert, in place, the initializers of ``graph`` that have at least ``min_sparsity``
    zeros and get smaller as COO sparse tensors. Returns counts and the converted tensors'
    zeros fraction."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph_inputs = {i.name for i in graph.input}
    keep, constants, converted, zeros, elements = [], [], 0, 0, 0
    for tensor in graph.initializer:
        arr = numpy_helper.to_array(tensor)
        if arr.ndim == 0 or arr.size == 0 or (storage == "constant" and tensor.name in graph_inputs):
            keep.append(tensor)
            continue
        nz = np.nonzero(arr)
        n_zero = arr.size - len(nz[0])
        if n_zero / arr.size < min_sparsity:
            keep.append(tensor)
            continue
        if index_format == "flat":
            idx = np.ravel_multi_index(nz, arr.shape).astype(np.int64)
        else:
            idx = np.stack(nz, axis=1).astype(np.int64)
        values_name = tensor.name if storage == "initializer" else ""
        sparse = helper.make_sparse_tensor(numpy_helper.from_array(arr[nz], values_name),
                                           numpy_helper.from_array(idx, ""), list(arr.shape))
        if storage == "constant":
            sparse = helper.make_node("Constant", [], [tensor.name], name=f"{tensor.name}/sparse",
                                      sparse_value=sparse)
        if sparse.ByteSize() >= tensor.ByteSize():
            keep.append(tensor)
            continue
        (constants if storage == "constant" else graph.sparse_initializer).append(sparse)
        converted, zeros, elements = converted + 1, zeros + n_zero, elements + arr.size
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if constants:
        nodes = constants + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
    return {"converted": converted, "zeros_fraction": round(zeros / elements, 6) if elements else 0.0}


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _copy_side_files(src: Path, dst: Path, model_file: str) -> None:
    """Copy config, tokenizer and any other files except the model and its external data."""
    for item in src.iterdir():
        if item.name.startswith(model_file):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


def _vocab_size(folder) -> int:
    try:
        return int(json.loads((Path(folder) / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 100


def _compare(old: Path, new: Path, vocab_size: int) -> float | None:
    """Max |difference| of every output of two models on random feeds at two shapes."""
    import numpy as np

    a, b = make_session(old), make_session(new)
    inputs = [i.name for i in a.get_inputs()]
    if not set(inputs) <= set(BERT_INPUTS):
        log.warning("sparse-init: outputs not compared: inputs %s are not BERT inputs", inputs)
        return None
    worst = 0.0
    for i, (batch, seq) in enumerate(((1, 9), (4, 23))):
        feeds = random_feeds(inputs, batch, seq, vocab_size, seed=i)
        for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
            diff = float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
            if not diff <= TOLERANCE:
                raise VerificationError(f"sparse model outputs differ by {diff:.3g} > {TOLERANCE:g} "
                                        f"at input {batch}x{seq}")
            worst = max(worst, diff)
    return worst
