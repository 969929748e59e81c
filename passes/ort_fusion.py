"""``ort-fuse``: ONNX Runtime's transformer fusions on a BERT export, made to survive pruning
and verified (onnx -> onnx).

``onnxruntime.transformers.optimizer.optimize_model(model_type=<the family's>, num_heads=0,
hidden_size=0, opt_level=0)`` replaces each layer's attention subgraph by one ``Attention``
(com.microsoft) node, LayerNorm after a residual Add by ``SkipLayerNormalization``, the erf
GELU after its bias by ``BiasGelu`` and the embeddings by ``EmbedLayerNormalization``. It was
chosen over onnxscript's ``optimize_for_ort``, which on these TorchScript exports fused no
attention on transformers 4.57 and only ``MultiHeadAttention`` (no EmbedLayerNormalization)
on 5.x. ``opt_level=0`` keeps the file portable: ORT applies its own level-2 fusions when a
session loads it, on whichever execution provider.

Pruning-proof: with ``num_heads=0`` ORT reads each layer's head count from its Q/K/V reshape
``[batch, seq, heads, head_size]``, so unevenly stripped layers each get their own count (a
single global ``num_heads`` would be wrong). transformers 5.x writes that reshape with ``-1``
heads, which ORT cannot read ("Failed to detect num_heads": no Attention at all); this pass
first rewrites the ``-1`` to the head count implied by the projection weight's width
(:func:`passes._onnx_graph.explicit_head_counts`), so no change to the export is needed.

Fusion fails silently, so every run counts what fused per layer and, with ``strict``, fails
unless every layer that kept heads has one ``Attention`` with that many heads, every GELU is
fused and the embeddings are fused (for a family whose embeddings ORT cannot fuse, RoBERTa's
with positions after ``padding_idx``, ``Family.ort_fuses_embeddings`` is False: they are reported
in ``not_fused`` instead of failing). Outputs are compared with the unfused model on two
shapes (one batch padded on the right and on the left) and must agree within ``tolerance``.
``mask=raw`` feeds the 2-D attention mask to ``Attention`` (exact for any padding);
``mask=index`` is ORT's BERT default, a 1-D length per row that is only right for right padding.

Speed (measured with onnxruntime 1.32, CPU EP, see benchmarks/RESULTS.md): on the CPU the fused
graph is no faster than the plain export, which ORT optimizes itself at session load, and on
heavily stripped models it is slower: the CPU ``SkipLayerNormalization`` kernel took ~4x the
time of the ``Add`` + ``LayerNormalization`` it replaces (8x128x384: 1.95 vs 0.49 ms). Use this
pass for the CUDA EP, or before INT8 when ``QAttention`` is wanted; on CPU compare with the
profiler first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.errors import check_choice, check_range
from compressor.onnx_utils import (MODEL_FILE, VerificationError, graph_io, load_checked,
                                   output_folder, save_model)
from compressor.pass_base import Pass, PassResult, option
from compressor.registry import family
from passes import _onnx_graph as og

log = logging.getLogger(__name__)

MASKS = ("raw", "index")


@dataclass(frozen=True)
class OrtFuse(Pass):
    """Fuse a BERT ONNX graph with ONNX Runtime's transformer optimizer; see the module doc."""

    name: ClassVar[str] = "ort-fuse"
    consumes: ClassVar[str] = "onnx"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 75  # after embed-int8 (a fused EmbedLayerNormalization holds its table), before INT8

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """``--quantize fused``: not strict, so a family or an ``--embed-int8`` graph whose
        embeddings (or attention) ORT cannot fuse keeps the rest fused (what did not is reported)."""
        return "ort-fuse{strict=false}" if cfg.quantize == "fused" else None

    mask: str = option("raw", "attention mask of fused Attention: raw 2-D mask (any padding) or "
                       "1-D index (ORT's BERT default, right padding only)", choices=MASKS)
    strict: bool = option(True, "fail unless every layer with heads has its Attention, every GELU "
                          "and the embeddings are fused")
    tolerance: float = option(1e-4, "largest allowed max |output difference| fused vs unfused")

    def __post_init__(self):
        check_choice("ort-fuse.mask", self.mask, MASKS)
        check_range("ort-fuse.tolerance", self.tolerance, 0.0, 1.0, lo_open=True)

    def run(self, artifact, ctx) -> PassResult:
        proto = load_checked(artifact.path)
        graph = proto.graph
        nodes_before = len(graph.node)
        if any(n.op_type in ("Attention", "MultiHeadAttention", "EmbedLayerNormalization") for n in graph.node):
            report = fusion_report(graph, {}, {})
            log.info("ort-fuse: %s is already fused: %s", artifact.path, report["fused_ops"])
            return PassResult(artifact, False, {**report, "already_fused": True})
        densified = og.densify_sparse(graph)
        rewrites = og.explicit_head_counts(graph)
        expected_heads = og.heads_per_layer(graph)
        gelu_sites = {k: c["Erf"] + c["Gelu"] for k, c in og.ops_per_layer(graph, ("Erf", "Gelu")).items()}
        fam = folder_family(artifact.folder)
        embeddings = bool(fam.ort_fuses_embeddings) if fam else True
        attention = bool(fam.ort_fuses_attention) if fam else True
        fused = optimize(proto, fam, self.mask)
        report = fusion_report(fused.model.graph, expected_heads, gelu_sites, embeddings, attention)
        metrics = {**report, "head_count_rewrites": rewrites, "sparse_tensors_densified": densified,
                   "nodes_before": nodes_before, "nodes_after": len(fused.model.graph.node), "mask": self.mask}
        if report["problems"]:
            msg = f"ORT fusion incomplete: {'; '.join(report['problems'])}"
            if self.strict:
                raise VerificationError(msg + " (fused ops " + str(report["fused_ops"]) +
                                        "; run with strict=false to keep a partly fused model)")
            log.warning("%s", msg)
        folder = output_folder(ctx)
        with atomic_dir(folder) as tmp:
            og.copy_side_files(artifact.folder, tmp, artifact.filename)
            path = save_model(fused.model, tmp / MODEL_FILE)
            load_checked(path)
            inputs, _ = graph_io(proto)
            feeds = og.check_feeds(inputs, og.vocab_size(artifact.folder), seed=ctx.seed,
                                   left_pad=self.mask == "raw")
            checks = og.compare_outputs(artifact.path, path, feeds)
            worst = max(c["max_abs_diff"] for c in checks)
            if not worst <= self.tolerance:  # NaN fails too
                shapes = ", ".join(f"{c['shape']}: {c['max_abs_diff']:.3g}" for c in checks)
                raise VerificationError(f"fused outputs differ from the unfused by {worst:.3g} > "
                                        f"tolerance {self.tolerance:g} ({shapes})")
        out = OnnxModel(folder, info={**artifact.info, "fused": report["fused_ops"]})
        metrics.update(max_abs_diff=worst, max_abs_diff_by_shape={c["shape"]: c["max_abs_diff"] for c in checks},
                       size_bytes=out.size_bytes())
        log.info("ort-fuse: %s; Attention heads per layer %s (expected %s); max |diff| %.3g",
                 report["fused_ops"], report["attention_per_layer"], report["expected_heads"], worst)
        return PassResult(out, True, metrics)


def optimize(proto, fam, mask: str = "raw"):
    """ORT's transformer optimizer on ``proto`` (dense initializers, explicit head counts) for
    family ``fam`` (None: BERT), portable (``opt_level=0``), topologically sorted: the fused
    ``OnnxModel`` wrapper of onnxruntime.transformers."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    model_type = fam.ort_model_type if fam else "bert"
    options = FusionOptions(model_type)
    options.use_raw_attention_mask(mask == "raw")
    with og.quiet_loggers():
        fused = optimize_model(proto, model_type=model_type, num_heads=0, hidden_size=0,
                               optimization_options=options, opt_level=0)
    fused.topological_sort()
    og.add_domain_imports(fused.model)
    return fused


def fuse_file(path, fam=None) -> None:
    """Fuse the export at ``path`` of family ``fam`` (None: BERT) in place, without the pass's
    checks: for the latency table's random-weight timing models (``precision=int8f``)."""
    proto = load_checked(path)
    og.densify_sparse(proto.graph)
    og.explicit_head_counts(proto.graph)
    fused = optimize(proto, fam)
    save_model(fused.model, path)


def folder_family(folder):
    """The family adapter class named in ``folder``'s config.json, or None when it has no config
    (then ORT's BERT fusions are used and the embeddings are expected fused)."""
    model_type = og.config_value(folder, "model_type")
    return family(model_type) if model_type else None


def fusion_report(graph, expected_heads: dict[int, int], gelu_sites: dict[int, int],
                  embeddings: bool = True, attention: bool = True) -> dict:
    """Fused op counts overall and per layer, and the ``problems`` found: a layer that kept
    heads without exactly one ``Attention`` of that head count, a GELU left unfused, or
    embeddings not fused. Layer lists are in layer order (``layers``). ``embeddings=False``
    (a family whose embeddings ORT does not fuse, e.g. RoBERTa) does not require the
    ``EmbedLayerNormalization`` and records ``not_fused: ["embeddings"]`` when it is missing;
    ``attention=False`` (DeBERTa's disentangled attention) likewise for ``Attention``."""
    per_layer = og.ops_per_layer(graph, og.FUSED_OPS)
    layers = sorted(set(og.layer_indices(graph)) | set(expected_heads))
    heads = {i: [] for i in layers}
    for node in graph.node:
        if node.op_type == "Attention" and og.layer_of(node) is not None:
            heads.setdefault(og.layer_of(node), []).append(int(og.attribute(node, "num_heads", 0)))
    total = {op: sum(c[op] for c in per_layer.values()) for op in og.FUSED_OPS}
    problems = []
    for i in layers:
        want, got = expected_heads.get(i, 0), heads.get(i, [])
        if want and attention and got != [want]:
            problems.append(f"layer {i} kept {want} heads but has Attention {got or 'none'}")
        n_gelu = sum(per_layer.get(i, {}).get(op, 0) for op in og.GELU_OPS)
        if n_gelu < gelu_sites.get(i, 0):
            problems.append(f"layer {i} has {gelu_sites[i]} GELU but {n_gelu} fused")
    if expected_heads and embeddings and total["EmbedLayerNormalization"] != 1:
        problems.append(f"{total['EmbedLayerNormalization']} EmbedLayerNormalization (expected 1)")
    not_fused = [name for name, fuses, op in (("attention", attention, "Attention"),
                                              ("embeddings", embeddings, "EmbedLayerNormalization"))
                 if not fuses and not total[op]]
    extra = {"not_fused": not_fused} if not_fused else {}
    return {
        "fused_ops": {op: n for op, n in total.items() if n},
        "layers": layers,
        "expected_heads": [expected_heads.get(i, 0) for i in layers],
        "attention_per_layer": [sum(heads.get(i, [])) for i in layers],
        "skip_layernorm_per_layer": [per_layer.get(i, {}).get("SkipLayerNormalization", 0) for i in layers],
        "gelu_per_layer": [sum(per_layer.get(i, {}).get(op, 0) for op in og.GELU_OPS) for i in layers],
        "problems": problems,
        **extra,
    }
