"""The targets of compressor: where a model runs (an ONNX Runtime execution provider and its
options) and how it is timed there.

This file holds the plugin's lazy table, read by :mod:`compressor.registry` by name: importing it
imports no onnxruntime.
"""

# name -> "module:Class"
TARGETS = {
    "cpu": "targets.cpu:CpuTarget",
    "cuda": "targets.cuda:CudaTarget",
    "tensorrt": "targets.tensorrt:TensorrtTarget",
}
