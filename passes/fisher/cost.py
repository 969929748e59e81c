"""What a structure costs: the interface a structure search prices heads and neurons with, and
Kwon et al.'s FLOP model.

A cost model (:class:`CostModel`) is ``fixed + sum over layers of attention[h_l] + ffn(n_l)``;
the latency table (:class:`LatencyTable`, measured by :mod:`passes.fisher.latency_table`) and
the FLOP model (:func:`flop_cost_model`) both answer :meth:`CostModel.predict` and can be swapped
in a search (:mod:`passes.fisher.search`).

The FLOP model prices a head at ``4 s d d_h + 2 s^2 d_h`` and a neuron at ``2 s d`` MACs (Kwon et
al. 2022, arXiv:2204.09656, METHODS-structured.md section 1.4) with no fixed cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from compressor.errors import ConfigError, check_range


@dataclass(frozen=True)
class ModelShape:
    """What fixes an encoder's latency: sizes, depth, vocabulary, type (every layer alike)."""

    hidden: int
    heads: int
    ffn: int
    layers: int
    vocab: int
    model_type: str = "bert"

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        raw = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        aliases = {"hidden_size": "dim", "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
                   "num_hidden_layers": "n_layers"}  # DistilBERT's names (config.json has only these)

        def get(key, default=None):
            value = raw(key)
            return value if value is not None else raw(aliases.get(key, key), default)
        shape = cls(int(get("hidden_size")), int(get("num_attention_heads")), int(get("intermediate_size")),
                    int(get("num_hidden_layers")), int(get("vocab_size")), str(get("model_type", "bert")))
        if shape.hidden % shape.heads:
            raise ConfigError(f"hidden_size={shape.hidden} is not a multiple of num_attention_heads={shape.heads}")
        return shape

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


@dataclass
class CostModel:
    """Cost of an encoder's structure: ``fixed + sum over layers of attention[h_l] +
    ffn(n_l)``; ``attention`` is indexed by the head count 0..H, ``ffn`` is given at
    ``ffn_widths`` (0 and the full width included) and interpolated linearly between them."""

    shape: ModelShape
    unit: str
    fixed: float
    attention: list[float]
    ffn_widths: list[int]
    ffn: list[float]
    info: dict = field(default_factory=dict)

    def attention_cost(self, heads: int, layer: int | None = None) -> float:
        """Cost of one attention sublayer with ``heads`` heads (the same in every layer)."""
        return float(self.attention[int(heads)])

    def ffn_cost(self, width, layer: int | None = None):
        """Cost of one FFN sublayer of ``width`` neurons (scalar or array; linear between grid points)."""
        import numpy as np
        out = np.interp(width, self.ffn_widths, self.ffn)
        return float(out) if np.ndim(out) == 0 else out

    def per_layer(self) -> list[dict]:
        """The table of every layer (one shared table: the layers have the same shapes)."""
        row = {"attention": list(self.attention), "ffn_widths": list(self.ffn_widths), "ffn": list(self.ffn)}
        return [dict(row) for _ in range(self.shape.layers)]

    def predict(self, structure) -> float:
        """Predicted cost of ``structure`` = ``[{"heads": h, "ffn": f}, ...]`` (one per layer)."""
        if len(structure) != self.shape.layers:
            raise ConfigError(f"structure has {len(structure)} layers: the model has {self.shape.layers}")
        return self.fixed + sum(self.attention_cost(s["heads"], i) + self.ffn_cost(s["ffn"], i)
                                for i, s in enumerate(structure))

    def dense_structure(self) -> list[dict]:
        return [{"heads": self.shape.heads, "ffn": self.shape.ffn} for _ in range(self.shape.layers)]

    @property
    def dense(self) -> float:
        """Predicted cost of the unpruned model."""
        return self.predict(self.dense_structure())

    def speedup(self, structure) -> float:
        """Predicted dense cost over the cost of ``structure``."""
        cost = self.predict(structure)
        return self.dense / cost if cost > 0 else float("inf")  # e.g. no FLOPs left at all

    def to_dict(self) -> dict:
        return {"shape": asdict(self.shape), "unit": self.unit, "fixed": self.fixed,
                "attention": self.attention, "ffn_widths": self.ffn_widths, "ffn": self.ffn, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        return cls(ModelShape(**d["shape"]), d["unit"], float(d["fixed"]), [float(x) for x in d["attention"]],
                   [int(x) for x in d["ffn_widths"]], [float(x) for x in d["ffn"]], dict(d.get("info", {})))


class LatencyTable(CostModel):
    """A :class:`CostModel` in milliseconds measured on a target (:mod:`passes.fisher.latency_table`)."""

    @property
    def dense(self) -> float:
        """The latency a speedup is over: the dense model's, predicted (= measured, by
        construction), or the full-width dense model's measured one when the table was timed at
        fewer hidden units (``info["reference_ms"]``)."""
        reference = self.info.get("reference_ms")
        return float(reference) if reference else self.predict(self.dense_structure())

    @property
    def dense_ms(self) -> float:
        """Predicted (= measured, by construction) latency of the dense model."""
        return self.dense


def flop_cost_model(config, seq: float) -> CostModel:
    """Kwon et al.'s MAC count (section 1.4) at ``seq`` tokens: per head ``4 s d d_h + 2 s^2 d_h``,
    per neuron ``2 s d``; embeddings, biases, LayerNorm, softmax, pooler, classifier left out."""
    shape = ModelShape.from_config(config)
    check_range("seq", seq, 1, 10**6)
    d, dh, s = shape.hidden, shape.head_size, float(seq)
    head, neuron = 4 * s * d * dh + 2 * s * s * dh, 2 * s * d
    return CostModel(shape, "MACs", 0.0, [h * head for h in range(shape.heads + 1)], [0, shape.ffn],
                     [0.0, shape.ffn * neuron], {"seq": s, "head_macs": head, "neuron_macs": neuron})


def predictions(cost: dict, structure: list[dict], checks: list) -> dict:
    """What the cost models ``cost`` (``flops``, ``model``, and ``latency`` when a table was
    measured) say of ``structure`` (and what the checks measured)."""
    out = {"kept_mac_fraction": round(cost["flops"].predict(structure) / cost["flops"].dense, 6),
           "predicted_speedup": round(cost["model"].speedup(structure), 4),
           "predicted_flops_speedup": round(cost["flops"].speedup(structure), 4)}
    if "latency" in cost:
        out.update(structure_checks=checks, measured_check_speedup=next(
                       (c["measured_speedup"] for c in checks if c["structure"] == structure), None),
                   predicted_ms=round(cost["latency"].predict(structure), 4),
                   dense_predicted_ms=round(cost["latency"].dense_ms, 4),
                   latency_table=cost["latency"].info.get("cache_file"))
    return out
