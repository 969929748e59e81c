"""``export``: a PyTorch sequence-classification model to a verified Hugging Face ONNX folder.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) with dynamic batch and
sequence axes: inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model
takes it), output ``logits``. The folder holds ``model.onnx``, ``config.json`` and the tokenizer,
so ``optimum.onnxruntime.ORTModelForSequenceClassification.from_pretrained(folder)`` loads it. An
embedding model (:mod:`compressor.embedder`) has two outputs, ``last_hidden_state`` and the pooled
(normalized) ``sentence_embedding`` (the one verified), and its folder is a sentence-transformers
folder too (``ORTModelForFeatureExtraction``, ``SentenceTransformer(folder, backend="onnx")``).
A token classifier (NER tagger) gives ``logits`` ``[batch_size, sequence_length, num_labels]``
(both axes dynamic), verified the same way; its folder loads in Optimum's
``ORTModelForTokenClassification`` and runs in ``transformers.pipeline("token-classification")``.
A multi-label classifier gives ``logits`` ``[batch_size, num_labels]`` (one sigmoid output per
label); its config.json keeps ``problem_type="multi_label_classification"``, so
``pipeline("text-classification", top_k=None, function_to_apply="sigmoid")`` runs on the folder.
A question-answering model gives ``start_logits`` and ``end_logits`` ``[batch_size,
sequence_length]``, both verified; its folder loads in Optimum's ``ORTModelForQuestionAnswering``
and runs in ``transformers.pipeline("question-answering")``.
Nothing reads ``config.num_attention_heads``: models stripped unevenly per layer export as traced.

Verification runs ONNX Runtime (CPU EP) and PyTorch on held-out batches of three shapes (one
example, eight examples at their natural padded length, two examples padded to max_length;
random token ids when the context has no data) and fails when max |Δlogit| > ``tolerance``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compressor.artifact import OnnxModel, atomic_dir
from compressor.errors import check_range
from compressor.onnx_utils import (MODEL_FILE, VerificationError, encode, make_session,
                                   output_folder, random_feeds, save_model,
                                   session_input_names)
from compressor.pass_base import Pass, PassResult, option

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 14, 20  # 20 is the TorchScript exporter's newest opset in torch 2.x
AXES = {0: "batch_size", 1: "sequence_length"}


@dataclass(frozen=True)
class Export(Pass):
    """Export to ONNX (TorchScript path, dynamic axes) and verify against PyTorch."""

    name: ClassVar[str] = "export"
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "onnx"
    run_order: ClassVar[int] = 60

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """Always: the compressed model goes to ONNX."""
        return "export"

    opset: int = option(17, "ONNX opset of the exported graph")
    verify: bool = option(True, "compare ONNX Runtime and PyTorch logits after export")
    tolerance: float = option(1e-4, "largest allowed max |logit difference| in verification")

    def __post_init__(self):
        check_range("opset", self.opset, MIN_OPSET, MAX_OPSET)
        check_range("tolerance", self.tolerance, 0.0, 1.0, lo_open=True)

    def run(self, artifact, ctx) -> PassResult:
        import onnx

        model, tokenizer = artifact.model, artifact.tokenizer
        folder = output_folder(ctx)
        names = input_names(model)
        with eager_attention(model) as attn, atomic_dir(folder) as tmp:
            export_model(model, names, tmp, self.opset)
            model.config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _embedding_files(model, tmp, ctx)
            checks = _verify(model, tokenizer, tmp / MODEL_FILE, ctx, self.tolerance) if self.verify else []
        proto = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
        out = OnnxModel(folder, info={**artifact.info, "opset": self.opset, "inputs": names})
        metrics = {"size_bytes": out.size_bytes(), "opset": _opset(proto), "nodes": len(proto.graph.node),
                   "inputs": names, "attn_implementation": attn}
        if checks:
            metrics.update(max_abs_diff=max(c["max_abs_diff"] for c in checks),
                           max_abs_diff_by_shape={c["shape"]: c["max_abs_diff"] for c in checks},
                           verify_providers=checks[0]["providers"])
        log.info("exported %s (%d bytes, %d nodes)", out.path, metrics["size_bytes"], metrics["nodes"])
        return PassResult(out, True, metrics)


def _embedding_files(model, folder: Path, ctx) -> None:
    """An embedding model's folder also gets sentence-transformers' module files (pooling,
    normalization), so ``SentenceTransformer(folder, backend="onnx")`` loads it."""
    from compressor.embedder import settings_of, write_st_files
    settings = settings_of(model)
    if settings is not None:
        write_st_files(folder, settings, int(model.config.hidden_size), int(getattr(ctx, "max_length", 128) or 128))


def input_names(model) -> list[str]:
    """The graph inputs: input_ids, attention_mask and token_type_ids if ``forward`` takes it
    and the model's family has token types (RoBERTa-likes have one, and no tokenizer input)."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(_family(model), "token_types", True):
        names.append("token_type_ids")
    return names


def _family(model):
    """The model's family adapter, or None for a model of no known family."""
    from compressor.errors import ModelError
    from compressor.registry import family_of
    try:
        return family_of(model)
    except ModelError:
        return None


def max_tokens(model) -> int | None:
    """The longest input, in tokens, ``model``'s position table takes (its family's
    ``max_tokens``: RoBERTa-likes 2 fewer than ``max_position_embeddings``)."""
    fam = _family(model)
    if fam is not None:
        return fam.max_tokens()
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


@contextlib.contextmanager
def eager_attention(model):
    """Switch the model to eager attention and eval mode for export; restore attention after.

    transformers 5.x switches at run time; 4.57's BERT picks attention modules when built, so
    there this only records what the model uses (its sdpa path exports fine too).
    """
    before = getattr(model.config, "_attn_implementation", None)
    if before not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        with contextlib.suppress(Exception):
            model.set_attn_implementation("eager")
    model.eval()
    try:
        yield getattr(model.config, "_attn_implementation", None)
    finally:
        now = getattr(model.config, "_attn_implementation", None)
        if now != before and before is not None:
            with contextlib.suppress(Exception):
                model.set_attn_implementation(before)
        model.eval()


def output_names(model) -> list[str]:
    """The graph outputs: ``logits``; an embedding model (:mod:`compressor.embedder`) gives the token
    embeddings (``last_hidden_state``, what Optimum's feature-extraction model and
    sentence-transformers' ONNX backend read) and the pooled ``sentence_embedding``."""
    from compressor.embedder import OUTPUT, TOKENS_OUTPUT, is_embedder
    if question_answering(model):
        return list(SPAN_OUTPUTS)
    return [TOKENS_OUTPUT, OUTPUT] if is_embedder(model) else ["logits"]


SPAN_OUTPUTS = ("start_logits", "end_logits")
"""A question-answering model's graph outputs (what Optimum's ``ORTModelForQuestionAnswering`` reads)."""


def question_answering(model) -> bool:
    """Whether ``model`` answers questions (start and end logits ``[B, S]``): a ``...ForQuestionAnswering``."""
    return type(model).__name__.endswith("ForQuestionAnswering")


def token_classifier(model) -> bool:
    """Whether ``model`` tags tokens (logits ``[B, S, C]``): a ``...ForTokenClassification``."""
    return type(model).__name__.endswith("ForTokenClassification")


def _logits_module(model, names: list[str]):
    """Wrap a HF model so the traced graph has exactly the outputs of :func:`output_names`."""
    import torch
    spans, tokens = question_answering(model), len(output_names(model)) > 1

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(names, args)), return_dict=True)
            if spans:
                return out.start_logits, out.end_logits
            return (out.last_hidden_state, out.logits) if tokens else out.logits

    return LogitsOnly()


def export_model(model, names: list[str], folder: Path, opset: int) -> None:
    """Trace ``model`` into ``folder/model.onnx`` (external data in one file when > 2 GB)."""
    import torch

    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 1000) or 1000)  # a pruned vocabulary may be small
    ids = torch.randint(min(100, vocab - 1), min(1000, vocab), (2, 16), device=device)  # not reused by checks
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # padding in the dummy, so no all-ones shortcut is traced
    dummy = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    raw = folder / "raw"
    raw.mkdir()
    outputs = output_names(model)
    # a tagger: a row per token; a QA model: a start and an end logit per token
    logits_axes = AXES if token_classifier(model) or question_answering(model) else {0: "batch_size"}
    dynamic = {n: AXES for n in names} | {outputs[-1]: logits_axes} | (
        {outputs[0]: AXES} if len(outputs) > 1 else {})
    family = _family(model)
    with warnings.catch_warnings(), (family.exporting() if family else contextlib.nullcontext()):
        warnings.simplefilter("ignore")  # TracerWarnings and dynamo=False deprecation notices
        torch.onnx.export(_logits_module(model, names), tuple(dummy[n] for n in names), str(raw / MODEL_FILE),
                          dynamo=False, opset_version=opset, input_names=names,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    model.eval()  # the TorchScript exporter can leave the module in train mode
    _finalize(raw, folder / MODEL_FILE)
    shutil.rmtree(raw)
    _check_dynamic(folder / MODEL_FILE, names)


def _finalize(raw: Path, target: Path) -> None:
    """Move the exported file to ``target``; an export that spilled tensors into separate files
    (models > 2 GB) is re-saved with all tensors in one ``model.onnx.data``."""
    import onnx

    files = [p.name for p in raw.iterdir()]
    if files == [MODEL_FILE]:
        (raw / MODEL_FILE).replace(target)
        return
    log.info("export wrote %d files (external data): consolidating into one data file", len(files))
    save_model(onnx.load(str(raw / MODEL_FILE)), target, external=True)


def _check_dynamic(path: Path, names: list[str]) -> None:
    """Fail unless every input's batch and sequence axes are symbolic in the exported graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for inp in graph.input:
        if inp.name in names:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != 2 or any(not d.dim_param for d in dims):
                shape = [d.dim_param or d.dim_value for d in dims]
                raise RuntimeError(f"exported input {inp.name} has shape {shape}: expected dynamic "
                                   "[batch_size, sequence_length]")


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def verification_batches(tokenizer, ctx, names: list[str], max_length: int,
                         vocab_size: int = 1000) -> list[dict]:
    """Three held-out batches: 1 and 8 eval examples at their natural padded lengths, and two
    padded to ``max_length``; without ``ctx.data``, random token ids of shapes 1x7, 8x19, 2xL."""
    examples = list(getattr(getattr(ctx, "data", None), "eval", None) or [])
    if examples:
        pick = lambda start, n: [examples[(start + i) % len(examples)] for i in range(n)]  # noqa: E731
        return [encode(tokenizer, pick(0, 1), max_length, input_names=names),
                encode(tokenizer, pick(1, 8), max_length, input_names=names),
                encode(tokenizer, pick(9, 2), max_length, pad_to=max_length, input_names=names)]
    seed = getattr(ctx, "seed", 0)
    return [random_feeds(names, b, s, vocab_size, seed + i)
            for i, (b, s) in enumerate(((1, 7), (8, 19), (2, max_length)))]


def _verify(model, tokenizer, path: Path, ctx, tolerance: float) -> list[dict]:
    """Compare ORT (CPU EP) and PyTorch logits; raise VerificationError above ``tolerance``."""
    import numpy as np
    import torch

    session = make_session(path, providers=("CPUExecutionProvider",))
    names = session_input_names(session)
    limit = max_tokens(model) or ctx.max_length
    max_length = max(8, min(ctx.max_length, limit))
    vocab = min(v for v in (getattr(model.config, "vocab_size", None),
                            getattr(tokenizer, "vocab_size", None), 10 ** 9) if v)
    device = next(model.parameters()).device
    checks = []
    for feeds in verification_batches(tokenizer, ctx, names, max_length, vocab):
        spans = question_answering(model)  # both outputs, start and end, stacked on a last axis
        got = (np.stack(session.run(list(SPAN_OUTPUTS), feeds), axis=-1) if spans
               else session.run([output_names(model)[-1]], feeds)[0])
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
        ref = torch.stack([out.start_logits, out.end_logits], dim=-1) if spans else out.logits
        ref = ref.float().cpu().numpy()
        shape = "x".join(map(str, feeds["input_ids"].shape))
        if got.shape != ref.shape:
            raise VerificationError(f"ONNX logits have shape {got.shape}, PyTorch {ref.shape} "
                                    f"at input {shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
        checks.append({"shape": shape, "max_abs_diff": diff, "providers": session.get_providers()})
        if not diff <= tolerance:  # also catches NaN
            raise VerificationError(f"ONNX and PyTorch logits differ by {diff:.3g} > tolerance "
                                    f"{tolerance:g} at input shape {shape} (checked so far: "
                                    + ", ".join(f"{c['shape']}: {c['max_abs_diff']:.3g}" for c in checks)
                                    + ")")
    log.info("verified export: %s", {c["shape"]: c["max_abs_diff"] for c in checks})
    return checks
