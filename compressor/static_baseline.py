"""A static-embedding model (model2vec) as a baseline row of an embeddings report
(``--static-baseline DIR``), read and exported here without model2vec itself (its ``distill``
extra pins transformers < 5.4, its core huggingface-hub >= 1.0: neither installs beside this
project's transformers).

The folder is what model2vec 0.10.0's ``StaticModel.save_pretrained`` writes
(``model2vec/persistence/persistence.py``): ``config.json`` (``normalize``, default False;
``max_length``, default 512), ``model.safetensors`` with an ``embeddings`` tensor ``[rows, dim]``
(after vocabulary quantization also ``mapping``, token id -> row, and ``weights``, one per token
id) and ``tokenizer.json``. ``StaticModel.encode`` (``model2vec/model.py``), which
:func:`encode_reference` repeats in numpy: cut each text to ``max_length`` x the median token
length (characters), tokenize it without special tokens truncated at ``max_length`` tokens, drop
the unknown token, take each token's row (``embeddings[mapping[id]] * weights[id]``), average
them (a text with no tokens: zeros) and, with ``normalize``, divide by ``|x| + 1e-32``.
Embeddings stored in float16 or int8 are computed in float32 here.

:func:`export_static` writes it as a small ONNX graph, ``input_ids, attention_mask -> Gather ->
masked mean (-> L2 normalize) -> sentence_embedding``, whose mask also leaves out the unknown
token and the tokens the tokenizer's post-processor adds (its [CLS]/[SEP], where it has one): so
the run's own tokenization (truncated at ``--max-length``, as for every row) gives model2vec's
embedding. The export is checked against :func:`encode_reference` on real texts (:data:`TOLERANCE`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import ArtifactError, ModelError

log = logging.getLogger(__name__)

FILES = ("config.json", "model.safetensors", "tokenizer.json")
DEFAULT_MAX_LENGTH = 512  # model2vec's, when config.json has none
TOLERANCE = 1e-5
LABEL = "static (model2vec)"
FOLDER = "static-model2vec"  # the export, under the run's output folder
OPSET = 17


@dataclass
class StaticModel:
    """A model2vec folder as read: float32 ``embeddings``, per-token ``weights`` and ``mapping``
    (None unless vocabulary-quantized), the ``tokenizer`` (a ``tokenizers.Tokenizer``) and the
    settings of its config.json."""

    folder: Path
    embeddings: object
    tokenizer: object
    normalize: bool
    max_length: int | None
    weights: object = None
    mapping: object = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def unk_id(self) -> int | None:
        """The unknown token's id, as model2vec finds it (WordPiece/BPE/WordLevel ``unk_token``,
        Unigram ``unk_id``); None when there is none."""
        model = json.loads(self.tokenizer.to_str())["model"]
        if "unk_token" in model:
            return None if model["unk_token"] is None else self.tokenizer.token_to_id(model["unk_token"])
        return model.get("unk_id")

    def added_ids(self) -> set[int]:
        """The ids the tokenizer's post-processor adds to every text ([CLS], [SEP])."""
        return set(self.tokenizer.encode("x").ids) - set(self.tokenizer.encode("x", add_special_tokens=False).ids)


def load_static(folder) -> StaticModel:
    """Read a model2vec folder (see the module docstring); ModelError, one line, when it is not one."""
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    folder = Path(folder).expanduser()
    where = f"--static-baseline {str(folder)!r}"
    if not folder.is_dir():
        raise ModelError(f"{where}: folder not found (a model2vec folder: {', '.join(FILES)})")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"{where} is not a model2vec folder: {', '.join(missing)} missing (it needs {', '.join(FILES)})")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "model.safetensors"))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # JSON, safetensors and tokenizers errors: the folder cannot be read
        raise ModelError(f"{where} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: config.json is not a mapping of settings")
    emb = tensors.get("embeddings")
    if emb is None or emb.ndim != 2:
        raise ModelError(f"{where}: model.safetensors has no 2-D 'embeddings' tensor (found {', '.join(tensors) or 'none'})")
    max_length = config.get("max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(config.get("normalize", False), bool) or not (
            max_length is None or (isinstance(max_length, int) and not isinstance(max_length, bool) and max_length > 0)):
        raise ModelError(f"{where}: config.json normalize={config.get('normalize')!r}, max_length={max_length!r} "
                         "not allowed: normalize true/false, max_length a positive integer or null")
    model = StaticModel(folder, emb.astype(np.float32), tokenizer, bool(config.get("normalize", False)), max_length)
    model.tokenizer.no_padding()
    model.tokenizer.no_truncation()
    vocab = model.vocab_size
    mapping, weights = tensors.get("mapping"), tensors.get("weights")
    if mapping is not None:
        if mapping.shape != (vocab,) or mapping.dtype.kind not in "iu" or mapping.min() < 0 or mapping.max() >= len(emb):
            raise ModelError(f"{where}: 'mapping' must hold one row index in [0, {len(emb)}) per token ({vocab})")
        model.mapping = mapping.astype(np.int64)
    elif len(emb) != vocab:
        raise ModelError(f"{where}: {len(emb)} embedding rows for {vocab} tokens: they must match")
    if weights is not None:
        if weights.shape != (vocab,):
            raise ModelError(f"{where}: 'weights' must hold one weight per token ({vocab}), not {tuple(weights.shape)}")
        model.weights = weights.astype(np.float32)
    log.info("static baseline %s: %d tokens, %d dimensions%s", folder, vocab, model.dim,
             ", normalized" if model.normalize else "")
    return model


def encode_reference(model: StaticModel, texts: list[str], max_length="config"):
    """model2vec's ``StaticModel.encode`` of ``texts`` in numpy (float32 ``[len(texts), dim]``);
    ``max_length`` tokens (``"config"``: the folder's; None: no truncation)."""
    import numpy as np
    from tokenizers import Tokenizer
    max_length = model.max_length if max_length == "config" else max_length
    tok = Tokenizer.from_str(model.tokenizer.to_str())
    if max_length is not None:
        tokens = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        chars = max_length * int(np.median([len(t) for t, _ in tokens]))
        texts = [t[:chars] for t in texts]
        tok.enable_truncation(max_length)
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    unk = model.unk_id
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
        ids = np.asarray([t for t in enc.ids if t != unk], dtype=np.int64)
        if not ids.size:
            continue
        rows = model.embeddings[model.mapping[ids] if model.mapping is not None else ids]
        if model.weights is not None:
            rows = rows * model.weights[ids][:, None]
        out[i] = rows.mean(axis=0)
    if model.normalize:
        out = out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-32)
    return out


def static_graph(model: StaticModel):
    """The ONNX graph (a ModelProto) of ``model``'s encode over token ids (module docstring)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    keep = np.ones(model.vocab_size, dtype=np.float32)
    for i in model.added_ids() | ({model.unk_id} if model.unk_id is not None else set()):
        keep[i] = 0.0
    scale = keep * model.weights if model.weights is not None else keep
    inits = [numpy_helper.from_array(model.embeddings, "embeddings.weight"),
             numpy_helper.from_array(keep, "embeddings.keep"), numpy_helper.from_array(scale, "embeddings.scale"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
             numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
             numpy_helper.from_array(np.array(1e-32, dtype=np.float32), "eps")]
    node = helper.make_node
    rows = "input_ids"
    nodes = []
    if model.mapping is not None:
        inits.append(numpy_helper.from_array(model.mapping, "embeddings.mapping"))
        nodes.append(node("Gather", ["embeddings.mapping", "input_ids"], ["rows"]))
        rows = "rows"
    mean = "sentence_embedding" if not model.normalize else "mean"
    nodes += [node("Gather", ["embeddings.weight", rows], ["tokens"]),
              node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
              node("Gather", ["embeddings.keep", "input_ids"], ["keep"]),
              node("Gather", ["embeddings.scale", "input_ids"], ["scale"]),
              node("Mul", ["mask", "keep"], ["counted"]),
              node("Mul", ["mask", "scale"], ["weight"]),
              node("Unsqueeze", ["weight", "axis_last"], ["weight3"]),
              node("Mul", ["tokens", "weight3"], ["weighted"]),
              node("ReduceSum", ["weighted", "axis_1"], ["total"], keepdims=0),
              node("ReduceSum", ["counted", "axis_1"], ["count"], keepdims=1),
              node("Max", ["count", "one"], ["denominator"]),  # no token: 0 / 1 = zeros, as model2vec
              node("Div", ["total", "denominator"], [mean])]
    if model.normalize:
        nodes += [node("Mul", ["mean", "mean"], ["squares"]),
                  node("ReduceSum", ["squares", "axis_last"], ["sum_squares"], keepdims=1),
                  node("Sqrt", ["sum_squares"], ["norm"]),
                  node("Add", ["norm", "eps"], ["norm_eps"]),
                  node("Div", ["mean", "norm_eps"], ["sentence_embedding"])]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask")]
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", model.dim])
    graph = helper.make_graph(nodes, "static_embedding", ids, [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                             producer_name="compressor")


def export_static(model: StaticModel, folder, texts: list[str], max_length: int):
    """Write ``model`` as ``folder/model.onnx`` with its tokenizer (``tokenizer.json``, a
    ``tokenizer_config.json`` that loads it with transformers) and a ``config.json`` holding
    ``vocab_size`` (what fixed-shape profiling draws ids from); check the graph on ``texts`` fed
    as the run feeds them against :func:`encode_reference` (ArtifactError above :data:`TOLERANCE`).
    Returns the OnnxModel, its ``info`` holding ``max_abs_diff`` and the texts checked."""
    import onnx

    from compressor.artifact import OnnxModel, atomic_dir
    from compressor.data import Example
    from compressor.onnx_utils import onnx_logits
    folder = Path(folder)
    checked = _checkable(model, texts, max_length)
    with atomic_dir(folder) as tmp:
        onnx.save(static_graph(model), str(tmp / "model.onnx"))
        model.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(model), indent=2))
        (tmp / "config.json").write_text(json.dumps({
            "vocab_size": model.vocab_size, "hidden_size": model.dim,
            "static_embedding": {"source": str(model.folder), "normalize": model.normalize,
                                 "max_length": model.max_length, "rows": int(model.embeddings.shape[0]),
                                 "weights": model.weights is not None, "mapping": model.mapping is not None}},
            indent=2))
        om = OnnxModel(tmp)
        got = onnx_logits(om, [Example(t, 0) for t in checked], max_length=max_length)
        diff = float(abs(got - encode_reference(model, checked)).max())
        if not diff <= TOLERANCE:
            raise ArtifactError(f"--static-baseline {str(model.folder)!r}: the ONNX graph differs from model2vec's "
                                f"encode by {diff:.2e} (allowed {TOLERANCE:g}) on {len(checked)} texts")
    log.info("static baseline exported to %s: matches model2vec's encode within %.1e on %d texts",
             folder, diff, len(checked))
    return OnnxModel(folder, info={"max_abs_diff": diff, "checked_texts": len(checked)})


def _checkable(model: StaticModel, texts: list[str], max_length: int, n: int = 16) -> list[str]:
    """Up to ``n`` of ``texts`` that no token truncation touches (neither the run's ``max_length``
    with the added tokens nor model2vec's own), so the graph and the reference see the same tokens."""
    room = min(max_length - len(model.added_ids()), model.max_length or max_length)
    out = []
    for text in texts:
        if len(model.tokenizer.encode(text, add_special_tokens=False).ids) <= room:
            out.append(text)
        if len(out) == n:
            break
    return out or ["a", "the text"]


def _tokenizer_config(model: StaticModel) -> dict:
    """transformers' view of the tokenizer: PreTrainedTokenizerFast over tokenizer.json, with a pad
    token from its vocabulary (padded positions are masked out)."""
    tok, unk = model.tokenizer, model.unk_id
    padding = json.loads(tok.to_str()).get("padding") or {}
    candidates = [padding.get("pad_token"), "[PAD]", "<pad>", tok.id_to_token(unk) if unk is not None else None,
                  tok.id_to_token(0)]
    pad = next(t for t in candidates if t is not None and tok.token_to_id(t) is not None)
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad,
           "model_max_length": model.max_length or DEFAULT_MAX_LENGTH}
    if unk is not None:
        out["unk_token"] = tok.id_to_token(unk)
    return out


__all__ = ["StaticModel", "load_static", "encode_reference", "static_graph", "export_static", "LABEL", "FOLDER"]
