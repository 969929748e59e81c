"""What every pass needs to know about a model family, in one protocol.

A :class:`Family` is bound to one model. It says where the encoder layers, the embeddings and the
per-layer projections live, how many heads and FFN neurons a layer has, how to keep only some of
them, what stands in for an attention or FFN with nothing left, and what the exported graph and
the tokenizer are. Passes speak in **roles**, never in module paths:

======== ================================================ ===============================
role     what                                             sliced for heads / neurons on
======== ================================================ ===============================
query    Q projection (hidden -> heads * head_size)       output rows
key      K projection                                     output rows
value    V projection                                     output rows
attn_out attention output projection (heads * d -> hidden) input columns
ffn_in   FFN input projection (hidden -> neurons)         output rows
ffn_out  FFN output projection (neurons -> hidden)        input columns
======== ================================================ ===============================

A family with separate Linears for these roles (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa)
sets :attr:`Family.role_paths` and inherits everything else; a family with fused or gated
projections overrides :meth:`Family.linear` and the slicing methods. The families are listed in
``passes.FAMILIES`` (``model_type`` -> class), read by :mod:`compressor.registry`; a new family is
one file here and one line there. Models to compare with: SliceGPT's ``ModelAdapter`` /
``LayerAdapter`` (microsoft/TransformerCompression) and Optimum's per-``model_type`` configs.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from compressor.errors import ModelError

ROLES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
"""The six encoder projections of a layer that pruning acts on, in model order."""
HEAD_ROLES = ROLES[:3]
"""The projections whose output rows belong to heads."""


class BiasOnly(nn.Module):
    """A Linear with no inputs left: returns its ``bias`` broadcast to the shape of its input
    (which is always hidden-sized where it is used). Keeps the state-dict key ``....bias``."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.in_features = 0
        self.out_features = bias.shape[0]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def forward(self, x):
        return self.bias.expand_as(x)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (``dim=0``, outputs, and bias entries) or columns (``dim=1``,
    inputs) ``index`` of ``linear``; same dtype, device and requires_grad."""
    w = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    has_bias = linear.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device=w.device, dtype=w.dtype)
    new.weight = nn.Parameter(w, requires_grad=linear.weight.requires_grad)
    if has_bias:
        b = linear.bias.detach()
        b = b.index_select(0, index.to(b.device)) if dim == 0 else b
        new.bias = nn.Parameter(b.clone(), requires_grad=linear.bias.requires_grad)
    return new


def head_rows(heads: list[int], head_size: int) -> torch.Tensor:
    """Row indices of ``heads`` in a ``[heads * head_size, ...]`` projection."""
    return torch.tensor([h * head_size + j for h in heads for j in range(head_size)], dtype=torch.long)


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


HIDDEN_CONFIG_KEYS = ("hidden_size", "embedding_size", "pooler_hidden_size")
"""Config sizes that follow the hidden size where they equal it (DistilBERT's ``dim`` is its
``hidden_size``; ELECTRA's / DeBERTa's ``embedding_size`` only without a projection)."""


def _keep(param: nn.Parameter, index: torch.Tensor, dim: int) -> nn.Parameter:
    value = param.detach().index_select(dim, index.to(param.device)).clone()
    return nn.Parameter(value, requires_grad=param.requires_grad)


def keep_units(module: nn.Module | None, index: torch.Tensor, side: str) -> None:
    """Keep units ``index`` of ``module`` in place: its outputs (``side="out"``: Linear / Conv1d
    rows and bias, a :class:`BiasOnly`'s bias, an Embedding's or a LayerNorm's columns), its
    inputs (``"in"``: Linear / Conv1d columns) or both. Anything else (None, a stand-in without
    weights, Identity) is left as it is."""
    if module is None:
        return
    if isinstance(module, (nn.Linear, nn.Conv1d)) and side in ("in", "both"):
        if isinstance(module, nn.Conv1d) and module.groups != 1:
            raise ModelError(f"a grouped Conv1d ({module.groups} groups) cannot lose channels one by one")
        module.weight = _keep(module.weight, index, 1)
        setattr(module, "in_features" if isinstance(module, nn.Linear) else "in_channels", len(index))
    if isinstance(module, (nn.Linear, nn.Conv1d, BiasOnly)) and side in ("out", "both"):
        if not isinstance(module, BiasOnly):
            module.weight = _keep(module.weight, index, 0)
        if module.bias is not None:
            module.bias = _keep(module.bias, index, 0)
        setattr(module, "out_channels" if isinstance(module, nn.Conv1d) else "out_features", len(index))
    elif isinstance(module, nn.Embedding):
        module.weight = _keep(module.weight, index, 1)
        module.embedding_dim = len(index)
    elif isinstance(module, nn.LayerNorm):
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                setattr(module, name, _keep(getattr(module, name), index, 0))
        module.normalized_shape = (len(index),)


class Family:
    """The layout of one model family, bound to ``model`` (a task model or its base model).

    Class attributes a family sets: :attr:`model_types` (``config.model_type`` values),
    :attr:`layers_path` and :attr:`embeddings_path` (inside the base model), :attr:`role_paths`
    (role -> path inside a layer), :attr:`ort_model_type` (ONNX Runtime transformer optimizer),
    :attr:`tokenizer_kind`. For a family whose roles are plain Linears the model-level methods,
    the role lookup and the slicing of the role Linears (:meth:`slice_heads`, :meth:`slice_ffn`)
    work as they are; a family supplies its head bookkeeping, sizes and stand-ins.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = "encoder.layer"
    encoder_path: ClassVar[str] = "encoder"
    embeddings_path: ClassVar[str] = "embeddings"
    role_paths: ClassVar[dict[str, str]] = {}
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "wordpiece"
    ort_fuses_embeddings: ClassVar[bool] = True
    """Whether ORT's optimizer fuses this family's embeddings into one ``EmbedLayerNormalization``
    (``ort-fuse`` strict mode requires it only then)."""
    ort_fuses_attention: ClassVar[bool] = True
    """Whether ORT's optimizer fuses this family's attention into ``Attention`` nodes (False:
    ``ort-fuse`` reports it as not fused instead of requiring it)."""
    token_types: ClassVar[bool] = True
    """Whether the exported graph takes ``token_type_ids`` (when ``forward`` does)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.base = getattr(model, "base_model", model)

    # -- model level --------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        """The encoder layers; ModelError if the model does not have this family's layout."""
        layers = self._get(self.base, self.layers_path)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            raise ModelError(f"model {type(self.model).__name__} has no {self.layers_path} list: "
                             f"not a {self.name()} layout")
        for i, layer in enumerate(layers):
            self.check_layer(i, layer)
        return layers

    def set_layers(self, layers: list[nn.Module]) -> None:
        """Replace the encoder layers (layer-drop); the config is the caller's."""
        parent, _, attr = self.layers_path.rpartition(".")
        setattr(self._get(self.base, parent) if parent else self.base, attr, nn.ModuleList(layers))

    def encoder(self) -> nn.Module:
        """The encoder block (layers and whatever norm the family keeps there)."""
        return self._get(self.base, self.encoder_path)

    def embeddings(self) -> nn.Module:
        """The embeddings block (word, position, token type, norm)."""
        emb = self._get(self.base, self.embeddings_path)
        if emb is None:
            raise ModelError(f"{type(self.model).__name__} has no {self.embeddings_path}: "
                             f"not a {self.name()} layout")
        return emb

    def embedding_modules(self) -> list[nn.Module]:
        """What counts as the embeddings in parameter counts: the embeddings block, plus whatever
        a family keeps beside it (ELECTRA's projection to the encoder's width)."""
        return [self.embeddings()]

    def word_table(self) -> nn.Embedding:
        return self.base.get_input_embeddings()

    def hidden_size(self) -> int:
        return int(self.word_table().embedding_dim)

    def position_table(self) -> nn.Embedding | None:
        """The learned absolute position table, or None (rotary, relative)."""
        emb = getattr(self.embeddings(), "position_embeddings", None)
        return emb if isinstance(emb, nn.Embedding) else None

    @classmethod
    def position_offset(cls, config) -> int:
        """Position-table rows before the first token's: 0 (BERT: token ``i`` reads row ``i``).
        ``config``: a model config or a config.json dict."""
        return 0

    def max_tokens(self) -> int | None:
        """The longest input, in tokens, the position table takes: ``max_position_embeddings``
        less :meth:`position_offset` (None when the config does not say)."""
        config = getattr(self.model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        return int(value) - self.position_offset(config) if value else None

    def trim_positions(self, count: int) -> None:
        """Keep the rows of the absolute position table that inputs of up to ``count`` tokens read
        (the first ``count + position_offset``), and as many columns of the embeddings'
        per-position buffers (``position_ids``, ``token_type_ids``); the config is the caller's."""
        emb, pos = self.embeddings(), self.position_table()
        count += self.position_offset(getattr(self.model, "config", None))
        new = nn.Embedding(count, pos.embedding_dim, dtype=pos.weight.dtype, device=pos.weight.device,
                           padding_idx=pos.padding_idx if (pos.padding_idx or 0) < count else None)
        with torch.no_grad():
            new.weight.copy_(pos.weight[:count])
        new.weight.requires_grad_(pos.weight.requires_grad)
        emb.position_embeddings = new
        for buf in ("position_ids", "token_type_ids"):
            value = getattr(emb, buf, None)
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] > count:
                setattr(emb, buf, value[:, :count].clone())

    def exporting(self):
        """A context manager ``export`` traces the model in: nothing by default; a family whose
        modeling code does not trace into a clean ONNX graph swaps that code here."""
        return contextlib.nullcontext()

    def num_heads(self) -> int:
        """Heads per layer of the dense model (the config's)."""
        value = getattr(getattr(self.model, "config", None), "num_attention_heads", None)
        if not value:
            raise ModelError(f"{type(self.model).__name__} has no config.num_attention_heads")
        return int(value)

    def linears(self, include: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
        """The role Linears of every layer by module name, in model order; ``include`` adds
        ``"pooler"`` and/or ``"classifier"`` (the task head's Linears)."""
        roles = self.linear_roles()
        out = {}
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            if name in roles or ("pooler" in include and self.is_pooler(name)) or \
                    ("classifier" in include and self.is_classifier(name)):
                out[name] = module
        return out

    def linear_roles(self) -> dict[str, tuple[int, str]]:
        """Module name -> ``(layer index, role)`` of every role Linear (stand-ins left out)."""
        index = {id(m): n for n, m in self.model.named_modules()}
        out = {}
        for i, layer in enumerate(self.layers()):
            for role in ROLES:
                module = self.linear(layer, role)
                if isinstance(module, nn.Linear) and id(module) in index:
                    out[index[id(module)]] = (i, role)
        return out

    def is_pooler(self, name: str) -> bool:
        return name.endswith("pooler.dense")

    def is_classifier(self, name: str) -> bool:
        """The task head: ``classifier`` (sequence and token classifiers, ModernBERT's QA head) or
        ``qa_outputs`` (the start/end Linear of the other families' QA models)."""
        return name.split(".")[0] in ("classifier", "qa_outputs")

    def encoder_flops(self, seq: int) -> int:
        """Estimated forward FLOPs of the encoder for one sequence of ``seq`` tokens.

        Per layer: ``2 * seq * sum(in * out over its nn.Linear modules)`` (one multiply-add per
        weight per token) plus ``2 * 2 * seq**2 * heads * head_size`` for the attention score
        (Q K^T) and context (P V) matmuls. Softmax, norms, activations, biases and the stand-ins'
        broadcasts are left out (they are O(seq * hidden) or O(seq^2 * heads)).
        """
        total = 0
        for layer in self.layers():
            linear = sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
            heads, _ = self.layer_sizes(layer)
            total += 2 * seq * linear + 4 * seq * seq * heads * self.head_size(layer)
        return total

    # -- layer level --------------------------------------------------------------------------
    def check_layer(self, index: int, layer: nn.Module) -> None:
        """ModelError unless ``layer`` has this family's submodules."""
        missing = [p for p in self.role_paths.values() if self._get(layer, p.rpartition(".")[0] or p) is None]
        if missing:
            raise ModelError(f"layer {index} of {type(self.model).__name__} is not a {self.name()} layer "
                             f"(missing {', '.join(missing)}): cannot slice it")

    def linear(self, layer: nn.Module, role: str) -> nn.Module | None:
        """The module of ``role`` in ``layer``: a Linear, a :class:`BiasOnly` stand-in, or None."""
        return self._get(layer, self.role_paths[role])

    def set_linear(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        parent, _, attr = self.role_paths[role].rpartition(".")
        setattr(self._get(layer, parent) if parent else layer, attr, module)

    def slice_heads(self, layer: nn.Module, heads: list[int], head_size: int) -> None:
        """Keep heads ``heads`` in the role Linears: their rows of query, key and value, their
        columns of attn_out. The family's head bookkeeping is the caller's (:meth:`keep_heads`)."""
        rows = head_rows(sorted(heads), head_size)
        for role in HEAD_ROLES:
            self.set_linear(layer, role, slice_linear(self.linear(layer, role), rows, 0))
        self.set_linear(layer, "attn_out", slice_linear(self.linear(layer, "attn_out"), rows, 1))

    def slice_ffn(self, layer: nn.Module, neurons: list[int]) -> None:
        """Keep FFN neurons ``neurons`` in the role Linears: rows of ffn_in, columns of ffn_out."""
        idx = torch.tensor(sorted(neurons), dtype=torch.long)
        self.set_linear(layer, "ffn_in", slice_linear(self.linear(layer, "ffn_in"), idx, 0))
        self.set_linear(layer, "ffn_out", slice_linear(self.linear(layer, "ffn_out"), idx, 1))

    def head_size(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def layer_sizes(self, layer: nn.Module) -> tuple[int, int]:
        """``(heads, FFN neurons)`` of one layer as it is now."""
        raise NotImplementedError

    def keep_heads(self, layer: nn.Module, heads: list[int]) -> None:
        """Keep only attention heads ``heads`` (indices into the current heads) of ``layer``."""
        raise NotImplementedError

    def keep_ffn(self, layer: nn.Module, neurons: list[int]) -> None:
        """Keep only FFN neurons ``neurons`` (indices into the current width) of ``layer``."""
        raise NotImplementedError

    def ffn_activation(self, layer: nn.Module):
        """The FFN's activation function (strip folds ``act(b_1[i])`` of a removed neuron)."""
        raise NotImplementedError

    def ffn_hidden(self, layer: nn.Module):
        """A callable from the FFN's input to its activated hidden units ``[B, S, F]`` (the input
        of ``ffn_out``; dropout off)."""
        raise NotImplementedError

    # The residual blocks of a post-norm layer (fisher's mask tuning computes layers piecewise):
    # kind "attn" is (context, residual) -> norm(attn_out(context) + residual), kind "ffn" is
    # (FFN hidden, residual) -> norm(ffn_out(hidden) + residual). The heads' context is the input
    # of the ``attn_out`` Linear and the FFN's hidden units the input of ``ffn_out`` (unit masks and
    # gates are forward pre-hooks there); the attention block's residual is the layer's input.
    def block_pre_norm(self, layer: nn.Module, kind: str, x, residual):
        """``out_proj(x) + residual``: what enters the sublayer's norm (dropout off)."""
        return self.linear(layer, "attn_out" if kind == "attn" else "ffn_out")(x) + residual

    def block_norm(self, layer: nn.Module, kind: str, pre):
        raise NotImplementedError

    # -- hidden size (CoFi's hidden mask, ZipLM) -------------------------------------------------
    head_inputs: ClassVar[tuple[str, ...]] = ("classifier", "qa_outputs")
    """Paths (in the task model) of the head's Linears that read the hidden stream (or the
    pooler's output); a path that is absent or not a Linear is skipped."""

    def hidden_modules(self) -> list[tuple[nn.Module | None, str]]:
        """Every module that holds hidden units, with the side they are on (:func:`keep_units`):
        embeddings, each layer's role Linears (+ :meth:`layer_hidden`), the pooler (both sides),
        the head's input Linears and :meth:`head_hidden`."""
        out = self.embedding_hidden()
        for layer in self.layers():
            out += [(self.linear(layer, r), "in") for r in ("query", "key", "value", "ffn_in")]
            out += [(self.linear(layer, r), "out") for r in ("attn_out", "ffn_out")]
            out += self.layer_hidden(layer)
        named = dict(self.model.named_modules())
        out += [(m, "both") for n, m in named.items() if isinstance(m, nn.Linear) and self.is_pooler(n)]
        out += [(named[p], "in") for p in self.head_inputs if isinstance(named.get(p), nn.Linear)]
        return out + self.head_hidden()

    def embedding_hidden(self) -> list[tuple[nn.Module, str]]:
        """The embedding tables and norm directly inside the embeddings block."""
        return [(m, "out") for m in self.embeddings().children() if isinstance(m, (nn.Embedding, nn.LayerNorm))]

    def layer_hidden(self, layer: nn.Module) -> list[tuple[nn.Module | None, str]]:
        """A layer's hidden-sized modules besides the role Linears (its norms)."""
        raise NotImplementedError

    def head_hidden(self) -> list[tuple[nn.Module | None, str]]:
        """Hidden-sized modules after the layers besides the pooler and head inputs (final norms)."""
        return []

    def residual_outputs(self) -> list[nn.Module]:
        """The modules whose output (a tensor, or a tuple's first item) is the hidden stream where
        it is produced: the embeddings, then each post-norm block's norm (a pre-norm family: each
        block's output), then the pooler. A hidden-unit mask multiplies these outputs."""
        named = dict(self.model.named_modules())
        norms = [m for layer in self.layers() for m, _ in self.layer_hidden(layer) if isinstance(m, nn.LayerNorm)]
        return [self.embeddings()] + norms + [m for n, m in named.items() if isinstance(m, nn.Linear)
                                               and self.is_pooler(n)]

    def keep_hidden(self, indices) -> None:
        """Keep hidden units ``indices`` (into the current width) everywhere they appear
        (:meth:`hidden_modules`): a LayerNorm then normalizes over the kept units only. Heads and
        FFN widths do not change. Sets ``config.hidden_size`` (and the sizes that follow it,
        :data:`HIDDEN_CONFIG_KEYS`) and records ``config.compressor_hidden = {"dense": {key: the
        first model's value}, "kept": [indices into the first model's units]}`` (what
        :func:`passes.strip.load_stripped` rebuilds from, and what hidden-state distillation
        compares the teacher at). ModelError for indices out of range or repeated."""
        width = self.hidden_size()
        idx = sorted(int(i) for i in indices)
        if not idx or len(set(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= width:
            raise ModelError(f"hidden units {idx[:8]}{'...' if len(idx) > 8 else ''} are not allowed: "
                             f"distinct indices in [0, {width - 1}], at least one")
        index = torch.tensor(idx, dtype=torch.long)
        configs = {id(c): c for c in (getattr(self.model, "config", None), getattr(self.base, "config", None)) if c}
        config = next(iter(configs.values()))
        old = getattr(config, "compressor_hidden", None) or {
            "dense": {k: getattr(config, k) for k in HIDDEN_CONFIG_KEYS if getattr(config, k, None) == width},
            "kept": list(range(width))}
        record = {"dense": dict(old["dense"]), "kept": [int(old["kept"][i]) for i in idx]}
        parts = {id(m): (m, side) for m, side in self.hidden_modules() if m is not None}  # each module once
        with torch.no_grad():
            for module, side in parts.values():
                keep_units(module, index, side)
        for c in configs.values():
            for key in HIDDEN_CONFIG_KEYS:
                if getattr(c, key, None) == width:
                    setattr(c, key, len(idx))
            c.compressor_hidden = record

    # -- helpers ------------------------------------------------------------------------------
    @classmethod
    def name(cls) -> str:
        return cls.model_types[0] if cls.model_types else cls.__name__

    @staticmethod
    def _get(module: nn.Module, path: str):
        for part in path.split(".") if path else ():
            module = getattr(module, part, None)
            if module is None:
                return None
        return module
