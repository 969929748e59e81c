"""The TensorRT target: ONNX Runtime's TensorrtExecutionProvider, with CUDA and then the CPU
after it for the nodes TensorRT does not take.

TensorRT compiles an engine per input-shape range the first time a session runs (minutes for
bert-base; seconds from the engine cache), so the profiler keeps that first run apart
(``first_run_ms`` = session creation + first inference) and the latency statistics start after
it. Every session is given an explicit optimization profile (``trt_profile_min/opt/max_shapes``)
covering the shapes it will see, so a batch of a new length does not trigger a rebuild.
Built engines and timing caches go to ``cache_dir`` (``<run output>/trt_cache`` in a run).

Precision flags: ``fp16`` (``trt_fp16_enable``), ``int8`` (``trt_int8_enable``: needs a
QDQ-quantized model or a calibration table) and ``sparsity`` (``trt_sparsity_enable``: lets
TensorRT pick 2:4 structured-sparse kernels, Ampere or newer, for weights that are 2:4 sparse,
e.g. after the ``nm-prune`` pass). IO binding and CUDA graphs (``trt_cuda_graph_enable``) work
as on the CUDA target.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from compressor.errors import check_range
from compressor.pass_base import option
from targets._io import graph_input_names
from targets.cuda import CudaTarget, _flag, fixed_shape

DEFAULT_CACHE = "trt_cache"


def profile_shapes(names, shape_range) -> dict:
    """``trt_profile_{min,opt,max}_shapes`` for inputs ``names`` of shape (batch, seq), e.g.
    ``{"trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1", ...}``."""
    out = {}
    for key, (batch, seq) in zip(("min", "opt", "max"), shape_range):
        out[f"trt_profile_{key}_shapes"] = ",".join(f"{n}:{batch}x{seq}" for n in names)
    return out


@dataclass(frozen=True)
class TensorrtTarget(CudaTarget):
    """Run on ``TensorrtExecutionProvider`` (then CUDA, then CPU for what TensorRT leaves).

    Options beyond the CUDA target's: ``fp16``, ``int8`` (+ ``int8_calibration_table``),
    ``sparsity`` (2:4 weights), ``engine_cache`` in ``cache_dir``,
    ``builder_optimization_level`` (0-5; higher builds slower, may run faster) and
    ``workspace_mb`` (0 = TensorRT's default).
    """

    name: ClassVar[str] = "tensorrt"
    providers: ClassVar[tuple[str, ...]] = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                            "CPUExecutionProvider")
    requires: ClassVar[str] = "onnxruntime-gpu and the TensorRT libraries"
    graph_flags: ClassVar[dict] = {"TensorrtExecutionProvider": "trt_cuda_graph_enable"}

    fp16: bool = option(False, "let TensorRT use fp16 kernels (trt_fp16_enable)")
    int8: bool = option(False, "let TensorRT use int8 kernels (trt_int8_enable): needs a "
                               "QDQ-quantized model or int8_calibration_table")
    int8_calibration_table: str = option("", "TensorRT int8 calibration table file name")
    sparsity: bool = option(False, "let TensorRT use 2:4 structured-sparse kernels for 2:4 "
                                   "weights (trt_sparsity_enable)")
    engine_cache: bool = option(True, "cache built engines and timings in cache_dir")
    cache_dir: str = option("", "engine cache folder (default: <run output>/trt_cache, or "
                                "./trt_cache outside a run)")
    builder_optimization_level: int = option(3, "TensorRT builder optimization level (0-5)")
    workspace_mb: int = option(0, "TensorRT workspace limit in MB (0 = TensorRT default)")

    def __post_init__(self):
        super().__post_init__()
        check_range("builder_optimization_level", self.builder_optimization_level, 0, 5)
        check_range("workspace_mb", self.workspace_mb, 0, 10**8)

    def with_workdir(self, workdir) -> "TensorrtTarget":
        """This target with its engine cache in ``workdir/trt_cache`` (unless ``cache_dir`` is
        set)."""
        return self if self.cache_dir else replace(self, cache_dir=str(Path(workdir) / DEFAULT_CACHE))

    def cache_path(self) -> Path:
        return Path(self.cache_dir or DEFAULT_CACHE)

    def trt_options(self, path=None, shape_range=None) -> dict:
        """``TensorrtExecutionProvider`` options (strings), with an optimization profile for
        ``shape_range`` when the model ``path`` is known."""
        opts = {"device_id": str(self.device_id), "trt_fp16_enable": _flag(self.fp16),
                "trt_int8_enable": _flag(self.int8), "trt_sparsity_enable": _flag(self.sparsity),
                "trt_builder_optimization_level": str(self.builder_optimization_level)}
        if self.int8_calibration_table:
            opts["trt_int8_calibration_table_name"] = self.int8_calibration_table
        if self.workspace_mb:
            opts["trt_max_workspace_size"] = str(self.workspace_mb * 1024 * 1024)
        if self.engine_cache:
            cache = str(self.cache_path())
            opts.update(trt_engine_cache_enable="1", trt_engine_cache_path=cache,
                        trt_timing_cache_enable="1", trt_timing_cache_path=cache)
        if path is not None and shape_range is not None:
            opts.update(profile_shapes(graph_input_names(path), shape_range))
        if self.cuda_graph and fixed_shape(shape_range):
            opts["trt_cuda_graph_enable"] = "1"
        return opts

    def provider_options(self, path=None, shape_range=None) -> list[dict]:
        """TensorRT options, then CUDA's (no CUDA graph: TensorRT owns it), then CPU's."""
        return [self.trt_options(path, shape_range), self.cuda_options(False), {}]

    def session(self, path, shape_range=None):
        """A session as the base makes it, after creating the engine cache folder."""
        if self.engine_cache and self.is_available():
            self.cache_path().mkdir(parents=True, exist_ok=True)
        return super().session(path, shape_range)
