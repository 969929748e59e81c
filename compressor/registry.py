"""Name -> loader registry of passes and targets. Loading is lazy: importing this module (or
``compressor``) imports no torch, onnx or onnxruntime."""

from __future__ import annotations

import importlib

from compressor.errors import ConfigError, TargetError

# name -> "module:Class"; a value may also be a class registered at run time.
PASSES: dict[str, object] = {
    "finetune": "passes.finetune:Finetune",
    "magnitude": "passes.magnitude:Magnitude",
    "export": "passes.export_onnx:Export",
    "sparse-init": "passes.sparse_initializers:SparseInit",
    "strip": "passes.strip:Strip",
    "ort-fuse": "passes.ort_fusion:OrtFuse",
    "quantize": "passes.quantize:Quantize",
    "nm-prune": "passes.nm_prune:NMPrune",
    "sparsebert": "passes.sparsebert:SparseBert",
    "cap": "passes.cap:Cap",
    "rpp": "passes.rpp:Rpp",
    "nip": "passes.nip:Nip",
}

TARGETS: dict[str, object] = {
    "cpu": "targets.cpu:CpuTarget",
    "cuda": "targets.cuda:CudaTarget",
    "tensorrt": "targets.tensorrt:TensorrtTarget",
}

# Methods of `compress run --method`: name -> pass name. Filled as methods land.
METHODS: dict[str, str] = {
    "magnitude": "magnitude",
    "sparsebert": "sparsebert",
    "cap": "cap",
    "rpp": "rpp",
    "nip": "nip",
}
PLANNED_METHODS = ("cap", "sparsebert", "rpp", "nip")


def _load(ref):
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)
    return ref


def get_pass(name: str):
    """The pass class registered as ``name``; ConfigError listing the known passes otherwise."""
    if name not in PASSES:
        raise ConfigError(f"unknown pass '{name}': available {', '.join(sorted(PASSES))}")
    return _load(PASSES[name])


def get_target(name: str):
    """The target class registered as ``name``; TargetError listing the known targets otherwise."""
    if name not in TARGETS:
        raise TargetError(f"unknown target '{name}': available {', '.join(sorted(TARGETS))}")
    return _load(TARGETS[name])


def register_pass(cls, name: str | None = None):
    """Register a user pass class (usable as a decorator). Its ``name`` is used by default."""
    key = name or cls.name
    if not key:
        raise ConfigError(f"pass class {cls.__name__} has no name")
    PASSES[key] = cls
    return cls


def register_target(cls, name: str | None = None):
    """Register a user target class."""
    TARGETS[name or cls.name] = cls
    return cls
