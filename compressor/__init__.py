"""compressor: prune, distill, strip and export BERT-family models to verified ONNX.

``import compressor`` imports no torch, onnx or onnxruntime: heavy modules load on use.
"""

from compressor.context import RunContext
from compressor.errors import CompressorError, ConfigError, StepFailed
from compressor.pass_base import Pass, PassResult, option
from compressor.pipeline import Pipeline, parse_spec
from compressor.registry import register_pass, register_target

__version__ = "0.1.0"

__all__ = ["Pass", "PassResult", "option", "Pipeline", "parse_spec", "RunContext",
           "CompressorError", "ConfigError", "StepFailed", "register_pass", "register_target",
           "__version__"]
