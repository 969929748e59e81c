"""Name -> loader registry of passes, methods, targets, model families and model loaders.

The tables come from the plugin packages (``passes``, ``targets``), named here only as strings and
read with importlib: the core imports no plugin module, and a new pass, method or target touches
no core file. Loading is lazy: importing this module (or ``compressor``) imports no torch, onnx or
onnxruntime; a pass class is imported when it is first asked for.
"""

from __future__ import annotations

import importlib

from compressor.errors import ConfigError, TargetError

PASS_PLUGIN = "passes"
TARGET_PLUGIN = "targets"


def _table(package: str, name: str, default):
    """The plugin package's table ``name`` (a copy), or ``default`` without the package."""
    try:
        module = importlib.import_module(package)
    except ImportError:  # pragma: no cover - the plugins ship with the core
        return type(default)(default)
    return type(default)(getattr(module, name, default))


# name -> "module:Class"; a value may also be a class registered at run time.
PASSES: dict[str, object] = _table(PASS_PLUGIN, "PASSES", {})
TARGETS: dict[str, object] = _table(TARGET_PLUGIN, "TARGETS", {})
# Methods of `compress run --method`: name -> pass name.
METHODS: dict[str, str] = {name: name for name in _table(PASS_PLUGIN, "METHODS", ())}
# config attribute -> "module:function(folder)": loaders of model folders plain
# from_pretrained cannot read (e.g. unevenly stripped models).
MODEL_LOADERS: dict[str, object] = _table(PASS_PLUGIN, "MODEL_LOADERS", {})
# config.model_type -> "module:Class": the family adapters (layout, slicing, export facts).
FAMILIES: dict[str, object] = _table(PASS_PLUGIN, "FAMILIES", {})


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


def get_method(name: str):
    """The pass class of ``--method name``; ConfigError listing the methods otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}': available {', '.join(sorted(METHODS))}")
    return get_pass(METHODS[name])


def get_target(name: str):
    """The target class registered as ``name``; TargetError listing the known targets otherwise."""
    if name not in TARGETS:
        raise TargetError(f"unknown target '{name}': available {', '.join(sorted(TARGETS))}")
    return _load(TARGETS[name])


def require_family(model_type, where: str = "") -> None:
    """ModelError naming the supported families unless ``model_type`` has an adapter (``where``:
    e.g. " in 'folder'", said after the model type)."""
    from compressor.errors import ModelError
    if model_type not in FAMILIES:
        raise ModelError(f"unsupported architecture {model_type!r}{where}: supported {', '.join(FAMILIES)}")


def family(model_type: str):
    """The family adapter class of ``model_type``; ModelError naming the supported ones otherwise."""
    require_family(model_type)
    return _load(FAMILIES[model_type])


def max_tokens(config: dict) -> int | None:
    """The longest input, in tokens, of the model a config.json dict describes: its
    ``max_position_embeddings`` less the rows its family reads before the first token (RoBERTa's
    positions start after ``padding_idx``: 514 -> 512); None when the config does not say."""
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(value, int):
        return None
    model_type = config.get("model_type")
    return value - (family(model_type).position_offset(config) if model_type in FAMILIES else 0)


def family_of(model):
    """The family adapter bound to ``model`` (by its ``config.model_type``)."""
    from compressor.errors import ModelError
    config = getattr(model, "config", None) or getattr(getattr(model, "base_model", None), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ModelError(f"{type(model).__name__} has no config.model_type: not an encoder of a known "
                         f"family (supported: {', '.join(FAMILIES)})")
    return family(model_type)(model)


def model_loader(config):
    """The plugin loader for a model folder whose ``config`` marks it (e.g. a stripped model's
    ``compressor_layers``), or None for a plain Hugging Face folder."""
    for attr, ref in MODEL_LOADERS.items():
        if getattr(config, attr, None) is not None:
            return _load(ref)
    return None


def register_pass(cls, name: str | None = None):
    """Register a user pass class (usable as a decorator). Its ``name`` is used by default; a
    class with ``is_method = True`` also becomes a ``--method``."""
    key = name or cls.name
    if not key:
        raise ConfigError(f"pass class {cls.__name__} has no name")
    PASSES[key] = cls
    if getattr(cls, "is_method", False):
        METHODS[key] = key
    return cls


def register_target(cls, name: str | None = None):
    """Register a user target class."""
    TARGETS[name or cls.name] = cls
    return cls
