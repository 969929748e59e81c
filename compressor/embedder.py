"""An embedding model as the pipeline sees it: an encoder, a pooling and (optionally) an L2
normalization, with the sentence embedding where a classifier has its logits.

:class:`SentenceEmbedder` wraps the family's base model (``AutoModel``: ``BertModel``,
``RobertaModel``...) under its usual prefix (``bert.``, ``roberta.``), so the family adapters, the
masks, strip, vocab-prune and the checkpoints find the encoder where they always do. Its output
has ``logits`` = the sentence embedding (``[batch, hidden]``), ``last_hidden_state`` (the token
embeddings), and with ``labels`` (the teacher's sentence embeddings, ``[batch, hidden]``) the
embedding-distillation ``loss`` (:func:`embedding_loss`). The settings live in
``config.compressor_embedding`` (:data:`DEFAULTS`), so a saved folder reloads as an embedder
(:func:`load_embedder`; a stripped one through ``passes.strip.load_stripped``).

Pooling follows sentence-transformers' ``Pooling`` module: ``mean`` (masked mean of the token
embeddings), ``cls`` (the first token), ``max`` (masked max: padded positions set to -1e9);
``Normalize`` divides by the L2 norm (``F.normalize``). A sentence-transformers folder
(``modules.json``, ``1_Pooling/config.json``, a ``Normalize`` module) says which
(:func:`read_st_settings`); :func:`write_st_files` writes those files beside an export so the
folder loads with ``SentenceTransformer(folder, backend="onnx")``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path

from compressor.errors import ModelError

log = logging.getLogger(__name__)

POOLING = ("mean", "cls", "max")
"""Pooling modes an embedder takes (sentence-transformers' names: mean_tokens, cls_token, max_tokens)."""
DEFAULTS = {"pooling": "mean", "normalize": True, "contrastive": 0.0, "temperature": 0.05}
"""``config.compressor_embedding``: pooling and normalization of the sentence embedding, and the
distillation loss: ``1 - cos(student, teacher)`` per text, plus ``contrastive`` times an in-batch
InfoNCE term at ``temperature`` (:func:`embedding_loss`)."""
CONFIG_KEY = "compressor_embedding"
ST_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                   "pooling_mode_max_tokens": "max"}
OUTPUT = "sentence_embedding"
TOKENS_OUTPUT = "last_hidden_state"


def check_settings(settings: dict) -> dict:
    """The settings with the defaults filled in; ModelError for an unknown pooling mode or key."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ModelError(f"embedding setting(s) {', '.join(unknown)} not allowed: choose from {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **settings}
    if out["pooling"] not in POOLING:
        raise ModelError(f"pooling {out['pooling']!r} is not allowed: choose one of {', '.join(POOLING)}")
    if not float(out["contrastive"]) >= 0 or not float(out["temperature"]) > 0:
        raise ModelError(f"contrastive weight {out['contrastive']!r} must be >= 0 and temperature "
                         f"{out['temperature']!r} > 0")
    return out


def is_embedder(model_or_config) -> bool:
    """Whether a model (or its config) is a :class:`SentenceEmbedder`'s."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, CONFIG_KEY, None) is not None


def settings_of(model) -> dict | None:
    """The model's embedding settings, or None for a model that is not an embedder."""
    raw = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return None if raw is None else {**DEFAULTS, **raw}


def pool(tokens, attention_mask, mode: str):
    """Sentence embeddings ``[batch, hidden]`` from token embeddings ``[batch, seq, hidden]``."""
    if mode == "cls":
        return tokens[:, 0]
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "max":
        return tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embedding_loss(student, teacher, settings: dict):
    """``mean(1 - cos(s_i, t_i))`` plus ``contrastive`` times the in-batch InfoNCE loss
    ``-log softmax_j(cos(s_i, t_j) / temperature)_i`` (the other texts' teacher embeddings as
    negatives: CAP's contrast, in the embedding space). The InfoNCE term is not 0 where the
    student equals the teacher, which is what gives fisher's gradients something to measure."""
    import torch
    import torch.nn.functional as F
    s, t = student.float(), teacher.detach().float()
    loss = (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    w = float(settings.get("contrastive", 0.0))
    if w > 0 and s.shape[0] > 1:
        logits = F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).T / float(settings["temperature"])
        loss = loss + w * F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))
    return loss


def fisher_loss(student, teacher, settings: dict):
    """The loss fisher's importance is measured on, for an embedding model: ``mean_i <e_i, s_i>``
    with ``e_i ~ N(0, I)`` drawn afresh (torch's global RNG). Where the dense model is its own
    teacher the empirical Fisher (gradients of a loss to its own embeddings) is zero; this is the
    Fisher of a Gaussian output model, labels drawn around the model's output (as for a regression
    head): the gradient is a random projection of the embedding's Jacobian, and its squares sum
    to ``E ||dJ/dm||^2``, how much removing a unit moves the embeddings. ``teacher`` and
    ``settings`` are not used (the same signature as :func:`embedding_loss`)."""
    import torch
    s = student.float()
    return (s * torch.randn_like(s)).sum(-1).mean()


@functools.cache
def _classes():
    """The model and output classes (built on first use: transformers loads lazily)."""
    from dataclasses import dataclass

    import torch
    from transformers import PreTrainedModel, PretrainedConfig
    from transformers.utils import ModelOutput

    @dataclass
    class EmbeddingOutput(ModelOutput):
        loss: torch.Tensor | None = None
        logits: torch.Tensor | None = None
        last_hidden_state: torch.Tensor | None = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None

    class SentenceEmbedder(PreTrainedModel):
        """An encoder + pooling (+ L2 normalization): ``logits`` is the sentence embedding."""

        config_class = PretrainedConfig
        base_model_prefix = "encoder_model"
        # the wrapped encoder picks its attention itself: nothing here for transformers to refuse
        _supports_sdpa = _supports_flash_attn = _supports_flash_attn_2 = _supports_flex_attn = True
        _supports_attention_backend = True

        def __init__(self, config, encoder=None):
            super().__init__(config)
            encoder = encoder if encoder is not None else base_from_config(config)
            self.base_model_prefix = encoder.base_model_prefix  # "bert", "roberta", ...
            setattr(self, self.base_model_prefix, encoder)
            # DistilBERT's encoder has no token types: its tokenizer's token_type_ids are not passed on
            self.takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

        def get_input_embeddings(self):
            return self.base_model.get_input_embeddings()

        def set_input_embeddings(self, value):
            self.base_model.set_input_embeddings(value)

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                    output_hidden_states=None, output_attentions=None, return_dict=None, **kwargs):
            settings = settings_of(self)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and self.takes_token_types:
                inputs["token_type_ids"] = token_type_ids
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            out = self.base_model(**inputs, output_hidden_states=output_hidden_states,
                                  output_attentions=output_attentions, return_dict=True)
            tokens = out.last_hidden_state
            emb = pool(tokens, attention_mask, settings["pooling"])
            if settings["normalize"]:
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            loss = embedding_loss(emb, labels, settings) if labels is not None else None
            return EmbeddingOutput(loss=loss, logits=emb, last_hidden_state=tokens,
                                   hidden_states=getattr(out, "hidden_states", None),
                                   attentions=getattr(out, "attentions", None))

    return SentenceEmbedder, EmbeddingOutput


def wrap(encoder, settings: dict):
    """A :class:`SentenceEmbedder` around ``encoder`` (a base model), in ``encoder``'s mode."""
    config = encoder.config
    setattr(config, CONFIG_KEY, check_settings(settings))
    config.architectures = ["SentenceEmbedder"]
    cls = _classes()[0]
    model = cls(config, encoder)
    model.train(encoder.training)
    return model


def from_config(config):
    """An untrained :class:`SentenceEmbedder` of ``config`` (a saved embedder's; weights to load)."""
    return _classes()[0](config, base_from_config(config))


def base_from_config(config):
    """The family's base model of ``config`` without a pooler (an embedder pools itself)."""
    from transformers import AutoModel
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # a base model with no pooler to leave out (DistilBERT, ELECTRA)
        return AutoModel.from_config(config)


def read_st_settings(folder) -> dict:
    """Pooling and normalization from a sentence-transformers folder's ``modules.json`` and its
    Pooling module's ``config.json``; {} for a folder that is not one. ModelError for a pooling
    mode the embedder does not implement (weighted mean, last token, mean-sqrt-len)."""
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"{modules_file} is not a sentence-transformers modules list: {exc}") from None
    settings = {"normalize": "Normalize" in kinds}
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            config = json.loads((folder / m.get("path", "") / "config.json").read_text())
            on = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
            modes = [ST_POOLING_KEYS.get(k) for k in on]
            if len(modes) != 1 or modes[0] is None:
                raise ModelError(f"{folder}: pooling {', '.join(on) or '(none)'} is not supported: one of "
                                 + ", ".join(ST_POOLING_KEYS))
            settings["pooling"] = modes[0]
    return settings


def load_embedder(folder):
    """A saved :class:`SentenceEmbedder` folder (config with ``compressor_embedding``, safetensors,
    tokenizer) as a TorchModel."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from compressor.artifact import TorchModel
    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model = from_config(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return TorchModel(model.eval(), tokenizer, {"source": str(folder)})


def load_source(name: str, pooling: str | None = None, normalize: bool | None = None,
                trust_remote_code: bool = False, contrastive: float | None = None):
    """Load ``name`` (alias, folder or hub id) as an embedder: its sentence-transformers settings,
    overridden by ``pooling``/``normalize`` when given (a plain folder: mean pooling, normalized,
    unless said). A folder that is already an embedder (a saved step) loads as saved."""
    from transformers import AutoTokenizer

    from compressor.artifact import TorchModel
    from compressor.models import _fail, _fit_inputs, _load_errors, read_config
    from compressor.registry import model_loader
    resolved, cache_only, config = read_config(name, trust_remote_code)
    errors = _load_errors()
    if getattr(config, CONFIG_KEY, None) is not None:
        return _fit_inputs(model_loader(config)(resolved))
    settings = read_st_settings(resolved) if Path(resolved).is_dir() else {}
    if pooling is not None:
        settings["pooling"] = pooling
    if normalize is not None:
        settings["normalize"] = normalize
    if contrastive is not None:
        settings["contrastive"] = float(contrastive)
    kwargs = {"attn_implementation": "eager", "trust_remote_code": trust_remote_code,
              "local_files_only": cache_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code,
                                                  local_files_only=cache_only)
        encoder = _base_model(resolved, kwargs)
    except errors as e:
        raise _fail(name, resolved, e) from None
    model = wrap(encoder.eval(), settings)
    s = settings_of(model)
    log.info("loaded %s as an embedding model: %s pooling%s, %d dimensions", name, s["pooling"],
             ", normalized" if s["normalize"] else "", model.config.hidden_size)
    return _fit_inputs(TorchModel(model.eval(), tokenizer, {"source": name, "path": resolved}))


def _base_model(resolved: str, kwargs: dict):
    """The folder's base model without its pooler (unused by an embedder; transformers' note that
    the checkpoint's pooler weights went unused is silenced)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(resolved, add_pooling_layer=False, **kwargs)
    except TypeError:  # a family whose base model has no pooler to leave out (DistilBERT)
        return AutoModel.from_pretrained(resolved, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def write_st_files(folder, settings: dict, dimension: int, max_length: int) -> None:
    """sentence-transformers' files beside a model: ``modules.json`` (Transformer, Pooling,
    Normalize when normalized), ``1_Pooling/config.json``, ``sentence_bert_config.json``."""
    folder = Path(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if settings["normalize"]:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": dimension,
               **{k: settings["pooling"] == v for k, v in ST_POOLING_KEYS.items()},
               "pooling_mode_mean_sqrt_len_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                   "do_lower_case": False}, indent=2))


def teacher_targets(data, teacher, max_length: int, batch_size: int = 64):
    """``data`` (an embedding task) with every example's label replaced by ``teacher``'s sentence
    embedding of its text (a tuple of floats): what training distils to and what fidelity is
    measured against. The texts' class labels (for the linear probe) move to
    ``info["probe_labels"]`` (``{"train": [...], "dev": [...], "eval": [...]}``, None where a split
    has no class labels)."""
    from compressor.data import TaskData

    def embed(rows):
        if not rows:
            return [], None
        classes = [e.label for e in rows] if all(isinstance(e.label, int) and e.label >= 0 for e in rows) else None
        return labelled_by(teacher, rows, max_length, batch_size), classes

    (train, y_train), (dev, y_dev), (evals, y_eval) = embed(data.train), embed(data.dev), embed(data.eval)
    info = dict(data.info, probe_labels={"train": y_train, "dev": y_dev, "eval": y_eval},
                embedding_dimension=len(train[0].label) if train else None)
    log.info("embedded %d train / %d dev / %d eval texts with the dense model (%s dimensions)",
             len(train), len(dev), len(evals), info["embedding_dimension"])
    return TaskData(data.name, train, evals, list(data.label_names), info, dev, data.task_type)


def labelled_by(teacher, rows, max_length: int, batch_size: int = 64) -> list:
    """``rows`` (Examples) with each label replaced by ``teacher``'s sentence embedding of its text
    (a tuple of floats), embedded in batches of like lengths (less padding), in the rows' order."""
    import dataclasses

    from compressor.evaluation import predict_logits
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].text))
    found = predict_logits(teacher.model, teacher.tokenizer, [rows[i] for i in order], max_length, batch_size).tolist()
    vectors = [None] * len(rows)
    for i, v in zip(order, found):
        vectors[i] = tuple(v)
    return [dataclasses.replace(e, label=v) for e, v in zip(rows, vectors)]
