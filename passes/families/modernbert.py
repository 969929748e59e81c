"""ModernBERT's layout (``model_type`` modernbert: answerdotai/ModernBERT-base/-large and their
fine-tunes).

``base_model.layers[i]``: ``attn_norm`` (``Identity`` in layer 0, a LayerNorm after), ``attn.Wqkv``
(one Linear producing Q, K and V: rows ``[q heads | k heads | v heads]``), ``attn.Wo``,
``mlp_norm``, ``mlp.Wi`` (one Linear producing the GLU's input and gate halves, ``2 * F`` rows) and
``mlp.Wo``; pre-norm blocks (``x + attn(attn_norm(x))``, then ``h + mlp(mlp_norm(h))``), a
``final_norm`` after the layers, rotary positions (no position table), no biases unless
``attention_bias`` / ``mlp_bias``; the task head is ``head`` (dense + act + norm on the CLS token or
the mean, ``classifier_pooling``) and ``classifier``.

The fused Linears are held split, one Linear per block of rows (:class:`SplitLinear`, made when
the adapter is bound to a model): ``attn.Wqkv.{query,key,value}`` and ``mlp.Wi.{input,gate}``. So
every role is its own Linear and the passes work unchanged: masks (magnitude, structured heads and
neurons, N:M), strip, fisher, CAP and RPP see Q, K, V and the FFN input as BERT's; slicing a head
slices its rows in each of the three blocks, slicing a neuron its input and gate rows together.
The forward is still one matmul with the concatenated weight (bitwise the fused Linear's), the
exported graph still has one MatMul per fused Linear (the concat of initializers is folded), and
``state_dict()`` gives the fused ``Wqkv.weight`` / ``Wi.weight`` keys back (a state-dict hook), so
``save_pretrained`` writes a checkpoint plain ``from_pretrained`` loads.

The gate is not one of the six roles: the FFN-input role is the input half. ``linears()`` lists the
gates too (unstructured masks and N:M cover them); structured masks zero a neuron's input row and
output column and leave its gate row until ``strip`` removes it (the masked function is already the
stripped one, but a structured "sparsity" counts 2 of a neuron's 3 rows), and the structured
magnitude score of a neuron leaves the gate row out. A neuron counts as removable when its input
row or its ``Wo`` column is zero; with ``mlp_bias`` (no released checkpoint has it) a zero input row
with a non-zero input bias is not a constant (``act(b) * gate(x)``) and strip's bias fold is wrong
there.

Works on transformers 4.57 and 5.x alike:

- 4.57's attention reshapes with ``self.num_heads`` and ``dim=self.all_head_size`` (slicing sets
  both; ``head_dim`` stays, rotary needs it) and keeps its rotary module and window in the
  attention (``local_attention``, per layer: ``layer_id % global_attn_every_n_layers``); 5.x
  reshapes with ``-1`` heads and takes the rotary cos/sin and the mask of its layer type
  (``config.layer_types``) from the model.
- 4.57's layer reads ``self.attn(...)[0]``, 5.x's unpacks two: the 0-head stand-in
  (:class:`NoHeads`) returns ``(out, None)`` to both.
- Attention: sdpa by default on CPU (4.57 cannot switch at run time; 5.x's export switches to
  eager), the two agree; the unpadded path is flash-attention-2 only (4.57, GPU).

A layer left with 0 heads computes ``h = x + Wo.bias`` (``x`` with no attention bias), one with 0
neurons ``h + Wo.bias`` (``h``): :class:`NoHeads`, :class:`NoFFN`.

Hidden-size pruning (``keep_hidden``) cuts the embeddings, every norm (the pre-norms, ``final_norm``,
the head's), the input columns of the Q/K/V, FFN input and gate parts, the rows of both ``Wo``, and
``head.dense`` on both sides (it is the pooler).

Layer-drop keeps each kept layer's attention type (global or sliding window): 5.x writes
``config.layer_types``; 4.57 derives the type from the index, so a kept pattern that no
``global_attn_every_n_layers`` gives is refused, and so is dropping layer 0 (a reloaded layer 0
has no attention norm). ``trim-positions`` refuses (rotary: no table). Vocabulary: byte-level BPE
(specials at the end of the vocabulary, no ids pinned). ONNX Runtime's optimizer has no
"modernbert": with "bert" (as Optimum maps it) the skip LayerNorms and GELUs fuse; the attention
(packed QKV, rotary) and the embeddings do not (:attr:`ort_fuses_attention`,
:attr:`ort_fuses_embeddings`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import ModelError
from passes.families.base import BiasOnly, Family, slice_linear

PARTS = {"attn.Wqkv": ("query", "key", "value"), "mlp.Wi": ("input", "gate")}
"""The fused Linears and the names of their blocks of rows, in row order."""


def _fuse_keys(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook of :class:`SplitLinear`: the parts' ``weight`` (``bias``) values become
    the fused Linear's key. Left split while a part is parametrized (masked) and with
    ``keep_vars=True`` (the Parameters themselves: what the TorchScript tracer reads)."""
    names = [name for name, _ in module.named_children()]
    for t in ("weight", "bias"):
        keys = [f"{prefix}{name}.{t}" for name in names]
        if all(k in state_dict and not isinstance(state_dict[k], nn.Parameter) for k in keys):
            state_dict[prefix + t] = torch.cat([state_dict.pop(k) for k in keys])


def _split_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook of :class:`SplitLinear`: a fused key is split into the parts'."""
    sizes = [part.out_features for part in module.children()]
    for t in ("weight", "bias"):
        value = state_dict.pop(prefix + t, None)
        if value is not None:
            for (name, _), chunk in zip(module.named_children(), value.split(sizes)):
                state_dict[f"{prefix}{name}.{t}"] = chunk


class SplitLinear(nn.Module):
    """A fused Linear held as one Linear per block of its output rows (``parts``, in row order).

    ``forward`` is ``F.linear(x, cat(weights), cat(biases))``: the fused Linear's computation. The
    parts' forwards are not called (hooks on them do not fire). ``state_dict`` keys are the fused
    ones (``weight``, ``bias``) and load back into the parts.
    """

    def __init__(self, parts: dict[str, nn.Linear]):
        super().__init__()
        for name, part in parts.items():
            self.add_module(name, part)
        self.register_state_dict_post_hook(_fuse_keys)
        self.register_load_state_dict_pre_hook(_split_keys)

    @classmethod
    def of(cls, linear: nn.Linear, names: tuple[str, ...]) -> "SplitLinear":
        """``linear`` split into ``len(names)`` equal blocks of rows."""
        n = linear.out_features // len(names)
        return cls({name: slice_linear(linear, torch.arange(i * n, (i + 1) * n), 0) for i, name in enumerate(names)})

    @property
    def in_features(self) -> int:
        return next(self.children()).in_features

    @property
    def out_features(self) -> int:
        return sum(part.out_features for part in self.children())

    def forward(self, x):
        parts = list(self.children())
        bias = torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None
        return F.linear(x, torch.cat([p.weight for p in parts]), bias)


def _constant(bias: torch.Tensor | None, x):
    """``bias`` broadcast to ``x`` (zeros without a bias)."""
    return bias.expand_as(x) if bias is not None else torch.zeros_like(x)


class NoHeads(nn.Module):
    """Stands in for the attention of a ModernBERT layer with 0 heads left: returns ``(Wo.bias
    broadcast to the input, or zeros, None)`` whatever the caller's arguments. Keeps ``head_dim``
    and the layer's window (4.57's ``local_attention``: layer-drop reads the layer type there) and
    the state-dict key ``attn.Wo.bias`` when there is a bias (:class:`BiasOnly`)."""

    def __init__(self, bias: torch.Tensor | None, head_dim: int, local_attention=(-1, -1)):
        super().__init__()
        self.head_dim = head_dim
        self.local_attention = local_attention
        self.Wo = BiasOnly(bias) if bias is not None else None

    def forward(self, hidden_states, *args, **kwargs):
        return _constant(self.Wo.bias if self.Wo is not None else None, hidden_states), None


class NoFFN(nn.Module):
    """Stands in for the ``mlp`` of a ModernBERT layer with 0 neurons left: ``Wo.bias`` broadcast to
    the input, or zeros (key ``mlp.Wo.bias`` when there is a bias)."""

    def __init__(self, bias: torch.Tensor | None):
        super().__init__()
        self.Wo = BiasOnly(bias) if bias is not None else None

    def forward(self, hidden_states):
        return _constant(self.Wo.bias if self.Wo is not None else None, hidden_states)


class ModernBertFamily(Family):
    """``base_model.layers[i]``: ``attn_norm``, ``attn.{Wqkv,Wo}``, ``mlp_norm``, ``mlp.{Wi,Wo}``
    (fused Linears held split, see the module doc); embeddings word + LayerNorm; ``final_norm``."""

    model_types: ClassVar[tuple[str, ...]] = ("modernbert",)
    layers_path: ClassVar[str] = "layers"
    embeddings_path: ClassVar[str] = "embeddings"
    role_paths: ClassVar[dict[str, str]] = {
        "query": "attn.Wqkv.query", "key": "attn.Wqkv.key", "value": "attn.Wqkv.value",
        "attn_out": "attn.Wo", "ffn_in": "mlp.Wi.input", "ffn_out": "mlp.Wo",
    }
    ort_model_type: ClassVar[str] = "bert"
    tokenizer_kind: ClassVar[str] = "bpe"
    ort_fuses_embeddings: ClassVar[bool] = False
    ort_fuses_attention: ClassVar[bool] = False  # packed QKV and rotary: ORT's "bert" fusions find none
    token_types: ClassVar[bool] = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        layers = self._get(self.base, self.layers_path)
        for layer in layers if isinstance(layers, nn.ModuleList) else ():
            for path, names in PARTS.items():
                parent, _, attr = path.rpartition(".")
                owner = self._get(layer, parent)
                if isinstance(getattr(owner, attr, None), nn.Linear):
                    setattr(owner, attr, SplitLinear.of(getattr(owner, attr), names))

    # -- model level --------------------------------------------------------------------------
    def encoder(self) -> nn.Module:
        """The layers and the final norm (ModernBERT has no encoder module)."""
        return nn.ModuleList([self.layers(), self.base.final_norm])

    def linears(self, include: tuple[str, ...] = ()) -> dict[str, nn.Linear]:
        """The role Linears and the FFN gates (``mlp.Wi.gate``), in model order, plus ``include``."""
        out = super().linears(include)
        gates = {id(g) for g in (self._get(layer, "mlp.Wi.gate") for layer in self.layers()) if g is not None}
        return {n: m for n, m in self.model.named_modules() if n in out or id(m) in gates}

    def is_pooler(self, name: str) -> bool:
        return name == "head.dense"

    def set_layers(self, layers: list[nn.Module]) -> None:
        """Keep ``layers`` (layer-drop) with their attention types in the config: 4.57 derives a
        layer's type from its index (``global_attn_every_n_layers``: ModelError when no value
        gives the kept pattern), 5.x reads ``layer_types``; a first layer with an attention norm
        is refused (a reloaded layer 0 has none)."""
        if layers and not isinstance(layers[0].attn_norm, nn.Identity):
            raise ModelError("ModernBERT's first layer has no attention norm and a reloaded model rebuilds layer 0 "
                             "without one: layer-drop must keep layer 0")
        is_global = [self._is_global(layer) for layer in layers]
        config = self.model.config
        if layers and not hasattr(layers[0], "attention_type"):  # 4.57
            every = [n for n in range(1, len(layers) + 1) if all(g == (i % n == 0) for i, g in enumerate(is_global))]
            if not every:
                kinds = "".join("G" if g else "L" for g in is_global)
                raise ModelError(f"the kept ModernBERT layers' attention types {kinds} (G global, L sliding window) "
                                 "are no global_attn_every_n_layers pattern, which is all transformers 4.57 "
                                 "reloads: keep other layers (or use transformers 5, which stores layer_types)")
            config.global_attn_every_n_layers = every[0]
        if getattr(config, "layer_types", None) is not None:  # 5.x (4.57 keeps a 5.x config's, unread)
            config.layer_types = ["full_attention" if g else "sliding_attention" for g in is_global]
        super().set_layers(layers)

    @staticmethod
    def _is_global(layer: nn.Module) -> bool:
        """Whether ``layer`` attends globally (5.x: ``attention_type``; 4.57: no window)."""
        kind = getattr(layer, "attention_type", None)
        if kind is not None:
            return kind == "full_attention"
        return tuple(getattr(layer.attn, "local_attention", (-1, -1))) == (-1, -1)

    # -- layer level --------------------------------------------------------------------------
    def check_layer(self, index: int, layer: nn.Module) -> None:
        ok = all(hasattr(layer, a) for a in ("attn_norm", "attn", "mlp_norm", "mlp")) and \
            hasattr(layer.attn, "head_dim") and hasattr(layer.mlp, "Wo")
        if not ok:
            raise ModelError(f"layer {index} of {type(self.model).__name__} is not a ModernBERT layer "
                             "(attn_norm, attn.Wqkv/Wo, mlp_norm, mlp.Wi/Wo): cannot slice it")

    def head_size(self, layer: nn.Module) -> int:
        return int(layer.attn.head_dim)

    def layer_sizes(self, layer: nn.Module) -> tuple[int, int]:
        query, ffn_in = self.linear(layer, "query"), self.linear(layer, "ffn_in")
        heads = query.out_features // self.head_size(layer) if query is not None else 0
        return heads, (ffn_in.out_features if ffn_in is not None else 0)

    def keep_heads(self, layer: nn.Module, heads: list[int]) -> None:
        att = layer.attn
        d = int(att.head_dim)
        if not heads:
            if not isinstance(att, NoHeads):
                layer.attn = NoHeads(att.Wo.bias, d, getattr(att, "local_attention", (-1, -1)))
            return
        self.slice_heads(layer, heads, d)
        att.num_heads = len(heads)  # 4.57 reshapes with these; 5.x with -1 heads
        att.all_head_size = len(heads) * d

    def keep_ffn(self, layer: nn.Module, neurons: list[int]) -> None:
        """Keep ``neurons`` in the input and gate halves of ``mlp.Wi`` and the columns of ``mlp.Wo``."""
        if isinstance(layer.mlp, NoFFN):
            return
        if not neurons:
            layer.mlp = NoFFN(layer.mlp.Wo.bias)
            return
        self.slice_ffn(layer, neurons)
        wi = layer.mlp.Wi
        wi.gate = slice_linear(wi.gate, torch.tensor(sorted(neurons), dtype=torch.long), 0)

    def ffn_activation(self, layer: nn.Module):
        return layer.mlp.act

    def ffn_hidden(self, layer: nn.Module):
        """``act(input) * gate`` of ``mlp_norm(x)`` (the pre-norm is part of the FFN's hidden units)."""
        mlp, norm = layer.mlp, layer.mlp_norm
        if isinstance(mlp, NoFFN):
            return lambda x: x.new_zeros(*x.shape[:-1], 0)

        def hidden(x):
            inp, gate = mlp.Wi(norm(x)).chunk(2, dim=-1)
            return mlp.act(inp) * gate
        return hidden

    def layer_hidden(self, layer: nn.Module) -> list:
        """The two pre-norms (layer 0's attention norm is an Identity) and the FFN gate's columns."""
        return [(layer.attn_norm, "out"), (layer.mlp_norm, "out"), (self._get(layer, "mlp.Wi.gate"), "in")]

    def head_hidden(self) -> list:
        """``final_norm`` and the head's norm (``head.dense`` is the pooler)."""
        return [(self.base.final_norm, "out"), (self._get(self.model, "head.norm"), "out")]

    def residual_outputs(self) -> list[nn.Module]:
        """Pre-norm: the embeddings, each block's output (``attn``, ``mlp``), ``final_norm``, the pooler."""
        blocks = [m for layer in self.layers() for m in (layer.attn, layer.mlp)]
        pooler = [m for n, m in self.model.named_modules() if isinstance(m, nn.Linear) and self.is_pooler(n)]
        return [self.embeddings()] + blocks + [self.base.final_norm] + pooler

    def block_norm(self, layer: nn.Module, kind: str, pre):
        """Nothing: ModernBERT's norms come before each block (in :meth:`ffn_hidden` for the FFN,
        inside the layer for the attention), so a block's output is ``out_proj(x) + residual``."""
        return pre
