"""compressor: prune, distill, strip and export BERT-family models to verified ONNX.

The public API::

    compress(model, method=..., sparsity=..., gates=..., ...) -> Report   # the whole run
    Report.load(folder)                                                   # a finished run
    profile(onnx_path, target="cpu", ...) -> [Profile]                    # latency on a target
    Pipeline("magnitude{sparsity=0.9},export") / Pipeline([Pass(...), ...])
    register_pass(MyPass)                                                 # your own passes

``import compressor`` imports no torch, onnx or onnxruntime: heavy modules load on use, and
``compress``, ``Report``, ``profile`` and the schema helpers are loaded from
:mod:`compressor.api` on first access.
"""

from compressor.context import RunContext
from compressor.errors import CompressorError, ConfigError, StepFailed
from compressor.pass_base import Pass, PassResult, option
from compressor.pipeline import Pipeline, parse_spec
from compressor.registry import register_pass, register_target

__version__ = "0.1.0"

# name -> module providing it, imported on first access (PEP 562).
_LAZY = {"compress": "compressor.api", "Report": "compressor.api", "profile": "compressor.api",
         "report_schema": "compressor.api", "validate_report": "compressor.api",
         "GatesFailed": "compressor.gates", "check_gates": "compressor.gates"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["compress", "Report", "profile", "report_schema", "validate_report", "GatesFailed",
           "check_gates", "Pass", "PassResult", "option", "Pipeline", "parse_spec", "RunContext",
           "CompressorError", "ConfigError", "StepFailed", "register_pass", "register_target",
           "__version__"]
