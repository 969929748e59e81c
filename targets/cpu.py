"""The CPU target: ONNX Runtime's CPUExecutionProvider (always present in every build)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressor.errors import check_range
from compressor.pass_base import option
from targets.base import Target


@dataclass(frozen=True)
class CpuTarget(Target):
    """Run on ``CPUExecutionProvider``.

    ``threads`` sets the intra-op thread pool (0 = one per physical core; on a shared machine
    pin it, e.g. ``threads=2``, for repeatable numbers); ``inter_op_threads`` only matters with
    parallel execution and stays at ORT's default (0). ``use_arena`` keeps ORT's CPU memory
    arena (faster, higher peak memory).
    """

    name: ClassVar[str] = "cpu"
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)
    requires: ClassVar[str] = "onnxruntime"

    inter_op_threads: int = option(0, "inter-op threads (0 = ONNX Runtime default)")
    use_arena: bool = option(True, "use ONNX Runtime's CPU memory arena")

    def __post_init__(self):
        super().__post_init__()
        check_range("inter_op_threads", self.inter_op_threads, 0, 4096)

    def session_options(self):
        """Base options plus the inter-op pool and the CPU arena flag (a session option: the CPU
        provider ignores provider options it does not know, ``use_arena`` included)."""
        so = super().session_options()
        so.inter_op_num_threads = self.inter_op_threads
        so.enable_cpu_mem_arena = self.use_arena
        return so
