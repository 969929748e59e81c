"""The CUDA target: ONNX Runtime's CUDAExecutionProvider (from the ``onnxruntime-gpu`` package),
with the CPU provider after it for the few ops CUDA lacks.

Timing on a GPU measures the model, not the PCIe copies: with ``io_binding`` (the default) every
input batch is copied to the device once (``OrtValue.ortvalue_from_numpy(..., "cuda", id)``)
and outputs are bound on the device, so a timed run is ``run_with_iobinding`` alone. With
``cuda_graph`` the session is created with ``enable_cuda_graph=1``: the first run captures the
kernels, later runs replay them, which needs fixed input shapes and fixed input/output
addresses; it is used for fixed shapes only (real-length batches change shape every run).

onnxruntime-gpu falls back to the CPU silently when the CUDA libraries are missing (FACTS.md),
so the base class compares ``session.get_providers()`` with what was asked after every session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.errors import ConfigError, TargetError, check_choice, check_range
from compressor.pass_base import option
from targets._io import gpu_memory_mb, make_feeds
from targets.base import Target

ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def _flag(value: bool) -> str:
    return "1" if value else "0"


def fixed_shape(shape_range) -> bool:
    """Whether a ``(min, opt, max)`` shape range is one shape (CUDA graphs need that)."""
    return shape_range is not None and shape_range[0] == shape_range[-1]


@dataclass(frozen=True)
class CudaTarget(Target):
    """Run on ``CUDAExecutionProvider`` (then ``CPUExecutionProvider`` for unsupported ops).

    ``device_id`` picks the GPU; ``io_binding`` keeps inputs and outputs on it; ``cuda_graph``
    captures and replays a CUDA graph at fixed shapes (needs ``io_binding``);
    ``gpu_mem_limit_mb`` caps ORT's device arena (0 = no cap); ``use_tf32`` lets fp32 MatMuls
    use TF32 tensor cores (ORT's default; turn it off to compare logits with the CPU tightly).
    """

    name: ClassVar[str] = "cuda"
    providers: ClassVar[tuple[str, ...]] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    requires: ClassVar[str] = "onnxruntime-gpu"
    # Where IO binding puts buffers, and which providers in use mean the session runs there.
    device_type: ClassVar[str] = "cuda"
    device_providers: ClassVar[tuple[str, ...]] = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    # Provider option that turns CUDA graphs on, per provider.
    graph_flags: ClassVar[dict] = {"CUDAExecutionProvider": "enable_cuda_graph"}

    device_id: int = option(0, "CUDA device index")
    io_binding: bool = option(True, "keep inputs and outputs on the device (IO binding), so "
                                    "timings exclude host<->device copies")
    cuda_graph: bool = option(False, "capture and replay a CUDA graph at fixed shapes "
                                     "(needs io_binding)")
    gpu_mem_limit_mb: int = option(0, "cap of ORT's device memory arena in MB (0 = no cap)")
    arena_extend_strategy: str = option("kNextPowerOfTwo", "how ORT's device arena grows",
                                        choices=ARENA_STRATEGIES)
    use_tf32: bool = option(True, "allow TF32 tensor-core math for fp32 MatMul (ORT default)")

    def __post_init__(self):
        super().__post_init__()
        check_range("device_id", self.device_id, 0, 1023)
        check_range("gpu_mem_limit_mb", self.gpu_mem_limit_mb, 0, 10**8)
        check_choice("arena_extend_strategy", self.arena_extend_strategy, ARENA_STRATEGIES)
        if self.cuda_graph and not self.io_binding:
            raise ConfigError("cuda_graph=True needs io_binding=True: CUDA graphs replay fixed "
                              "device buffers")

    def cuda_options(self, graph: bool = False) -> dict:
        """``CUDAExecutionProvider`` options (ORT takes them as strings)."""
        opts = {"device_id": str(self.device_id), "arena_extend_strategy": self.arena_extend_strategy,
                "use_tf32": _flag(self.use_tf32)}
        if self.gpu_mem_limit_mb:
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit_mb * 1024 * 1024)
        if graph:
            opts["enable_cuda_graph"] = "1"
        return opts

    def provider_options(self, path=None, shape_range=None) -> list[dict]:
        """CUDA options (a CUDA graph only at one fixed shape), nothing for the CPU."""
        return [self.cuda_options(self.cuda_graph and fixed_shape(shape_range)), {}]

    def on_device(self, sess) -> bool:
        """Whether ``sess`` really runs on the GPU (not a fallback to the CPU)."""
        return any(p in self.device_providers for p in sess.get_providers())

    def graph_enabled(self, sess) -> bool:
        """Whether ``sess`` was created with CUDA graphs on (read back from the session)."""
        opts = sess.get_provider_options()
        return any(str(opts.get(p, {}).get(flag, "0")).lower() in ("1", "true")
                   for p, flag in self.graph_flags.items())

    def runner(self, sess, inputs: list[dict]):
        """IO-bound runs on the device (see the module doc); the plain runner when IO binding is
        off or the session fell back to the CPU. ``info`` says which was used
        (``io_binding_used``, ``cuda_graph_used``)."""
        if not self.io_binding or not self.on_device(sess):
            run, info = super().runner(sess, inputs)
            return run, {**info, "io_binding_used": False, "cuda_graph_used": False}
        import numpy as np
        import onnxruntime as ort
        device = (self.device_type, self.device_id)
        values = [{n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), *device)
                   for n, a in make_feeds(sess, arrays).items()} for arrays in inputs]
        graph = self.graph_enabled(sess)
        if graph and len(values) != 1:
            raise TargetError(f"target '{self.name}': a CUDA graph replays one input shape, got "
                              f"{len(values)} input batches")
        bindings, keep = [], [values]
        for vals in values:
            binding = sess.io_binding()
            for n, v in vals.items():
                binding.bind_ortvalue_input(n, v)
            for out in sess.get_outputs():
                if graph:  # fixed output addresses too
                    buf = ort.OrtValue.ortvalue_from_shape_and_type(
                        self._output_shape(out, vals), _NUMPY_TYPES.get(out.type, "float32"), *device)
                    keep.append(buf)
                    binding.bind_ortvalue_output(out.name, buf)
                else:
                    binding.bind_output(out.name, *device)
            bindings.append(binding)

        def run(i: int) -> list:
            binding = bindings[i % len(bindings)]
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding.get_outputs()  # OrtValues on the device (no copy)
        run.keep = keep  # the bound OrtValues must outlive the bindings
        return run, {"io_binding_used": True, "cuda_graph_used": graph}

    def _output_shape(self, out, vals) -> list[int]:
        batch = next(iter(vals.values())).shape()[0]
        dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(out.shape)]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise TargetError(f"target '{self.name}': output '{out.name}' has shape {out.shape}; a "
                              f"CUDA graph needs every dimension but the batch fixed: set "
                              f"cuda_graph=False")
        return dims

    def device_memory(self) -> tuple[float | None, str | None]:
        """GPU memory in MB from nvidia-smi (this process's, else the whole device's)."""
        return gpu_memory_mb(self.device_id)
